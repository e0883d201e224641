package node

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// An IPv6 subscriber usually holds a whole /64: the per-address limits
// count it as one address, as the failed-login throttle does, or one host
// could take 2^64 shares by walking its addresses.
func TestPerAddrLimitsGroupIPv6By64(t *testing.T) {
	lim := Limits{MaxConnsPerAddr: 2}.withDefaults()
	a := newAdmission(&lim)
	for _, tc := range []struct {
		ip   string
		want string
	}{
		{"2001:db8:1:2::1", ""},
		{"2001:db8:1:2:ffff::7", ""},
		{"2001:db8:1:2::3", "max_conns_per_addr"}, // third in one /64
		{"2001:db8:1:3::1", ""},                   // the next /64
		{"192.0.2.1", ""},
		{"::ffff:192.0.2.1", ""},
		{"192.0.2.1", "max_conns_per_addr"}, // v4, also as v4-mapped v6
	} {
		if got := a.admit(netip.MustParseAddr(tc.ip), true); got != tc.want {
			t.Errorf("admit %s: %q, want %q", tc.ip, got, tc.want)
		}
	}
	a.closed(netip.MustParseAddr("2001:db8:1:2::1"), true)
	if got := a.admit(netip.MustParseAddr("2001:db8:1:2::9"), true); got != "" {
		t.Errorf("after a close in the /64: %q, want admitted", got)
	}

	hits := 0
	l := limitPerAddr(nil, 1, func() { hits++ })
	for i, ip := range []string{"2001:db8::1", "2001:db8::2"} {
		peer := makePeerAddr(&net.TCPAddr{IP: net.ParseIP(ip), Port: 1})
		_, ok := l.take(peer.AddrPort().Addr())
		if ok != (i == 0) {
			t.Errorf("HTTP connection %d from the /64: taken %v", i+1, ok)
		}
	}
}

// The accept bucket admits a burst at once, then one connection per
// 1/rate, never more than the burst after any pause; it reads the time it
// is given (nanoseconds), so the rule is checked without a clock.
func TestAcceptBucket(t *testing.T) {
	const ms = int64(time.Millisecond)
	b := newAcceptBucket(10, 3) // one token per 100 ms, 3 at most
	for _, step := range []struct {
		at   int64 // ms
		want bool
	}{
		{0, true}, {0, true}, {0, true}, // the burst
		{0, false},                // empty
		{99, false},               // not a whole token yet
		{100, true}, {100, false}, // one refilled, one taken
		{250, true}, {250, false}, // 1.5 refilled: one whole
		{300, true}, {300, false}, // the half and another half
		{10_000, true}, {10_000, true}, {10_000, true}, // a long pause refills the burst,
		{10_000, false}, // and no more
	} {
		if got := b.take(step.at * ms); got != step.want {
			t.Fatalf("take at %d ms = %v, want %v", step.at, got, step.want)
		}
	}

	off := newAcceptBucket(-1, 3) // a negative rate: no pacing
	for i := range 1000 {
		if !off.take(0) {
			t.Fatalf("take %d with the pacing off was refused", i+1)
		}
	}
}

// A connection another limit refuses takes no accept token, and one taken
// over in a live upgrade (paced false) is not paced.
func TestAdmitAcceptRate(t *testing.T) {
	lim := Limits{AcceptRate: 1, AcceptBurst: 2, MaxConnsPerAddr: 1}.withDefaults()
	a := newAdmission(&lim)
	a.now = func() int64 { return 0 } // no token refills
	ip := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	for _, tc := range []struct {
		ip    string
		paced bool
		want  string
	}{
		{"192.0.2.1", true, ""},
		{"192.0.2.1", true, "max_conns_per_addr"}, // no token taken
		{"192.0.2.2", true, ""},                   // the burst's second
		{"192.0.2.3", true, "accept_rate"},
		{"192.0.2.4", false, ""}, // taken over: not paced
		{"192.0.2.5", true, "accept_rate"},
	} {
		if got := a.admit(ip(tc.ip), tc.paced); got != tc.want {
			t.Errorf("admit %s (paced %v): %q, want %q", tc.ip, tc.paced, got, tc.want)
		}
	}
}
