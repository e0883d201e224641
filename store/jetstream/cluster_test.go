package jetstream_test

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	njs "github.com/nats-io/nats.go/jetstream"

	"github.com/parleyhq/parley/store"
	"github.com/parleyhq/parley/store/jetstream"
)

const (
	alice = "+15550000001"
	bob   = "+15550000002"
)

// nodes opens n stores on one JetStream system, as n Parley nodes of a
// cluster would: each its own connection, committer and caches.
func nodes(t *testing.T, n int, opts jetstream.Options) []*jetstream.Store {
	t.Helper()
	_, srv, _ := startServerNS(t, t.TempDir())
	url := srv.ClientURL()
	var out []*jetstream.Store
	for range n {
		c, err := nats.Connect(url)
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		s, err := jetstream.Open(ctx, c, opts)
		cancel()
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { _ = s.Close(); c.Close() })
		out = append(out, s)
	}
	return out
}

func commit(t *testing.T, s store.Store, b *store.Batch) store.Result {
	t.Helper()
	ch := make(chan store.Result, 1)
	s.Commit(b, func(r store.Result) { ch <- r })
	select {
	case r := <-ch:
		return r
	case <-time.After(time.Minute):
		t.Fatal("Commit: no result")
		return store.Result{}
	}
}

func putAccounts(t *testing.T, s store.Store, phones ...string) {
	t.Helper()
	for _, p := range phones {
		if err := s.PutAccount(store.Account{Phone: p, Key: make([]byte, 32), Generation: 1}); err != nil {
			t.Fatalf("PutAccount: %v", err)
		}
	}
}

// Two nodes appending to one queue at once: every append is stored once,
// with its own seq, and each node's appends keep their order.
func TestNodesAppendingToOneQueueNeverShareASeq(t *testing.T) {
	ns := nodes(t, 2, jetstream.Options{Partitions: 2})
	putAccounts(t, ns[0], bob)
	const perNode = 200
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		failed []string
		seqOf  = map[string]uint64{}
	)
	for n, s := range ns {
		wg.Add(perNode)
		for i := range perNode {
			data := fmt.Sprintf("%d/%03d", n, i)
			s.Commit(&store.Batch{Appends: []store.Append{{To: bob, Data: []byte(data)}}}, func(r store.Result) {
				defer wg.Done()
				mu.Lock()
				defer mu.Unlock()
				if r.Err != nil || len(r.Seqs) != 1 {
					failed = append(failed, fmt.Sprintf("%s: %+v", data, r))
					return
				}
				seqOf[data] = r.Seqs[0]
			})
		}
	}
	wg.Wait()
	if len(failed) > 0 {
		t.Fatalf("%d appends failed, first: %s", len(failed), failed[0])
	}
	items, err := ns[1].ReadQueue(bob, 0, 1000)
	if err != nil {
		t.Fatalf("ReadQueue: %v", err)
	}
	if len(items) != 2*perNode {
		t.Fatalf("queue holds %d items, want %d", len(items), 2*perNode)
	}
	last := map[byte]string{}
	for i, it := range items {
		if i > 0 && it.Seq <= items[i-1].Seq {
			t.Fatalf("item %d seq %d after seq %d", i, it.Seq, items[i-1].Seq)
		}
		d := string(it.Data)
		if seqOf[d] != it.Seq {
			t.Fatalf("%s reported as seq %d, stored at %d", d, seqOf[d], it.Seq)
		}
		if prev, ok := last[d[0]]; ok && d <= prev {
			t.Fatalf("node %c: %s stored after %s", d[0], d, prev)
		}
		last[d[0]] = d
	}
}

