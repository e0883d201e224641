package jetstream

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/parleyhq/parley/internal/natstest"
	"github.com/parleyhq/parley/store"
)

// A partition that cannot be swept (its stream between leaders) is left
// for the next pass, and the other partitions are swept: one stream's
// election stopped every partition's expiry, or a dedup record that would
// not go stopped all of it.
func TestASweepGoesOnPastAPartitionThatFails(t *testing.T) {
	nc := natstest.Connect(t, natstest.StartServer(t, ""))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Open(ctx, nc, Options{Partitions: 2, Store: store.Options{MaxAge: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	// One user in each partition; the first partition's will not answer.
	users := make([]string, 2)
	for i := 0; users[0] == "" || users[1] == ""; i++ {
		u := fmt.Sprintf("+1555000%04d", i)
		if p := s.lay.partition(u); users[p] == "" {
			users[p] = u
		}
	}
	for _, u := range users {
		if err := s.PutAccount(store.Account{Phone: u, Key: make([]byte, 32), Generation: 1}); err != nil {
			t.Fatal(err)
		}
		res := make(chan store.Result, 1)
		s.Commit(&store.Batch{Appends: []store.Append{{To: u, Data: []byte("old")}}}, func(r store.Result) { res <- r })
		if r := <-res; r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	s.gates.list[0].probing.Store(true) // as if probing: no prober opens it meanwhile
	s.gates.close(0, "test", nil)

	n, err := s.Sweep(time.Now().Add(2 * time.Hour))
	if n != 1 || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Sweep = %d, %v; want 1 expired (the second partition's) and ErrUnavailable (the first's)", n, err)
	}
	if items, err := s.ReadQueue(users[1], 0, 10); err != nil || len(items) != 0 {
		t.Fatalf("the second partition's queue after the sweep: %d items, %v; want none", len(items), err)
	}
}
