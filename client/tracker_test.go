package client

import (
	"slices"
	"testing"
)

// step is one event for the tracker: a delivery (seq, server id; 0 for a
// receipt), Recv handing out everything delivered so far, or an app ack.
type step struct {
	deliver, serverID uint64
	recvAll           bool
	ack               uint64
	wantGive          bool   // for deliveries: does the app get it
	wantLevel         uint64 // the ack level after the step
}

func TestTracker(t *testing.T) {
	tests := []struct {
		name  string
		steps []step
	}{
		{
			name: "in order, acked",
			steps: []step{
				{deliver: 1, serverID: 101, wantGive: true},
				{deliver: 2, wantGive: true}, // a receipt
				{recvAll: true},
				{ack: 2, wantLevel: 2},
			},
		},
		{
			name: "redelivery after reconnect is dropped",
			steps: []step{
				{deliver: 1, serverID: 101, wantGive: true},
				{deliver: 2, serverID: 102, wantGive: true},
				{recvAll: true},
				{ack: 1, wantLevel: 1},
				{deliver: 1, serverID: 101, wantLevel: 1}, // the ack was lost: comes again, dropped
				{deliver: 2, serverID: 102, wantLevel: 1}, // unacked: comes again, dropped, still not acked
				{deliver: 3, serverID: 103, wantGive: true, wantLevel: 1},
			},
		},
		{
			name: "duplicate message at a new seq waits for the app's ack below it",
			steps: []step{
				{deliver: 1, serverID: 101, wantGive: true},
				{deliver: 2, serverID: 101},               // same message again: dropped
				{deliver: 3, serverID: 0, wantGive: true}, // a receipt
				{recvAll: true},
				{ack: 1, wantLevel: 2}, // acking 1 also settles the duplicate at 2
				{ack: 3, wantLevel: 3},
			},
		},
		{
			name: "duplicate with nothing open is acked at once",
			steps: []step{
				{deliver: 1, serverID: 101, wantGive: true},
				{recvAll: true},
				{ack: 1, wantLevel: 1},
				{deliver: 2, serverID: 101, wantLevel: 2},
			},
		},
		{
			name: "ack beyond what Recv returned is cut down",
			steps: []step{
				{deliver: 1, serverID: 101, wantGive: true},
				{recvAll: true},
				{deliver: 2, serverID: 102, wantGive: true},
				{ack: 9, wantLevel: 1},
				{recvAll: true},
				{ack: 9, wantLevel: 2},
			},
		},
		{
			name: "no app ack, no ack at all",
			steps: []step{
				{deliver: 1, serverID: 101, wantGive: true},
				{deliver: 2, serverID: 101},
				{deliver: 3, serverID: 101},
				{recvAll: true},
				{deliver: 1, serverID: 101},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := newTracker(16)
			var delivered []uint64
			for i, s := range tt.steps {
				switch {
				case s.deliver != 0:
					got := tr.deliver(s.deliver, s.serverID)
					if got != s.wantGive {
						t.Fatalf("step %d: deliver(%d) gave %v, want %v", i, s.deliver, got, s.wantGive)
					}
					if got {
						delivered = append(delivered, s.deliver)
					}
				case s.recvAll:
					for _, seq := range delivered {
						tr.give(seq)
					}
					delivered = nil
					continue
				default:
					tr.ack(s.ack)
				}
				if tr.level != s.wantLevel {
					t.Fatalf("step %d: ack level %d, want %d (open %v, dups %v)", i, tr.level, s.wantLevel, tr.open, tr.dups)
				}
			}
		})
	}
}

func TestRecentSetForgetsOldest(t *testing.T) {
	s := newRecentSet(3)
	for _, id := range []uint64{1, 2, 3} {
		if !s.add(id) {
			t.Fatalf("add(%d) reported a duplicate", id)
		}
	}
	if s.add(2) {
		t.Fatal("add(2) again reported new")
	}
	if !s.add(4) { // pushes 1 out
		t.Fatal("add(4) reported a duplicate")
	}
	if !s.add(1) {
		t.Fatal("1 should have been forgotten")
	}
	keys := make([]uint64, 0, len(s.m))
	for k := range s.m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if !slices.Equal(keys, []uint64{1, 3, 4}) {
		t.Fatalf("remembered %v, want [1 3 4]", keys)
	}
}
