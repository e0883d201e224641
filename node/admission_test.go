package node

import (
	"net"
	"net/netip"
	"testing"
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
		if got := a.admit(netip.MustParseAddr(tc.ip)); got != tc.want {
			t.Errorf("admit %s: %q, want %q", tc.ip, got, tc.want)
		}
	}
	a.closed(netip.MustParseAddr("2001:db8:1:2::1"), true)
	if got := a.admit(netip.MustParseAddr("2001:db8:1:2::9")); got != "" {
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
