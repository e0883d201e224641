package node

import (
	"net/netip"
	"sync"
	"sync/atomic"
)

// admission counts native connections in all, per client address (IPv6:
// per /64, see throttleKey) and in their handshake, against Limits, and
// says whether a new one may stay. It runs once per accepted connection
// and once per close or login, never per message.
type admission struct {
	lim        *Limits
	handshakes atomic.Int64

	mu      sync.Mutex
	total   int
	perAddr map[netip.Addr]int32
}

func newAdmission(lim *Limits) *admission {
	return &admission{lim: lim, perAddr: make(map[netip.Addr]int32)}
}

// admit counts a new connection from ip, or names the limit it hits ("" if
// none); a refused connection is not counted.
func (a *admission) admit(ip netip.Addr) (limit string) {
	if a.handshakes.Load() >= int64(a.lim.MaxHandshakes) {
		return "max_handshakes"
	}
	ip = throttleKey(ip) // IPv6: the /64, which one subscriber holds
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case a.total >= a.lim.MaxConnections:
		return "max_connections"
	case int(a.perAddr[ip]) >= a.lim.MaxConnsPerAddr:
		return "max_conns_per_addr"
	}
	a.total++
	a.perAddr[ip]++
	a.handshakes.Add(1)
	return ""
}

// loggedIn ends a connection's handshake.
func (a *admission) loggedIn() { a.handshakes.Add(-1) }

// closed uncounts a connection from ip; inHandshake says whether it closed
// before logging in.
func (a *admission) closed(ip netip.Addr, inHandshake bool) {
	if inHandshake {
		a.handshakes.Add(-1)
	}
	ip = throttleKey(ip)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.total--
	if n := a.perAddr[ip] - 1; n > 0 {
		a.perAddr[ip] = n
	} else {
		delete(a.perAddr, ip)
	}
}
