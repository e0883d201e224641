// Package storetest is the conformance suite every store.Store must pass.
//
// Each subtest checks one behaviour of the contract in package store and is
// named so that the list of subtests reads as a specification. A store under
// test is opened through the caller's open function, possibly several times
// on the same directory to check what survives a restart.
package storetest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/parleyhq/parley/store"
)

// Sweeper is implemented by stores that can run one expiry pass on demand.
// The expiry subtests that need a deterministic pass are skipped for stores
// that do not implement it.
type Sweeper interface {
	Sweep(now time.Time) (expired int, err error)
}

// Opener opens the store kept in dir. It may be called again on the same dir
// after the previous store was closed.
type Opener = func(t *testing.T, dir string, opts store.Options) store.Store

// waitTimeout guards against a done callback that never comes, so a bug
// fails the subtest with a message instead of hanging the whole run. It is
// a hang guard, not a performance check.
const waitTimeout = time.Minute

// Phone numbers used throughout. mallory never gets an account.
const (
	alice   = "+15550000001"
	bob     = "+15550000002"
	carol   = "+15550000003"
	dave    = "+15550000004"
	erin    = "+15550000005"
	mallory = "+15550009999"
)

// Run runs the whole suite against the stores open returns.
func Run(t *testing.T, open Opener) {
	t.Run("Account", func(t *testing.T) { runAccount(t, open) })
	t.Run("Append", func(t *testing.T) { runAppend(t, open) })
	t.Run("Dedup", func(t *testing.T) { runDedup(t, open) })
	t.Run("Ack", func(t *testing.T) { runAck(t, open) })
	t.Run("QueueFull", func(t *testing.T) { runQueueFull(t, open) })
	t.Run("ReadQueue", func(t *testing.T) { runReadQueue(t, open) })
	t.Run("Durability", func(t *testing.T) { runDurability(t, open) })
	t.Run("Concurrency", func(t *testing.T) { runConcurrency(t, open) })
	t.Run("ReserveIDs", func(t *testing.T) { runReserveIDs(t, open) })
	t.Run("Expiry", func(t *testing.T) { runExpiry(t, open) })
	t.Run("Close", func(t *testing.T) { runClose(t, open) })
	t.Run("Received", func(t *testing.T) { runReceived(t, open) })
}

// env is one subtest's store and the directory it lives in.
type env struct {
	t    *testing.T
	open Opener
	dir  string
	opts store.Options
	s    store.Store
}

// newEnv opens a store in a fresh directory, creates accounts for phones,
// and closes the store when the test ends.
func newEnv(t *testing.T, open Opener, opts store.Options, phones ...string) *env {
	t.Helper()
	e := &env{t: t, open: open, dir: t.TempDir(), opts: opts}
	e.s = open(t, e.dir, opts)
	t.Cleanup(func() { _ = e.s.Close() }) // Close is idempotent
	for _, p := range phones {
		e.putAccount(p)
	}
	return e
}

// reopen closes the store and opens it again on the same directory.
func (e *env) reopen() {
	e.t.Helper()
	if err := e.s.Close(); err != nil {
		e.t.Fatalf("Close: %v", err)
	}
	e.s = e.open(e.t, e.dir, e.opts)
}

func (e *env) putAccount(phone string) store.Account {
	e.t.Helper()
	now := time.Now().UTC().Truncate(time.Microsecond)
	a := store.Account{Phone: phone, Key: bytes.Repeat([]byte{phone[len(phone)-1]}, 32), Generation: 1, Created: now, Updated: now}
	if err := e.s.PutAccount(a); err != nil {
		e.t.Fatalf("PutAccount(%s): %v", phone, err)
	}
	return a
}

// commitAsync commits b and returns a channel that receives its Result.
func (e *env) commitAsync(b *store.Batch) <-chan store.Result {
	ch := make(chan store.Result, 1)
	e.s.Commit(b, func(r store.Result) { ch <- r })
	return ch
}

// wait receives one Result.
func (e *env) wait(ch <-chan store.Result) store.Result {
	e.t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(waitTimeout):
		e.t.Fatalf("Commit: done not called within %v", waitTimeout)
		return store.Result{}
	}
}

// commit commits b and waits for its Result.
func (e *env) commit(b *store.Batch) store.Result {
	e.t.Helper()
	return e.wait(e.commitAsync(b))
}

// mustCommit commits b and fails the test unless it was accepted.
func (e *env) mustCommit(b *store.Batch) store.Result {
	e.t.Helper()
	r := e.commit(b)
	if r.Err != nil || r.Dup != nil {
		e.t.Fatalf("Commit(%s): Err=%v Dup=%+v, want accepted", describe(b), r.Err, r.Dup)
	}
	return r
}

// appendN appends n items to user, one batch each, and returns their seqs.
func (e *env) appendN(user string, n int) []uint64 {
	e.t.Helper()
	var seqs []uint64
	for i := 0; i < n; i++ {
		r := e.mustCommit(&store.Batch{Appends: []store.Append{{To: user, Data: []byte(fmt.Sprintf("%s#%d", user, i))}}})
		seqs = append(seqs, r.Seqs...)
	}
	return seqs
}

func (e *env) ack(user string, upTo uint64) {
	e.t.Helper()
	e.mustCommit(&store.Batch{Acks: []store.Ack{{User: user, UpTo: upTo}}})
}

