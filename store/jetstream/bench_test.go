package jetstream_test

import (
	"context"
	"fmt"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/parleyhq/parley/internal/natstest"
	"github.com/parleyhq/parley/store"
	"github.com/parleyhq/parley/store/jetstream"
)

// BenchmarkChat drives the store with a chat message's whole storage
// lifecycle, as the session makes it: the sender's send (dedup record and
// item), the recipient's read and ack (with a delivered receipt to the
// sender), the sender's read and ack of the receipt. One op is one
// message. Pairs run concurrently (RunParallel, 100 per CPU: 200 pairs on 2 CPUs). The erase
// patterns side by side: rollup (the store's: an emptied queue's
// empty-marker, rolled up after the group's publishes, erases it; partial
// acks one PurgeEx; appends compare the queue's tail record) and delete
// (one DeleteMsg per item), on a one-node server (R1) and a three-node
// in-process cluster (R3), with the store's default partitions (3).
func BenchmarkChat(b *testing.B) {
	for _, r := range []int{1, 3} {
		for _, mode := range []string{"rollup", "delete"} {
			b.Run(fmt.Sprintf("R%d/erase=%s", r, mode), func(b *testing.B) {
				var urls []string
				if r == 1 {
					_, ns, _ := startServerNS(b, b.TempDir())
					urls = []string{ns.ClientURL()}
				} else {
					urls = startCluster(b, r)
				}
				benchChat(b, urls, jetstream.Options{Replicas: r, DeletePerItem: mode == "delete"})
			})
		}
	}
	b.Run("R3/nodes=2", func(b *testing.B) { benchChatTwoNodes(b, startCluster(b, 3)) })
}

