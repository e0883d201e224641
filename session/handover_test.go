package session_test

import (
	"fmt"
	"reflect"
	"testing"

	"github.com/parleyhq/parley/session"
	"github.com/parleyhq/parley/store"
	"github.com/parleyhq/parley/wire"
)

// A session moved to another process (State, then Restore) goes on as if
// it had not moved: the ack of deliveries made before the move writes the
// same receipts, and delivery resumes from the same seq.
func TestStateRestore(t *testing.T) {
	run := func(move bool) session.Ready {
		c := newCore(4, 0)
		step(c, session.Start{})
		step(c, session.Loaded{Items: []store.Item{item(t, 1, "alice"), item(t, 2, "carol"), item(t, 3, "alice")}})
		if move {
			st, ok := c.State()
			if !ok || st.Next != 4 || len(st.Inflight) != 3 || st.Inflight[1].From != "carol" {
				t.Fatalf("State() = %+v, %v", st, ok)
			}
			cfg := *newCoreConfig()
			c = new(session.Core)
			c.Restore("bob", &cfg, st)
		}
		return step(c, session.Received{Frame: &wire.Frame{Kind: &wire.Frame_Ack{Ack: &wire.Ack{Seq: 3}}}})
	}
	wantAck, gotAck := run(false), run(true)
	if got, want := receipts(t, gotAck), receipts(t, wantAck); !reflect.DeepEqual(got, want) {
		t.Errorf("ack after the move wrote %v, want %v", got, want)
	}
	// Not knowing whether it had caught up, the moved session reads its
	// queue again from where it was.
	if gotAck.Load == nil || gotAck.Load.From != 4 {
		t.Errorf("after the move the session reads %+v, want from 4", gotAck.Load)
	}
}

// A session with a write awaiting its commit cannot move.
func TestStateNotBetweenEvents(t *testing.T) {
	c := newCore(4, 0)
	if _, ok := c.State(); ok {
		t.Error("a session not started has a state")
	}
	step(c, session.Start{})
	if _, ok := c.State(); ok {
		t.Error("a session with a read outstanding has a state")
	}
	step(c, session.Loaded{})
	step(c, session.Received{Frame: &wire.Frame{Kind: &wire.Frame_Send{Send: &wire.Send{Id: 1, To: "alice", Body: []byte("hi")}}}})
	if _, ok := c.State(); ok {
		t.Error("a session with a send awaiting its commit has a state")
	}
	step(c, session.Committed{})
	if st, ok := c.State(); !ok || st.Next != 0 {
		t.Errorf("idle session: State() = %+v, %v", st, ok)
	}
}

func newCoreConfig() *session.Config {
	var clock, ids int64
	return &session.Config{
		Window: 4,
		Now:    func() int64 { clock++; return clock },
		NewID:  func() uint64 { ids++; return uint64(ids) },
	}
}

// receipts lists what rd's writes acknowledge and to whom, without times.
func receipts(t *testing.T, rd session.Ready) []string {
	t.Helper()
	var out []string
	for _, b := range rd.Writes {
		for _, a := range b.Acks {
			out = append(out, fmt.Sprintf("erase %s up to %d", a.User, a.UpTo))
		}
		for _, a := range b.Appends {
			it, err := wire.DecodeItem(a.Data)
			if err != nil {
				t.Fatal(err)
			}
			r := it.GetReceipt()
			out = append(out, fmt.Sprintf("to %s: %v by %s ids %v server ids %v", a.To, r.GetKind(), r.GetBy(), r.GetIds(), r.GetServerIds()))
		}
	}
	return out
}