func (e *env) read(user string, from uint64, max int) []store.Item {
	e.t.Helper()
	items, err := e.s.ReadQueue(user, from, max)
	if err != nil {
		e.t.Fatalf("ReadQueue(%s, %d, %d): %v", user, from, max, err)
	}
	return items
}

func (e *env) wantLen(user string, want int) {
	e.t.Helper()
	n, err := e.s.QueueLen(user)
	if err != nil {
		e.t.Fatalf("QueueLen(%s): %v", user, err)
	}
	if n != want {
		e.t.Fatalf("QueueLen(%s) = %d, want %d", user, n, want)
	}
}

// wantSeqs checks that user's whole queue holds exactly the seqs want.
func (e *env) wantSeqs(user string, want ...uint64) {
	e.t.Helper()
	got := seqsOf(e.read(user, 0, 1<<20))
	if !equalSeqs(got, want) {
		e.t.Fatalf("ReadQueue(%s) seqs = %v, want %v", user, got, want)
	}
	e.wantLen(user, len(want))
}

func (e *env) sweeper() Sweeper {
	e.t.Helper()
	sw, ok := e.s.(Sweeper)
	if !ok {
		e.t.Skipf("%T has no Sweep(time.Time) (int, error) method", e.s)
	}
	return sw
}

func seqsOf(items []store.Item) []uint64 {
	seqs := make([]uint64, len(items))
	for i, it := range items {
		seqs[i] = it.Seq
	}
	return seqs
}

func equalSeqs(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func seqRange(from, to uint64) []uint64 {
	var s []uint64
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

func describe(b *store.Batch) string {
	return fmt.Sprintf("dedup=%v appends=%d acks=%d", b.Dedup != nil, len(b.Appends), len(b.Acks))
}

func one(to, data string) *store.Batch {
	return &store.Batch{Appends: []store.Append{{To: to, Data: []byte(data)}}}
}

func runAccount(t *testing.T, open Opener) {
	t.Run("PutThenGetReturnsIt", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{})
		want := e.putAccount(alice)
		got, err := e.s.Account(alice)
		if err != nil {
			t.Fatalf("Account: %v", err)
		}
		wantAccount(t, got, want)
	})
	t.Run("PutReplacesExisting", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{})
		first := e.putAccount(alice)
		second := first
		second.Key = bytes.Repeat([]byte{0xee}, 32)
		second.Generation = 2
		second.Updated = first.Updated.Add(time.Hour)
		if err := e.s.PutAccount(second); err != nil {
			t.Fatalf("PutAccount: %v", err)
		}
		got, err := e.s.Account(alice)
		if err != nil {
			t.Fatalf("Account: %v", err)
		}
		wantAccount(t, got, second)
	})
	t.Run("UnknownPhoneIsErrNotFound", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{}, alice)
		if _, err := e.s.Account(mallory); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("Account(unknown) err = %v, want ErrNotFound", err)
		}
	})
	t.Run("ReturnsACopy", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{})
		a := store.Account{Phone: alice, Key: bytes.Repeat([]byte{1}, 32), Generation: 1}
		if err := e.s.PutAccount(a); err != nil {
			t.Fatalf("PutAccount: %v", err)
		}
		a.Key[0] = 99 // the caller's slice is not the store's
		got, err := e.s.Account(alice)
		if err != nil {
			t.Fatalf("Account: %v", err)
		}
		got.Key[1] = 99 // nor is the returned one
		again, err := e.s.Account(alice)
		if err != nil {
			t.Fatalf("Account: %v", err)
		}
		if !bytes.Equal(again.Key, bytes.Repeat([]byte{1}, 32)) {
			t.Fatalf("stored key changed through a caller's slice: %x", again.Key)
		}
	})
}

func wantAccount(t *testing.T, got, want store.Account) {
	t.Helper()
	if got.Phone != want.Phone || !bytes.Equal(got.Key, want.Key) || got.Generation != want.Generation ||
		!got.Created.Equal(want.Created) || !got.Updated.Equal(want.Updated) {
		t.Fatalf("account = %+v, want %+v", got, want)
	}
}

