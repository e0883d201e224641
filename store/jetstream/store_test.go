package jetstream_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/parleyhq/parley/internal/natstest"
	"github.com/parleyhq/parley/store"
	"github.com/parleyhq/parley/store/jetstream"
	"github.com/parleyhq/parley/store/storetest"
)

// startServer runs a one-node NATS server with JetStream kept in dir and
// returns a connection to it; both end with the test (or stop's call).
func startServer(t testing.TB, dir string) (nc *nats.Conn, stop func()) {
	nc, _, stop = startServerNS(t, dir)
	return nc, stop
}

func startServerNS(t testing.TB, dir string) (nc *nats.Conn, ns *server.Server, stop func()) {
	t.Helper()
	ns = natstest.StartServer(t, dir)
	nc = natstest.Connect(t, ns)
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		nc.Close()
		ns.Shutdown()
		ns.WaitForShutdown()
	}
	t.Cleanup(stop)
	return nc, ns, stop
}

// serverStore is a store with its own embedded server: closing the store
// stops the server, so a reopen restarts it on the same directory.
type serverStore struct {
	*jetstream.Store
	stop func()
}

func (s serverStore) Close() error {
	err := s.Store.Close()
	s.stop()
	return err
}

func openStore(t *testing.T, dir string, opts store.Options) store.Store {
	t.Helper()
	nc, stop := startServer(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := jetstream.Open(ctx, nc, jetstream.Options{Store: opts, Partitions: 4, Timeout: suiteTimeout})
	if err != nil {
		stop()
		t.Fatalf("Open: %v", err)
	}
	return serverStore{Store: s, stop: stop}
}

// suiteTimeout bounds each JetStream request in the conformance runs. The
// suite checks what the store keeps, not how fast: on a 2-core machine
// running the whole -race suite, a three-node cluster's answer sometimes
// comes later than the production default (5 s), and a request timed out
// there failed the run (ManyCommittersKeepQueuesGapFreeAndInOrder).
const suiteTimeout = 30 * time.Second

func TestConformance(t *testing.T) {
	storetest.Run(t, openStore)
}

// The baseline erase pattern keeps every guarantee too.
func TestConformanceDeletePerItem(t *testing.T) {
	storetest.Run(t, func(t *testing.T, dir string, opts store.Options) store.Store {
		t.Helper()
		nc, stop := startServer(t, dir)
		s, err := jetstream.Open(context.Background(), nc, jetstream.Options{Store: opts, Partitions: 4, DeletePerItem: true, Timeout: suiteTimeout})
		if err != nil {
			stop()
			t.Fatalf("Open: %v", err)
		}
		return serverStore{Store: s, stop: stop}
	})
}

// TestConformanceR3 runs the suite against a three-node in-process
// cluster, every stream R3: each store gets its own Name, and a reopen is
// a new Store of the same Name (the data lives in the cluster). -short
// skips it.
func TestConformanceR3(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the three-node cluster run is skipped")
	}
	urls := startCluster(t, 3)
	var (
		mu    sync.Mutex
		names = map[string]string{}
	)
	storetest.Run(t, func(t *testing.T, dir string, opts store.Options) store.Store {
		t.Helper()
		mu.Lock()
		name, ok := names[dir]
		if !ok {
			name = fmt.Sprintf("t%d", len(names))
			names[dir] = name
		}
		mu.Unlock()
		nc, err := nats.Connect(strings.Join(urls, ","))
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		s, err := jetstream.Open(ctx, nc, jetstream.Options{Store: opts, Name: name, Partitions: 2, Replicas: 3, Timeout: suiteTimeout})
		if err != nil {
			nc.Close()
			t.Fatalf("Open: %v", err)
		}
		return serverStore{Store: s, stop: nc.Close}
	})
}

// A sweep erases a backlog in steps of SweepBatch expired items, each
// erased (and reported) before the next is read: what a pass holds is
// bounded however many items expired. Before, a pass read a partition's
// whole backlog into memory, under one request timeout for all its reads,
// and a backlog too long to read in it was never swept.
func TestSweepErasesABacklogInSteps(t *testing.T) {
	const alice, items, batch = "+15550007001", 10, 3
	nc, _ := startServer(t, t.TempDir())
	// left, at each report, is how many of alice's items were still there.
	var left []int
	var s *jetstream.Store
	opts := store.Options{MaxAge: time.Hour, OnExpire: func(user string, it store.Item) {
		got, err := s.ReadQueue(alice, 0, items)
		if err != nil {
			t.Errorf("read in OnExpire: %v", err)
		}
		left = append(left, len(got))
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := jetstream.Open(ctx, nc, jetstream.Options{Store: opts, Partitions: 1, SweepBatch: batch, Timeout: suiteTimeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.PutAccount(store.Account{Phone: alice, Key: make([]byte, 32), Generation: 1}); err != nil {
		t.Fatal(err)
	}
	for i := range items {
		res := make(chan store.Result, 1)
		s.Commit(&store.Batch{Appends: []store.Append{{To: alice, Data: fmt.Appendf(nil, "item %d", i)}}}, func(r store.Result) { res <- r })
		if r := <-res; r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	n, err := s.Sweep(time.Now().Add(2 * time.Hour))
	if err != nil || n != items {
		t.Fatalf("Sweep = %d, %v; want %d expired", n, err, items)
	}
	// Steps of 3: the reports of the first step see 7 left, then 4, 1, 0.
	want := []int{7, 7, 7, 4, 4, 4, 1, 1, 1, 0}
	if !slices.Equal(left, want) {
		t.Fatalf("items left at each report: %v, want %v", left, want)
	}
}