// benchChatTwoNodes is BenchmarkChat's message as a cluster makes it when
// the pair's users are on two nodes: the sender's node (one store, on one
// server) appends the message and acks the receipt; the recipient's node
// (another store, on another server) acks the message with the receipt.
// What the cluster's doorbells carry between them is handed over as they
// would (NoteItem, NoteAcked), and the recipient gets the item from the
// doorbell, not a read. The erase pattern is the store's.
func benchChatTwoNodes(b *testing.B, urls []string) {
	senders := openBenchStore(b, urls[0], jetstream.Options{Replicas: 3})
	recipients := openBenchStore(b, urls[1], jetstream.Options{Replicas: 3})
	stores := [2]*jetstream.Store{senders, recipients}
	var pairs, clientIDs atomic.Uint64
	b.SetParallelism(100)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		from, to, ok := benchPair(b, senders, "+1556", pairs.Add(1))
		if !ok {
			return
		}
		body := make([]byte, 64)
		res := make(chan store.Result, 1)
		done := func(r store.Result) { res <- r }
		commit := func(s *jetstream.Store, batch *store.Batch) (store.Result, bool) {
			s.Commit(batch, done)
			r := <-res
			if r.Err != nil || len(r.Locs) != len(batch.Appends) {
				b.Errorf("Commit: %+v", r)
				return r, false
			}
			return r, true
		}
		for pb.Next() {
			id := clientIDs.Add(1)
			sent, ok := commit(senders, &store.Batch{
				Dedup:   &store.Dedup{Sender: from, ClientID: id, ServerID: id, TS: time.Now().UnixNano(), Fresh: true},
				Appends: []store.Append{{To: to, Data: body}},
			})
			if !ok {
				return
			}
			recipients.NoteItem(to, sent.Seqs[0], sent.Locs[0])
			receipt, ok := commit(recipients, &store.Batch{
				Acks:    []store.Ack{{User: to, UpTo: sent.Seqs[0]}},
				Appends: []store.Append{{To: from, Data: body[:32]}},
			})
			if !ok {
				return
			}
			senders.NoteItem(from, receipt.Seqs[0], receipt.Locs[0])
			senders.NoteAcked(to, sent.Seqs[0])
			if _, ok := commit(senders, &store.Batch{Acks: []store.Ack{{User: from, UpTo: receipt.Seqs[0]}}}); !ok {
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	for i, s := range stores {
		c := s.Counters()
		b.ReportMetric(float64(c.Conflicts), fmt.Sprintf("conflicts-node%d", i+1))
	}
}

func benchChat(b *testing.B, urls []string, opts jetstream.Options) {
	var groups, batches atomic.Int64
	opts.Store.OnGroup = func(n int) { groups.Add(1); batches.Add(int64(n)) }
	s := openBenchStore(b, strings.Join(urls, ","), opts)
	var pairs, clientIDs atomic.Uint64
	b.SetParallelism(100)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		from, to, ok := benchPair(b, s, "+1555", pairs.Add(1))
		if !ok {
			return
		}
		body := make([]byte, 64)
		res := make(chan store.Result, 1)
		done := func(r store.Result) { res <- r }
		commit := func(batch *store.Batch) (store.Result, bool) {
			s.Commit(batch, done)
			r := <-res
			if r.Err != nil {
				b.Errorf("Commit: %v", r.Err)
				return r, false
			}
			return r, true
		}
		// read reads and acks the one item waiting for user; receipt,
		// if set, goes to its sender with the ack.
		read := func(user string, seq uint64, receipt string) bool {
			items, err := s.ReadQueue(user, seq, 1)
			if err != nil || len(items) != 1 {
				b.Errorf("ReadQueue(%s, %d) = %d items, %v", user, seq, len(items), err)
				return false
			}
			batch := &store.Batch{Acks: []store.Ack{{User: user, UpTo: seq}}}
			if receipt != "" {
				batch.Appends = []store.Append{{To: receipt, Data: body[:32]}}
			}
			_, ok := commit(batch)
			return ok
		}
		for pb.Next() {
			id := clientIDs.Add(1)
			r, ok := commit(&store.Batch{
				Dedup:   &store.Dedup{Sender: from, ClientID: id, ServerID: id, TS: time.Now().UnixNano(), Fresh: true},
				Appends: []store.Append{{To: to, Data: body}},
			})
			if !ok || !read(to, r.Seqs[0], from) {
				return
			}
			// The receipt's seq: the sender's queue is emptied each
			// round, so it is the only item.
			items, err := s.ReadQueue(from, 0, 1)
			if err != nil || len(items) != 1 {
				b.Errorf("receipt: %d items, %v", len(items), err)
				return
			}
			if !read(from, items[0].Seq, "") {
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	if g := groups.Load(); g > 0 {
		b.ReportMetric(float64(batches.Load())/float64(g), "batches/group")
	}
}

// openBenchStore opens a store through its own connection to url, both
// closed when b ends.
func openBenchStore(b *testing.B, url string, opts jetstream.Options) *jetstream.Store {
	nc, err := nats.Connect(url)
	if err != nil {
		b.Fatalf("connect: %v", err)
	}
	b.Cleanup(nc.Close)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := jetstream.Open(ctx, nc, opts)
	if err != nil {
		b.Fatalf("Open: %v", err)
	}
	b.Cleanup(func() { _ = s.Close() })
	return s
}

// benchPair makes the accounts of pair n, numbered after prefix.
func benchPair(b *testing.B, s *jetstream.Store, prefix string, n uint64) (from, to string, ok bool) {
	from, to = fmt.Sprintf("%s%07d", prefix, 2*n), fmt.Sprintf("%s%07d", prefix, 2*n+1)
	for _, p := range []string{from, to} {
		if err := s.PutAccount(store.Account{Phone: p, Key: make([]byte, 32), Generation: 1}); err != nil {
			b.Errorf("PutAccount: %v", err)
			return "", "", false
		}
	}
	return from, to, true
}

// startCluster runs an n-node NATS cluster with JetStream in this process
// and returns its client URLs once JetStream answers.
func startCluster(b testing.TB, n int) []string {
	b.Helper()
	urls, _ := startClusterNS(b, n)
	return urls
}

func startClusterNS(b testing.TB, n int) ([]string, []*server.Server) {
	b.Helper()
	addrs := natstest.FreeAddrs(b, n)
	ports := make([]int, n)
	var routes []*url.URL
	for i, a := range addrs {
		ports[i] = int(netip.MustParseAddrPort(a).Port())
		routes = append(routes, &url.URL{Scheme: "nats", Host: a})
	}
	var (
		urls []string
		srvs []*server.Server
	)
	for i := range n {
		ns, err := server.NewServer(&server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			JetStream:  true,
			StoreDir:   b.TempDir(),
			Host:       "127.0.0.1",
			Port:       -1,
			NoLog:      true,
			NoSigs:     true,
			Cluster:    server.ClusterOpts{Name: "bench", Host: "127.0.0.1", Port: ports[i]},
			Routes:     routes,
		})
		if err != nil {
			b.Fatalf("nats server: %v", err)
		}
		go ns.Start()
		b.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
		if !ns.ReadyForConnections(30 * time.Second) {
			b.Fatal("nats server not ready")
		}
		urls = append(urls, ns.ClientURL())
		srvs = append(srvs, ns)
	}
	nc, err := nats.Connect(strings.Join(urls, ","))
	if err != nil {
		b.Fatalf("connect: %v", err)
	}
	defer nc.Close()
	// JetStream answers once the cluster has elected its meta leader.
	deadline := time.Now().Add(time.Minute)
	for {
		_, err := nc.Request("$JS.API.INFO", nil, 2*time.Second)
		if err == nil {
			if m, _ := nc.Request("$JS.API.INFO", nil, 2*time.Second); m != nil && !strings.Contains(string(m.Data), `"error"`) {
				return urls, srvs
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("JetStream not ready: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
