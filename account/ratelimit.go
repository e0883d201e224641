package account

import (
	"container/list"
	"fmt"
	"net/netip"
	"sync"
	"time"
)

// RateLimit bounds how often one key (a phone number, a client address)
// may do something: ask for a code, fail a login. In a Config, a zero
// RateLimit means the default of the field it sits in. Max <= 0 lifts the
// count limit (MinGap still applies).
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

// DefaultMaxKeys is how many keys a Limiter remembers unless told
// otherwise: about 10 MB at 3 hits a key, far above the keys an honest
// load keeps inside a window.
const DefaultMaxKeys = 100_000

// Limiter applies a RateLimit per key (an address, a claimed account, a
// kind of log line). It is a sliding-window log: per key, the times of the
// hits still inside the window, which is what makes "3 per 10 minutes"
// exact.
//
// Its memory is bounded: a key holds at most Max times (1 when Max <= 0),
// a key whose hits no longer matter is dropped when touched or by Sweep,
// and at most maxKeys keys are kept: a new key beyond that evicts the
// least recently hit one. Eviction forgets that key's hits, so choose
// maxKeys well above the keys an honest load touches within a window: a
// flood of new keys then costs the flooder, not the limits of others.
//
// It is safe for concurrent use.
type Limiter struct {
	rate    RateLimit
	maxKeys int

	mu    sync.Mutex
	keys  map[string]*list.Element // of *limitEntry
	order list.List                // least recently hit first
}

type limitEntry struct {
	key  string
	hits []time.Time // ascending
}

// NewLimiter returns a limiter of r for at most maxKeys keys
// (DefaultMaxKeys when maxKeys <= 0). r must be complete: its zero fields
// are not filled with defaults here.
func NewLimiter(r RateLimit, maxKeys int) (*Limiter, error) {
	if err := r.check("rate limit"); err != nil {
		return nil, err
	}
	if maxKeys <= 0 {
		maxKeys = DefaultMaxKeys
	}
	return &Limiter{rate: r, maxKeys: maxKeys, keys: make(map[string]*list.Element)}, nil
}

// keep is how long a hit matters: for the window and for the gap.
func (l *Limiter) keep() time.Duration { return max(l.rate.Window, l.rate.MinGap) }

func (l *Limiter) prune(ts []time.Time, now time.Time) []time.Time {
	cut := now.Add(-l.keep())
	i := 0
	for i < len(ts) && !ts[i].After(cut) {
		i++
	}
	return ts[i:]
}

// Allow records a hit for key at now and reports true, or, when the hit is
// over the limit, records nothing and says how long until one would pass.
// A refused hit still counts as use of the key for eviction, so a key
// being held back is the last to be forgotten.
func (l *Limiter) Allow(key string, now time.Time) (ok bool, wait time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var ts []time.Time
	if el := l.keys[key]; el != nil {
		ts = l.prune(el.Value.(*limitEntry).hits, now)
	}
	r := l.rate
	if r.MinGap > 0 && len(ts) > 0 {
		wait = max(wait, ts[len(ts)-1].Add(r.MinGap).Sub(now))
	}
	if r.Max > 0 && len(ts) >= r.Max {
		wait = max(wait, ts[len(ts)-r.Max].Add(r.Window).Sub(now))
	}
	if wait > 0 {
		l.set(key, ts)
		return false, wait
	}
	ts = append(ts, now)
	if r.Max <= 0 {
		ts = ts[len(ts)-1:] // only the gap matters: keep the last
	}
	l.set(key, ts)
	return true, 0
}

// Undo forgets the hit Allow recorded for key at at, for a request that
// came to nothing through no fault of the client.
func (l *Limiter) Undo(key string, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	el := l.keys[key]
	if el == nil {
		return
	}
	ts := el.Value.(*limitEntry).hits
	for i := len(ts) - 1; i >= 0; i-- {
		if ts[i].Equal(at) {
			ts = append(ts[:i:i], ts[i+1:]...)
			if len(ts) == 0 {
				l.drop(el)
			} else {
				el.Value.(*limitEntry).hits = ts
			}
			return
		}
	}
}

// Sweep drops the keys with no hit left that matters at now. Keys are
// also dropped when touched; Sweep is for the untouched ones.
func (l *Limiter) Sweep(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for el := l.order.Front(); el != nil; {
		next := el.Next()
		e := el.Value.(*limitEntry)
		if e.hits = l.prune(e.hits, now); len(e.hits) == 0 {
			l.drop(el)
		}
		el = next
	}
}

// Len is the number of keys remembered.
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.keys)
}

// set stores key's hits as its most recent use, evicting the least
// recently used key if a new one would pass maxKeys.
func (l *Limiter) set(key string, ts []time.Time) {
	el := l.keys[key]
	switch {
	case len(ts) == 0:
		if el != nil {
			l.drop(el)
		}
	case el != nil:
		el.Value.(*limitEntry).hits = ts
		l.order.MoveToBack(el)
	default:
		if len(l.keys) >= l.maxKeys {
			l.drop(l.order.Front())
		}
		l.keys[key] = l.order.PushBack(&limitEntry{key: key, hits: ts})
	}
}

func (l *Limiter) drop(el *list.Element) {
	delete(l.keys, el.Value.(*limitEntry).key)
	l.order.Remove(el)
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