// A resend to another node (its first node died) finds the first node's
// record and stores nothing.
func TestResendToAnotherNodeIsADuplicate(t *testing.T) {
	ns := nodes(t, 2, jetstream.Options{Partitions: 2})
	putAccounts(t, ns[0], alice, bob)
	first := store.Dedup{Sender: alice, ClientID: 7, ServerID: 100, TS: time.Now().UnixNano(), Fresh: true}
	if r := commit(t, ns[0], &store.Batch{Dedup: &first, Appends: []store.Append{{To: bob, Data: []byte("hi")}}}); r.Err != nil {
		t.Fatalf("send: %+v", r)
	}
	r := commit(t, ns[1], &store.Batch{
		Dedup:   &store.Dedup{Sender: alice, ClientID: 7, ServerID: 200, TS: time.Now().UnixNano()},
		Appends: []store.Append{{To: bob, Data: []byte("hi")}},
	})
	if r.Err != nil || r.Dup == nil || *r.Dup != (store.Dedup{Sender: alice, ClientID: 7, ServerID: 100, TS: first.TS}) {
		t.Fatalf("resend on node 2 = %+v, want a Dup of ServerID 100", r)
	}
	if n, err := ns[1].QueueLen(bob); err != nil || n != 1 {
		t.Fatalf("QueueLen = %d, %v; want 1", n, err)
	}
}

// An ack whose receipt goes to a queue of another partition that another
// node has just written: the receipt's part is refused by its
// compare-and-set while the ack's part is written. The store decides the
// receipt again instead of reporting the batch failed, which would lose
// the receipt (the session does not resend an ack's receipts). alice and
// bob are in different partitions of 2.
func TestAckWrittenInPartRetriesItsReceipt(t *testing.T) {
	ns := nodes(t, 2, jetstream.Options{Partitions: 2})
	putAccounts(t, ns[0], alice, bob)
	for i, s := range []store.Store{ns[0], ns[1], ns[0]} {
		to := alice
		if i == 2 {
			to = bob
		}
		// Node 1 caches alice's queue, node 2 then appends to it: node
		// 1's view of it is stale. Then an item for bob to ack.
		if r := commit(t, s, &store.Batch{Appends: []store.Append{{To: to, Data: []byte("m")}}}); r.Err != nil {
			t.Fatalf("append %d: %v", i, r.Err)
		}
	}
	r := commit(t, ns[0], &store.Batch{Acks: []store.Ack{{User: bob, UpTo: 1}}, Appends: []store.Append{{To: alice, Data: []byte("receipt")}}})
	if r.Err != nil || len(r.Seqs) != 1 || r.Seqs[0] != 3 {
		t.Fatalf("ack with a receipt = %+v, want the receipt at seq 3", r)
	}
	items, err := ns[1].ReadQueue(alice, 0, 10)
	if err != nil || len(items) != 3 || string(items[2].Data) != "receipt" || items[2].Seq != 3 {
		t.Fatalf("alice's queue = %+v, %v; want 2 items then the receipt at seq 3", items, err)
	}
	if n, err := ns[1].QueueLen(bob); err != nil || n != 0 {
		t.Fatalf("bob's queue holds %d, %v; want 0 (acked)", n, err)
	}
}

// Acks and appends made on different nodes: seqs continue, never reused.
func TestQueueMovesBetweenNodes(t *testing.T) {
	ns := nodes(t, 2, jetstream.Options{Partitions: 2})
	putAccounts(t, ns[0], bob)
	for i := range 3 {
		if r := commit(t, ns[0], &store.Batch{Appends: []store.Append{{To: bob}}}); r.Err != nil || r.Seqs[0] != uint64(i+1) {
			t.Fatalf("append %d on node 1 = %+v", i, r)
		}
	}
	if r := commit(t, ns[1], &store.Batch{Acks: []store.Ack{{User: bob, UpTo: 3}}}); r.Err != nil {
		t.Fatalf("ack on node 2: %+v", r)
	}
	if r := commit(t, ns[0], &store.Batch{Appends: []store.Append{{To: bob}}}); r.Err != nil || r.Seqs[0] != 4 {
		t.Fatalf("append on node 1 after node 2 emptied the queue = %+v, want seq 4", r)
	}
	if n, err := ns[1].QueueLen(bob); err != nil || n != 1 {
		t.Fatalf("QueueLen on node 2 = %d, %v; want 1", n, err)
	}
}

