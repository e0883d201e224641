package store_test

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/vfs"

	"github.com/parleyhq/parley/store"
	"github.com/parleyhq/parley/store/storetest"
)

func openPebble(tb testing.TB, dir string, opts store.Options) *store.Pebble {
	tb.Helper()
	p, err := store.OpenPebble(dir, opts, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatalf("OpenPebble: %v", err)
	}
	tb.Cleanup(func() { _ = p.Close() })
	return p
}

func TestPebbleConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, dir string, opts store.Options) store.Store {
		return openPebble(t, dir, opts)
	})
}

// commit commits b and waits for its result.
func commit(s store.Store, b *store.Batch) store.Result {
	ch := make(chan store.Result, 1)
	s.Commit(b, func(r store.Result) { ch <- r })
	return <-ch
}

func account(phone string) store.Account {
	return store.Account{Phone: phone, Key: make([]byte, 32), Generation: 1}
}

func TestPebbleFirstIDIsOne(t *testing.T) {
	p := openPebble(t, t.TempDir(), store.Options{})
	first, err := p.ReserveIDs(10)
	if err != nil || first != 1 {
		t.Fatalf("ReserveIDs(10) = %d, %v; want 1", first, err)
	}
	if first, err = p.ReserveIDs(1); err != nil || first != 11 {
		t.Fatalf("ReserveIDs(1) = %d, %v; want 11", first, err)
	}
}

func TestPebbleRefusesPhoneWithNUL(t *testing.T) {
	p := openPebble(t, t.TempDir(), store.Options{})
	for _, phone := range []string{"", "+1555\x000"} {
		if err := p.PutAccount(account(phone)); err == nil {
			t.Errorf("PutAccount(%q) succeeded, want an error", phone)
		}
	}
}

func TestPebbleCallsAfterCloseReportErrClosed(t *testing.T) {
	p := openPebble(t, t.TempDir(), store.Options{})
	if err := p.PutAccount(account("+15550000001")); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	_, errRead := p.ReadQueue("+15550000001", 0, 10)
	_, errLen := p.QueueLen("+15550000001")
	_, errAcct := p.Account("+15550000001")
	errPut := p.PutAccount(account("+15550000002"))
	_, errIDs := p.ReserveIDs(1)
	_, errSweep := p.Sweep(time.Now())
	for name, err := range map[string]error{
		"ReadQueue": errRead, "QueueLen": errLen, "Account": errAcct,
		"PutAccount": errPut, "ReserveIDs": errIDs, "Sweep": errSweep,
	} {
		if !errors.Is(err, store.ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", name, err)
		}
	}
}

