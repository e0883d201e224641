package store_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/parleyhq/parley/store"
)

// The sweeper deletes received records older than MaxAge (more than a
// chunk of them) and leaves young ones: they do not pile up on disk.
func TestPebbleSweepErasesOldReceivedRecords(t *testing.T) {
	const maxAge = time.Hour
	p := openPebble(t, t.TempDir(), store.Options{MaxAge: maxAge})
	const reader = "+15550000001"
	if err := p.PutAccount(account(reader)); err != nil {
		t.Fatal(err)
	}
	var senders []string
	for i := range 1500 {
		senders = append(senders, fmt.Sprintf("+1555100%04d", i))
	}
	commit := func(b *store.Batch) {
		t.Helper()
		done := make(chan store.Result, 1)
		p.Commit(b, func(r store.Result) { done <- r })
		if r := <-done; r.Err != nil {
			t.Fatalf("Commit: %v", r.Err)
		}
	}
	commit(&store.Batch{Acks: []store.Ack{{User: reader, UpTo: 1}}, Received: senders})
	written := time.Now()
	if _, err := p.Sweep(written); err != nil {
		t.Fatal(err)
	}
	for _, s := range senders {
		if !store.RawGet(p, store.RecvKey(reader, s)) {
			t.Fatalf("a young record (%s) was swept", s)
		}
	}
	if _, err := p.Sweep(written.Add(maxAge + time.Minute)); err != nil {
		t.Fatal(err)
	}
	for _, s := range senders {
		if store.RawGet(p, store.RecvKey(reader, s)) {
			t.Fatalf("the record of %s outlived MaxAge", s)
		}
	}
}
