package media

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// spyStore records every key the Service hands its store.
type spyStore struct {
	BlobStore
	mu   sync.Mutex
	keys []string
}

func (s *spyStore) saw(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys = append(s.keys, key)
}

func (s *spyStore) Open(ctx context.Context, key string) (io.ReadSeekCloser, Meta, error) {
	s.saw(key)
	return s.BlobStore.Open(ctx, key)
}

func (s *spyStore) Stat(ctx context.Context, key string) (Meta, error) {
	s.saw(key)
	return s.BlobStore.Stat(ctx, key)
}

func (s *spyStore) Delete(ctx context.Context, key string) error {
	s.saw(key)
	return s.BlobStore.Delete(ctx, key)
}

// rawRequest sends a request line exactly as written (no client cleans the
// path) and returns the answer.
func rawRequest(t *testing.T, addr, method, target, auth string) reply {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := lines(method+" "+target+" HTTP/1.1", "Host: x", "Connection: close")
	if auth != "" {
		req += "\r\nAuthorization: Bearer " + auth
	}
	fmt.Fprint(c, req+"\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return reply{resp.StatusCode, resp.Header, b}
}

func TestNotFoundIsAlwaysTheSame(t *testing.T) {
	e := newEnv(t, nil)
	swept := e.uploadOK("+14155550100", []byte("swept"))
	e.clock.Add(time.Hour)
	lapsed := e.uploadOK("+14155550100", []byte("expired, not yet swept"))
	e.clock.Add(DefaultTTL - time.Hour)
	if n, err := e.svc.Sweep(t.Context(), e.clock.Now()); n != 1 || err != nil {
		t.Fatalf("sweep removed %d (%v), want 1", n, err)
	}
	e.clock.Add(time.Hour)
	mangled := []byte(swept.ID)
	mangled[3] ^= 1

	want := e.get(validUnknownID(), nil)
	if want.status != http.StatusNotFound || errorOf(t, want).Code != CodeNotFound {
		t.Fatalf("unknown id: %d %s", want.status, want.body)
	}
	for name, path := range map[string]string{
		"expired and swept":     "/v1/media/" + swept.ID,
		"expired, not swept":    "/v1/media/" + lapsed.ID,
		"one bit off":           "/v1/media/" + string(mangled),
		"too short":             "/v1/media/" + swept.ID[:21],
		"too long":              "/v1/media/" + swept.ID + "A",
		"non-canonical":         "/v1/media/" + swept.ID[:21] + "B",
		"padding":               "/v1/media/" + swept.ID[:20] + "==",
		"standard base64":       "/v1/media/+/" + swept.ID[2:],
		"empty":                 "/v1/media/",
		"sub-path":              "/v1/media/" + swept.ID + "/x",
		"other endpoint":        "/v1/other",
		"query does not matter": "/v1/media/" + swept.ID + "?x=1",
	} {
		got := e.get(strings.TrimPrefix(path, "/v1/media/"), nil)
		if path == "/v1/other" {
			got = e.do(http.MethodGet, path, "", nil, nil)
		}
		if got.status != want.status || !bytes.Equal(got.body, want.body) || got.header.Get("Content-Type") != want.header.Get("Content-Type") {
			t.Errorf("%s: %d %q; want the same 404 as an unknown id", name, got.status, got.body)
		}
	}
}

func TestPathTraversalNeverReachesTheStore(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "media")
	secret := filepath.Join(root, "secret")
	if err := os.WriteFile(secret, []byte("top secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	fs, err := NewFSStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	spy := &spyStore{BlobStore: fs}
	e := newEnv(t, func(c *Config) { c.Dir = ""; c.Store = spy })
	want := e.get(validUnknownID(), nil).body
	spy.keys = nil

	addr := e.srv.Listener.Addr().String()
	tok := e.token("+14155550100")
	for _, target := range []string{
		"/v1/media/../secret",
		"/v1/media/../../secret",
		"/v1/media/%2e%2e/secret",
		"/v1/media/%2e%2e%2fsecret",
		"/v1/media/..%2f..%2fsecret",
		"/v1/media/..%5c..%5csecret",
		"/v1/media//etc/passwd",
		"/v1/media/%2fetc%2fpasswd",
		"/v1/media/" + url22(secret),
		"/v1/media/../../../../../../../../../../../../etc/passwd",
		"/v1/media/......................",
		"/v1/media/..%2f..%2f..%2f..%2f..%2fsecret",
		"/v1/media/%00" + strings.Repeat("A", 21),
		"/v1/media/" + strings.Repeat("A", 21) + "%00",
	} {
		for _, method := range []string{http.MethodGet, http.MethodHead, http.MethodDelete} {
			r := rawRequest(t, addr, method, target, tok)
			if r.status != http.StatusNotFound {
				t.Errorf("%s %s: %d, want 404", method, target, r.status)
			}
			if method != http.MethodHead && !bytes.Equal(r.body, want) {
				t.Errorf("%s %s: body %q, want the 404 of an unknown id", method, target, r.body)
			}
		}
	}
	if len(spy.keys) != 0 {
		t.Errorf("the store was asked for %q", spy.keys)
	}
	if f := files(t, root); len(f) != 1 || f[0] != "secret" {
		t.Errorf("files %v, want only the secret, untouched", f)
	}
}

// url22 is an absolute path cut to an id's length.
func url22(p string) string {
	p = strings.TrimPrefix(p, "/")
	if len(p) > 22 {
		p = p[:22]
	}
	return "%2f" + p
}

func TestSweep(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.TTL = time.Hour })
	old := e.uploadOK("+14155550100", []byte("old"))
	e.clock.Add(30 * time.Minute)
	young := e.uploadOK("+14155550100", []byte("young"))

	// Just before expiry: nothing goes.
	if n, err := e.svc.Sweep(t.Context(), t0.Add(time.Hour-time.Second)); n != 0 || err != nil {
		t.Fatalf("early sweep removed %d (%v)", n, err)
	}
	e.clock.Add(30 * time.Minute)
	if n, err := e.svc.Sweep(t.Context(), e.clock.Now()); n != 1 || err != nil {
		t.Fatalf("sweep removed %d (%v), want 1", n, err)
	}
	if r := e.get(old.ID, nil); r.status != http.StatusNotFound {
		t.Errorf("old: %d, want 404", r.status)
	}
	if r := e.get(young.ID, nil); r.status != http.StatusOK {
		t.Errorf("young: %d, want 200", r.status)
	}
	if got := e.svc.used("+14155550100"); got != int64(len("young")) {
		t.Errorf("usage %d, want %d", got, len("young"))
	}
}