// TestPebbleSweepInChunks expires more items and dedup records than one
// sweep request carries, across several queues, so the scan has to resume
// part-way through a queue.
func TestPebbleSweepInChunks(t *testing.T) {
	var (
		mu   sync.Mutex
		seen = make(map[string]bool)
	)
	opts := store.Options{
		MaxAge:   time.Hour,
		DedupTTL: time.Hour,
		OnExpire: func(user string, it store.Item) {
			mu.Lock()
			defer mu.Unlock()
			seen[fmt.Sprintf("%s/%d", user, it.Seq)] = true
		},
	}
	p := openPebble(t, t.TempDir(), opts)
	want := map[string]int{"+15550000001": 1500, "+15550000002": 1, "+15550000003": 1200}
	total := 0
	var wg sync.WaitGroup
	var failed atomic.Int64
	for user, n := range want {
		if err := p.PutAccount(account(user)); err != nil {
			t.Fatal(err)
		}
		total += n
		for i := 0; i < n; i += 100 {
			b := &store.Batch{}
			for j := i; j < min(i+100, n); j++ {
				b.Appends = append(b.Appends, store.Append{To: user, Data: []byte{byte(j)}})
			}
			wg.Add(1)
			p.Commit(b, func(r store.Result) {
				if r.Err != nil {
					failed.Add(1)
				}
				wg.Done()
			})
		}
	}
	const dedups = 2500
	old := time.Now().Add(-2 * time.Hour).UnixNano()
	for i := 0; i < dedups; i++ {
		wg.Add(1)
		p.Commit(&store.Batch{Dedup: &store.Dedup{Sender: "+15550000001", ClientID: uint64(i), ServerID: 1, TS: old}},
			func(r store.Result) {
				if r.Err != nil || r.Dup != nil {
					failed.Add(1)
				}
				wg.Done()
			})
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d setup commits failed", n)
	}

	n, err := p.Sweep(time.Now().Add(2 * time.Hour))
	if err != nil || n != total {
		t.Fatalf("Sweep = %d, %v; want %d expired", n, err, total)
	}
	if len(seen) != total {
		t.Fatalf("OnExpire saw %d distinct items, want %d", len(seen), total)
	}
	for user := range want {
		if l, err := p.QueueLen(user); err != nil || l != 0 {
			t.Fatalf("QueueLen(%s) = %d, %v; want 0", user, l, err)
		}
	}
	for i := 0; i < dedups; i++ {
		r := commit(p, &store.Batch{Dedup: &store.Dedup{Sender: "+15550000001", ClientID: uint64(i), ServerID: 2}})
		if r.Err != nil || r.Dup != nil {
			t.Fatalf("dedup %d after sweep = %+v, want accepted", i, r)
		}
	}
}

// TestPebbleCommitFromDoneCallback checks that done may call Commit (it runs
// on the committer goroutine, which must not wait on itself).
func TestPebbleCommitFromDoneCallback(t *testing.T) {
	p := openPebble(t, t.TempDir(), store.Options{})
	const user = "+15550000001"
	if err := p.PutAccount(account(user)); err != nil {
		t.Fatal(err)
	}
	const chain = 50
	finished := make(chan store.Result, 1)
	var next func(i int) func(store.Result)
	next = func(i int) func(store.Result) {
		return func(r store.Result) {
			if r.Err != nil || i == chain {
				finished <- r
				return
			}
			p.Commit(&store.Batch{Appends: []store.Append{{To: user}}}, next(i+1))
		}
	}
	p.Commit(&store.Batch{Appends: []store.Append{{To: user}}}, next(1))
	if r := <-finished; r.Err != nil || len(r.Seqs) != 1 || r.Seqs[0] != chain {
		t.Fatalf("last chained commit = %+v, want seq %d", r, chain)
	}
}

// Benchmarks. Data is 256 bytes, a typical small encrypted message.

func benchPebble(b *testing.B, users int) (*store.Pebble, []string) {
	b.Helper()
	p := openPebble(b, b.TempDir(), store.Options{MaxQueueLen: 1 << 30})
	phones := make([]string, users)
	for i := range phones {
		phones[i] = fmt.Sprintf("+1555%07d", i)
		if err := p.PutAccount(account(phones[i])); err != nil {
			b.Fatal(err)
		}
	}
	return p, phones
}

// reportGroups reports how many batches shared each fsync.
func reportGroups(b *testing.B, p *store.Pebble, g0, n0 uint64) {
	g1, n1 := store.GroupStats(p)
	if g1 > g0 {
		b.ReportMetric(float64(n1-n0)/float64(g1-g0), "batches/fsync")
	}
}

// BenchmarkCommitAppend: many sessions each committing one append and
// waiting for it, as the server does; group commit shares the fsyncs.
func BenchmarkCommitAppend(b *testing.B) {
	p, users := benchPebble(b, 64)
	data := make([]byte, 256)
	var nextUser atomic.Int64
	b.SetParallelism(32) // 32 committers per CPU: many sessions in flight
	b.ReportAllocs()
	g0, n0 := store.GroupStats(p)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		batch := &store.Batch{Appends: []store.Append{{To: users[int(nextUser.Add(1))%len(users)], Data: data}}}
		done := make(chan store.Result, 1)
		cb := func(r store.Result) { done <- r }
		for pb.Next() {
			p.Commit(batch, cb)
			if r := <-done; r.Err != nil {
				b.Error(r.Err)
				return
			}
		}
	})
	b.StopTimer()
	reportGroups(b, p, g0, n0)
}

