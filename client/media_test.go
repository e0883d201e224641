package client_test

// Upload and Download against scripted HTTP servers: what goes on the
// wire, and how answers other than success are reported.

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parleyhq/parley/client"
)

func TestUploadRequestAndAnswer(t *testing.T) {
	file := []byte("some file contents")
	sum := sha256.Sum256(file)
	thumb := []byte{0xff, 0xd8, 0xff, 1, 2, 3}
	var gotLen atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.Header.Get("Authorization") != "Bearer tok123" {
			t.Errorf("request %s with Authorization %q", r.Method, r.Header.Get("Authorization"))
		}
		gotLen.Store(r.ContentLength)
		body, _ := io.ReadAll(r.Body)
		if !bytes.Equal(body, file) {
			t.Errorf("server got body %q", body)
		}
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"id":"abc","url":"http://x/v1/media/abc","size":%d,"mime":"text/plain; charset=utf-8","sha256":%q,"thumbnail":%q,"expires":"2030-01-01T00:00:00Z"}`,
			len(file), hex.EncodeToString(sum[:]), base64.StdEncoding.EncodeToString(thumb))
	}))
	defer srv.Close()
	tok := client.UploadToken{Token: "tok123", URL: srv.URL + "/v1/media"}

	for _, size := range []int64{int64(len(file)), -1} {
		m, err := client.Upload(testCtx(t), srv.Client(), tok, onlyReader{bytes.NewReader(file)}, size)
		if err != nil {
			t.Fatal(err)
		}
		if gotLen.Load() != size {
			t.Errorf("size %d: server saw Content-Length %d", size, gotLen.Load())
		}
		if m.Id != "abc" || m.Url != "http://x/v1/media/abc" || m.Size != uint64(len(file)) || m.Mime != "text/plain; charset=utf-8" ||
			!bytes.Equal(m.Sha256, sum[:]) || !bytes.Equal(m.Thumbnail, thumb) {
			t.Fatalf("Upload = %v", m)
		}
	}

	// A reader that gives fewer bytes than the size said fails.
	_, err := client.Upload(testCtx(t), srv.Client(), tok, bytes.NewReader(file), int64(len(file))+5)
	if err == nil {
		t.Fatal("a short reader uploaded")
	}
}

func TestUploadErrors(t *testing.T) {
	tests := []struct {
		name   string
		status int
		header string
		body   string
		check  func(*testing.T, error)
	}{
		{"too large", 413, "", `{"error":{"code":"too_large","message":"file is over the 64 MiB limit: send a smaller file"}}`, func(t *testing.T, err error) {
			var ae *client.APIError
			if !errors.As(err, &ae) || ae.Status != 413 || ae.Code != "too_large" || !strings.Contains(err.Error(), "send a smaller file") {
				t.Fatalf("err = %v", err)
			}
		}},
		{"rate limited", 429, "7", `{"error":{"code":"rate_limited","message":"wait"}}`, func(t *testing.T, err error) {
			var ae *client.APIError
			if !errors.As(err, &ae) || ae.Status != 429 || ae.RetryAfter != 7*time.Second {
				t.Fatalf("err = %v", err)
			}
		}},
		{"proxy page", 502, "", `<html>bad gateway</html>`, func(t *testing.T, err error) {
			var ae *client.APIError
			if !errors.As(err, &ae) || ae.Status != 502 || ae.Code != "" || !strings.Contains(ae.Message, "bad gateway") {
				t.Fatalf("err = %v", err)
			}
		}},
		{"bad hash", 201, "", `{"id":"a","url":"http://x/a","size":4,"mime":"x","sha256":"zz"}`, func(t *testing.T, err error) {
			if err == nil || !strings.Contains(err.Error(), "sha256") {
				t.Fatalf("err = %v", err)
			}
		}},
		{"wrong size", 201, "", `{"id":"a","url":"http://x/a","size":3,"mime":"x","sha256":"` + strings.Repeat("00", 32) + `"}`, func(t *testing.T, err error) {
			if err == nil || !strings.Contains(err.Error(), "stored 3 bytes") {
				t.Fatalf("err = %v", err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				if tt.header != "" {
					w.Header().Set("Retry-After", tt.header)
				}
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			}))
			defer srv.Close()
			_, err := client.Upload(testCtx(t), srv.Client(), client.UploadToken{Token: "t", URL: srv.URL}, strings.NewReader("data"), 4)
			tt.check(t, err)
		})
	}
}

// lateReader fails the test if it is read after stop is set.
type lateReader struct {
	t    *testing.T
	left int64
	stop atomic.Bool
}

func (r *lateReader) Read(p []byte) (int, error) {
	if r.stop.Load() {
		r.t.Error("the upload's reader was read after Upload returned")
		return 0, io.EOF
	}
	if r.left == 0 {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), r.left))
	clear(p[:n])
	r.left -= int64(n)
	return n, nil
}

// A server that refuses before reading the body (a bad token, a declared
// size over the limit) answers while the body is still going out: Upload
// returns, and the caller's reader is not read after that.
func TestUploadEarlyAnswer(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, `{"error":{"code":"unauthorized","message":"missing upload token"}}`)
	}))
	defer srv.Close()
	r := &lateReader{t: t, left: 64 << 20}
	// The transport closes the request body once it has stopped writing
	// it (RoundTripper's contract, after RoundTrip if need be): only then
	// is it certain that no late read will come.
	hc := srv.Client()
	bodyClosed := make(chan struct{})
	hc.Transport = closeNotifier{hc.Transport, bodyClosed}
	ctx := testCtx(t)
	_, err := client.Upload(ctx, hc, client.UploadToken{Token: "t", URL: srv.URL}, r, r.left)
	r.stop.Store(true)
	if err == nil {
		t.Fatal("upload succeeded")
	}
	t.Logf("err = %v", err)
	select {
	case <-bodyClosed:
	case <-ctx.Done():
		t.Fatal("the transport never closed the upload's body")
	}
}

// closeNotifier is a RoundTripper that closes done when the transport
// closes a request's body.
type closeNotifier struct {
	http.RoundTripper
	done chan struct{}
}

func (c closeNotifier) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		req = req.Clone(req.Context())
		req.Body = &notifyingBody{ReadCloser: req.Body, done: c.done}
	}
	return c.RoundTripper.RoundTrip(req)
}

type notifyingBody struct {
	io.ReadCloser
	once sync.Once
	done chan struct{}
}

func (b *notifyingBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(func() { close(b.done) })
	return err
}

func TestDownload(t *testing.T) {
	file := bytes.Repeat([]byte("0123456789"), 10000)
	sum := sha256.Sum256(file)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			w.Write(file)
		case "/cut":
			w.Header().Set("Content-Length", fmt.Sprint(len(file)))
			w.Write(file[:100])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		default:
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"error":{"code":"not_found","message":"no such media"}}`)
		}
	}))
	defer srv.Close()

	var out bytes.Buffer
	n, err := client.DownloadVerified(testCtx(t), srv.Client(), srv.URL+"/ok", sum[:], &out)
	if err != nil || n != int64(len(file)) || !bytes.Equal(out.Bytes(), file) {
		t.Fatalf("DownloadVerified = %d, %v", n, err)
	}
	other := sha256.Sum256([]byte("x"))
	_, err = client.DownloadVerified(testCtx(t), srv.Client(), srv.URL+"/ok", other[:], io.Discard)
	if !errors.Is(err, client.ErrSHA256Mismatch) || !strings.Contains(err.Error(), "the file is corrupt or was replaced") {
		t.Fatalf("mismatch: err = %v", err)
	}
	if _, err := client.DownloadVerified(testCtx(t), srv.Client(), srv.URL+"/ok", []byte{1}, io.Discard); err == nil {
		t.Fatal("a 1-byte expected hash was accepted")
	}
	if _, _, err := client.Download(testCtx(t), srv.Client(), srv.URL+"/cut", io.Discard); err == nil || !strings.Contains(err.Error(), "cut off") {
		t.Fatalf("cut-off download: err = %v", err)
	}
	_, _, err = client.Download(testCtx(t), srv.Client(), srv.URL+"/gone", io.Discard)
	var ae *client.APIError
	if !errors.As(err, &ae) || ae.Status != 404 || ae.Code != "not_found" {
		t.Fatalf("404: err = %v", err)
	}
}