func runAppend(t *testing.T, open Opener) {
	t.Run("AssignsConsecutiveSeqsFromOne", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{}, alice)
		before := time.Now().UnixNano()
		r1 := e.mustCommit(&store.Batch{Appends: []store.Append{{To: alice, Data: []byte("a")}, {To: alice, Data: []byte("b")}}})
		r2 := e.mustCommit(one(alice, "c"))
		if !equalSeqs(r1.Seqs, []uint64{1, 2}) || !equalSeqs(r2.Seqs, []uint64{3}) {
			t.Fatalf("seqs = %v, %v; want [1 2], [3]", r1.Seqs, r2.Seqs)
		}
		items := e.read(alice, 0, 10)
		if len(items) != 3 {
			t.Fatalf("ReadQueue returned %d items, want 3", len(items))
		}
		for i, want := range []string{"a", "b", "c"} {
			it := items[i]
			if it.Seq != uint64(i+1) || string(it.Data) != want {
				t.Fatalf("item %d = {Seq:%d Data:%q}, want {Seq:%d Data:%q}", i, it.Seq, it.Data, i+1, want)
			}
			if it.TS < before {
				t.Fatalf("item %d TS %d is before the commit started (%d)", i, it.TS, before)
			}
			if i > 0 && it.TS < items[i-1].TS {
				t.Fatalf("item %d TS %d is before item %d's %d", i, it.TS, i-1, items[i-1].TS)
			}
		}
		e.wantLen(alice, 3)
	})
	t.Run("EachQueueHasItsOwnSeqs", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{}, alice, bob)
		r := e.mustCommit(&store.Batch{Appends: []store.Append{{To: alice}, {To: bob}, {To: alice}}})
		if !equalSeqs(r.Seqs, []uint64{1, 1, 2}) {
			t.Fatalf("seqs = %v, want [1 1 2]", r.Seqs)
		}
		e.wantSeqs(alice, 1, 2)
		e.wantSeqs(bob, 1)
	})
	t.Run("UnknownUserRefusesWholeBatch", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{}, alice, bob)
		e.appendN(bob, 2)
		b := &store.Batch{
			Dedup:   &store.Dedup{Sender: bob, ClientID: 1, ServerID: 10, TS: time.Now().UnixNano()},
			Appends: []store.Append{{To: alice, Data: []byte("x")}, {To: mallory, Data: []byte("y")}},
			Acks:    []store.Ack{{User: bob, UpTo: 2}},
		}
		r := e.commit(b)
		if !errors.Is(r.Err, store.ErrUnknownUser) || len(r.Seqs) != 0 {
			t.Fatalf("Commit = %+v, want ErrUnknownUser and no seqs", r)
		}
		e.wantSeqs(alice)         // the append to a known user was not written
		e.wantSeqs(bob, 1, 2)     // nor was the ack
		e.wantSeqs(mallory)       // nor anything for the unknown user
		b.Appends = b.Appends[:1] // and the dedup record was not kept
		if r := e.mustCommit(b); !equalSeqs(r.Seqs, []uint64{1}) {
			t.Fatalf("retry without the unknown user: seqs %v, want [1]", r.Seqs)
		}
	})
}

func runDedup(t *testing.T, open Opener) {
	t.Run("SameSenderAndClientIDIsDuplicate", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{}, alice, bob)
		first := store.Dedup{Sender: alice, ClientID: 7, ServerID: 100, TS: 1000}
		e.mustCommit(&store.Batch{Dedup: &first, Appends: []store.Append{{To: bob, Data: []byte("hi")}}})
		r := e.commit(&store.Batch{
			Dedup:   &store.Dedup{Sender: alice, ClientID: 7, ServerID: 200, TS: 2000},
			Appends: []store.Append{{To: bob, Data: []byte("hi again")}},
			Acks:    []store.Ack{{User: bob, UpTo: 1}},
		})
		if r.Err != nil || r.Dup == nil || len(r.Seqs) != 0 {
			t.Fatalf("second Commit = %+v, want a Dup and no seqs", r)
		}
		if *r.Dup != first {
			t.Fatalf("Dup = %+v, want the first record %+v", *r.Dup, first)
		}
		e.wantSeqs(bob, 1) // neither the append nor the ack was written
	})
	t.Run("DifferentClientIDOrSenderIsNotDuplicate", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{}, alice, bob, carol)
		e.mustCommit(&store.Batch{Dedup: &store.Dedup{Sender: alice, ClientID: 7, ServerID: 1}, Appends: []store.Append{{To: bob}}})
		e.mustCommit(&store.Batch{Dedup: &store.Dedup{Sender: alice, ClientID: 8, ServerID: 2}, Appends: []store.Append{{To: bob}}})
		e.mustCommit(&store.Batch{Dedup: &store.Dedup{Sender: carol, ClientID: 7, ServerID: 3}, Appends: []store.Append{{To: bob}}})
		e.wantSeqs(bob, 1, 2, 3)
	})
	t.Run("FreshSkipsTheCheckAndALaterCheckFindsIt", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{}, alice, bob)
		first := store.Dedup{Sender: alice, ClientID: 9, ServerID: 100, TS: 1000, Fresh: true}
		e.mustCommit(&store.Batch{Dedup: &first, Appends: []store.Append{{To: bob}}})
		// An unmarked repeat is stored again, its record replacing the first.
		again := store.Dedup{Sender: alice, ClientID: 9, ServerID: 200, TS: 2000, Fresh: true}
		if r := e.commit(&store.Batch{Dedup: &again, Appends: []store.Append{{To: bob}}}); r.Err != nil || r.Dup != nil {
			t.Fatalf("fresh repeat = %+v, want it stored", r)
		}
		// A checked resend finds the latest record and stores nothing.
		r := e.commit(&store.Batch{Dedup: &store.Dedup{Sender: alice, ClientID: 9, ServerID: 300}, Appends: []store.Append{{To: bob}}})
		if r.Err != nil || r.Dup == nil || r.Dup.ServerID != 200 || r.Dup.TS != 2000 {
			t.Fatalf("checked resend = %+v, want a Dup of ServerID 200", r)
		}
		e.wantSeqs(bob, 1, 2)
	})
	t.Run("BatchesInFlightTogetherSeeEachOther", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{}, alice, bob)
		// Committed back to back without waiting, so a grouping store
		// decides them together; order of commit decides which one wins.
		const n = 20
		chans := make([]<-chan store.Result, n)
		for i := range chans {
			chans[i] = e.commitAsync(&store.Batch{
				Dedup:   &store.Dedup{Sender: alice, ClientID: 42, ServerID: uint64(100 + i)},
				Appends: []store.Append{{To: bob, Data: []byte{byte(i)}}},
			})
		}
		for i, ch := range chans {
			r := e.wait(ch)
			switch {
			case r.Err != nil:
				t.Fatalf("batch %d: %v", i, r.Err)
			case i == 0 && (r.Dup != nil || !equalSeqs(r.Seqs, []uint64{1})):
				t.Fatalf("batch 0 = %+v, want accepted with seq 1", r)
			case i > 0 && (r.Dup == nil || r.Dup.ServerID != 100 || len(r.Seqs) != 0):
				t.Fatalf("batch %d = %+v, want a Dup of batch 0 (ServerID 100)", i, r)
			}
		}
		e.wantSeqs(bob, 1)
	})
}

