package node

import (
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"
)

// perAddrListener bounds the connections one client address (IPv6: one
// /64, see throttleKey) holds open on an HTTP listener: past max, a new connection is closed as soon as it is
// accepted (one slow client cannot hold every connection the server will
// serve). hit is called with each refusal.
type perAddrListener struct {
	net.Listener
	max int
	hit func()

	mu   sync.Mutex
	open map[netip.Addr]int
}

func limitPerAddr(ln net.Listener, max int, hit func()) *perAddrListener {
	return &perAddrListener{Listener: ln, max: max, hit: hit, open: make(map[netip.Addr]int)}
}

func (l *perAddrListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		peer := makePeerAddr(c.RemoteAddr())
		ip, ok := l.take(peer.AddrPort().Addr())
		if !ok {
			l.hit()
			c.Close()
			continue
		}
		return &countedConn{Conn: c, l: l, ip: ip}, nil
	}
}

// take counts a connection from ip against its address's share and
// returns the address it was counted under, or reports that the share is
// used up.
func (l *perAddrListener) take(ip netip.Addr) (netip.Addr, bool) {
	ip = throttleKey(ip) // IPv6: the /64
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[ip] >= l.max {
		return ip, false
	}
	l.open[ip]++
	return ip, true
}

type countedConn struct {
	net.Conn
	l    *perAddrListener
	ip   netip.Addr
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		if n := c.l.open[c.ip] - 1; n > 0 {
			c.l.open[c.ip] = n
		} else {
			delete(c.l.open, c.ip)
		}
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

// requestDeadline gives small API requests (registration) the short
// deadline d for arriving and being answered, within the listener's long
// ones, which are sized for media.
func requestDeadline(d time.Duration, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		dl := time.Now().Add(d)
		_ = rc.SetReadDeadline(dl)
		_ = rc.SetWriteDeadline(dl)
		h.ServeHTTP(w, r)
	})
}
