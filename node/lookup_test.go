package node

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/parleyhq/parley/client"
	"github.com/parleyhq/parley/store"
)

// heldStore holds one read of one account until released, as a cluster's
// store does while the accounts stream elects a leader.
type heldStore struct {
	nodeStore
	phone string
	hold  int // which read of phone to hold, from 1
	// unavailable: the first reads of phone answer ErrUnavailable.
	unavailable int
	held        chan struct{} // closed when the held read begins
	release     chan struct{} // closed to let it answer

	mu    sync.Mutex
	reads int
}

func (s *heldStore) Account(phone string) (store.Account, error) {
	if phone == s.phone {
		s.mu.Lock()
		s.reads++
		r := s.reads
		s.mu.Unlock()
		if r == s.hold {
			close(s.held)
			<-s.release
		}
		if r <= s.unavailable {
			return store.Account{}, fmt.Errorf("accounts stream: %w", store.ErrUnavailable)
		}
	}
	return s.nodeStore.Account(phone)
}

// A cluster node reads a login's account across the network, twice: in
// the handshake and again once the login is proven. Either read may wait
// as long as an election; it must hold up only its own login, not every
// connection of the event loop it came in on. Before, both reads were made
// on the event loop, so one node's loss stalled every client of the
// survivors' loops while its clients logged in there.
func TestASlowAccountReadHoldsOnlyItsOwnLogin(t *testing.T) {
	for _, tc := range []struct {
		name string
		hold int
	}{
		{name: "the handshake's read", hold: 1},
		{name: "the login's re-check", hold: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const slowPhone, fastPhone = "+15550006001", "+15550006002"
			nc, err := nats.Connect("", nats.InProcessServer(StartJetStream(t)))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(nc.Close)
			st := &heldStore{phone: slowPhone, hold: tc.hold, held: make(chan struct{}), release: make(chan struct{})}
			var releaseOnce sync.Once
			release := func() { releaseOnce.Do(func() { close(st.release) }) }
			dial := startLookupNode(t, st, slowPhone, fastPhone)
			t.Cleanup(release) // before the node's Close: cleanups run last first
			// Bounds, not assertions of speed.
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()

			slow := make(chan error, 1)
			go func() {
				c, err := dial(ctx, slowPhone)
				if err == nil {
					defer c.Close()
					err = c.Ping(ctx)
				}
				slow <- err
			}()
			select {
			case <-st.held:
			case <-ctx.Done():
				t.Fatal("the slow login's account read never began")
			}

			fast, err := dial(ctx, fastPhone)
			if err != nil {
				t.Fatalf("another user's login while the first one's account read is held: %v", err)
			}
			defer fast.Close()
			if err := fast.Ping(ctx); err != nil {
				t.Fatalf("another user's ping while the first one's account read is held: %v", err)
			}

			release()
			if err := <-slow; err != nil {
				t.Fatalf("the held login, once its read answered: %v", err)
			}
		})
	}
}

// A login whose account the store cannot read for a while (the accounts
// stream between leaders, right after a node's loss) waits for it, up to
// half the handshake timeout, instead of being refused: its client, moved
// here by that loss, would only come back.
func TestALoginWaitsOutTheAccountsElection(t *testing.T) {
	const phone = "+15550006003"
	st := &heldStore{phone: phone, unavailable: 3}
	dial := startLookupNode(t, st, phone)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := dial(ctx, phone)
	if err != nil {
		t.Fatalf("login while the store answered ErrUnavailable %d times: %v", st.unavailable, err)
	}
	defer c.Close()
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	want := st.unavailable + 2 // the handshake's tries, and the re-check
	reads := func() int {
		st.mu.Lock()
		defer st.mu.Unlock()
		return st.reads
	}
	waitFor(t, "the login's re-check", func() bool { return reads() >= want })
	if got := reads(); got != want {
		t.Fatalf("the store was asked for the account %d times, want %d", got, want)
	}
}

// startLookupNode starts a node of a one-node cluster, on one event loop,
// with st between it and its store, and accounts for phones; dial logs one
// of them in.
func startLookupNode(t *testing.T, st *heldStore, phones ...string) (dial func(ctx context.Context, phone string) (*client.Client, error)) {
	t.Helper()
	nc, err := nats.Connect("", nats.InProcessServer(StartJetStream(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	n, keys := startInternalNode(t, Config{
		Pollers: 1,
		Cluster: &ClusterConfig{Conn: nc, Node: "n1", Partitions: 1},
		wrapStore: func(s nodeStore) nodeStore {
			st.nodeStore = s
			return st
		},
	}, phones...)
	return func(ctx context.Context, phone string) (*client.Client, error) {
		return client.Dial(ctx, client.Config{Addr: n.NativeAddr(), ServerKey: n.key.Public, Phone: phone, Key: keys[phone]})
	}
}
