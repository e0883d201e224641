package node

import (
	"context"
	"errors"
	"sync"
	"time"

	njs "github.com/nats-io/nats.go/jetstream"
)

// hintCache keeps the hints this node has seen, so that a doorbell does
// not cost a bucket read: one per commit to a user on another node was
// the dearest request of a cross-node message (pairs 200 x 1 across three
// nodes: 1,931 – 2,202 msgs/s at 761 – 849 us of node CPU per message
// with hints cached for a second, 927 – 1,172 msgs/s at 1,349 – 1,491 us
// reading each; see BENCHMARKS.md, stop 19).
//
// A watch of the bucket (updates only) keeps it current: every claim and
// release anywhere lands here within the watch's delivery, tagged with
// its revision, so a bucket read answered before an update never
// overwrites it. A user not in the cache is read from the bucket (and the
// answer cached, "not connected" too). An entry is trusted for
// hintCacheTTL at most, so that a watch that stalls (its stream between
// leaders) does not keep a stale hint for long; while the watch is not
// running nothing is cached. What is left is the watch's delay: a
// doorbell rung within it may go to the node the user just left, which
// drops it, and the item waits for the session's next read, as with any
// lost doorbell; each claim therefore wakes its session once more when no
// node can still hold the hint from before it (see claim).
type hintCache struct {
	mu   sync.Mutex
	m    map[string]cachedHint // by hint key
	live bool                  // the watch runs
	ttl  time.Duration         // hintCacheTTL; longer only in tests
	// term counts the watch's starts and ends: a bucket read begun in
	// another term may predate an update the watch did not bring (it
	// was not running), so its answer is not cached.
	term uint64
}

type cachedHint struct {
	h   hint
	ok  bool   // false: no hint (not connected anywhere)
	rev uint64 // the bucket revision it is from; 0: a read that found none
	at  time.Time
}

const (
	hintCacheTTL = 5 * time.Second
	// maxHintCache bounds the cache; past it, it starts again empty.
	maxHintCache = 1 << 18
)

// get returns key's hint if the cache has a fresh one, and the term a
// bucket read made now would be put in.
func (c *hintCache) get(key string, now time.Time) (cachedHint, bool, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[key]
	if !ok || !c.live || now.Sub(e.at) > c.ttl {
		return cachedHint{}, false, c.term
	}
	return e, true, c.term
}

// put records e for key, unless the cache holds a later revision or the
// watch started or stopped since term.
func (c *hintCache) put(key string, e cachedHint, term uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.live || term != c.term {
		return
	}
	if cur, ok := c.m[key]; ok && cur.rev > e.rev {
		if !cur.ok && !e.ok {
			// A read that agrees with a later logout: still nowhere.
			cur.at = e.at
			c.m[key] = cur
		}
		return
	}
	if len(c.m) >= maxHintCache {
		clear(c.m)
	}
	c.m[key] = e
}

func (c *hintCache) setLive(live bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.live = live
	c.term++
	if !live {
		clear(c.m)
	}
}

// watchHints keeps r.hints current (see hintCache) until the router stops.
// A watch that ends or cannot start is started again after a second.
func (r *clusterRouter) watchHints() {
	defer r.wg.Done()
	for {
		w, err := r.kv.WatchAll(r.ctx, njs.UpdatesOnly())
		if err == nil {
			r.hints.setLive(true)
			r.followHints(w)
			_ = w.Stop()
		} else if !errors.Is(err, context.Canceled) {
			r.n.log.Debug("cluster: watch hints", "err", err)
		}
		r.hints.setLive(false)
		select {
		case <-r.stop:
			return
		case <-time.After(time.Second):
		}
	}
}

func (r *clusterRouter) followHints(w njs.KeyWatcher) {
	for {
		select {
		case <-r.stop:
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil {
				continue // the end of the current values: none, updates only
			}
			ch := cachedHint{rev: e.Revision(), at: time.Now()}
			if e.Operation() == njs.KeyValuePut {
				ch.h, ch.ok = decodeHint(e.Value())
			}
			r.hints.mu.Lock()
			term := r.hints.term
			r.hints.mu.Unlock()
			r.hints.put(e.Key(), ch, term)
		}
	}
}

// lookupHint is where user is connected, from the cache or the bucket:
// ok false with a nil error means nowhere.
func (r *clusterRouter) lookupHint(user string) (h hint, ok bool, err error) {
	key := hintKey(user)
	now := time.Now()
	e, hit, term := r.hints.get(key, now)
	if hit {
		return e.h, e.ok, nil
	}
	ctx, cancel := r.reqCtx()
	got, err := r.kv.Get(ctx, key)
	cancel()
	switch {
	case errors.Is(err, njs.ErrKeyNotFound):
		r.hints.put(key, cachedHint{at: now}, term)
		return hint{}, false, nil
	case err != nil:
		return hint{}, false, err
	}
	h, ok = decodeHint(got.Value())
	r.hints.put(key, cachedHint{h: h, ok: ok, rev: got.Revision(), at: now}, term)
	return h, ok, nil
}
