package objstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	njs "github.com/nats-io/nats.go/jetstream"

	"github.com/parleyhq/parley/internal/natstest"
	"github.com/parleyhq/parley/media"
	"github.com/parleyhq/parley/media/mediatest"
	"github.com/parleyhq/parley/media/objstore"
)

// guard bounds each call of these tests: a hang guard, not a performance
// check.
const guard = 30 * time.Second

// open returns a store on ns in a bucket of its own, spooling under
// spool.
func open(t *testing.T, ns *server.Server, bucket, spool string, memoryMax int64) *objstore.Store {
	t.Helper()
	js, err := njs.New(natstest.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), guard)
	defer cancel()
	s, err := objstore.Open(ctx, js, objstore.Options{Bucket: bucket, SpoolDir: spool, MemoryMax: memoryMax})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

// TestConformance runs the BlobStore suite twice: blobs read into
// memory (the default bound, above every blob of the suite) and every
// blob spooled to a file.
func TestConformance(t *testing.T) {
	ns := natstest.StartServer(t, "")
	for _, c := range []struct {
		name      string
		memoryMax int64
	}{{"InMemory", 0}, {"Spooled", -1}} {
		t.Run(c.name, func(t *testing.T) {
			n := 0
			mediatest.Run(t, func(t *testing.T) media.BlobStore {
				n++
				return open(t, ns, fmt.Sprintf("media_%s_%d", c.name, n), t.TempDir(), c.memoryMax)
			})
		})
	}
}

