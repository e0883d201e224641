package store_test

import (
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/parleyhq/parley/store"
)

// BenchmarkChatMessage is the store's part of a lone message, the floor
// under the server's CPU per message at `bench pairs --pairs 200 --window
// 1`: 200 pairs, each with one message in flight, and per message what
// the server commits for it (with the default group-commit pacing):
//
//   - the Send: the item appended to the reader's queue, with its dedup
//     record;
//   - the reader's ack: the item erased, the pair's received record, the
//     delivered receipt appended to the sender's queue (lazy);
//   - the sender's ack of that receipt (lazy).
//
// Beside the wall time per message it reports the process's CPU per
// message, user and system (getrusage): no network, so the system time is
// the fsyncs'; and the bytes written to Pebble's log per message.
func BenchmarkChatMessage(b *testing.B) {
	const pairs = 200
	p, users := benchPebble(b, 2*pairs)
	item := make([]byte, 150)   // a 64-byte message in its envelope, about
	receipt := make([]byte, 40) // a delivered receipt, about
	var next atomic.Int64
	var before, after syscall.Rusage
	b.ReportAllocs()
	wal := store.WALBytes(p)
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	b.ResetTimer()
	var wg sync.WaitGroup
	for i := range pairs {
		sender, reader := users[2*i], users[2*i+1]
		wg.Go(func() {
			done := make(chan store.Result, 1)
			cb := func(r store.Result) { done <- r }
			commit := func(batch *store.Batch) store.Result {
				p.Commit(batch, cb)
				r := <-done
				if r.Err != nil {
					b.Error(r.Err)
				}
				return r
			}
			for cid := uint64(1); next.Add(1) <= int64(b.N); cid++ {
				r := commit(&store.Batch{
					Dedup:   &store.Dedup{Sender: sender, ClientID: cid, ServerID: cid, Fresh: true},
					Appends: []store.Append{{To: reader, Data: item}},
				})
				if r.Err != nil {
					return
				}
				r = commit(&store.Batch{
					Acks:     []store.Ack{{User: reader, UpTo: r.Seqs[0]}},
					Received: []string{sender},
					Appends:  []store.Append{{To: sender, Data: receipt}},
					Lazy:     true,
				})
				if r.Err != nil {
					return
				}
				if r = commit(&store.Batch{Acks: []store.Ack{{User: sender, UpTo: r.Seqs[0]}}, Lazy: true}); r.Err != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	us := func(t syscall.Timeval) float64 { return float64(t.Sec)*1e6 + float64(t.Usec) }
	b.ReportMetric((us(after.Utime)-us(before.Utime))/float64(b.N), "user-us/msg")
	b.ReportMetric((us(after.Stime)-us(before.Stime))/float64(b.N), "sys-us/msg")
	b.ReportMetric(float64(store.WALBytes(p)-wal)/float64(b.N), "wal-B/msg")
}
