package node

import (
	"sync"
	"time"
)

// replayFilter remembers the ephemeral keys of recent handshakes that
// verified, so that a captured first message sent again is refused before
// the server spends a Diffie-Hellman on it. A replay could never log in
// (it cannot produce the proof, see stageProving), but without the filter
// each one costs a full handshake's CPU and a reply.
//
// It keeps two generations of at most max keys each and drops the older
// one when the newer is full or older than window; so it remembers every
// key of the last window as long as fewer than max handshakes happen in
// one, and at most 2 x max keys ever (about 100 bytes each). A replay
// older than that costs a handshake again, and still logs no one in.
type replayFilter struct {
	mu       sync.Mutex
	cur, old map[[32]byte]struct{}
	since    time.Time // when cur was started
	max      int
	window   time.Duration
}

func newReplayFilter(max int, window time.Duration) *replayFilter {
	return &replayFilter{cur: make(map[[32]byte]struct{}), max: max, window: window}
}

// seen reports whether e was recorded before.
func (f *replayFilter) seen(e [32]byte) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.cur[e]; ok {
		return true
	}
	_, ok := f.old[e]
	return ok
}

// record remembers e, the ephemeral key of a handshake that verified.
func (f *replayFilter) record(e [32]byte, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.cur) >= f.max || now.Sub(f.since) > f.window {
		f.old, f.cur, f.since = f.cur, make(map[[32]byte]struct{}, len(f.cur)), now
	}
	f.cur[e] = struct{}{}
}