func runAck(t *testing.T, open Opener) {
	t.Run("ErasesUpToUpTo", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{}, alice)
		e.appendN(alice, 5)
		e.ack(alice, 2)
		e.wantSeqs(alice, 3, 4, 5)
		e.ack(alice, 4)
		e.wantSeqs(alice, 5)
	})
	t.Run("BelowHeadOrBeyondTailIsHarmless", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{}, alice)
		e.appendN(alice, 3)
		e.ack(alice, 2)
		e.ack(alice, 1) // already erased
		e.wantSeqs(alice, 3)
		e.ack(alice, 1000) // past the tail: erases what exists
		e.wantSeqs(alice)
		if r := e.mustCommit(one(alice, "next")); !equalSeqs(r.Seqs, []uint64{4}) {
			t.Fatalf("append after acking past the tail: seqs %v, want [4]", r.Seqs)
		}
	})
	t.Run("EmptyQueueIsHarmless", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{}, alice)
		e.ack(alice, 10)
		e.ack(mallory, 10)
		e.wantSeqs(alice)
	})
	t.Run("AckAndAppendInOneBatch", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{}, alice, bob)
		e.appendN(alice, 2)
		r := e.mustCommit(&store.Batch{Appends: []store.Append{{To: bob}}, Acks: []store.Ack{{User: alice, UpTo: 2}}})
		if !equalSeqs(r.Seqs, []uint64{1}) {
			t.Fatalf("seqs = %v, want [1]", r.Seqs)
		}
		e.wantSeqs(alice)
		e.wantSeqs(bob, 1)
	})
}

func runQueueFull(t *testing.T, open Opener) {
	t.Run("RefusesWholeBatchAndWritesNothing", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{MaxQueueLen: 3}, alice, bob)
		e.appendN(alice, 3)
		b := &store.Batch{
			Dedup:   &store.Dedup{Sender: carol, ClientID: 1, ServerID: 1},
			Appends: []store.Append{{To: bob}, {To: alice}},
		}
		r := e.commit(b)
		if !errors.Is(r.Err, store.ErrQueueFull) || len(r.Seqs) != 0 {
			t.Fatalf("Commit to a full queue = %+v, want ErrQueueFull", r)
		}
		e.wantSeqs(alice, 1, 2, 3)
		e.wantSeqs(bob) // the other append was not written
		e.ack(alice, 1)
		// Room again, and the refused batch left no dedup record behind.
		if r := e.mustCommit(b); !equalSeqs(r.Seqs, []uint64{1, 4}) {
			t.Fatalf("retry after ack: seqs %v, want [1 4]", r.Seqs)
		}
	})
	t.Run("BatchLargerThanTheRoomLeft", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{MaxQueueLen: 3}, alice)
		e.appendN(alice, 1)
		r := e.commit(&store.Batch{Appends: []store.Append{{To: alice}, {To: alice}, {To: alice}}})
		if !errors.Is(r.Err, store.ErrQueueFull) {
			t.Fatalf("Commit = %+v, want ErrQueueFull", r)
		}
		e.wantSeqs(alice, 1)
	})
	t.Run("CountsAppendsInFlight", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{MaxQueueLen: 5}, alice)
		chans := make([]<-chan store.Result, 10)
		for i := range chans {
			chans[i] = e.commitAsync(one(alice, fmt.Sprint(i)))
		}
		for i, ch := range chans {
			r := e.wait(ch)
			if i < 5 && (r.Err != nil || !equalSeqs(r.Seqs, []uint64{uint64(i + 1)})) {
				t.Fatalf("append %d = %+v, want seq %d", i, r, i+1)
			}
			if i >= 5 && !errors.Is(r.Err, store.ErrQueueFull) {
				t.Fatalf("append %d = %+v, want ErrQueueFull", i, r)
			}
		}
		e.wantSeqs(alice, 1, 2, 3, 4, 5)
	})
}

