package node

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// admission counts native connections in all, per client address (IPv6:
// per /64, see throttleKey) and in their handshake, and paces new ones
// (AcceptRate), against Limits, and says whether a new one may stay. It
// runs once per accepted connection and once per close or login, never
// per message.
type admission struct {
	lim        *Limits
	handshakes atomic.Int64
	// now is the accept bucket's clock: monotonic nanoseconds since the
	// admission began (a test sets its own).
	now func() int64

	mu      sync.Mutex
	total   int
	perAddr map[netip.Addr]int32
	accepts acceptBucket
}

func newAdmission(lim *Limits) *admission {
	epoch := time.Now()
	return &admission{
		lim:     lim,
		now:     func() int64 { return int64(time.Since(epoch)) },
		perAddr: make(map[netip.Addr]int32),
		accepts: newAcceptBucket(lim.AcceptRate, lim.AcceptBurst),
	}
}

// admit counts a new connection from ip, or names the limit it hits ("" if
// none); a refused connection is not counted and takes no accept token.
// paced is false for a connection taken over in a live upgrade: it logged
// in long ago, and a handover of every connection at once is no storm.
func (a *admission) admit(ip netip.Addr, paced bool) (limit string) {
	if a.handshakes.Load() >= int64(a.lim.MaxHandshakes) {
		return "max_handshakes"
	}
	var now int64
	if paced {
		now = a.now()
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
	// Last, so that a connection another limit refuses costs no token.
	if paced && !a.accepts.take(now) {
		return "accept_rate"
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

// acceptBucket paces new connections: a token bucket of burst tokens,
// refilled at rate a second, one token per connection admitted.
//
// It is kept as one number, GCRA's theoretical arrival time (tat): the
// instant at which the bucket is full again, in nanoseconds on the
// caller's clock. It is ahead of now by what has been taken and not yet
// refilled, at most the bucket's span (burst tokens' worth of refill);
// taking a token moves it on by one token's worth. It reads no clock
// itself, so its rule is tested without one; the zero bucket (rate off)
// admits everything.
type acceptBucket struct {
	interval int64 // nanoseconds of refill per token; 0: no limit
	span     int64 // burst tokens' worth of refill
	tat      int64
}

// newAcceptBucket returns a full bucket for a clock that starts at 0 or
// later; rate <= 0 turns it off.
func newAcceptBucket(rate, burst int) acceptBucket {
	if rate <= 0 {
		return acceptBucket{}
	}
	iv := max(int64(time.Second)/int64(rate), 1)
	return acceptBucket{interval: iv, span: iv * int64(min(max(burst, 1), 1<<31))}
}

// take takes a token at now and reports true, or reports false, leaving
// the bucket as it is, if it is empty.
func (b *acceptBucket) take(now int64) bool {
	if b.interval == 0 {
		return true
	}
	tat := max(b.tat, now)
	if tat+b.interval-now > b.span {
		return false
	}
	b.tat = tat + b.interval
	return true
}
