package node

import (
	"runtime"
	"testing"
)

// The settler collects once per quiet period: not while the process
// allocates, once when a period passes quiet, and not again until
// allocation has started and stopped again.
func TestSettlerCollectsOncePerQuietPeriod(t *testing.T) {
	st := newSettler()
	busy := func() {
		b := make([]byte, 4*quietAllocs)
		runtime.KeepAlive(b)
	}
	check := func(step string, collections int64, settled bool) {
		t.Helper()
		st.settle()
		if got := st.collections.Load(); got != collections || st.settled.Load() != settled {
			t.Fatalf("%s: %d collections, settled %v; want %d, %v", step, got, st.settled.Load(), collections, settled)
		}
	}
	busy()
	check("a busy period", 0, false)
	check("the first quiet period", 1, true)
	check("the second quiet period", 1, true)
	busy()
	check("busy again", 1, false)
	check("quiet again", 2, true)
	if st.checks.Load() != 5 {
		t.Fatalf("%d checks counted, want 5", st.checks.Load())
	}
}