func runReadQueue(t *testing.T, open Opener) {
	t.Run("FromAndMaxBoundTheResult", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{}, alice)
		e.appendN(alice, 10)
		for _, c := range []struct {
			from uint64
			max  int
			want []uint64
		}{
			{0, 100, seqRange(1, 10)},
			{1, 100, seqRange(1, 10)},
			{4, 3, []uint64{4, 5, 6}},
			{9, 100, []uint64{9, 10}},
			{10, 1, []uint64{10}},
			{11, 5, nil},
			{1, 0, nil},
		} {
			got := e.read(alice, c.from, c.max)
			if !equalSeqs(seqsOf(got), c.want) {
				t.Errorf("ReadQueue(from %d, max %d) seqs = %v, want %v", c.from, c.max, seqsOf(got), c.want)
			}
			for _, it := range got {
				if want := fmt.Sprintf("%s#%d", alice, it.Seq-1); string(it.Data) != want {
					t.Errorf("item %d data = %q, want %q", it.Seq, it.Data, want)
				}
			}
		}
	})
	t.Run("StartsAtTheHeadAfterAcks", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{}, alice)
		e.appendN(alice, 5)
		e.ack(alice, 3)
		if got := seqsOf(e.read(alice, 1, 2)); !equalSeqs(got, []uint64{4, 5}) {
			t.Fatalf("ReadQueue(from 1, max 2) = %v, want [4 5]", got)
		}
	})
	t.Run("UnknownQueueIsEmpty", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{}, alice)
		if got := e.read(mallory, 0, 10); len(got) != 0 {
			t.Fatalf("ReadQueue(unknown) = %v, want empty", got)
		}
		e.wantLen(mallory, 0)
	})
	t.Run("DataIsACopy", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{}, alice)
		data := []byte("original")
		e.mustCommit(&store.Batch{Appends: []store.Append{{To: alice, Data: data}}})
		copy(data, "scribble") // the caller may reuse its buffer after done
		items := e.read(alice, 0, 1)
		items[0].Data[0] = 'Y' // and may scribble on what it read
		if got := e.read(alice, 0, 1); string(got[0].Data) != "original" {
			t.Fatalf("stored data = %q, want %q", got[0].Data, "original")
		}
	})
}

func runDurability(t *testing.T, open Opener) {
	t.Run("EverythingAcceptedSurvivesReopen", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{}, bob, carol)
		acct := e.putAccount(alice)
		d := store.Dedup{Sender: alice, ClientID: 5, ServerID: 77, TS: 123}
		e.mustCommit(&store.Batch{Dedup: &d, Appends: []store.Append{{To: bob, Data: []byte("b1")}, {To: carol, Data: []byte("c1")}}})
		e.appendN(bob, 3)
		e.ack(bob, 2)
		before := e.read(bob, 0, 10)

		e.reopen()

		got, err := e.s.Account(alice)
		if err != nil {
			t.Fatalf("Account after reopen: %v", err)
		}
		wantAccount(t, got, acct)
		after := e.read(bob, 0, 10)
		if len(after) != len(before) {
			t.Fatalf("bob's queue after reopen has %d items, want %d", len(after), len(before))
		}
		for i := range after {
			if after[i].Seq != before[i].Seq || after[i].TS != before[i].TS || !bytes.Equal(after[i].Data, before[i].Data) {
				t.Fatalf("item %d after reopen = %+v, want %+v", i, after[i], before[i])
			}
		}
		e.wantSeqs(bob, 3, 4)
		e.wantSeqs(carol, 1)
		r := e.commit(&store.Batch{Dedup: &store.Dedup{Sender: alice, ClientID: 5, ServerID: 78}, Appends: []store.Append{{To: bob}}})
		if r.Dup == nil || *r.Dup != d {
			t.Fatalf("dedup after reopen = %+v, want Dup %+v", r, d)
		}
	})
	t.Run("SeqsAreNeverReusedAfterEmptyAndReopen", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{}, alice)
		e.appendN(alice, 3)
		e.ack(alice, 3)
		e.wantSeqs(alice)
		if r := e.mustCommit(one(alice, "x")); !equalSeqs(r.Seqs, []uint64{4}) {
			t.Fatalf("append to emptied queue: seqs %v, want [4]", r.Seqs)
		}
		e.ack(alice, 4)
		e.reopen()
		e.wantSeqs(alice)
		// Strictly increasing, not necessarily contiguous: a store may
		// skip seqs across a restart.
		r := e.mustCommit(one(alice, "y"))
		if len(r.Seqs) != 1 || r.Seqs[0] <= 4 {
			t.Fatalf("append to emptied queue after reopen: seqs %v, want one above 4", r.Seqs)
		}
		e.wantSeqs(alice, r.Seqs[0])
		if r2 := e.mustCommit(one(alice, "z")); !equalSeqs(r2.Seqs, []uint64{r.Seqs[0] + 1}) {
			t.Fatalf("next append: seqs %v, want [%d]", r2.Seqs, r.Seqs[0]+1)
		}
	})
	t.Run("SeqsAreNeverReusedAfterManyAppends", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{}, alice, bob)
		// Batches of 100 appends, far past any lease a store may keep,
		// then an empty queue (alice) and a non-empty one (bob) reopened.
		var last uint64
		for range 30 {
			b := &store.Batch{}
			for range 100 {
				b.Appends = append(b.Appends, store.Append{To: alice}, store.Append{To: bob})
			}
			r := e.mustCommit(b)
			last = r.Seqs[len(r.Seqs)-1]
		}
		e.ack(alice, last)
		e.ack(bob, last-1)
		e.reopen()
		e.wantSeqs(alice)
		e.wantSeqs(bob, last)
		r := e.mustCommit(&store.Batch{Appends: []store.Append{{To: alice}, {To: bob}}})
		if r.Seqs[0] <= last || r.Seqs[1] != last+1 {
			t.Fatalf("after reopen: seqs %v, want alice's above %d and bob's %d (right after his last item)", r.Seqs, last, last+1)
		}
	})
	t.Run("CloseFinishesQueuedCommits", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{}, alice)
		const n = 100
		chans := make([]<-chan store.Result, n)
		for i := range chans {
			chans[i] = e.commitAsync(one(alice, fmt.Sprint(i)))
		}
		if err := e.s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		for i, ch := range chans {
			if r := e.wait(ch); r.Err != nil || !equalSeqs(r.Seqs, []uint64{uint64(i + 1)}) {
				t.Fatalf("commit %d queued before Close = %+v, want seq %d", i, r, i+1)
			}
		}
		e.s = e.open(t, e.dir, e.opts)
		e.wantSeqs(alice, seqRange(1, n)...)
	})
}

