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
