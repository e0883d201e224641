// Package mediatest is the conformance suite every media.BlobStore must
// pass: the contract documented on media.BlobStore, one behaviour per
// subtest, named so that the list reads as a specification.
package mediatest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/parleyhq/parley/media"
)

// Opener returns an empty store for one subtest; the store is the
// caller's to clean up (with t.Cleanup).
type Opener = func(t *testing.T) media.BlobStore

// guard bounds each subtest's calls: a hang guard, not a performance
// check.
const guard = time.Minute

// bigSize is larger than an object store's chunk (128 KiB in NATS) and
// not a multiple of it, so that reads and seeks cross chunk boundaries.
const bigSize = 300<<10 + 17

// Run runs the whole suite against the stores open returns.
func Run(t *testing.T, open Opener) {
	for _, c := range []struct {
		name string
		f    func(*testing.T, media.BlobStore)
	}{
		{"NothingVisibleBeforeCommit", nothingVisibleBeforeCommit},
		{"CommitKeepsContentAndMeta", commitKeepsContentAndMeta},
		{"OpenSeeksAcrossTheBlob", openSeeksAcrossTheBlob},
		{"EmptyBlob", emptyBlob},
		{"AbortLeavesNothing", abortLeavesNothing},
		{"AbortAfterCommitDoesNothing", abortAfterCommitDoesNothing},
		{"DeleteThenNotFound", deleteThenNotFound},
		{"AbsentKeyIsNotFound", absentKeyIsNotFound},
		{"MalformedKeysRefused", malformedKeysRefused},
		{"ListStopsAtCallbackError", listStopsAtCallbackError},
		{"ConcurrentUploads", concurrentUploads},
		{"CanceledContextFails", canceledContextFails},
	} {
		t.Run(c.name, func(t *testing.T) { c.f(t, open(t)) })
	}
}

// t0 is a fixed time with no monotonic reading, as Meta holds after a
// round trip through JSON.
var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// NewKey returns a fresh key of the form media.ValidKey accepts.
func NewKey() string {
	var b [32]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func ctxOf(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), guard)
	t.Cleanup(cancel)
	return ctx
}