func runConcurrency(t *testing.T, open Opener) {
	t.Run("ManyCommittersKeepQueuesGapFreeAndInOrder", func(t *testing.T) {
		t.Parallel()
		users := []string{alice, bob, carol, dave, erin}
		e := newEnv(t, open, store.Options{}, users...)
		const goroutines, perG = 50, 200

		type key struct{ g, i int }
		var (
			mu     sync.Mutex
			seqOf  = make(map[key]uint64)
			failed []string
			wg     sync.WaitGroup
			stop   = make(chan struct{})
		)
		// QueueLen readers run throughout, so racing reads are exercised.
		var readers sync.WaitGroup
		for _, u := range users {
			readers.Add(1)
			go func() {
				defer readers.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					if _, err := e.s.QueueLen(u); err != nil {
						mu.Lock()
						failed = append(failed, fmt.Sprintf("QueueLen(%s): %v", u, err))
						mu.Unlock()
						return
					}
					time.Sleep(100 * time.Microsecond)
				}
			}()
		}
		for g := 0; g < goroutines; g++ {
			wg.Add(perG)
			go func() {
				// Each goroutine pipelines its commits: it does not wait
				// for one before sending the next.
				for i := 0; i < perG; i++ {
					data := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, uint32(g)), uint32(i))
					k := key{g, i}
					e.s.Commit(one(users[(g+i)%len(users)], string(data)), func(r store.Result) {
						defer wg.Done()
						mu.Lock()
						defer mu.Unlock()
						if r.Err != nil || len(r.Seqs) != 1 {
							failed = append(failed, fmt.Sprintf("goroutine %d append %d: %+v", g, i, r))
							return
						}
						seqOf[k] = r.Seqs[0]
					})
				}
			}()
		}
		waitGroup(t, &wg)
		close(stop)
		readers.Wait()
		if len(failed) > 0 {
			t.Fatalf("%d failures, first: %s", len(failed), failed[0])
		}

		total := 0
		for _, u := range users {
			items := e.read(u, 0, goroutines*perG)
			total += len(items)
			last := make(map[int]int) // goroutine -> last i seen in this queue
			for idx, it := range items {
				if it.Seq != uint64(idx+1) {
					t.Fatalf("%s: item %d has seq %d: seqs are not gap-free from 1", u, idx, it.Seq)
				}
				g, i := int(binary.BigEndian.Uint32(it.Data)), int(binary.BigEndian.Uint32(it.Data[4:]))
				if prev, ok := last[g]; ok && i <= prev {
					t.Fatalf("%s: goroutine %d's append %d is after its append %d", u, g, i, prev)
				}
				last[g] = i
				if s := seqOf[key{g, i}]; s != it.Seq {
					t.Fatalf("%s: goroutine %d append %d was reported as seq %d but is at seq %d", u, g, i, s, it.Seq)
				}
			}
			e.wantLen(u, len(items))
		}
		if total != goroutines*perG {
			t.Fatalf("queues hold %d items in all, want %d", total, goroutines*perG)
		}
	})
}

func waitGroup(t *testing.T, wg *sync.WaitGroup) {
	t.Helper()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(waitTimeout):
		t.Fatalf("not every done callback was called within %v", waitTimeout)
	}
}

func runReserveIDs(t *testing.T, open Opener) {
	t.Run("RangesNeverOverlapAcrossCallsAndReopen", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{})
		type span struct{ first, n uint64 }
		var (
			mu    sync.Mutex
			spans []span
			wg    sync.WaitGroup
		)
		reserve := func(n uint64) {
			first, err := e.s.ReserveIDs(n)
			if err != nil {
				t.Errorf("ReserveIDs(%d): %v", n, err)
				return
			}
			if first == 0 {
				t.Errorf("ReserveIDs(%d) = 0; ids start above 0", n)
			}
			mu.Lock()
			spans = append(spans, span{first, n})
			mu.Unlock()
		}
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 10; i++ {
					reserve(uint64(1 + (g+i)%5))
				}
			}()
		}
		wg.Wait()
		e.reopen()
		reserve(3)
		reserve(1)
		seen := make(map[uint64]bool)
		for _, s := range spans {
			for id := s.first; id < s.first+s.n; id++ {
				if seen[id] {
					t.Fatalf("id %d handed out twice", id)
				}
				seen[id] = true
			}
		}
	})
}

