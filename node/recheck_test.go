package node

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/parleyhq/parley/client"
	"github.com/parleyhq/parley/store"
	"github.com/parleyhq/parley/wire"
)

// recheckStore is a node's store whose reads of one account answer, after
// the first (the login's handshake), ErrUnavailable for the next
// unavailable reads, as a cluster's accounts stream between leaders does;
// then the account, its generation raised by bump (re-registered
// meanwhile, if bump is not 0).
type recheckStore struct {
	nodeStore
	phone       string
	unavailable int
	bump        uint64

	mu    sync.Mutex
	reads int
}

func (s *recheckStore) Account(phone string) (store.Account, error) {
	a, err := s.nodeStore.Account(phone)
	if phone != s.phone || err != nil {
		return a, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reads++
	switch {
	case s.reads == 1: // the handshake's
	case s.reads <= 1+s.unavailable:
		return store.Account{}, fmt.Errorf("accounts stream: %w", store.ErrUnavailable)
	default:
		a.Generation += s.bump
	}
	return a, nil
}

func (s *recheckStore) readsSoFar() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reads
}

// After a login the node reads the account again (a re-registration may
// have landed meanwhile). A store that cannot answer is asked again every
// recheckEvery, recheckTries times: the login stays if it then answers
// with the generation the login was checked against, and is closed if it
// answers with a newer one, or if it still cannot answer after the last
// try. Before, the first ErrUnavailable closed the connection, and a
// client moved here by a node's stop was moved again.
func TestLoginRecheckWaitsForTheStore(t *testing.T) {
	for _, tc := range []struct {
		name        string
		unavailable int
		bump        uint64
		closed      wire.Error_Code // 0: stays open
		reads       int             // the store's reads of the account, the handshake's included
	}{
		{name: "unavailable a while", unavailable: 4, reads: 1 + 4 + 1},
		{name: "re-registered meanwhile", unavailable: 2, bump: 1, closed: wire.Error_REGISTERED_ELSEWHERE, reads: 1 + 2 + 1},
		{name: "unavailable past the bound", unavailable: 1000, closed: wire.Error_INTERNAL, reads: 1 + recheckTries + 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			const phone = "+15550004444"
			st := &recheckStore{phone: phone, unavailable: tc.unavailable, bump: tc.bump}
			n, keys := startInternalNode(t, Config{
				wrapStore: func(s nodeStore) nodeStore {
					st.nodeStore = s
					return st
				},
			}, phone)
			kp := keys[phone]
			// Bounds, not assertions: the retries alone take up to 5 s.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, err := client.Dial(ctx, client.Config{Addr: n.NativeAddr(), ServerKey: n.key.Public, Phone: phone, Key: kp})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()

			if tc.closed == 0 {
				waitFor(t, "the re-check's last read", func() bool {
					select {
					case <-c.Done():
						return true // closed: the ping says how
					default:
						return st.readsSoFar() >= tc.reads
					}
				})
				if err := c.Ping(ctx); err != nil {
					t.Fatalf("ping after the store answered: %v", err)
				}
			} else {
				select {
				case <-c.Done():
				case <-ctx.Done():
					t.Fatalf("still connected after %d reads of the account, want closed with %s", st.readsSoFar(), tc.closed)
				}
				var ce *client.CloseError
				if err := c.Err(); !errors.As(err, &ce) || ce.Code != tc.closed {
					t.Fatalf("closed with %v, want %s", err, tc.closed)
				}
			}
			if got := st.readsSoFar(); got != tc.reads {
				t.Fatalf("the store was asked for the account %d times, want %d", got, tc.reads)
			}
		})
	}
}