func TestReserveIDsAcrossNodesNeverOverlap(t *testing.T) {
	ns := nodes(t, 3, jetstream.Options{Partitions: 1})
	var (
		mu   sync.Mutex
		seen = map[uint64]bool{}
		wg   sync.WaitGroup
	)
	for _, s := range ns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 30 {
				first, err := s.ReserveIDs(3)
				if err != nil {
					t.Errorf("ReserveIDs: %v", err)
					return
				}
				mu.Lock()
				for id := first; id < first+3; id++ {
					if seen[id] {
						t.Errorf("id %d handed out twice", id)
					}
					seen[id] = true
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

func TestPartitionCountIsFixedAtCreation(t *testing.T) {
	nc, _ := startServer(t, t.TempDir())
	ctx := context.Background()
	s, err := jetstream.Open(ctx, nc, jetstream.Options{Partitions: 3})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	_ = s.Close()
	if _, err := jetstream.Open(ctx, nc, jetstream.Options{Partitions: 5}); err == nil {
		t.Fatal("Open with another partition count succeeded, want an error")
	}
	s, err = jetstream.Open(ctx, nc, jetstream.Options{})
	if err != nil {
		t.Fatalf("Open with no count: %v", err)
	}
	_ = s.Close()
}

// Acks erase for real: an emptied queue keeps one marker, a queue acked in
// part keeps only its unacked items.
func TestAcksEraseMessages(t *testing.T) {
	nc, _ := startServer(t, t.TempDir())
	ctx := context.Background()
	s, err := jetstream.Open(ctx, nc, jetstream.Options{Partitions: 1})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	putAccounts(t, s, bob)
	for range 5 {
		commit(t, s, &store.Batch{Appends: []store.Append{{To: bob}}})
	}
	js, _ := njs.New(nc)
	msgs := func() uint64 {
		t.Helper()
		st, err := js.Stream(ctx, "PARLEY_Q_0")
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatalf("stream info: %v", err)
		}
		return info.State.Msgs
	}
	if n := msgs(); n != 5+1 {
		t.Fatalf("after 5 appends: %d messages in the stream, want 6 (and the tail record)", n)
	}
	commit(t, s, &store.Batch{Acks: []store.Ack{{User: bob, UpTo: 2}}})
	if n := msgs(); n != 3+1 {
		t.Fatalf("after acking 2 of 5: %d messages in the stream, want 4 (3 and the tail record)", n)
	}
	commit(t, s, &store.Batch{Acks: []store.Ack{{User: bob, UpTo: 5}}})
	if n := msgs(); n != 2 {
		t.Fatalf("after acking all: %d messages in the stream, want 2 (the empty-marker and the tail record)", n)
	}
	// The marker expires on its own: the tail record keeps the tail.
	st, err := js.Stream(ctx, "PARLEY_Q_0")
	if err != nil {
		t.Fatal(err)
	}
	if m, err := st.GetLastMsgForSubject(ctx, "parley.q.0."+bob); err != nil || m.Header.Get(njs.MsgTTLHeader) == "" {
		t.Fatalf("the empty-marker: %v, headers %v; want a Nats-TTL", err, m)
	}
	if r := commit(t, s, &store.Batch{Appends: []store.Append{{To: bob}}}); r.Err != nil || r.Seqs[0] != 6 {
		t.Fatalf("append after emptying = %+v, want seq 6", r)
	}
	if r := commit(t, s, &store.Batch{Appends: []store.Append{{To: "+1555nobody"}}}); !errors.Is(r.Err, store.ErrUnknownUser) {
		t.Fatalf("append to no account = %+v, want ErrUnknownUser", r)
	}
}

// Three nodes of a cluster opening one store at once, as they do when the
// cluster starts: each creates the same streams, and every Open succeeds.
// (nats-server leaves a create racing another unanswered; without
// EnsureStream's retries each Open waits out its whole context.)
func TestNodesOpeningTogether(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: needs a three-node cluster")
	}
	urls, _ := startClusterNS(t, 3)
	errs := make([]error, len(urls))
	var wg sync.WaitGroup
	for i, url := range urls {
		nc, err := nats.Connect(url)
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		defer nc.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			s, err := jetstream.Open(ctx, nc, jetstream.Options{Partitions: 4, Replicas: 3})
			if err == nil {
				s.Close()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("node %d: Open: %v", i+1, err)
		}
	}
}

// A node that cannot reach a quorum refuses writes with ErrUnavailable
// (a store.ErrUnavailable: retryable), rather than hanging or acking what
// it cannot replicate, whether the write needs a read first (a resend's
// dedup lookup, a queue the node has not cached) or not. Each is refused
// within a few request timeouts, not the committer's whole group time.
func TestNoQuorumIsErrUnavailable(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: needs a three-node cluster")
	}
	urls, srvs := startClusterNS(t, 3)
	nc, err := nats.Connect(urls[0])
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const timeout = time.Second
	s, err := jetstream.Open(ctx, nc, jetstream.Options{Partitions: 1, Replicas: 3, Timeout: timeout})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	const carol = "+15550000003"
	putAccounts(t, s, bob, carol)
	if r := commit(t, s, &store.Batch{Appends: []store.Append{{To: bob}}}); r.Err != nil {
		t.Fatalf("append with all nodes up: %v", r.Err)
	}
	for _, ns := range srvs[1:] {
		ns.Shutdown()
		ns.WaitForShutdown()
	}
	for _, tc := range []struct {
		name string
		b    *store.Batch
	}{
		{"append to a cached queue", &store.Batch{Appends: []store.Append{{To: bob}}}},
		{"resend (dedup lookup)", &store.Batch{
			Dedup:   &store.Dedup{Sender: alice, ClientID: 9, ServerID: 300, TS: time.Now().UnixNano()},
			Appends: []store.Append{{To: bob}},
		}},
		{"append to a queue not cached", &store.Batch{Appends: []store.Append{{To: carol}}}},
	} {
		start := time.Now()
		r := commit(t, s, tc.b)
		took := time.Since(start)
		if !errors.Is(r.Err, jetstream.ErrUnavailable) || !errors.Is(r.Err, store.ErrUnavailable) {
			t.Errorf("%s with 2 of 3 nodes down = %+v, want ErrUnavailable", tc.name, r)
		}
		if took > 3*timeout {
			t.Errorf("%s with 2 of 3 nodes down refused after %s, want within a few request timeouts (%s)", tc.name, took, timeout)
		}
		t.Logf("%s: refused after %s: %v", tc.name, took.Round(time.Millisecond), r.Err)
	}
}

