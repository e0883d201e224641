package node

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// failThrottle counts failed logins per client address in fixed windows
// and says when an address has used up its failures for the window. It is
// checked before a handshake's cryptography, so an address that keeps
// failing stops costing the server CPU.
//
// Unlike account's sliding-window Limiter, a check does not count: only
// failures do, and a device that logs in fine is never slowed down. It
// forgets everything at each window's end and remembers at most keys
// addresses in one window (past that, new addresses go uncounted until the
// window ends: memory stays bounded under a spread attack, which the
// handshake limit then bounds).
type failThrottle struct {
	max, keys int
	window    time.Duration

	mu     sync.Mutex
	start  time.Time
	counts map[netip.Addr]int
}

func newFailThrottle(max, keys int, window time.Duration) *failThrottle {
	return &failThrottle{max: max, keys: keys, window: window, counts: make(map[netip.Addr]int)}
}

// throttleKey groups IPv6 addresses by /64, the block one subscriber
// usually gets, so one host cannot walk through fresh addresses.
func throttleKey(ip netip.Addr) netip.Addr {
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.Addr()
	}
	return ip
}

func (f *failThrottle) rotate(now time.Time) {
	if now.Sub(f.start) >= f.window {
		f.start = now
		clear(f.counts)
	}
}

// over reports whether ip has failed max times in this window.
func (f *failThrottle) over(ip netip.Addr, now time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rotate(now)
	return f.counts[throttleKey(ip)] >= f.max
}

// fail counts a failed login from ip.
func (f *failThrottle) fail(ip netip.Addr, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rotate(now)
	k := throttleKey(ip)
	if _, ok := f.counts[k]; ok || len(f.counts) < f.keys {
		f.counts[k]++
	}
}

// logBudget allows perSecond log lines a second; the rest are only
// counted (the caller's metric). Lock-free: a second's count in one word.
type logBudget struct {
	perSecond int64
	state     atomic.Int64 // unix second << 20 | lines this second
}

func (b *logBudget) allow(now time.Time) bool {
	sec := now.Unix()
	for {
		old := b.state.Load()
		n := old & (1<<20 - 1)
		if old>>20 != sec {
			n = 0
		}
		if n >= b.perSecond {
			return false
		}
		if b.state.CompareAndSwap(old, sec<<20|(n+1)) {
			return true
		}
	}
}
