package account

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestRandomCodeRejectsBiasedValues(t *testing.T) {
	tests := []struct {
		name string
		src  []byte
		want string
	}{
		{"first value taken", []byte{0, 0, 0x30, 0x39}, "012345"},
		// 0xFFFFFFFF is past the last whole multiple of 10^6 and must be
		// redrawn, not reduced mod 10^6.
		{"out-of-range value redrawn", []byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 7}, "000007"},
		{"first out-of-range value redrawn", []byte{0xff, 0xf1, 0x3d, 0x80, 0, 0, 0, 8}, "000008"}, // 4294000000
		{"largest in-range value", []byte{0xff, 0xf1, 0x3d, 0x7f}, "999999"},                       // 4293999999
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := randomCode(bytes.NewReader(tt.src))
			if err != nil || got != tt.want {
				t.Fatalf("randomCode = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestRandomCodeFailsOnShortSource(t *testing.T) {
	if _, err := randomCode(bytes.NewReader([]byte{1, 2})); err == nil {
		t.Fatal("no error from an exhausted random source")
	}
}

func TestNewServiceRejectsBadConfig(t *testing.T) {
	good := func() Config {
		return Config{Accounts: newMemAccounts(), SMS: &codeBox{}, ServerKey: serverKey, NativeAddr: "h:1"}
	}
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr string
	}{
		{"no accounts", func(c *Config) { c.Accounts = nil }, "Accounts"},
		{"no gateway", func(c *Config) { c.SMS = nil }, "SMS"},
		{"short server key", func(c *Config) { c.ServerKey = serverKey[:31] }, "ServerKey"},
		{"no native addr", func(c *Config) { c.NativeAddr = "" }, "NativeAddr"},
		{"unknown region", func(c *Config) { c.DefaultRegion = "XX" }, "DefaultRegion"},
		{"negative TTL", func(c *Config) { c.CodeTTL = -time.Second }, "CodeTTL"},
		{"negative attempts", func(c *Config) { c.MaxAttempts = -1 }, "MaxAttempts"},
		{"max without window", func(c *Config) { c.PerAddr = RateLimit{Max: 5} }, "PerAddr"},
		{"empty random source", func(c *Config) { c.Rand = bytes.NewReader(nil) }, "Rand"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good()
			tt.mod(&cfg)
			if _, err := NewService(cfg); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("NewService error %v, want one about %s", err, tt.wantErr)
			}
		})
	}
	if _, err := NewService(good()); err != nil {
		t.Fatalf("NewService(good config): %v", err)
	}
}

func TestAddrKey(t *testing.T) {
	tests := []struct{ in, want string }{
		{"192.0.2.7", "192.0.2.7"},
		{"::ffff:192.0.2.7", "192.0.2.7"},
		{"2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"},
		{"2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"},
		{"fe80::1%eth0", "fe80::/64"},
		{"not-an-ip", "not-an-ip"},
	}
	for _, tt := range tests {
		if got := addrKey(tt.in); got != tt.want {
			t.Errorf("addrKey(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestSweepForgetsRateLimits(t *testing.T) {
	h := newHarness(t, nil)
	if _, _, err := h.svc.RequestCode(t.Context(), phone, "192.0.2.7"); err != nil {
		t.Fatal(err)
	}
	h.svc.Sweep(t0.Add(10 * time.Minute))
	h.svc.mu.Lock()
	defer h.svc.mu.Unlock()
	if n := len(h.svc.codes) + h.svc.perNum.Len() + h.svc.perAddr.Len(); n != 0 {
		t.Fatalf("%d entries left after Sweep", n)
	}
}