// The recipient's node acks what the senders' nodes appended: its cached
// view of the queue ends where it last looked, before those items. The
// ack still erases them: the node finds the acked item in the stream and
// raises its view's tail to it, rather than cut the ack down to its stale
// view, which would erase nothing and leave the queue to grow with every
// message.
func TestAckOfItemsAppendedOnAnotherNodeErasesThem(t *testing.T) {
	ns := nodes(t, 2, jetstream.Options{Partitions: 1})
	putAccounts(t, ns[0], bob)
	sender, recipient := ns[0], ns[1]
	if r := commit(t, sender, &store.Batch{Appends: []store.Append{{To: bob, Data: []byte("m1")}}}); r.Err != nil {
		t.Fatalf("append: %v", r.Err)
	}
	if r := commit(t, recipient, &store.Batch{Acks: []store.Ack{{User: bob, UpTo: 1}}}); r.Err != nil {
		t.Fatalf("ack 1: %v", r.Err)
	}
	for i := 2; i <= 4; i++ {
		r := commit(t, sender, &store.Batch{Appends: []store.Append{{To: bob, Data: fmt.Appendf(nil, "m%d", i)}}})
		if r.Err != nil || r.Seqs[0] != uint64(i) {
			t.Fatalf("append %d = %+v", i, r)
		}
	}
	if r := commit(t, recipient, &store.Batch{Acks: []store.Ack{{User: bob, UpTo: 3}}}); r.Err != nil {
		t.Fatalf("ack 3: %v", r.Err)
	}
	items, err := sender.ReadQueue(bob, 0, 10)
	if err != nil || len(items) != 1 || items[0].Seq != 4 {
		t.Fatalf("bob's queue after acking 3 of 4 on the other node = %+v, %v; want only seq 4", items, err)
	}
	if r := commit(t, recipient, &store.Batch{Acks: []store.Ack{{User: bob, UpTo: 4}}}); r.Err != nil {
		t.Fatalf("ack 4: %v", r.Err)
	}
	if n, err := sender.QueueLen(bob); err != nil || n != 0 {
		t.Fatalf("bob's queue holds %d, %v after acking all on the other node; want 0", n, err)
	}
	if r := commit(t, sender, &store.Batch{Appends: []store.Append{{To: bob}}}); r.Err != nil || r.Seqs[0] != 5 {
		t.Fatalf("append after the queue was emptied = %+v, want seq 5", r)
	}
}

