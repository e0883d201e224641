package store_test

import (
	"fmt"
	"testing"

	"github.com/parleyhq/parley/store"
)

// The queue states the store keeps in memory stay near their bound however
// many users it sees, and a queue whose state was dropped reads, counts and
// appends exactly as before: seqs go on increasing, items are all there.
func TestPebbleQueueStatesAreBounded(t *testing.T) {
	const bound, users = 8, 100
	p := openPebble(t, t.TempDir(), store.Options{MaxQueueStates: bound})
	user := func(i int) string { return fmt.Sprintf("+1555000%04d", i) }
	for i := range users {
		if err := p.PutAccount(account(user(i))); err != nil {
			t.Fatal(err)
		}
	}
	lastSeq := make([]uint64, users)
	// Every user gets two items; even users then ack theirs, so half the
	// queues end empty and half hold two items.
	for i := range users {
		r := commit(p, &store.Batch{Appends: []store.Append{{To: user(i), Data: []byte("a")}, {To: user(i), Data: []byte("b")}}})
		if r.Err != nil {
			t.Fatalf("append to %s: %v", user(i), r.Err)
		}
		lastSeq[i] = r.Seqs[1]
		if i%2 == 0 {
			if r := commit(p, &store.Batch{Acks: []store.Ack{{User: user(i), UpTo: r.Seqs[1]}}}); r.Err != nil {
				t.Fatalf("ack %s: %v", user(i), r.Err)
			}
		}
	}
	states, prunes := store.QueueStates(p)
	if prunes == 0 {
		t.Fatalf("no prune after %d users with a bound of %d", users, bound)
	}
	// After a prune the map may grow to twice what it kept (at least the
	// bound) before the next one.
	if states > 2*bound+1 {
		t.Errorf("%d queue states in memory with a bound of %d", states, bound)
	}
	for i := range users {
		want := 2
		if i%2 == 0 {
			want = 0
		}
		if n, err := p.QueueLen(user(i)); err != nil || n != want {
			t.Errorf("QueueLen(%s) = %d, %v; want %d", user(i), n, err, want)
		}
		items, err := p.ReadQueue(user(i), 0, 10)
		if err != nil || len(items) != want {
			t.Errorf("ReadQueue(%s) = %d items, %v; want %d", user(i), len(items), err, want)
		}
		r := commit(p, &store.Batch{Appends: []store.Append{{To: user(i), Data: []byte("c")}}})
		if r.Err != nil || r.Seqs[0] <= lastSeq[i] {
			t.Errorf("append to %s after prune: seq %v, %v; want above %d", user(i), r.Seqs, r.Err, lastSeq[i])
		}
	}
}

// The set of phones known to be registered stays within its bound, and a
// phone it forgot is still found (from disk).
func TestPebbleAccountCacheIsBounded(t *testing.T) {
	const bound, users = 10, 50
	p := openPebble(t, t.TempDir(), store.Options{AccountCache: bound})
	user := func(i int) string { return fmt.Sprintf("+1555111%04d", i) }
	for i := range users {
		if err := p.PutAccount(account(user(i))); err != nil {
			t.Fatal(err)
		}
	}
	if n := store.CachedAccounts(p); n > bound {
		t.Errorf("%d phones cached with a bound of %d", n, bound)
	}
	// Appends check that the recipient exists: the first users were
	// forgotten by the cache but not by the store.
	for i := range users {
		if r := commit(p, &store.Batch{Appends: []store.Append{{To: user(i), Data: []byte("x")}}}); r.Err != nil {
			t.Errorf("append to %s: %v", user(i), r.Err)
		}
	}
	if n := store.CachedAccounts(p); n > bound {
		t.Errorf("%d phones cached with a bound of %d", n, bound)
	}
}
