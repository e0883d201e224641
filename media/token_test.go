package media

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestUploadTokenRoundTrip(t *testing.T) {
	e := newEnv(t, nil)
	for _, account := range []string{"+14155550100", "a", strings.Repeat("x", maxAccountLen), "名前.with.dots"} {
		tok, exp := e.svc.IssueUploadToken(account)
		if !exp.Equal(t0.Add(DefaultTokenTTL)) {
			t.Errorf("expires %v, want %v", exp, t0.Add(DefaultTokenTTL))
		}
		if got, err := e.svc.VerifyUploadToken(tok); err != nil || got != account {
			t.Errorf("Verify(%q) = %q, %v; want %q", tok, got, err, account)
		}
	}
}

func TestUploadTokenExpiry(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.TokenTTL = time.Minute })
	tok := e.token("+14155550100")
	e.clock.Add(time.Minute - time.Second)
	if _, err := e.svc.VerifyUploadToken(tok); err != nil {
		t.Fatalf("a second before expiry: %v", err)
	}
	e.clock.Add(time.Second)
	if _, err := e.svc.VerifyUploadToken(tok); !errors.Is(err, ErrTokenExpired) {
		t.Fatalf("at expiry: %v, want ErrTokenExpired", err)
	}
}

func TestUploadTokenInvalid(t *testing.T) {
	e := newEnv(t, nil)
	tok := e.token("+14155550100")
	exp := t0.Add(time.Hour)
	cases := map[string]string{
		"empty":          "",
		"no dot":         strings.ReplaceAll(tok, ".", ""),
		"two dots":       tok + ".",
		"padded":         tok + "=",
		"too long":       strings.Repeat("A", maxTokenLength+1),
		"empty account":  e.svc.sign(purposeUpload, exp, ""),
		"long account":   e.svc.sign(purposeUpload, exp, strings.Repeat("x", maxAccountLen+1)),
		"other purpose":  e.svc.sign("parley media download token v1\x00", exp, "+14155550100"),
		"swapped halves": strings.Join(reverse(strings.Split(tok, ".")), "."),
	}
	// Every single-character change anywhere must be caught.
	for i := range tok {
		for _, c := range []byte("AQgw_-0.") {
			if tok[i] != c {
				cases[fmt.Sprintf("char %d changed to %c", i, c)] = tok[:i] + string(c) + tok[i+1:]
			}
		}
	}
	for name, bad := range cases {
		if got, err := e.svc.VerifyUploadToken(bad); !errors.Is(err, ErrTokenInvalid) {
			t.Errorf("%s: Verify(%q) = %q, %v; want ErrTokenInvalid", name, bad, got, err)
		}
	}
}

func reverse(s []string) []string {
	for i, j := 0, len(s)-1; i < j; i, j = i+1, j-1 {
		s[i], s[j] = s[j], s[i]
	}
	return s
}

func TestNewRejectsBadConfig(t *testing.T) {
	for name, cfg := range map[string]Config{
		"short secret":  {Dir: t.TempDir(), Secret: []byte("short")},
		"no dir":        {Secret: testSecret},
		"negative size": {Dir: t.TempDir(), Secret: testSecret, MaxSize: -1},
		"bad base URL":  {Dir: t.TempDir(), Secret: testSecret, BaseURL: "media.example.com"},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New accepted %+v", name, cfg)
		}
	}
}