// A read goes on from where the last read of the queue ended: each item is
// one request to the stream's leader (MSG.GET), so starting every read at
// the queue's first message would make reading a long queue a window at a
// time cost the square of its length, and a read deep in it outlast its
// timeout. Here a node that never wrote bob's queue reads it a window at a
// time: each read costs about its own items.
func TestReadGoesOnWhereTheLastReadEnded(t *testing.T) {
	_, srv, _ := startServerNS(t, t.TempDir())
	var ns []*jetstream.Store
	for range 2 {
		c, err := nats.Connect(srv.ClientURL())
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		s, err := jetstream.Open(context.Background(), c, jetstream.Options{Partitions: 1})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { _ = s.Close(); c.Close() })
		ns = append(ns, s)
	}
	putAccounts(t, ns[0], bob)
	const window, windows = 50, 4
	for i := range window * windows {
		if r := commit(t, ns[0], &store.Batch{Appends: []store.Append{{To: bob, Data: fmt.Appendf(nil, "m%d", i+1)}}}); r.Err != nil {
			t.Fatalf("append %d: %v", i+1, r.Err)
		}
	}
	watch, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer watch.Close()
	var gets atomic.Int64
	sub, err := watch.Subscribe("$JS.API.STREAM.MSG.GET.>", func(*nats.Msg) { gets.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := watch.Flush(); err != nil {
		t.Fatal(err)
	}
	for w := range windows {
		from := uint64(w*window + 1)
		before := gets.Load()
		items, err := ns[1].ReadQueue(bob, from, window)
		if err != nil || len(items) != window || items[0].Seq != from {
			t.Fatalf("read from %d = %d items, %v", from, len(items), err)
		}
		if err := watch.Flush(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for gets.Load()-before < window && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(20 * time.Millisecond)
		if n := gets.Load() - before; n > window+2 {
			t.Errorf("reading %d items from seq %d took %d requests, want about %d", window, from, n, window)
		}
	}
}

// One node appends to bob's queue, another acks each item as bob would,
// told where each is (NoteItem, as the cluster's doorbell does): the
// acking node finds the items without a read, and its erasures never make
// the appending node lose a compare-and-set (erasing writes nothing to
// what appends compare). Told of the acks (NoteAcked), the appending node
// sees the queue empty again.
func TestAckingOnAnotherNodeCostsTheAppenderNothing(t *testing.T) {
	ns := nodes(t, 2, jetstream.Options{Partitions: 1})
	putAccounts(t, ns[0], bob)
	sender, recipient := ns[0], ns[1]
	const n = 20
	var reads uint64
	for i := 1; i <= n; i++ {
		r := commit(t, sender, &store.Batch{Appends: []store.Append{{To: bob, Data: fmt.Appendf(nil, "m%d", i)}}})
		if r.Err != nil || len(r.Locs) != 1 || r.Locs[0] == 0 {
			t.Fatalf("append %d = %+v, want a seq and its loc", i, r)
		}
		recipient.NoteItem(bob, r.Seqs[0], r.Locs[0])
		if i == 2 {
			reads = recipient.Counters().Reads // the first ack loaded the queue
		}
		if r := commit(t, recipient, &store.Batch{Acks: []store.Ack{{User: bob, UpTo: r.Seqs[0]}}}); r.Err != nil {
			t.Fatalf("ack %d: %v", i, r.Err)
		}
		sender.NoteAcked(bob, r.Seqs[0])
	}
	if c := sender.Counters(); c.Conflicts != 0 {
		t.Errorf("the appending node lost %d compare-and-sets, want 0", c.Conflicts)
	}
	if got := recipient.Counters().Reads - reads; got != 0 {
		t.Errorf("the acking node made %d reads for %d acks of items it was told of, want 0", got, n-1)
	}
	if l, err := sender.QueueLen(bob); err != nil || l != 0 {
		t.Errorf("bob's queue holds %d, %v; want 0", l, err)
	}
	if l, ok := sender.QueueLenCached(bob); !ok || l != 0 {
		t.Errorf("the appending node's view of bob's queue: %d, %v; want 0 once told of the acks", l, ok)
	}
	if r := commit(t, sender, &store.Batch{Appends: []store.Append{{To: bob}}}); r.Err != nil || r.Seqs[0] != n+1 {
		t.Fatalf("append after the queue was emptied = %+v, want seq %d", r, n+1)
	}
}

// An ack's erasure is made only once its receipts are written: here the
// receipt's partition is gone (its stream deleted), so the receipt cannot
// be written, and bob's item stays, to be delivered and acked again with
// its receipt, rather than be erased with no receipt ever made. alice and
// bob are in different partitions of 2.
func TestAckErasesNothingWhenItsReceiptFails(t *testing.T) {
	nc, _ := startServer(t, t.TempDir())
	ctx := context.Background()
	s, err := jetstream.Open(ctx, nc, jetstream.Options{Partitions: 2, Timeout: time.Second})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	putAccounts(t, s, alice, bob)
	for _, to := range []string{alice, bob} {
		if r := commit(t, s, &store.Batch{Appends: []store.Append{{To: to, Data: []byte("m")}}}); r.Err != nil {
			t.Fatalf("append to %s: %v", to, r.Err)
		}
	}
	partition := func(user string) int { // the store's layout: fnv32a mod the count
		h := fnv.New32a()
		h.Write([]byte(user))
		return int(h.Sum32() % 2)
	}
	if partition(alice) == partition(bob) {
		t.Fatal("alice and bob are in one partition")
	}
	js, _ := njs.New(nc)
	name := fmt.Sprintf("PARLEY_Q_%d", partition(alice))
	if err := js.DeleteStream(ctx, name); err != nil {
		t.Fatalf("delete %s: %v", name, err)
	}
	r := commit(t, s, &store.Batch{Acks: []store.Ack{{User: bob, UpTo: 1}}, Appends: []store.Append{{To: alice, Data: []byte("delivered")}}})
	if r.Err == nil {
		t.Fatalf("ack with a receipt to a partition that is gone = %+v, want an error", r)
	}
	if n, err := s.QueueLen(bob); err != nil || n != 1 {
		t.Fatalf("bob's queue holds %d, %v after the ack whose receipt failed; want 1 (kept)", n, err)
	}
}

// An ack with receipts in two partitions, one of them the acker's, whose
// other part loses its compare-and-set (node 2's view of that sender's
// queue is stale): the retry writes the lost receipt and the erasure, and
// not again the receipt that was written with the first try. (The
// erasure skipped for the failure was noted as the whole partition
// unwritten, so the retry appended the written receipt a second time.)
func TestAckRetryWritesNoReceiptTwice(t *testing.T) {
	partition := func(user string) int {
		h := fnv.New32a()
		h.Write([]byte(user))
		return int(h.Sum32() % 2)
	}
	acker := "+15550007000"
	var near, far string // a sender in the acker's partition, one in the other
	for i := 1; near == "" || far == ""; i++ {
		u := fmt.Sprintf("+1555000%04d", 7000+i)
		if partition(u) == partition(acker) && near == "" {
			near = u
		} else if partition(u) != partition(acker) && far == "" {
			far = u
		}
	}
	ns := nodes(t, 2, jetstream.Options{Partitions: 2})
	putAccounts(t, ns[0], acker, near, far)
	// Node 2 caches far's queue, node 1 then appends to it: node 2's
	// view of it is stale. Then an item for the acker to ack.
	for i, c := range []struct {
		s  *jetstream.Store
		to string
	}{{ns[1], far}, {ns[0], far}, {ns[0], acker}} {
		if r := commit(t, c.s, &store.Batch{Appends: []store.Append{{To: c.to, Data: []byte("m")}}}); r.Err != nil {
			t.Fatalf("append %d: %v", i, r.Err)
		}
	}
	r := commit(t, ns[1], &store.Batch{
		Acks:    []store.Ack{{User: acker, UpTo: 1}},
		Appends: []store.Append{{To: near, Data: []byte("receipt")}, {To: far, Data: []byte("receipt")}},
	})
	if r.Err != nil || len(r.Seqs) != 2 || r.Seqs[0] != 1 || r.Seqs[1] != 3 {
		t.Fatalf("ack with two receipts = %+v, want seqs [1 3]", r)
	}
	for user, want := range map[string]int{near: 1, far: 3, acker: 0} {
		if items, err := ns[0].ReadQueue(user, 0, 10); err != nil || len(items) != want {
			t.Errorf("%s's queue = %d items %+v, %v; want %d", user, len(items), items, err, want)
		}
	}
}

// One queue's empty-marker losing its compare-and-set (another node
// appended to it) costs that queue a purge, not every queue whose marker
// shared its atomic write: the refused write is split and tried again.
func TestOneMarkerConflictPurgesOneQueue(t *testing.T) {
	ns := nodes(t, 2, jetstream.Options{Partitions: 1})
	sender, recipient := ns[0], ns[1]
	var users []string
	for i := range 9 {
		users = append(users, fmt.Sprintf("+1555200%04d", i))
	}
	putAccounts(t, sender, users...)
	var acks []store.Ack
	for _, u := range users {
		r := commit(t, sender, &store.Batch{Appends: []store.Append{{To: u, Data: []byte("m1")}}})
		if r.Err != nil {
			t.Fatalf("append: %v", r.Err)
		}
		recipient.NoteItem(u, r.Seqs[0], r.Locs[0])
		acks = append(acks, store.Ack{User: u, UpTo: r.Seqs[0]})
	}
	// The recipient's node loads the queues (an ack of nothing), then the
	// sender appends a second item to one of them, which the recipient's
	// node is not told of: its view says item 1 is that queue's last.
	none := make([]store.Ack, len(acks))
	for i, a := range acks {
		none[i] = store.Ack{User: a.User}
	}
	if r := commit(t, recipient, &store.Batch{Acks: none}); r.Err != nil {
		t.Fatalf("ack of nothing: %v", r.Err)
	}
	moved := users[4]
	if r := commit(t, sender, &store.Batch{Appends: []store.Append{{To: moved, Data: []byte("m2")}}}); r.Err != nil {
		t.Fatalf("append: %v", r.Err)
	}
	purges := recipient.Counters().Purges
	if r := commit(t, recipient, &store.Batch{Acks: acks}); r.Err != nil {
		t.Fatalf("acks: %v", r.Err)
	}
	if n := recipient.Counters().Purges - purges; n != 1 {
		t.Errorf("%d purges for one marker that lost its compare-and-set, want 1", n)
	}
	for _, u := range users {
		want := 0
		if u == moved {
			want = 1
		}
		if items, err := sender.ReadQueue(u, 0, 10); err != nil || len(items) != want {
			t.Errorf("%s's queue = %+v, %v; want %d items", u, items, err, want)
		}
	}
}
