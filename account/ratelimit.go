package account

import (
	"fmt"
	"net/netip"
	"time"
)

// RateLimit bounds how often one key (a phone number, a client address) may
// ask for a code. A zero RateLimit means the default of the field it sits
// in; Max < 0 lifts the count limit (MinGap still applies).
type RateLimit struct {
	// Max requests per Window, counted over a sliding window.
	Max    int
	Window time.Duration
	// MinGap is the least time between two requests.
	MinGap time.Duration
}

func (r RateLimit) check(name string) error {
	switch {
	case r.Max > 0 && r.Window <= 0:
		return fmt.Errorf("%s: Max %d needs a positive Window", name, r.Max)
	case r.Window < 0 || r.MinGap < 0:
		return fmt.Errorf("%s: negative duration", name)
	}
	return nil
}

// limiter is a sliding-window log: per key, the times of the requests still
// inside the window. A window log (rather than a token bucket) is what
// makes "3 per 10 minutes" exact, and it stays small: a key never holds
// more than Max times, and keys with nothing left in the window are
// dropped by sweep. Not safe for concurrent use; the Service locks.
type limiter struct {
	RateLimit
	hits map[string][]time.Time // ascending
}

func newLimiter(r RateLimit) *limiter {
	return &limiter{RateLimit: r, hits: make(map[string][]time.Time)}
}

// keep is how long a hit matters: for the window and for the gap.
func (l *limiter) keep() time.Duration { return max(l.Window, l.MinGap) }

func (l *limiter) prune(ts []time.Time, now time.Time) []time.Time {
	cut := now.Add(-l.keep())
	i := 0
	for i < len(ts) && !ts[i].After(cut) {
		i++
	}
	return ts[i:]
}

// take records a request for key at now and reports true, or, when the
// request is over the limit, records nothing and says how long to wait.
func (l *limiter) take(key string, now time.Time) (bool, time.Duration) {
	ts := l.prune(l.hits[key], now)
	var wait time.Duration
	if l.MinGap > 0 && len(ts) > 0 {
		wait = max(wait, ts[len(ts)-1].Add(l.MinGap).Sub(now))
	}
	if l.Max > 0 && len(ts) >= l.Max {
		wait = max(wait, ts[len(ts)-l.Max].Add(l.Window).Sub(now))
	}
	if wait > 0 {
		l.set(key, ts)
		return false, wait
	}
	ts = append(ts, now)
	if l.Max <= 0 {
		ts = ts[len(ts)-1:] // only the gap matters: keep the last
	}
	l.set(key, ts)
	return true, 0
}

// undo forgets the request take recorded for key at at, for a request that
// came to nothing through no fault of the client.
func (l *limiter) undo(key string, at time.Time) {
	ts := l.hits[key]
	for i := len(ts) - 1; i >= 0; i-- {
		if ts[i].Equal(at) {
			l.set(key, append(ts[:i:i], ts[i+1:]...))
			return
		}
	}
}

func (l *limiter) set(key string, ts []time.Time) {
	if len(ts) == 0 {
		delete(l.hits, key)
		return
	}
	l.hits[key] = ts
}

// sweep drops keys with no request left that matters at now.
func (l *limiter) sweep(now time.Time) {
	for k, ts := range l.hits {
		l.set(k, l.prune(ts, now))
	}
}

// addrKey is the rate-limit key for a client address. IPv6 clients are
// limited per /64, the block one subscriber usually gets, or a single host
// could walk through 2^64 addresses; IPv4-mapped addresses count as IPv4.
func addrKey(host string) string {
	a, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	a = a.Unmap().WithZone("")
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}
