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
	mustCommit(t, p, &store.Batch{Acks: []store.Ack{{User: reader, UpTo: 1}}, Received: senders})
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

// A chat acks every message; the pair's received record is stamped by the
// first ack and stands for the others until ReceivedRefresh has passed,
// instead of being rewritten by each.
func TestPebbleChatAcksStampTheReceivedRecordOncePerRefresh(t *testing.T) {
	const maxAge = 64 * 300 * time.Millisecond
	refresh := store.ReceivedRefresh(maxAge)
	p := openPebble(t, t.TempDir(), store.Options{MaxAge: maxAge})
	const reader, sender = "+15550000001", "+15550000002"
	for _, u := range []string{reader, sender} {
		if err := p.PutAccount(account(u)); err != nil {
			t.Fatal(err)
		}
	}
	var seq uint64
	ack := func() int64 {
		t.Helper()
		seq++
		mustCommit(t, p, &store.Batch{Appends: []store.Append{{To: reader, Data: []byte("m")}}})
		mustCommit(t, p, &store.Batch{Acks: []store.Ack{{User: reader, UpTo: seq}}, Received: []string{sender}})
		ts, ok := store.RecvStamp(p, reader, sender)
		if !ok {
			t.Fatalf("no received record after ack %d", seq)
		}
		return ts
	}
	first := ack()
	start := time.Now()
	for range 5 {
		if ts := ack(); ts != first && time.Since(start) < refresh {
			t.Fatalf("ack %d restamped the record (%d -> %d) within ReceivedRefresh (%v)", seq, first, ts, refresh)
		}
	}
	time.Sleep(refresh)
	if ts := ack(); ts == first {
		t.Fatalf("an ack %v after the first left the record stamped by the first", refresh)
	}
	if ok, err := p.ReceivedFrom(reader, sender); !ok || err != nil {
		t.Fatalf("ReceivedFrom = %v, %v; want true", ok, err)
	}
}

// mustCommit commits b to p and fails the test if it is refused.
func mustCommit(t *testing.T, p *store.Pebble, b *store.Batch) {
	t.Helper()
	if r := commit(p, b); r.Err != nil {
		t.Fatalf("Commit: %v", r.Err)
	}
}
