package jetstream

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/parleyhq/parley/internal/natstest"
	"github.com/parleyhq/parley/store"
)

// openOnePartition opens a store of one partition on a server of its own,
// and a ctx whose deadline is already spent.
func openOnePartition(t *testing.T) (*Store, context.Context) {
	nc := natstest.Connect(t, natstest.StartServer(t, ""))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Open(ctx, nc, Options{Partitions: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	spent, stop := context.WithTimeout(context.Background(), time.Nanosecond)
	t.Cleanup(stop)
	<-spent.Done()
	return s, spent
}

// A read that ends because its caller's deadline did (a long sweep's or
// commit group's budget spent on the requests before it) says nothing
// about the stream: it fails, and the stream's gate stays open. Before, it
// shut the gate, and every send to the partition was refused until a
// probe got through.
func TestACallersSpentDeadlineShutsNoGate(t *testing.T) {
	s, spent := openOnePartition(t)
	if _, err := s.getNext(spent, 0, s.lay.queueFilter(0), 1); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("a read with its caller's deadline spent: %v, want ErrUnavailable", err)
	}
	if s.gates.list[0].closed.Load() {
		t.Fatal("the partition's gate was shut by a read its caller's deadline ended")
	}
}

// A write cut short, by whatever deadline, may still land: it shuts the
// gate, so that the next write follows a barrier through the leader.
func TestAWriteCutShortShutsTheGate(t *testing.T) {
	s, spent := openOnePartition(t)
	s.gates.list[0].probing.Store(true) // as if probing: a prober would open the gate at once
	if err := s.barrier(spent, 0); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("a write with its caller's deadline spent: %v, want ErrUnavailable", err)
	}
	if !s.gates.list[0].closed.Load() {
		t.Fatal("the partition's gate is open after a write whose outcome is unknown")
	}
}
