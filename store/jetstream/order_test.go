package jetstream_test

import (
	"context"
	"testing"
	"time"

	njs "github.com/nats-io/nats.go/jetstream"

	"github.com/parleyhq/parley/store"
	"github.com/parleyhq/parley/store/jetstream"
)

// A batch refused by a compare-and-set (another node wrote its queue) is
// decided again in a later group; a batch committed after it by the same
// caller, written in the first group, must still be answered after it:
// a session matches results to its writes by their order.
func TestResultsKeepCommitOrderThroughARetry(t *testing.T) {
	const parts = 2
	ns := nodes(t, 2, jetstream.Options{Partitions: parts})
	a, b := ns[0], ns[1]
	u0, u1 := userIn(t, 0, parts), userIn(t, 1, parts)
	putAccounts(t, a, u0, u1)
	appendTo := func(u, body string) *store.Batch {
		return &store.Batch{Appends: []store.Append{{To: u, Data: []byte(body)}}}
	}
	if r := commit(t, a, appendTo(u0, "first")); r.Err != nil { // a caches u0's queue
		t.Fatal(r.Err)
	}
	if r := commit(t, b, appendTo(u0, "elsewhere")); r.Err != nil { // a's view is stale now
		t.Fatal(r.Err)
	}
	type answer struct {
		name string
		res  store.Result
	}
	answers := make(chan answer, 2)
	// Committed from a done callback, which runs on a's committer: both
	// wait in the queue until it returns, and are taken as one group.
	a.Commit(appendTo(u1, "warm"), func(store.Result) {
		a.Commit(appendTo(u0, "x"), func(r store.Result) { answers <- answer{"x", r} })
		a.Commit(appendTo(u1, "y"), func(r store.Result) { answers <- answer{"y", r} })
	})
	var got []string
	for range 2 {
		select {
		case an := <-answers:
			if an.res.Err != nil {
				t.Fatalf("%s: %v", an.name, an.res.Err)
			}
			got = append(got, an.name)
		case <-time.After(time.Minute):
			t.Fatalf("answers so far %v", got)
		}
	}
	if got[0] != "x" || got[1] != "y" {
		t.Fatalf("answered %v; want x (retried after a conflict) before y, the order they were committed in", got)
	}
	if items, err := a.ReadQueue(u0, 0, 10); err != nil || len(items) != 3 || string(items[2].Data) != "x" || items[2].Seq != 3 {
		t.Fatalf("u0's queue: %+v, %v; want first, elsewhere, x at seq 3", items, err)
	}
	if c := a.Counters(); c.Conflicts != 1 || c.Writes < 4 || c.Msgs < c.Writes || c.Reads == 0 {
		t.Fatalf("a's counters %+v; want the one conflict, at least 4 writes and the reads that decided them", c)
	}
}

// A chat's acks name the same reader and sender again and again: the
// received record is written once per receivedRefresh, not per ack, and
// ReceivedFrom still says yes.
func TestReceivedRecordWrittenOncePerRefresh(t *testing.T) {
	nc, _ := startServer(t, t.TempDir())
	s, err := jetstream.Open(context.Background(), nc, jetstream.Options{Partitions: 1})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	putAccounts(t, s, alice, bob)
	js, err := njs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	lastRFSeq := func() uint64 {
		t.Helper()
		st, err := js.Stream(context.Background(), "PARLEY_RF")
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return info.State.LastSeq
	}
	for i := range 3 {
		r := commit(t, s, &store.Batch{Appends: []store.Append{{To: bob, Data: []byte("m")}}})
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		if r = commit(t, s, &store.Batch{Acks: []store.Ack{{User: bob, UpTo: r.Seqs[0]}}, Received: []string{alice}}); r.Err != nil {
			t.Fatal(r.Err)
		}
		if got := lastRFSeq(); got != 1 {
			t.Fatalf("after ack %d the received stream's last seq is %d, want 1 (one record for the pair)", i+1, got)
		}
	}
	if ok, err := s.ReceivedFrom(bob, alice); !ok || err != nil {
		t.Fatalf("ReceivedFrom = %v, %v; want true", ok, err)
	}
}

// A checked send (a resend) whose dedup record is not found is looked up
// again after a barrier write through the partition's leader, which a
// leader elected moments ago answers only once it has applied its
// predecessor's writes; a fresh send, or a resend whose record is found,
// costs no barrier.
func TestResendNotFoundLooksAgainAfterABarrier(t *testing.T) {
	nc, _ := startServer(t, t.TempDir())
	s, err := jetstream.Open(context.Background(), nc, jetstream.Options{Partitions: 1})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	putAccounts(t, s, alice, bob)
	send := func(id uint64, fresh bool) (store.Result, uint64) {
		before := s.Counters().Writes
		r := commit(t, s, &store.Batch{Dedup: &store.Dedup{Sender: alice, ClientID: id, ServerID: 100 + id, TS: time.Now().UnixNano(), Fresh: fresh},
			Appends: []store.Append{{To: bob, Data: []byte("hi")}}})
		return r, s.Counters().Writes - before
	}
	if r, w := send(1, true); r.Err != nil || w != 1 {
		t.Fatalf("fresh send: %+v, %d writes; want stored with 1 write", r, w)
	}
	if r, w := send(2, false); r.Err != nil || r.Dup != nil || w != 2 {
		t.Fatalf("new resend: %+v, %d writes; want stored, with a barrier first (2 writes)", r, w)
	}
	if r, w := send(2, false); r.Err != nil || r.Dup == nil || r.Dup.ServerID != 102 || w != 0 {
		t.Fatalf("resend of a stored send: %+v, %d writes; want its Dup (server id 102), no write", r, w)
	}
}

// A fresh send refused by a compare-and-set is decided again as a checked
// one: meanwhile its sender may have sent it again through another node
// (this one was stopping, its SendAck never came), and storing it again
// would deliver it twice. Here node b stores the resend first; a's fresh
// original, decided on a's stale view of the queue, loses the
// compare-and-set and then finds b's record: a Dup, stored once.
func TestFreshSendDecidedAgainIsChecked(t *testing.T) {
	ns := nodes(t, 2, jetstream.Options{Partitions: 1})
	a, b := ns[0], ns[1]
	putAccounts(t, a, alice, bob)
	send := func(s *jetstream.Store, id, serverID uint64, fresh bool) store.Result {
		return commit(t, s, &store.Batch{Dedup: &store.Dedup{Sender: alice, ClientID: id, ServerID: serverID, TS: time.Now().UnixNano(), Fresh: fresh},
			Appends: []store.Append{{To: bob, Data: []byte("hi")}}})
	}
	if r := send(a, 1, 101, true); r.Err != nil { // a caches bob's queue
		t.Fatal(r.Err)
	}
	if r := send(b, 2, 202, false); r.Err != nil || r.Dup != nil { // the resend, elsewhere
		t.Fatalf("resend on b: %+v", r)
	}
	r := send(a, 2, 102, true) // the original, late
	if r.Err != nil || r.Dup == nil || r.Dup.ServerID != 202 {
		t.Fatalf("the late original on a: %+v; want the resend's Dup (server id 202)", r)
	}
	if items, err := a.ReadQueue(bob, 0, 10); err != nil || len(items) != 2 {
		t.Fatalf("bob's queue: %d items (%v); want 2: the message stored once", len(items), err)
	}
}
