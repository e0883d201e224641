package node

import (
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
)

// quietAllocs is the most a process may allocate in one IdleCollect
// period and still count as quiet: idle connections allocate nothing, and
// the admin and metrics endpoints' readings a few KiB each.
const quietAllocs = 1 << 20

// settler returns the garbage of a burst to the OS once the process goes
// quiet. The collector runs when the heap reaches its goal (GOGC), so a
// server that goes quiet after a burst of work (a login storm, a busy
// hour) keeps the heap of that burst resident, its garbage included: it
// allocates nothing more to start a collection, the runtime forces one
// only every two minutes, and returns freed pages only slowly after it.
// An operator reads that as memory per connection. So, once per quiet
// period, the node collects and returns what it freed
// (debug.FreeOSMemory), as an idle process can well afford; under load it
// never does (allocation is what ends a quiet period), so it costs
// nothing per message.
type settler struct {
	sample []metrics.Sample // settle's own
	last   uint64

	// Read by the admin endpoint (ProcessStats).
	checks      atomic.Int64 // settle calls
	collections atomic.Int64
	settled     atomic.Bool // collected since the last period that was not quiet
}

func newSettler() *settler {
	st := &settler{sample: []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}}
	st.last = st.allocs()
	return st
}

func (st *settler) allocs() uint64 {
	metrics.Read(st.sample)
	return st.sample[0].Value.Uint64()
}

// settle is called every IdleCollect period, on one goroutine.
func (st *settler) settle() {
	defer st.checks.Add(1)
	a := st.allocs()
	quiet := a-st.last < quietAllocs
	st.last = a
	switch {
	case !quiet:
		st.settled.Store(false)
		return
	case st.settled.Load():
		return
	}
	debug.FreeOSMemory()
	st.collections.Add(1)
	st.settled.Store(true)
}
