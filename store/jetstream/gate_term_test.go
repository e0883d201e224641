package jetstream

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A request in flight when its stream elects a leader gives up at once
// (the leader before may have dropped it: its sender would wait out the
// whole timeout); one sent after the election keeps its timeout.
func TestElectionEndsTheRequestsInFlight(t *testing.T) {
	g := &gates{s: &Store{opts: Options{Timeout: time.Hour}}, list: make([]gate, 2)}
	for i := range g.list {
		g.newTerm(i)
	}
	before, cancelBefore, err := g.enter(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer cancelBefore()
	other, cancelOther, err := g.enter(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	defer cancelOther()

	g.newTerm(0) // stream 0 elected a leader

	select {
	case <-before.Done():
	case <-time.After(time.Minute):
		t.Fatal("a request in flight at its stream's election still waits")
	}
	if !errors.Is(before.Err(), context.Canceled) {
		t.Fatalf("the request in flight ended with %v, want it cancelled (not its timeout)", before.Err())
	}
	if !isUnavailable(before.Err()) {
		t.Fatalf("a cancelled request is not ErrUnavailable (retryable): %v", before.Err())
	}
	after, cancelAfter, err := g.enter(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer cancelAfter()
	if after.Err() != nil || other.Err() != nil {
		t.Fatalf("a request after the election (%v) or to another stream (%v) ended too", after.Err(), other.Err())
	}
}
