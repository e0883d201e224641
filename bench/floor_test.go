package bench

// The floors of the machine the benchmarks run on: what a loopback TCP
// message and an fsync cost before Parley does anything. BENCHMARKS.md
// measures the gap between the targets and the results against them.
//
//	go test -run x -bench 'Loopback|Fsync' -benchtime 5s ./bench

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"
)

// cpuNow is this process's user + system CPU time.
func cpuNow(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkLoopbackPingPong: 200 connections over loopback, each
// bouncing a 64-byte message back and forth, both ends in this process
// with a goroutine per connection end (as the bench's clients are). One op
// is one one-way message; cpu-us/msg is the CPU both ends and the kernel
// spend on it. A Parley message at window 1 is five of them (Send, SendAck,
// Deliver, Ack, delivered receipt; the receipt's ack rides with the next
// Send).
func BenchmarkLoopbackPingPong(b *testing.B) {
	const conns = 200
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64)
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	clients := make([]net.Conn, conns)
	for i := range clients {
		if clients[i], err = net.Dial("tcp", ln.Addr().String()); err != nil {
			b.Fatal(err)
		}
		defer clients[i].Close()
	}
	rounds := b.N/2/conns + 1 // two messages a round trip
	cpu0 := cpuNow(b)
	b.ResetTimer()
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 64)
			for range rounds {
				if _, err := c.Write(buf); err != nil {
					b.Error(err)
					return
				}
				if _, err := c.Read(buf); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	msgs := float64(2 * rounds * conns)
	b.ReportMetric(float64((cpuNow(b)-cpu0).Microseconds())/msgs, "cpu-us/msg")
	b.ReportMetric(msgs/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkFsync: a 32 KiB append and an fsync, as a group commit writes
// its WAL block (Pebble uses fdatasync, which costs the same for an
// appended file); cpu-us/op is what the sync costs this process in CPU,
// besides its wall time, and p50/p99-sync-us the distribution of the
// sync's own wall time. Run it beside busy loops in other processes to
// see what a short-of-CPU machine adds to a sync's return: the thread
// the disk has answered waits for a CPU like any other.
func BenchmarkFsync(b *testing.B) {
	f, err := os.Create(filepath.Join(b.TempDir(), "wal"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 32<<10)
	lat := make([]time.Duration, b.N)
	cpu0 := cpuNow(b)
	b.ResetTimer()
	for i := range b.N {
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
		lat[i] = time.Since(start)
	}
	b.StopTimer()
	b.ReportMetric(float64((cpuNow(b)-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) }
	b.ReportMetric(q(0.5), "p50-sync-us")
	b.ReportMetric(q(0.99), "p99-sync-us")
}
