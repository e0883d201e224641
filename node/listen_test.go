package node

import (
	"net"
	"net/netip"
	"testing"
)

func TestPeerAddrKeepsTheAddress(t *testing.T) {
	for _, s := range []string{"127.0.0.2:5222", "192.0.2.7:65535", "[2001:db8::1]:443", "[::1]:1"} {
		ap := netip.MustParseAddrPort(s)
		p := makePeerAddr(net.TCPAddrFromAddrPort(ap))
		if got := p.AddrPort(); got != ap {
			t.Errorf("%s: kept as %s", s, got)
		}
		if p.String() != s {
			t.Errorf("%s: prints as %s", s, p.String())
		}
	}
}
