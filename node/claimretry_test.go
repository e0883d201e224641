package node

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	njs "github.com/nats-io/nats.go/jetstream"

	"github.com/parleyhq/parley/session"
)

// flakyBucket is the sessions bucket as a node sees it while its claims
// fail. Its next refusals writes are refused, as by a bucket whose stream
// is between leaders; before each of the next rivals writes, a rival entry
// is written under the same key, so that the write's compare-and-set
// loses, as to a claim of another node landing between its read and its
// write. The rival is an older login, which the claim must replace.
type flakyBucket struct {
	njs.KeyValue

	mu       sync.Mutex
	refusals int
	rivals   int
}

// rivalHint is the entry a flakyBucket's rival writes: an older login on
// a node that is not running (its kick finds no responder).
var rivalHint = hint{node: "n9", epoch: 1, token: 1, stamp: 1}

func (b *flakyBucket) Create(ctx context.Context, key string, value []byte, opts ...njs.KVCreateOpt) (uint64, error) {
	if err := b.interfere(ctx, key); err != nil {
		return 0, err
	}
	return b.KeyValue.Create(ctx, key, value, opts...)
}

func (b *flakyBucket) Update(ctx context.Context, key string, value []byte, revision uint64) (uint64, error) {
	if err := b.interfere(ctx, key); err != nil {
		return 0, err
	}
	return b.KeyValue.Update(ctx, key, value, revision)
}

func (b *flakyBucket) interfere(ctx context.Context, key string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.refusals > 0:
		b.refusals--
		return njs.ErrNoStreamResponse
	case b.rivals > 0:
		b.rivals--
		if _, err := b.KeyValue.Put(ctx, key, rivalHint.encode()); err != nil {
			return fmt.Errorf("rival write: %w", err)
		}
	}
	return nil
}

// A login's hint claim that fails is tried again for as long as the login
// lasts, however often it fails: until it is written, another node's
// doorbell does not find the session. Claims used to be given up after
// five compare-and-set losses in a row, or after claimTries refusals; the
// session then heard nothing from other nodes until it happened to read
// its queue again.
func TestClaimIsRetriedUntilWritten(t *testing.T) {
	for _, tc := range []struct {
		name             string
		refusals, rivals int
	}{
		// More losses than the five a claim takes in a row before it
		// waits and tries again.
		{name: "compare-and-set keeps losing", rivals: 12},
		// More refusals than claimTries, past which the old claim gave up.
		{name: "bucket keeps refusing", refusals: claimTries + 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bucket := &flakyBucket{refusals: tc.refusals, rivals: tc.rivals}
			rig := newClaimRig(t, onNode1(func(kv njs.KeyValue) njs.KeyValue { bucket.KeyValue = kv; return bucket }))
			r1, r2 := rig.rs[0], rig.rs[1]
			// The same schedule of tries, a thousand times faster (set
			// before the first claim reaches r1's worker).
			r1.backoff, r1.maxBackoff = 125*time.Microsecond, 5*time.Millisecond
			const user = "+15550003333"
			c := &conn{}
			c.scheduled = true // no worker runs it: its events stay in the mailbox
			c.core.Init(user, &session.Config{})
			r1.register(user, c) // as a proven login does: the claim is queued

			waitFor(t, "node 1's claim to be written", func() bool {
				e, err := rig.kv.Get(context.Background(), hintKey(user))
				if err != nil {
					return false
				}
				h, _ := decodeHint(e.Value())
				return h.node == "n1" && h.epoch == r1.epoch
			})
			bucket.mu.Lock()
			left := bucket.refusals + bucket.rivals
			bucket.mu.Unlock()
			if left != 0 {
				t.Fatalf("written with %d failures still to come", left)
			}

			// A commit on node 2 for the user rings node 1's doorbell,
			// which pushes the item to the session.
			const seq = 42
			r2.elsewhere(user, seq, 0, []byte("from node 2"), nil)
			waitFor(t, "node 2's doorbell to reach the session", func() bool { return pushed(c, seq) })
		})
	}
}

// pushed reports whether c's mailbox holds a push of seq.
func pushed(c *conn, seq uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mbox == nil {
		return false
	}
	for _, ev := range c.mbox.evs {
		if ev.kind == evPush && ev.seq == seq {
			return true
		}
	}
	return false
}
