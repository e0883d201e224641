package node

import (
	"encoding/binary"
	"errors"
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
		nc, err := l.n.adopt(c)
		if err == errRefused {
			continue
		}
		return nc, err
	}
}

// errRefused: adopt refused the connection for a limit and closed it.
var errRefused = errors.New("connection refused at accept for a limit")

// admitAccepted admits a connection just accepted from ip, or closes it
// and reports false. A refused connection is counted (as accepted and
// closed, and as its limit's hit) and reset, not closed with a FIN: its
// client learns that its handshake was never read (the SDK keeps its
// resumption ticket and retries, where a FIN after the handshake was read
// says "wrong server key"), and the server keeps no TIME_WAIT socket for
// each connection a storm has refused.
func (n *Node) admitAccepted(c net.Conn, ip netip.Addr) bool {
	limit := n.admission.admit(ip, true)
	if limit == "" {
		return true
	}
	n.mx.Accepted.Inc()
	n.mx.Closed.Inc()
	n.mx.LimitHits.WithLabelValues(limit).Inc()
	if tc, ok := c.(interface{ SetLinger(int) error }); ok {
		tc.SetLinger(0)
	}
	c.Close()
	return false
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