func runExpiry(t *testing.T, open Opener) {
	const maxAge = time.Hour
	type expiredItem struct {
		user string
		it   store.Item
	}
	// recorder collects what OnExpire reports.
	type recorder struct {
		mu    sync.Mutex
		items []expiredItem
	}
	withRecorder := func(opts store.Options) (store.Options, *recorder) {
		rec := &recorder{}
		opts.OnExpire = func(user string, it store.Item) {
			rec.mu.Lock()
			rec.items = append(rec.items, expiredItem{user, it})
			rec.mu.Unlock()
		}
		return opts, rec
	}

	t.Run("SweepExpiresOldItemsAndReportsEach", func(t *testing.T) {
		t.Parallel()
		opts, rec := withRecorder(store.Options{MaxAge: maxAge})
		e := newEnv(t, open, opts, alice, bob)
		sw := e.sweeper()
		e.appendN(alice, 3)
		e.appendN(bob, 1)
		var newest int64
		for _, u := range []string{alice, bob} {
			for _, it := range e.read(u, 0, 10) {
				newest = max(newest, it.TS)
			}
		}
		n, err := sw.Sweep(time.Unix(0, newest+1).Add(maxAge))
		if err != nil || n != 4 {
			t.Fatalf("Sweep = %d, %v; want 4 expired", n, err)
		}
		e.wantSeqs(alice)
		e.wantSeqs(bob)
		rec.mu.Lock()
		defer rec.mu.Unlock()
		if len(rec.items) != 4 {
			t.Fatalf("OnExpire called %d times, want 4", len(rec.items))
		}
		for _, x := range rec.items {
			want := fmt.Sprintf("%s#%d", x.user, x.it.Seq-1)
			if (x.user != alice && x.user != bob) || string(x.it.Data) != want {
				t.Fatalf("OnExpire(%s, seq %d, %q), want data %q", x.user, x.it.Seq, x.it.Data, want)
			}
		}
		if r := e.mustCommit(one(alice, "later")); !equalSeqs(r.Seqs, []uint64{4}) {
			t.Fatalf("append after expiry: seqs %v, want [4]", r.Seqs)
		}
	})
	t.Run("SweepLeavesYoungItems", func(t *testing.T) {
		t.Parallel()
		opts, rec := withRecorder(store.Options{MaxAge: maxAge})
		e := newEnv(t, open, opts, alice)
		sw := e.sweeper()
		e.appendN(alice, 1)
		old := e.read(alice, 0, 1)[0]
		for time.Now().UnixNano() <= old.TS+2 { // let the clock move on
			time.Sleep(time.Millisecond)
		}
		e.appendN(alice, 1)
		young := e.read(alice, 2, 1)[0]
		if young.TS <= old.TS+1 {
			t.Fatalf("second item's TS %d is not after the first's %d", young.TS, old.TS)
		}
		// A moment at which the first item is past MaxAge and the second
		// is not.
		now := time.Unix(0, old.TS+(young.TS-old.TS)/2).Add(maxAge)
		n, err := sw.Sweep(now)
		if err != nil || n != 1 {
			t.Fatalf("Sweep = %d, %v; want 1 expired", n, err)
		}
		e.wantSeqs(alice, 2)
		rec.mu.Lock()
		defer rec.mu.Unlock()
		if len(rec.items) != 1 || rec.items[0].it.Seq != 1 || rec.items[0].user != alice {
			t.Fatalf("OnExpire calls = %+v, want one for %s seq 1", rec.items, alice)
		}
	})
	t.Run("SweepRemovesOldDedupRecords", func(t *testing.T) {
		t.Parallel()
		const ttl = time.Hour
		e := newEnv(t, open, store.Options{DedupTTL: ttl}, alice, bob)
		sw := e.sweeper()
		now := time.Now()
		oldD := store.Dedup{Sender: alice, ClientID: 1, ServerID: 1, TS: now.Add(-2 * ttl).UnixNano()}
		youngD := store.Dedup{Sender: alice, ClientID: 2, ServerID: 2, TS: now.UnixNano()}
		e.mustCommit(&store.Batch{Dedup: &oldD, Appends: []store.Append{{To: bob}}})
		e.mustCommit(&store.Batch{Dedup: &youngD, Appends: []store.Append{{To: bob}}})
		if _, err := sw.Sweep(now); err != nil {
			t.Fatalf("Sweep: %v", err)
		}
		again := oldD
		again.ServerID = 3
		if r := e.commit(&store.Batch{Dedup: &again, Appends: []store.Append{{To: bob}}}); r.Err != nil || r.Dup != nil {
			t.Fatalf("reusing an expired dedup key = %+v, want accepted", r)
		}
		if r := e.commit(&store.Batch{Dedup: &youngD, Appends: []store.Append{{To: bob}}}); r.Dup == nil {
			t.Fatalf("young dedup record = %+v, want still a Dup", r)
		}
		e.wantLen(bob, 3) // the queue itself was young: untouched
	})
	t.Run("SweeperRunsOnItsOwn", func(t *testing.T) {
		t.Parallel()
		expired := make(chan store.Item, 1)
		opts := store.Options{
			MaxAge:     time.Nanosecond,
			SweepEvery: 5 * time.Millisecond,
			OnExpire: func(_ string, it store.Item) {
				select {
				case expired <- it:
				default: // OnExpire must not block the sweeper
				}
			},
		}
		e := newEnv(t, open, opts, alice)
		e.appendN(alice, 1)
		select {
		case it := <-expired:
			if it.Seq != 1 {
				t.Fatalf("expired seq %d, want 1", it.Seq)
			}
		case <-time.After(waitTimeout):
			t.Fatalf("the sweeper expired nothing within %v", waitTimeout)
		}
		e.wantSeqs(alice) // OnExpire comes after the erasure
	})
}