func TestSweepRemovesWhatCrashesLeave(t *testing.T) {
	e := newEnv(t, nil)
	u := e.uploadOK("+14155550100", []byte("kept"))
	key, _ := parseID(u.ID)
	shard := filepath.Join(e.dir, key[:2])
	orphanKey, _ := parseID(validUnknownID())
	write := func(path string, age time.Duration) {
		t.Helper()
		os.MkdirAll(filepath.Dir(path), 0o700)
		if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		at := time.Now().Add(-age)
		if err := os.Chtimes(path, at, at); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(shard, tmpPrefix+"old"), 2*time.Hour)
	write(filepath.Join(shard, tmpPrefix+"in-progress"), time.Minute)
	write(filepath.Join(e.dir, orphanKey[:2], orphanKey+blobExt), 2*time.Hour)
	write(filepath.Join(e.dir, "README"), 2*time.Hour) // not ours: left alone

	if _, err := e.svc.Sweep(t.Context(), time.Now()); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"README",
		filepath.Join(key[:2], tmpPrefix+"in-progress"),
		filepath.Join(key[:2], key+blobExt),
		filepath.Join(key[:2], key+metaExt),
	}
	slices.Sort(want)
	if got := files(t, e.dir); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("files %v, want %v", got, want)
	}
}

func TestRunSweepsUntilCancelled(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.TTL = time.Hour })
	e.uploadOK("+14155550100", []byte("soon gone"))
	e.clock.Add(time.Hour)

	// A deadline well inside go test's own, so that a Run that never
	// sweeps or never returns fails this test instead of hanging the run.
	deadline, stop := context.WithTimeout(t.Context(), 30*time.Second)
	defer stop()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- e.svc.Run(ctx) }()
	// Run sweeps at once; wait for it to have done so.
	for len(files(t, e.dir)) != 0 {
		select {
		case <-deadline.Done():
			t.Fatalf("Run did not sweep: %v still there", files(t, e.dir))
		case <-time.After(time.Millisecond):
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run returned %v, want nil", err)
		}
	case <-deadline.Done():
		t.Fatal("Run did not return once its context was cancelled")
	}
}
