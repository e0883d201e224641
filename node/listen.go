package node

import (
	"encoding/binary"
	"net"
	"net/netip"
)

// adoptingListener hands nbio connections that the node has already
// converted and given a conn (see adopt in listen_unix.go).
type adoptingListener struct {
	net.Listener
	n *Node
}

func (l adoptingListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			// A live upgrade pauses accepting with a deadline (see
			// pauseAccepts); anything else goes to the event loop.
			if l.n.acceptPaused() {
				continue
			}
			return nil, err
		}
		return l.n.adopt(c)
	}
}

// peerAddr is a client's address in 18 bytes (the IP as 16, IPv4 mapped,
// then the port), kept by value in its conn: net.TCPAddr would cost about
// 80 bytes in two allocations on every connection.
type peerAddr [18]byte

func makePeerAddr(a net.Addr) (p peerAddr) {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	default:
		if a != nil {
			ap, _ = netip.ParseAddrPort(a.String())
		}
	}
	ip := ap.Addr().As16()
	copy(p[:16], ip[:])
	binary.BigEndian.PutUint16(p[16:], ap.Port())
	return p
}

// AddrPort is the address p holds.
func (p *peerAddr) AddrPort() netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom16([16]byte(p[:16])).Unmap(), binary.BigEndian.Uint16(p[16:]))
}

func (p *peerAddr) String() string { return p.AddrPort().String() }

// Network makes a peerAddr a net.Addr.
func (*peerAddr) Network() string { return "tcp" }
