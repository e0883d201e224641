package bench

import "testing"

// A message in flight when the node is lost counts after the signal: its
// partition's leader may have died with the node, and a baseline that
// held its wait would hide what the loss cost the survivors.
func TestSurvivorsBeforeHoldOnlyWhatWasDeliveredBeforeTheSignal(t *testing.T) {
	const ms = 1_000_000 // r.now() is in ns
	fo := &failoverRun{before: &survivorHist{h: newHist()}, after: &survivorHist{h: newHist()}}
	fo.record(1*ms, 2*ms) // no signal yet
	fo.killAt.Store(10 * ms)
	fo.record(3*ms, 5*ms)  // sent and delivered before the signal
	fo.record(7*ms, 90*ms) // in flight at the signal: waited 83 ms
	fo.record(20*ms, 21*ms)
	if n, max := fo.before.h.TotalCount(), fo.before.h.Max(); n != 2 || max > 2_100 {
		t.Errorf("before holds %d latencies, the longest %d us; want 2, those of 1 and 2 ms delivered before the signal", n, max)
	}
	if n, max := fo.after.h.TotalCount(), fo.after.h.Max(); n != 2 || max < 83_000 {
		t.Errorf("after holds %d latencies, the longest %d us; want 2, with the 83 ms of the one in flight at the signal", n, max)
	}
}

// The gap after the signal names its message: whose it was, whether its
// pair was on the lost node, and when it was sent and answered, which is
// where to look for what held it.
func TestGapAfterTheSignalNamesItsMessage(t *testing.T) {
	const ms = 1_000_000
	fo := &failoverRun{}
	fo.killAt.Store(5_000 * ms)
	mover := &sender{u: &user{phone: "+15550000001"}, addr: "127.0.0.1:5301"}
	mover.r = &pairsRun{fo: fo}
	mover.noteAckWait(5_100*ms, 50*ms)    // a short wait after the signal
	mover.noteAckWait(6_400*ms, 1_100*ms) // sent at 5,300, answered at 6,400
	survivor := &sender{u: &user{phone: "+15550000002"}, addr: "127.0.0.1:5302", untouched: true}
	survivor.r = mover.r
	survivor.noteAckWait(5_600*ms, 700*ms)
	var o FailoverOutcome
	fo.outcome(&o, []*sender{survivor, mover}, 9_000*ms)
	want := SlowAck{Sender: "+15550000001", Node: "127.0.0.1:5301", SentMs: 300, AckedMs: 1_400}
	if o.GapAfterMs != 1_100 || o.GapAfter == nil || *o.GapAfter != want {
		t.Fatalf("gap after %v ms, %+v; want 1,100 ms, %+v", o.GapAfterMs, o.GapAfter, want)
	}
}
