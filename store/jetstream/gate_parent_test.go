package jetstream

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/parleyhq/parley/internal/natstest"
	"github.com/parleyhq/parley/store"
)

// A request that ends because its caller's deadline did (a long sweep's
// or commit group's budget spent on the requests before it) says nothing
// about the stream: it fails, and the stream's gate stays open. Before, it
// shut the gate, and every send to the partition was refused until a
// probe got through.
func TestACallersSpentDeadlineShutsNoGate(t *testing.T) {
	nc := natstest.Connect(t, natstest.StartServer(t, ""))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Open(ctx, nc, Options{Partitions: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })

	spent, stop := context.WithTimeout(context.Background(), time.Nanosecond)
	defer stop()
	<-spent.Done()
	if _, err := s.getNext(spent, 0, s.lay.queueFilter(0), 1); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("a read with its caller's deadline spent: %v, want ErrUnavailable", err)
	}
	if s.gates.list[0].closed.Load() {
		t.Fatal("the partition's gate was shut by a request its caller's deadline ended")
	}
}