func spoolFiles(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func put(t *testing.T, s media.BlobStore, key string, content []byte) media.Meta {
	t.Helper()
	w, err := s.Create(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort()
	w.Write(content)
	m := media.Meta{Owner: "+14155550100", Size: int64(len(content)), MIME: "text/plain; charset=utf-8",
		Created: time.Unix(1e9, 0).UTC(), Expires: time.Unix(2e9, 0).UTC()}
	if err := w.Commit(t.Context(), m); err != nil {
		t.Fatal(err)
	}
	return m
}

// The spool holds an upload until Commit or Abort and a large download
// only as an unlinked file: nothing is left on the node's disk.
func TestSpoolLeavesNothing(t *testing.T) {
	ns := natstest.StartServer(t, "")
	spool := t.TempDir()
	s := open(t, ns, "media", spool, 10)

	key := mediatest.NewKey()
	w, err := s.Create(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("half an upload"))
	if f := spoolFiles(t, spool); len(f) != 1 {
		t.Errorf("while uploading: %v, want one spool file", f)
	}
	w.Abort()
	if f := spoolFiles(t, spool); len(f) != 0 {
		t.Errorf("after Abort: %v", f)
	}

	content := bytes.Repeat([]byte("0123456789"), 100)
	put(t, s, key, content)
	if f := spoolFiles(t, spool); len(f) != 0 {
		t.Errorf("after Commit: %v", f)
	}
	rc, _, err := s.Open(t.Context(), key) // over MemoryMax: spooled
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if f := spoolFiles(t, spool); len(f) != 0 {
		t.Errorf("while a download is open: %v, want its file unlinked", f)
	}
	if b, err := io.ReadAll(rc); err != nil || !bytes.Equal(b, content) {
		t.Errorf("read %d bytes, %v", len(b), err)
	}
}

// What a crash leaves in the spool goes with the sweep, once old enough.
func TestRemoveStale(t *testing.T) {
	ns := natstest.StartServer(t, "")
	spool := t.TempDir()
	s := open(t, ns, "media", spool, 0)
	for _, name := range []string{"upload-1", "download-2", "other"} {
		if err := os.WriteFile(filepath.Join(spool, name), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	w, _ := s.Create(t.Context(), mediatest.NewKey()) // in progress: fresh
	defer w.Abort()
	old := time.Now().Add(-2 * time.Hour)
	for _, name := range []string{"upload-1", "download-2", "other"} {
		os.Chtimes(filepath.Join(spool, name), old, old)
	}
	n, err := s.RemoveStale(t.Context(), time.Now().Add(-time.Hour))
	if err != nil || n != 2 {
		t.Errorf("RemoveStale = %d, %v; want 2", n, err)
	}
	if f := spoolFiles(t, spool); len(f) != 2 {
		t.Errorf("left: %v, want the upload in progress and the file not ours", f)
	}
}

// Two stores on one bucket, as two nodes of a cluster have: a blob one
// commits, the other serves at once; one deletes it, the other no longer
// sees it. And a store opened again (a node restarted) finds what was
// there.
func TestStoresShareTheBucket(t *testing.T) {
	ns := natstest.StartServer(t, "")
	a := open(t, ns, "media", t.TempDir(), 0)
	b := open(t, ns, "media", t.TempDir(), 0)
	key := mediatest.NewKey()
	m := put(t, a, key, []byte("from node a"))
	rc, got, err := b.Open(t.Context(), key)
	if err != nil {
		t.Fatalf("Open on the other store: %v", err)
	}
	body, _ := io.ReadAll(rc)
	rc.Close()
	if string(body) != "from node a" || got.Owner != m.Owner || !got.Expires.Equal(m.Expires) {
		t.Errorf("read %q, %+v", body, got)
	}
	c := open(t, ns, "media", t.TempDir(), 0)
	if _, err := c.Stat(t.Context(), key); err != nil {
		t.Errorf("reopened: Stat: %v", err)
	}
	if err := b.Delete(t.Context(), key); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Stat(t.Context(), key); !errors.Is(err, media.ErrNotFound) {
		t.Errorf("after the other's Delete: Stat %v, want ErrNotFound", err)
	}
}

// An object without a readable Meta is reported, not listed, and does
// not stop List; Stat says what is wrong with it.
func TestListSkipsDamage(t *testing.T) {
	ns := natstest.StartServer(t, "")
	s := open(t, ns, "media", t.TempDir(), 0)
	good := mediatest.NewKey()
	put(t, s, good, []byte("x"))

	js, _ := njs.New(natstest.Connect(t, ns))
	obs, err := js.ObjectStore(t.Context(), "media")
	if err != nil {
		t.Fatal(err)
	}
	bad := mediatest.NewKey()
	if _, err := obs.Put(t.Context(), njs.ObjectMeta{Name: bad, Metadata: map[string]string{"parley-meta": "{not json"}}, bytes.NewReader([]byte("y"))); err != nil {
		t.Fatal(err)
	}
	if _, err := obs.PutString(t.Context(), "not-a-key", "someone else's"); err != nil {
		t.Fatal(err)
	}

	var listed []string
	err = s.List(t.Context(), func(k string, _ media.Meta) error { listed = append(listed, k); return nil })
	if err == nil {
		t.Error("damaged Meta not reported")
	}
	if len(listed) != 1 || listed[0] != good {
		t.Errorf("listed %v, want only %s", listed, good)
	}
	if _, err := s.Stat(t.Context(), bad); err == nil || errors.Is(err, media.ErrNotFound) {
		t.Errorf("Stat of the damaged blob: %v, want an error that says so", err)
	}
}

// A store whose server is gone answers within its Timeout, with an error
// that says what failed.
func TestRequestsAreBounded(t *testing.T) {
	ns := natstest.StartServer(t, "")
	s := open(t, ns, "media", t.TempDir(), 0)
	key := mediatest.NewKey()
	put(t, s, key, []byte("x"))
	ns.Shutdown()
	ns.WaitForShutdown()
	start := time.Now()
	_, err := s.Stat(context.Background(), key)
	if err == nil || errors.Is(err, media.ErrNotFound) {
		t.Errorf("Stat with the server gone: %v", err)
	}
	if d := time.Since(start); d > objstore.DefaultTimeout+time.Second {
		t.Errorf("Stat took %s, over its %s timeout", d, objstore.DefaultTimeout)
	}
	t.Logf("Stat: %v", err)
}
