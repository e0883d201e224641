package node

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	njs "github.com/nats-io/nats.go/jetstream"
)

// countingBucket counts the hint reads a router makes.
type countingBucket struct {
	njs.KeyValue
	gets atomic.Int64
}

func (b *countingBucket) Get(ctx context.Context, key string) (njs.KeyValueEntry, error) {
	b.gets.Add(1)
	return b.KeyValue.Get(ctx, key)
}

// Doorbells to a user read the bucket once, not once each: the hint is
// cached. And the cache follows the bucket: node 1 first finds the user
// connected nowhere (and caches that), then the user logs in on node 2,
// and node 1's next doorbell reaches the session there, long before the
// cached answer would expire (its lifetime is an hour here), because the
// watch of the bucket brought the claim.
func TestDoorbellsUseCachedHintsTheBucketKeepsCurrent(t *testing.T) {
	bucket := &countingBucket{}
	rig := newClaimRig(t, onNode1(func(kv njs.KeyValue) njs.KeyValue { bucket.KeyValue = kv; return bucket }))
	r1, r2 := rig.rs[0], rig.rs[1]
	r1.hints.mu.Lock()
	r1.hints.ttl = time.Hour
	r1.hints.mu.Unlock()
	waitFor(t, "node 1's watch of the hints", func() bool {
		r1.hints.mu.Lock()
		defer r1.hints.mu.Unlock()
		return r1.hints.live
	})
	const user = "+15550004444"
	r1.elsewhere(user, 1, 0, []byte("nobody home"), nil)
	waitFor(t, "node 1 to look the user up", func() bool {
		r1.hints.mu.Lock()
		defer r1.hints.mu.Unlock()
		_, ok := r1.hints.m[hintKey(user)]
		return ok
	})
	for seq := uint64(2); seq <= 5; seq++ {
		r1.elsewhere(user, seq, 0, []byte("nobody home"), nil)
	}

	c := rig.login(r2, user)
	r2.enqueue(hintJob{kind: jobClaim, user: user, c: c, token: 1, stamp: time.Now().UnixNano()}, true)
	const seq = 42
	waitFor(t, "node 1's doorbell to reach the session on node 2", func() bool {
		r1.elsewhere(user, seq, 0, []byte("hello"), nil)
		return pushed(c, seq)
	})
	if n := bucket.gets.Load(); n != 1 {
		t.Errorf("node 1 read the bucket %d times for its doorbells, want 1", n)
	}
}

// A user who logged out (the watch's delete, a later revision than any
// read) stays "connected nowhere" in the cache when a read after the
// entry's lifetime agrees: it used to be refused for its older revision,
// and every doorbell to the user read the bucket again.
func TestHintCacheKeepsALogoutFresh(t *testing.T) {
	c := hintCache{m: make(map[string]cachedHint), live: true, ttl: time.Second}
	t0 := time.Now()
	_, _, term := c.get("p1", t0)
	c.put("p1", cachedHint{rev: 5, at: t0}, term) // the watch: a logout
	if _, hit, _ := c.get("p1", t0.Add(2*time.Second)); hit {
		t.Fatal("an entry past its lifetime was a hit")
	}
	c.put("p1", cachedHint{at: t0.Add(2 * time.Second)}, term) // a read: no hint
	e, hit, _ := c.get("p1", t0.Add(2500*time.Millisecond))
	if !hit || e.ok {
		t.Fatalf("after a read that agrees with the logout: hit %v, connected %v; want a hit, connected nowhere", hit, e.ok)
	}
	c.put("p1", cachedHint{h: hint{node: "n2"}, ok: true, rev: 4, at: t0.Add(3 * time.Second)}, term)
	if e, _, _ := c.get("p1", t0.Add(3*time.Second)); e.ok {
		t.Fatal("a read of an older revision replaced the logout")
	}
}
