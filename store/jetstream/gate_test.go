package jetstream_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	njs "github.com/nats-io/nats.go/jetstream"

	"github.com/parleyhq/parley/store"
	"github.com/parleyhq/parley/store/jetstream"
)

// userIn returns a phone number whose queue is in partition p of parts
// (the layout's fnv32a of the number).
func userIn(t *testing.T, p, parts int) string {
	t.Helper()
	for i := range 10_000 {
		u := fmt.Sprintf("+1555100%04d", i)
		h := fnv.New32a()
		h.Write([]byte(u))
		if int(h.Sum32()%uint32(parts)) == p {
			return u
		}
	}
	t.Fatalf("no user in partition %d", p)
	return ""
}

// eventually commits b until it succeeds, for at most a minute.
func eventually(t *testing.T, s store.Store, what string, b func() *store.Batch) store.Result {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		r := commit(t, s, b())
		if r.Err == nil {
			return r
		}
		if !errors.Is(r.Err, jetstream.ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, r.Err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// After Resync (a member of the cluster lost) every partition refuses at
// once, with a retryable error, until a write through its leader has
// gone through; then it serves again by itself.
func TestResyncRefusesUntilEachLeaderAnswers(t *testing.T) {
	s := nodes(t, 1, jetstream.Options{Partitions: 2})[0]
	putAccounts(t, s, alice, bob)
	if r := commit(t, s, &store.Batch{Appends: []store.Append{{To: bob, Data: []byte("before")}}}); r.Err != nil {
		t.Fatalf("commit: %v", r.Err)
	}
	s.Resync("a test")
	r := commit(t, s, &store.Batch{Appends: []store.Append{{To: bob, Data: []byte("during")}}})
	if !errors.Is(r.Err, jetstream.ErrUnavailable) || !strings.Contains(r.Err.Error(), "between leaders") {
		t.Fatalf("commit right after Resync: %v; want ErrUnavailable from a shut gate", r.Err)
	}
	eventually(t, s, "commit after Resync", func() *store.Batch {
		return &store.Batch{Appends: []store.Append{{To: bob, Data: []byte("after")}}}
	})
	items, err := s.ReadQueue(bob, 0, 10)
	if err != nil || len(items) != 2 || string(items[0].Data) != "before" || string(items[1].Data) != "after" {
		t.Fatalf("bob's queue: %d items %v, %v; want before and after", len(items), items, err)
	}
}

// A partition whose stream leader dies: sends to it are refused with a
// retryable error (never left hanging), the partition serves again by
// itself once JetStream has elected another leader, and a resend of a
// refused send (same sender and client id) is stored exactly once.
func TestPartitionLeaderLossRefusesThenRecovers(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: a three-server cluster and a leader election (seconds)")
	}
	const parts = 2
	urls, srvs := startClusterNS(t, 3)
	u0, u1 := userIn(t, 0, parts), userIn(t, 1, parts)

	js := func(nc *nats.Conn) njs.JetStream {
		j, err := njs.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		return j
	}
	admin, err := nats.Connect(strings.Join(urls, ","))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	opts := jetstream.Options{Partitions: parts, Replicas: 3, Timeout: time.Second}
	// The store's connection is to a server that is not the victim: open
	// once to create the streams, find partition 0's leader, then open
	// the store through another server.
	first, err := jetstream.Open(ctx, admin, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	first.Close()
	st, err := js(admin).Stream(ctx, "PARLEY_Q_0")
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil || info.Cluster == nil || info.Cluster.Leader == "" {
		t.Fatalf("partition 0's leader: %+v, %v", info, err)
	}
	var victim *server.Server
	var others []string
	for i, srv := range srvs {
		if srv.Name() == info.Cluster.Leader {
			victim = srv
		} else {
			others = append(others, urls[i])
		}
	}
	if victim == nil {
		t.Fatalf("no server named %s", info.Cluster.Leader)
	}
	nc, err := nats.Connect(strings.Join(others, ","))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	s, err := jetstream.Open(ctx, nc, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	putAccounts(t, s, alice, u0, u1)
	for _, u := range []string{u0, u1} {
		if r := commit(t, s, &store.Batch{Appends: []store.Append{{To: u, Data: []byte("before")}}}); r.Err != nil {
			t.Fatalf("commit to %s: %v", u, r.Err)
		}
	}

	victim.Shutdown()
	victim.WaitForShutdown()
	send := func(fresh bool) *store.Batch {
		return &store.Batch{
			Dedup:   &store.Dedup{Sender: alice, ClientID: 7, ServerID: 700, TS: time.Now().UnixNano(), Fresh: fresh},
			Appends: []store.Append{{To: u0, Data: []byte("once")}},
		}
	}
	r := commit(t, s, send(true))
	if r.Err != nil && !errors.Is(r.Err, jetstream.ErrUnavailable) {
		t.Fatalf("send to the leaderless partition: %v; want success or ErrUnavailable", r.Err)
	}
	t.Logf("send right after the leader's loss: %v", r.Err)
	// The client resends, marked as a resend, until it is answered.
	eventually(t, s, "resend to partition 0", func() *store.Batch { return send(false) })
	eventually(t, s, "send to partition 1", func() *store.Batch {
		return &store.Batch{Appends: []store.Append{{To: u1, Data: []byte("after")}}}
	})
	items, err := s.ReadQueue(u0, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, it := range items {
		if bytes.Equal(it.Data, []byte("once")) {
			n++
		}
	}
	if n != 1 || len(items) != 2 {
		t.Fatalf("partition 0's queue holds %d items, the send %d times; want before and the send once", len(items), n)
	}
}