// BenchmarkCommitAppendSerial: one committer waiting for each append, the
// latency floor (one fsync per batch, nothing to group with).
func BenchmarkCommitAppendSerial(b *testing.B) {
	p, users := benchPebble(b, 1)
	batch := &store.Batch{Appends: []store.Append{{To: users[0], Data: make([]byte, 256)}}}
	done := make(chan store.Result, 1)
	cb := func(r store.Result) { done <- r }
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p.Commit(batch, cb)
		if r := <-done; r.Err != nil {
			b.Fatal(r.Err)
		}
	}
}

// BenchmarkAckCycle: each op appends an item and then acks it, the steady
// state of an online recipient; parallel committers as above.
func BenchmarkAckCycle(b *testing.B) {
	p, users := benchPebble(b, 256)
	data := make([]byte, 256)
	var nextUser atomic.Int64
	b.SetParallelism(32)
	b.ReportAllocs()
	g0, n0 := store.GroupStats(p)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		user := users[int(nextUser.Add(1))%len(users)]
		app := &store.Batch{Appends: []store.Append{{To: user, Data: data}}}
		ack := &store.Batch{Acks: []store.Ack{{User: user}}}
		done := make(chan store.Result, 1)
		cb := func(r store.Result) { done <- r }
		for pb.Next() {
			p.Commit(app, cb)
			r := <-done
			if r.Err != nil {
				b.Error(r.Err)
				return
			}
			ack.Acks[0].UpTo = r.Seqs[0]
			p.Commit(ack, cb)
			if r := <-done; r.Err != nil {
				b.Error(r.Err)
				return
			}
		}
	})
	b.StopTimer()
	reportGroups(b, p, g0, n0)
}