func runClose(t *testing.T, open Opener) {
	t.Run("CommitAfterCloseReportsErrClosed", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{}, alice)
		if err := e.s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if r := e.commit(one(alice, "late")); !errors.Is(r.Err, store.ErrClosed) {
			t.Fatalf("Commit after Close = %+v, want ErrClosed", r)
		}
	})
	t.Run("CloseTwiceIsHarmless", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{})
		if err := e.s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := e.s.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	})
}

// ackFrom is the batch a session makes when reader acks up to upTo, all of
// it from sender: the ack, sender's delivered receipt, and the record.
func ackFrom(reader, sender string, upTo uint64) *store.Batch {
	return &store.Batch{
		Acks:     []store.Ack{{User: reader, UpTo: upTo}},
		Appends:  []store.Append{{To: sender, Data: []byte("delivered")}},
		Received: []string{sender},
	}
}

func (e *env) wantReceived(reader, sender string, want bool) {
	e.t.Helper()
	got, err := e.s.ReceivedFrom(reader, sender)
	if err != nil {
		e.t.Fatalf("ReceivedFrom(%s, %s): %v", reader, sender, err)
	}
	if got != want {
		e.t.Fatalf("ReceivedFrom(%s, %s) = %v, want %v", reader, sender, got, want)
	}
}

func runReceived(t *testing.T, open Opener) {
	t.Run("RecordedWithTheAck", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{}, alice, bob, carol)
		e.appendN(bob, 2)
		e.wantReceived(bob, alice, false)
		e.mustCommit(ackFrom(bob, alice, 2))
		e.wantSeqs(bob)
		e.wantReceived(bob, alice, true)
		e.wantReceived(alice, bob, false) // one way only
		e.wantReceived(bob, carol, false)
		e.wantReceived(carol, alice, false)
	})
	t.Run("EverySenderOfTheAck", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{}, alice, bob, carol)
		e.appendN(bob, 2)
		b := ackFrom(bob, alice, 2)
		b.Received = append(b.Received, carol)
		e.mustCommit(b)
		e.wantReceived(bob, alice, true)
		e.wantReceived(bob, carol, true)
	})
	t.Run("UnknownPairIsFalse", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{}, alice)
		e.wantReceived(mallory, alice, false)
		e.wantReceived(alice, mallory, false)
	})
	t.Run("NotWrittenWithoutAnAck", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{}, alice, bob)
		e.mustCommit(&store.Batch{Appends: []store.Append{{To: alice}}, Received: []string{alice}})
		e.wantReceived(bob, alice, false)
	})
	t.Run("NotWrittenWhenTheBatchIsRefused", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{MaxQueueLen: 1}, alice, bob)
		e.appendN(alice, 1) // alice's queue is full: her receipt is refused
		e.appendN(bob, 1)
		if r := e.commit(ackFrom(bob, alice, 1)); !errors.Is(r.Err, store.ErrQueueFull) {
			t.Fatalf("ack with a receipt to a full queue = %+v, want ErrQueueFull", r)
		}
		e.wantSeqs(bob, 1)
		e.wantReceived(bob, alice, false)
	})
	t.Run("SurvivesReopen", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, open, store.Options{}, alice, bob)
		e.appendN(bob, 1)
		e.mustCommit(ackFrom(bob, alice, 1))
		e.reopen()
		e.wantReceived(bob, alice, true)
		e.wantReceived(alice, bob, false)
	})
	t.Run("ExpiresAfterMaxAge", func(t *testing.T) {
		t.Parallel()
		const maxAge = 2 * time.Second
		e := newEnv(t, open, store.Options{MaxAge: maxAge}, alice, bob)
		e.appendN(bob, 1)
		start := time.Now()
		e.mustCommit(ackFrom(bob, alice, 1))
		ok, err := e.s.ReceivedFrom(bob, alice)
		if err != nil || (!ok && time.Since(start) < maxAge) {
			t.Fatalf("ReceivedFrom right after the ack = %v, %v; want true", ok, err)
		}
		for deadline := time.Now().Add(waitTimeout); ok; {
			if time.Now().After(deadline) {
				t.Fatalf("ReceivedFrom still true %v after the ack, with MaxAge %v", waitTimeout, maxAge)
			}
			time.Sleep(100 * time.Millisecond)
			if ok, err = e.s.ReceivedFrom(bob, alice); err != nil {
				t.Fatalf("ReceivedFrom: %v", err)
			}
		}
		if time.Since(start) < maxAge {
			t.Fatalf("ReceivedFrom false %v after the ack, before MaxAge %v", time.Since(start), maxAge)
		}
	})
}
