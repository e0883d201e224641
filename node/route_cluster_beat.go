package node

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// Heartbeats, and why: a doorbell is at most once, and one that a node
// rings just before it dies, or while it is cut off, is lost. The item is
// safe in the user's queue, but a quiet session reads its queue only when
// something wakes it, so the item could wait for the user's next login.
// So every node beats on beatSubject every beatEvery, each node tracks the
// others' beats, and when the set of members changes (one stops beating
// for beatLost, or one appears or comes back) every session of this node
// reads its queue again, once: whatever a lost doorbell left is delivered
// within about beatLost of the change. That costs one queue read per
// session per membership change. A member lost also makes the store
// resync (see resyncer) before those reads are answered.
const (
	beatSubject = "parley.beat"
	beatEvery   = 500 * time.Millisecond
	beatLost    = 2 * time.Second
)

// resyncer is a store that can wait, after the members change, until each
// of its streams' (new) leaders has applied what the old ones wrote
// (store/jetstream.Store.Resync).
type resyncer interface{ Resync(why string) }

// beats is what a node knows of the others' heartbeats.
type beats struct {
	mu    sync.Mutex
	seen  map[string]time.Time // "node epoch" -> last beat
	alive []string             // the members alive at the last check, sorted
	// gone are the members lost, by node name, with when they were last
	// heard, until a run of the same node beats again (see silent).
	gone map[string]time.Time
}

func (r *clusterRouter) beatPayload() []byte {
	return []byte(r.node + " " + strconv.FormatUint(r.epoch, 10))
}

func (r *clusterRouter) onBeat(m *nats.Msg) {
	from := string(m.Data)
	if node, _, ok := strings.Cut(from, " "); !ok || node == r.node {
		return
	}
	r.beats.mu.Lock()
	r.beats.seen[from] = time.Now()
	r.beats.mu.Unlock()
}

// beatLoop beats and watches the members until the router stops.
func (r *clusterRouter) beatLoop() {
	defer r.wg.Done()
	t := time.NewTicker(beatEvery)
	defer t.Stop()
	settled := false // the members at the start are no change to resync for
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
		}
		_ = r.nc.Publish(beatSubject, r.beatPayload()) // a lost beat is the next one's to make up
		if lost, joined, changed := r.beats.check(time.Now()); changed {
			if rs, ok := r.n.store.(resyncer); ok && (len(lost) > 0 || settled) {
				// A node lost, or one back (it forces elections).
				rs.Resync(fmt.Sprintf("cluster members changed: lost %v, joined %v", lost, joined))
			}
			settled = true
			n := r.router.len()
			r.n.log.Warn("cluster members changed: every session reads its queue again, for what a lost doorbell left", "lost", lost, "joined", joined, "sessions", n)
			r.router.each(func(c *conn) { c.post(r.n.pool, event{kind: evPush, seq: wakeSeq}) })
		}
	}
}

// silent names, for /admin/cluster's problems, the members that stopped
// beating and have not come back.
func (b *beats) silent(now time.Time) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, name := range slices.Sorted(maps.Keys(b.gone)) {
		out = append(out, fmt.Sprintf("node %s stopped beating %s ago: down, or cut off from this node", name, now.Sub(b.gone[name]).Round(time.Second)))
	}
	return out
}

// others is how many other members were alive at the last check.
func (b *beats) others() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.alive)
}

// check compares the members beating now with those at the last check.
func (b *beats) check(now time.Time) (lost, joined []string, changed bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var alive []string
	for m, at := range b.seen {
		if now.Sub(at) > beatLost {
			delete(b.seen, m)
			continue
		}
		alive = append(alive, m)
	}
	slices.Sort(alive)
	for _, m := range b.alive {
		if _, ok := slices.BinarySearch(alive, m); !ok {
			lost = append(lost, m)
			if b.gone == nil {
				b.gone = make(map[string]time.Time)
			}
			name, _, _ := strings.Cut(m, " ")
			b.gone[name] = now.Add(-beatLost)
		}
	}
	for _, m := range alive {
		if _, ok := slices.BinarySearch(b.alive, m); !ok {
			joined = append(joined, m)
		}
		name, _, _ := strings.Cut(m, " ")
		delete(b.gone, name)
	}
	b.alive = alive
	return lost, joined, len(lost)+len(joined) > 0
}