// TestPebbleCloseLeavesNoGoroutines opens, uses and closes a store and
// checks that every goroutine it started (its own and Pebble's) is gone.
func TestPebbleCloseLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	p, err := store.OpenPebble(t.TempDir(), store.Options{SweepEvery: time.Millisecond}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.PutAccount(account("+15550000001")); err != nil {
		t.Fatal(err)
	}
	commit(p, &store.Batch{Appends: []store.Append{{To: "+15550000001"}}})
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	commit(p, &store.Batch{}) // answered by a goroutine of its own
	// Goroutines finish shortly after they are told to; poll rather than
	// expect them gone at once.
	for i := 0; runtime.NumGoroutine() > before; i++ {
		if i == 1000 {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before OpenPebble, %d after Close:\n%s",
				before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// heldSyncFS is a disk whose file syncs wait while hold is set: Pebble then
// has a group's writes in its memtable, visible, but not yet on disk.
type heldSyncFS struct {
	vfs.FS
	mu   sync.Mutex
	hold chan struct{} // non-nil: syncs wait until it is closed
}

func (fs *heldSyncFS) gate() chan struct{} {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.hold
}

func (fs *heldSyncFS) wrap(f vfs.File, err error) (vfs.File, error) {
	if err != nil {
		return nil, err
	}
	return heldSyncFile{File: f, fs: fs}, nil
}

func (fs *heldSyncFS) Create(name string) (vfs.File, error) { return fs.wrap(fs.FS.Create(name)) }
func (fs *heldSyncFS) ReuseForWrite(old, new string) (vfs.File, error) {
	return fs.wrap(fs.FS.ReuseForWrite(old, new))
}

type heldSyncFile struct {
	vfs.File
	fs *heldSyncFS
}

func (f heldSyncFile) wait() {
	if g := f.fs.gate(); g != nil {
		<-g
	}
}
func (f heldSyncFile) Sync() error     { f.wait(); return f.File.Sync() }
func (f heldSyncFile) SyncData() error { f.wait(); return f.File.SyncData() }
func (f heldSyncFile) SyncTo(n int64) (bool, error) {
	f.wait()
	return f.File.SyncTo(n)
}

// An item Pebble already shows but has not yet synced must not be read:
// a session would deliver a message whose sender has no SendAck yet, and
// after a crash the sender would resend it as a new one.
func TestPebbleReadsOnlyDurableItems(t *testing.T) {
	fs := &heldSyncFS{FS: vfs.Default}
	p := openPebble(t, t.TempDir(), store.Options{FS: fs})
	if err := p.PutAccount(account("+15550000001")); err != nil {
		t.Fatal(err)
	}
	const bob = "+15550000001"
	// A first item, durable, so the queue's state is loaded.
	if r := commit(p, &store.Batch{Appends: []store.Append{{To: bob, Data: []byte("one")}}}); r.Err != nil {
		t.Fatal(r.Err)
	}
	release := make(chan struct{})
	fs.mu.Lock()
	fs.hold = release
	fs.mu.Unlock()
	var releaseOnce sync.Once
	unhold := func() {
		releaseOnce.Do(func() {
			fs.mu.Lock()
			fs.hold = nil
			fs.mu.Unlock()
			close(release)
		})
	}
	t.Cleanup(unhold) // before the store's Close, which waits for the sync
	done := make(chan store.Result, 1)
	p.Commit(&store.Batch{Appends: []store.Append{{To: bob, Data: []byte("two")}}}, func(r store.Result) { done <- r })
	deadline := time.Now().Add(10 * time.Second)
	for !store.RawGet(p, store.QueueKey(bob, 2)) {
		if time.Now().After(deadline) {
			t.Fatal("the second item never became visible in Pebble")
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case r := <-done:
		t.Fatalf("commit reported %+v while its sync was held", r)
	default:
	}
	items, err := p.ReadQueue(bob, 1, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 1 || items[0].Seq != 1 {
		t.Fatalf("while the sync is held, ReadQueue returned %d items (%+v), want only seq 1", len(items), items)
	}
	if items, _ := p.ReadQueue(bob, 2, 10); len(items) != 0 {
		t.Fatalf("while the sync is held, ReadQueue from 2 returned %+v, want nothing", items)
	}
	unhold()
	if r := <-done; r.Err != nil || len(r.Seqs) != 1 || r.Seqs[0] != 2 {
		t.Fatalf("commit: %+v", r)
	}
	items, err = p.ReadQueue(bob, 1, 10)
	if err != nil || len(items) != 2 || string(items[1].Data) != "two" {
		t.Fatalf("after the sync, ReadQueue returned %+v, %v; want both items", items, err)
	}
}

// A lazy batch waits for an urgent one and shares its group (one fsync),
// ahead of it; alone, it is committed once LazyDelay is over; and Close
// commits a lazy batch still waiting.
func TestPebbleLazyBatches(t *testing.T) {
	const user = "+15550000001"
	open := func(delay time.Duration) *store.Pebble {
		p := openPebble(t, t.TempDir(), store.Options{LazyDelay: delay})
		if err := p.PutAccount(account(user)); err != nil {
			t.Fatal(err)
		}
		if r := commit(p, &store.Batch{Appends: []store.Append{{To: user}, {To: user}}}); r.Err != nil {
			t.Fatal(r.Err)
		}
		return p
	}
	lazyAck := func(upTo uint64) *store.Batch {
		return &store.Batch{Acks: []store.Ack{{User: user, UpTo: upTo}}, Lazy: true}
	}

	t.Run("rides with an urgent batch", func(t *testing.T) {
		p := open(time.Hour)
		g0, n0 := store.GroupStats(p)
		order := make(chan string, 2)
		p.Commit(lazyAck(1), func(r store.Result) {
			if r.Err != nil {
				t.Errorf("lazy ack: %v", r.Err)
			}
			order <- "lazy"
		})
		// Give a committer that does not wait the time to commit the
		// lazy batch alone (this cannot fail a committer that waits).
		time.Sleep(50 * time.Millisecond)
		if r := commit(p, &store.Batch{Appends: []store.Append{{To: user}}}); r.Err != nil {
			t.Fatal(r.Err)
		}
		order <- "urgent"
		if first := <-order; first != "lazy" {
			t.Errorf("first done: %s, want the lazy batch's (committed first)", first)
		}
		g1, n1 := store.GroupStats(p)
		if g1-g0 != 1 || n1-n0 != 2 {
			t.Errorf("%d groups of %d batches, want the two batches in one group", g1-g0, n1-n0)
		}
		if n, _ := p.QueueLen(user); n != 2 {
			t.Errorf("queue holds %d items after acking one of three, want 2", n)
		}
	})
	t.Run("alone after the delay", func(t *testing.T) {
		p := open(time.Millisecond)
		if r := commit(p, lazyAck(2)); r.Err != nil {
			t.Fatal(r.Err)
		}
		if n, _ := p.QueueLen(user); n != 0 {
			t.Errorf("queue holds %d items after acking both, want 0", n)
		}
	})
	t.Run("at close", func(t *testing.T) {
		p := open(time.Hour)
		done := make(chan store.Result, 1)
		p.Commit(lazyAck(2), func(r store.Result) { done <- r })
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		if r := <-done; r.Err != nil {
			t.Errorf("lazy batch at close: %v", r.Err)
		}
	})
}

// A store closed, written meanwhile by another opener of its directory (a
// live upgrade's new process), and reopened, serves what is on disk now:
// the queue's new items and tail, and ids after the other's reservations.
func TestPebbleReopenReadsWhatOthersWrote(t *testing.T) {
	dir := t.TempDir()
	const user = "+15550000001"
	p := openPebble(t, dir, store.Options{})
	if err := p.PutAccount(account(user)); err != nil {
		t.Fatal(err)
	}
	if r := commit(p, &store.Batch{Appends: []store.Append{{To: user, Data: []byte("one")}}}); r.Err != nil {
		t.Fatal(r.Err)
	}
	if _, err := p.ReserveIDs(100); err != nil {
		t.Fatal(err)
	}
	if err := p.Reopen(); err == nil {
		t.Fatal("Reopen of an open store succeeded")
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}

	other, err := store.OpenPebble(dir, store.Options{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if r := commit(other, &store.Batch{Appends: []store.Append{{To: user, Data: []byte("two")}}}); r.Err != nil || len(r.Seqs) != 1 || r.Seqs[0] != 2 {
		t.Fatalf("the other's append: %+v", r)
	}
	otherFirst, err := other.ReserveIDs(50)
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Close(); err != nil {
		t.Fatal(err)
	}

	if err := p.Reopen(); err != nil {
		t.Fatal(err)
	}
	items, err := p.ReadQueue(user, 0, 10)
	if err != nil || len(items) != 2 || string(items[1].Data) != "two" {
		t.Fatalf("after Reopen the queue reads %+v, %v; want one and two", items, err)
	}
	// The committer runs again, and knows the queue's tail moved.
	r := commit(p, &store.Batch{Appends: []store.Append{{To: user, Data: []byte("three")}}})
	if r.Err != nil || len(r.Seqs) != 1 || r.Seqs[0] != 3 {
		t.Fatalf("append after Reopen: %+v, want seq 3", r)
	}
	if first, err := p.ReserveIDs(1); err != nil || first < otherFirst+50 {
		t.Fatalf("ReserveIDs after Reopen = %d, %v; want %d or more", first, err, otherFirst+50)
	}
}