func metaFor(content []byte) media.Meta {
	return media.Meta{
		Owner: "+14155550100", Size: int64(len(content)), MIME: "application/octet-stream",
		SHA256: fmt.Sprintf("%x", len(content)), Created: t0, Expires: t0.Add(time.Hour),
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func sameMeta(a, b media.Meta) bool {
	return a.Owner == b.Owner && a.Size == b.Size && a.MIME == b.MIME && a.SHA256 == b.SHA256 &&
		a.Created.Equal(b.Created) && a.Expires.Equal(b.Expires)
}

// put stores content under a new key and returns the key and its Meta.
func put(t *testing.T, s media.BlobStore, content []byte) (string, media.Meta) {
	t.Helper()
	ctx := ctxOf(t)
	key := NewKey()
	w, err := s.Create(ctx, key)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	defer w.Abort()
	if _, err := w.Write(content); err != nil {
		t.Fatalf("Write: %v", err)
	}
	m := metaFor(content)
	if err := w.Commit(ctx, m); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	return key, m
}

// listed returns what List reports, by key.
func listed(t *testing.T, s media.BlobStore) map[string]media.Meta {
	t.Helper()
	out := map[string]media.Meta{}
	if err := s.List(ctxOf(t), func(k string, m media.Meta) error { out[k] = m; return nil }); err != nil {
		t.Fatalf("List: %v", err)
	}
	return out
}

// readAll opens key and returns its content and Meta.
func readAll(t *testing.T, s media.BlobStore, key string) ([]byte, media.Meta) {
	t.Helper()
	rc, m, err := s.Open(ctxOf(t), key)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return b, m
}

// absent checks that nothing of key is seen by Open, Stat or List.
func absent(t *testing.T, s media.BlobStore, key, when string) {
	t.Helper()
	ctx := ctxOf(t)
	if _, err := s.Stat(ctx, key); !errors.Is(err, media.ErrNotFound) {
		t.Errorf("%s: Stat: %v, want ErrNotFound", when, err)
	}
	if rc, _, err := s.Open(ctx, key); !errors.Is(err, media.ErrNotFound) {
		if rc != nil {
			rc.Close()
		}
		t.Errorf("%s: Open: %v, want ErrNotFound", when, err)
	}
	if _, ok := listed(t, s)[key]; ok {
		t.Errorf("%s: List reports it", when)
	}
}

func nothingVisibleBeforeCommit(t *testing.T, s media.BlobStore) {
	ctx := ctxOf(t)
	key := NewKey()
	w, err := s.Create(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort()
	io.WriteString(w, "hello")
	absent(t, s, key, "before Commit")
	if err := w.Commit(ctx, metaFor([]byte("hello"))); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stat(ctx, key); err != nil {
		t.Errorf("after Commit: Stat: %v", err)
	}
}

func commitKeepsContentAndMeta(t *testing.T, s media.BlobStore) {
	content := randomBytes(bigSize)
	key, m := put(t, s, content)
	got, err := s.Stat(ctxOf(t), key)
	if err != nil || !sameMeta(got, m) {
		t.Errorf("Stat = %+v, %v; want %+v", got, err, m)
	}
	b, got := readAll(t, s, key)
	if !bytes.Equal(b, content) {
		t.Errorf("read %d bytes, not the %d written", len(b), len(content))
	}
	if !sameMeta(got, m) {
		t.Errorf("Open's Meta = %+v, want %+v", got, m)
	}
	if got, ok := listed(t, s)[key]; !ok || !sameMeta(got, m) {
		t.Errorf("List: %v %+v, want %+v", ok, got, m)
	}
}

// openSeeksAcrossTheBlob is what range requests (http.ServeContent) do:
// find the size by seeking to the end, then read from offsets in any
// order.
func openSeeksAcrossTheBlob(t *testing.T, s media.BlobStore) {
	content := randomBytes(bigSize)
	key, _ := put(t, s, content)
	rc, _, err := s.Open(ctxOf(t), key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if n, err := rc.Seek(0, io.SeekEnd); err != nil || n != int64(len(content)) {
		t.Fatalf("Seek(0, End) = %d, %v; want %d", n, err, len(content))
	}
	for _, r := range []struct{ off, n int64 }{
		{200 << 10, 1000},                   // inside the second chunk
		{128<<10 - 10, 20},                  // across a chunk boundary
		{0, 5},                              // back to the start
		{int64(len(content)) - 7, 7},        // the last bytes
		{int64(len(content)) / 2, 64 << 10}, // a long read
	} {
		if got, err := rc.Seek(r.off, io.SeekStart); err != nil || got != r.off {
			t.Fatalf("Seek(%d) = %d, %v", r.off, got, err)
		}
		b := make([]byte, r.n)
		if _, err := io.ReadFull(rc, b); err != nil {
			t.Fatalf("read %d at %d: %v", r.n, r.off, err)
		}
		if !bytes.Equal(b, content[r.off:r.off+r.n]) {
			t.Errorf("bytes %d-%d differ from what was written", r.off, r.off+r.n-1)
		}
	}
}

func emptyBlob(t *testing.T, s media.BlobStore) {
	key, m := put(t, s, nil)
	b, got := readAll(t, s, key)
	if len(b) != 0 || !sameMeta(got, m) {
		t.Errorf("read %d bytes, Meta %+v; want none, %+v", len(b), got, m)
	}
}

func abortLeavesNothing(t *testing.T, s media.BlobStore) {
	ctx := ctxOf(t)
	key := NewKey()
	w, err := s.Create(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(randomBytes(bigSize))
	if err := w.Abort(); err != nil {
		t.Fatalf("Abort: %v", err)
	}
	if err := w.Abort(); err != nil {
		t.Errorf("second Abort: %v", err)
	}
	if err := w.Commit(ctx, metaFor(nil)); err == nil {
		t.Error("Commit after Abort succeeded")
	}
	absent(t, s, key, "after Abort")
}

func abortAfterCommitDoesNothing(t *testing.T, s media.BlobStore) {
	ctx := ctxOf(t)
	key := NewKey()
	w, err := s.Create(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, "kept")
	if err := w.Commit(ctx, metaFor([]byte("kept"))); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(); err != nil {
		t.Errorf("Abort after Commit: %v", err)
	}
	if err := w.Commit(ctx, metaFor([]byte("kept"))); err == nil {
		t.Error("a second Commit succeeded")
	}
	if b, _ := readAll(t, s, key); string(b) != "kept" {
		t.Errorf("after Abort: read %q", b)
	}
}

func deleteThenNotFound(t *testing.T, s media.BlobStore) {
	ctx := ctxOf(t)
	key, _ := put(t, s, []byte("short-lived"))
	other, _ := put(t, s, []byte("stays"))
	if err := s.Delete(ctx, key); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if err := s.Delete(ctx, key); !errors.Is(err, media.ErrNotFound) {
		t.Errorf("second Delete: %v, want ErrNotFound", err)
	}
	absent(t, s, key, "after Delete")
	if b, _ := readAll(t, s, other); string(b) != "stays" {
		t.Errorf("another blob reads %q after the Delete", b)
	}
}

func absentKeyIsNotFound(t *testing.T, s media.BlobStore) {
	key := NewKey()
	absent(t, s, key, "never stored")
	if err := s.Delete(ctxOf(t), key); !errors.Is(err, media.ErrNotFound) {
		t.Errorf("Delete: %v, want ErrNotFound", err)
	}
}

func malformedKeysRefused(t *testing.T, s media.BlobStore) {
	ctx := ctxOf(t)
	for _, key := range []string{"", "../secret", "/etc/passwd", "ab", "0000000000000000000000000000000000000000000000000000000000000/..",
		"000000000000000000000000000000000000000000000000000000000000000G", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
		"00000000000000000000000000000000000000000000000000000000000000.*"} {
		if w, err := s.Create(ctx, key); err == nil {
			w.Abort()
			t.Errorf("Create(%q) accepted", key)
		}
		if _, _, err := s.Open(ctx, key); err == nil || errors.Is(err, media.ErrNotFound) {
			t.Errorf("Open(%q): %v, want a malformed-key error", key, err)
		}
		if _, err := s.Stat(ctx, key); err == nil || errors.Is(err, media.ErrNotFound) {
			t.Errorf("Stat(%q): %v, want a malformed-key error", key, err)
		}
		if err := s.Delete(ctx, key); err == nil || errors.Is(err, media.ErrNotFound) {
			t.Errorf("Delete(%q): %v, want a malformed-key error", key, err)
		}
	}
	if l := listed(t, s); len(l) != 0 {
		t.Errorf("List after refusals: %v", l)
	}
}

func listStopsAtCallbackError(t *testing.T, s media.BlobStore) {
	for range 3 {
		put(t, s, []byte("x"))
	}
	stop := errors.New("enough")
	calls := 0
	err := s.List(ctxOf(t), func(string, media.Meta) error { calls++; return stop })
	if !errors.Is(err, stop) || calls != 1 {
		t.Errorf("List = %v after %d calls; want the callback's error after 1", err, calls)
	}
}

func concurrentUploads(t *testing.T, s media.BlobStore) {
	const n = 8
	keys := make([]string, n)
	contents := make([][]byte, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		contents[i] = randomBytes(1000 + i*(40<<10))
		keys[i] = NewKey()
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := ctxOf(t)
			w, err := s.Create(ctx, keys[i])
			if err != nil {
				errs <- err
				return
			}
			defer w.Abort()
			for c := contents[i]; len(c) > 0; {
				k := min(len(c), 4096) // many small writes, as an upload's copy makes
				if _, err := w.Write(c[:k]); err != nil {
					errs <- err
					return
				}
				c = c[k:]
			}
			if err := w.Commit(ctx, metaFor(contents[i])); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	l := listed(t, s)
	for i, k := range keys {
		if m, ok := l[k]; !ok || m.Size != int64(len(contents[i])) {
			t.Errorf("upload %d: listed %v, %+v", i, ok, m)
			continue
		}
		if b, _ := readAll(t, s, k); !bytes.Equal(b, contents[i]) {
			t.Errorf("upload %d reads back differently", i)
		}
	}
}

func canceledContextFails(t *testing.T, s media.BlobStore) {
	key, _ := put(t, s, []byte("here"))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.Stat(ctx, key); err == nil {
		t.Error("Stat with a canceled context succeeded")
	}
	if rc, _, err := s.Open(ctx, key); err == nil {
		rc.Close()
		t.Error("Open with a canceled context succeeded")
	}
	if err := s.Delete(ctx, key); err == nil {
		t.Error("Delete with a canceled context succeeded")
	}
	if w, err := s.Create(ctx, NewKey()); err == nil {
		w.Abort()
		t.Error("Create with a canceled context succeeded")
	}
	if _, err := s.Stat(ctxOf(t), key); err != nil {
		t.Errorf("the blob after canceled calls: %v", err)
	}
}
