package media

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"image"
	"image/color"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestUploadPhotoThenDownload(t *testing.T) {
	e := newEnv(t, nil)
	data := encodePNG(t, photo(640, 480))
	u := e.uploadOK("+14155550100", data)

	sum := sha256.Sum256(data)
	if u.SHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("sha256 %s, want %x", u.SHA256, sum)
	}
	if u.Size != int64(len(data)) || u.MIME != "image/png" {
		t.Errorf("size %d mime %q, want %d image/png", u.Size, u.MIME, len(data))
	}
	if want := "https://media.example.com/v1/media/" + u.ID; u.URL != want {
		t.Errorf("url %q, want %q", u.URL, want)
	}
	if _, ok := parseID(u.ID); !ok {
		t.Errorf("id %q does not parse", u.ID)
	}
	if !u.Expires.Equal(t0.Add(DefaultTTL)) {
		t.Errorf("expires %v, want %v", u.Expires, t0.Add(DefaultTTL))
	}
	th := decodeThumb(t, u.Thumbnail)
	if b := th.Bounds(); b.Dx() != 100 || b.Dy() != 75 {
		t.Errorf("thumbnail %v, want 100x75 (640x480 scaled, aspect kept)", b.Size())
	}
	if raw := len(u.Thumbnail) * 3 / 4; raw > 8<<10 {
		t.Errorf("thumbnail is %d bytes, want a few KiB", raw)
	}

	r := e.get(u.ID, nil)
	if r.status != http.StatusOK || !bytes.Equal(r.body, data) {
		t.Fatalf("download: %d, %d bytes; want 200 and the %d uploaded", r.status, len(r.body), len(data))
	}
	for h, want := range map[string]string{
		"ETag":                   `"` + u.SHA256 + `"`,
		"Cache-Control":          "private, max-age=2592000, immutable",
		"Content-Type":           "image/png",
		"Accept-Ranges":          "bytes",
		"X-Content-Type-Options": "nosniff",
		"Content-Disposition":    "",
	} {
		if got := r.header.Get(h); got != want {
			t.Errorf("%s: %q, want %q", h, got, want)
		}
	}

	r = e.get(u.ID, map[string]string{"Range": "bytes=100-199"})
	if r.status != http.StatusPartialContent || !bytes.Equal(r.body, data[100:200]) {
		t.Errorf("range: %d, %d bytes; want 206 and bytes 100-199", r.status, len(r.body))
	}
	if got, want := r.header.Get("Content-Range"), fmt.Sprintf("bytes 100-199/%d", len(data)); got != want {
		t.Errorf("Content-Range %q, want %q", got, want)
	}

	r = e.get(u.ID, map[string]string{"If-None-Match": `"` + u.SHA256 + `"`})
	if r.status != http.StatusNotModified || len(r.body) != 0 {
		t.Errorf("If-None-Match: %d, want 304 without a body", r.status)
	}

	r = e.do(http.MethodHead, "/v1/media/"+u.ID, "", nil, nil)
	if r.status != http.StatusOK || len(r.body) != 0 || r.header.Get("Content-Length") != strconv.Itoa(len(data)) {
		t.Errorf("HEAD: %d, body %d bytes, Content-Length %q", r.status, len(r.body), r.header.Get("Content-Length"))
	}

	// A day later the cache lifetime has a day less to run.
	e.clock.Add(24 * time.Hour)
	r = e.get(u.ID, nil)
	if got := r.header.Get("Cache-Control"); got != "private, max-age=2505600, immutable" {
		t.Errorf("a day later, Cache-Control %q", got)
	}
}

func TestThumbnailsOfEachFormat(t *testing.T) {
	transparent := image.NewNRGBA(image.Rect(0, 0, 50, 200))
	transparent.Set(1, 1, color.NRGBA{255, 0, 0, 128})
	for _, tc := range []struct {
		name string
		data []byte
		mime string
		w, h int
	}{
		{"jpeg landscape", encodeJPEG(t, photo(300, 200)), "image/jpeg", 100, 67},
		{"png portrait", encodePNG(t, photo(120, 480)), "image/png", 25, 100},
		{"png transparent", encodePNG(t, transparent), "image/png", 25, 100},
		{"png small, not scaled up", encodePNG(t, photo(40, 30)), "image/png", 40, 30},
		{"gif", encodeGIF(t, photo(200, 200)), "image/gif", 100, 100},
		{"webp lossless", []byte(webpLossless), "image/webp", 1, 1},
		{"webp lossy", []byte(webpLossy), "image/webp", 1, 1},
		{"jpeg rotated by exif", withEXIFOrientation(encodeJPEG(t, photo(300, 200)), 6, binary.LittleEndian), "image/jpeg", 67, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			u := e.uploadOK("+14155550100", tc.data)
			if u.MIME != tc.mime {
				t.Errorf("mime %q, want %q", u.MIME, tc.mime)
			}
			if b := decodeThumb(t, u.Thumbnail).Bounds(); b.Dx() != tc.w || b.Dy() != tc.h {
				t.Errorf("thumbnail %v, want %dx%d", b.Size(), tc.w, tc.h)
			}
		})
	}
}

func TestUploadWithoutThumbnail(t *testing.T) {
	random := make([]byte, 3000)
	rand.Read(random)
	corrupt := encodeJPEG(t, photo(300, 200))
	corrupt = append(corrupt[:600:600], bytes.Repeat([]byte{0x5a}, 400)...)
	for _, tc := range []struct {
		name string
		data []byte
		mime string
	}{
		{"random bytes", random, "application/octet-stream"},
		{"pdf", []byte("%PDF-1.7\n1 0 obj << >> endobj\n"), "application/pdf"},
		{"opus voice note", append([]byte("OggS\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x13OpusHead"), 1, 1), "audio/ogg"},
		// 100000 x 100000 RGBA would be 40 GB decoded; it is kept, untouched.
		{"png bomb", pngHeader(100000, 100000), "image/png"},
		{"gif bomb", gifHeader(65535, 65535), "image/gif"},
		{"webp bomb", webpHeader(40000, 40000), "image/webp"},
		{"corrupt jpeg", corrupt, "image/jpeg"},
		{"truncated png", encodePNG(t, photo(200, 200))[:300], "image/png"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			u := e.uploadOK("+14155550100", tc.data)
			if u.MIME != tc.mime {
				t.Errorf("mime %q, want %q", u.MIME, tc.mime)
			}
			if u.Thumbnail != "" {
				t.Errorf("got a thumbnail of %d chars, want none", len(u.Thumbnail))
			}
			r := e.get(u.ID, nil)
			if r.status != http.StatusOK || !bytes.Equal(r.body, tc.data) {
				t.Errorf("download: %d, want 200 and the bytes as uploaded", r.status)
			}
			if !inline(tc.mime) && r.header.Get("Content-Disposition") != "attachment" {
				t.Errorf("a %s is served with Content-Disposition %q, want attachment", tc.mime, r.header.Get("Content-Disposition"))
			}
		})
	}
}

func TestUploadTypeIsSniffedNotTaken(t *testing.T) {
	e := newEnv(t, nil)
	r := e.do(http.MethodPost, "/v1/media", e.token("+14155550100"),
		strings.NewReader("<html><script>alert(1)</script>"), map[string]string{"Content-Type": "image/png"})
	u := created(t, r)
	if u.MIME != "text/html; charset=utf-8" || u.Thumbnail != "" {
		t.Errorf("mime %q (thumbnail %t), want the sniffed text/html and no thumbnail", u.MIME, u.Thumbnail != "")
	}
	d := e.get(u.ID, nil)
	if d.header.Get("Content-Security-Policy") == "" || d.header.Get("Content-Disposition") != "attachment" {
		t.Errorf("HTML served without sandbox and attachment: %v", d.header)
	}
}

func created(t *testing.T, r reply) uploadResponse {
	t.Helper()
	if r.status != http.StatusCreated {
		t.Fatalf("upload: %d %s", r.status, r.body)
	}
	var u uploadResponse
	if err := jsonUnmarshal(r.body, &u); err != nil {
		t.Fatal(err)
	}
	return u
}

func TestUploadTooLargeLeavesNothing(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxSize = 64 << 10 })
	data := make([]byte, 70<<10)
	tok := e.token("+14155550100")

	r := e.upload(tok, data)
	if r.status != http.StatusRequestEntityTooLarge {
		t.Fatalf("declared too large: %d, want 413", r.status)
	}
	if d := errorOf(t, r); d.Code != CodeTooLarge || d.Message != "file is 70 KiB, over the 64 KiB limit: send a smaller file" {
		t.Errorf("error %+v", d)
	}

	r = e.do(http.MethodPost, "/v1/media", tok, hideLength{bytes.NewReader(data)}, nil)
	if r.status != http.StatusRequestEntityTooLarge || errorOf(t, r).Code != CodeTooLarge {
		t.Fatalf("streamed too large: %d %s, want 413", r.status, r.body)
	}
	if f := files(t, e.dir); len(f) != 0 {
		t.Errorf("files left: %v", f)
	}

	// Exactly the limit is fine.
	e.uploadOK("+14155550100", data[:64<<10])
}

func TestUploadCutOffLeavesNothing(t *testing.T) {
	t.Run("reader fails midway", func(t *testing.T) {
		e := newEnv(t, nil)
		body := io.MultiReader(bytes.NewReader(make([]byte, 100<<10)), errReader{io.ErrUnexpectedEOF})
		req := httptest.NewRequest(http.MethodPost, "/v1/media", body)
		req.Header.Set("Authorization", "Bearer "+e.token("+14155550100"))
		w := httptest.NewRecorder()
		e.svc.Handler().ServeHTTP(w, req)
		if w.Code != http.StatusBadRequest {
			t.Errorf("status %d, want 400", w.Code)
		}
		if f := files(t, e.dir); len(f) != 0 {
			t.Errorf("files left: %v", f)
		}
	})
	t.Run("client closes the connection", func(t *testing.T) {
		e := newEnv(t, nil)
		c, err := net.Dial("tcp", e.srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprint(c, lines("POST /v1/media HTTP/1.1", "Host: x",
			"Authorization: Bearer "+e.token("+14155550100"),
			"Content-Length: 1000000", "", ""))
		c.Write(make([]byte, 200<<10))
		c.Close()
		// Close waits for the handler to finish.
		e.srv.Close()
		if f := files(t, e.dir); len(f) != 0 {
			t.Errorf("files left: %v", f)
		}
	})
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func TestEmptyUpload(t *testing.T) {
	e := newEnv(t, nil)
	r := e.upload(e.token("+14155550100"), nil)
	if r.status != http.StatusBadRequest || errorOf(t, r).Code != CodeBadRequest {
		t.Errorf("empty upload: %d %s, want 400", r.status, r.body)
	}
}

func TestUploadTokenRejected(t *testing.T) {
	e := newEnv(t, nil)
	other, err := New(Config{Dir: t.TempDir(), Secret: bytes.Repeat([]byte{7}, 32), Now: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	forged, _ := other.IssueUploadToken("+14155550100")
	good := e.token("+14155550100")
	expired := e.token("+14155550100")
	otherPurpose := e.svc.sign("parley media download token v1\x00", t0.Add(time.Hour), "+14155550100")
	e.clock.Add(DefaultTokenTTL)

	for _, tc := range []struct {
		name, header, code string
	}{
		{"none", "", CodeUnauthorized},
		{"not bearer", "Basic " + good, CodeUnauthorized},
		{"garbage", "Bearer abc.def", CodeUnauthorized},
		{"other secret", "Bearer " + forged, CodeUnauthorized},
		{"other purpose", "Bearer " + otherPurpose, CodeUnauthorized},
		{"tampered", "Bearer " + flipLast(good), CodeUnauthorized},
		{"expired", "Bearer " + expired, CodeTokenExpired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do(http.MethodPost, "/v1/media", "", strings.NewReader("hello"), map[string]string{"Authorization": tc.header})
			if r.status != http.StatusUnauthorized || r.header.Get("WWW-Authenticate") == "" {
				t.Fatalf("%d (WWW-Authenticate %q), want 401 with a challenge", r.status, r.header.Get("WWW-Authenticate"))
			}
			if d := errorOf(t, r); d.Code != tc.code {
				t.Errorf("code %q, want %q (%s)", d.Code, tc.code, d.Message)
			}
		})
	}
	if d := errorOf(t, e.do(http.MethodPost, "/v1/media", expired, strings.NewReader("x"), nil)); d.Message != "upload token expired: ask for a new one" {
		t.Errorf("expired message %q", d.Message)
	}
	if f := files(t, e.dir); len(f) != 0 {
		t.Errorf("files left: %v", f)
	}
}

// flipLast changes a token's last character to another valid one.
func flipLast(tok string) string {
	c := byte('A')
	if tok[len(tok)-1] == 'A' {
		c = 'Q'
	}
	return tok[:len(tok)-1] + string(c)
}

func TestRateLimit(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.UploadsPerMinute = 3 })
	for i := range 3 {
		e.clock.Add(10 * time.Second)
		e.uploadOK("+14155550100", []byte{byte(i)})
	}
	r := e.upload(e.token("+14155550100"), []byte("x"))
	if r.status != http.StatusTooManyRequests {
		t.Fatalf("4th upload in a minute: %d, want 429", r.status)
	}
	// The first upload leaves the window 40 s from now.
	if got := r.header.Get("Retry-After"); got != "40" {
		t.Errorf("Retry-After %q, want 40", got)
	}
	if d := errorOf(t, r); d.Code != CodeRateLimited || d.RetryAfter != 40 {
		t.Errorf("error %+v", d)
	}
	// Another account is not affected.
	e.uploadOK("+14155550199", []byte("x"))

	e.clock.Add(40 * time.Second)
	e.uploadOK("+14155550100", []byte("x"))
}

func TestQuota(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.QuotaBytes = 10 << 10 })
	const alice = "+14155550100"
	first := e.uploadOK(alice, make([]byte, 6<<10))

	r := e.upload(e.token(alice), make([]byte, 5<<10))
	if r.status != http.StatusRequestEntityTooLarge {
		t.Fatalf("over quota: %d, want 413", r.status)
	}
	if d := errorOf(t, r); d.Code != CodeQuotaExceeded ||
		d.Message != "storage quota full: 6 KiB of 10 KiB used, this file needs 5 KiB; delete media or wait for old media to expire" {
		t.Errorf("error %+v", d)
	}
	r = e.do(http.MethodPost, "/v1/media", e.token(alice), hideLength{bytes.NewReader(make([]byte, 5<<10))}, nil)
	if r.status != http.StatusRequestEntityTooLarge || errorOf(t, r).Code != CodeQuotaExceeded {
		t.Fatalf("streamed over quota: %d %s, want 413 quota_exceeded", r.status, r.body)
	}
	// Someone else has their own quota.
	e.uploadOK("+14155550199", make([]byte, 5<<10))
	// What is left still fits.
	e.uploadOK(alice, make([]byte, 4<<10))

	// Deleting frees quota.
	if r := e.do(http.MethodDelete, "/v1/media/"+first.ID, e.token(alice), nil, nil); r.status != http.StatusNoContent {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	e.uploadOK(alice, make([]byte, 5<<10))

	// So does expiry, and a restart counts what is stored.
	e.clock.Add(DefaultTTL)
	e2 := newEnv(t, func(c *Config) { c.Dir = e.dir; c.QuotaBytes = 10 << 10; c.Now = e.clock.Now })
	if got := e2.svc.used(alice); got != 9<<10 {
		t.Errorf("after restart, alice uses %d bytes, want %d", got, 9<<10)
	}
	if n, err := e2.svc.Sweep(t.Context(), e.clock.Now()); n != 3 || err != nil {
		t.Errorf("sweep removed %d (%v), want 3", n, err)
	}
	e2.uploadOK(alice, make([]byte, 10<<10))
	if f := files(t, e.dir); len(f) != 2 {
		t.Errorf("files %v, want one blob and its sidecar", f)
	}
}

func TestDelete(t *testing.T) {
	e := newEnv(t, nil)
	u := e.uploadOK("+14155550100", []byte("hello"))
	notYours := e.do(http.MethodDelete, "/v1/media/"+u.ID, e.token("+14155550199"), nil, nil)
	unknown := e.do(http.MethodDelete, "/v1/media/"+validUnknownID(), e.token("+14155550199"), nil, nil)
	if notYours.status != http.StatusNotFound || !bytes.Equal(notYours.body, unknown.body) {
		t.Errorf("someone else's: %d %s; want the 404 of an unknown id", notYours.status, notYours.body)
	}
	if r := e.do(http.MethodDelete, "/v1/media/"+u.ID, "", nil, nil); r.status != http.StatusUnauthorized {
		t.Errorf("without a token: %d, want 401", r.status)
	}
	if r := e.do(http.MethodDelete, "/v1/media/"+u.ID, e.token("+14155550100"), nil, nil); r.status != http.StatusNoContent {
		t.Fatalf("owner: %d %s, want 204", r.status, r.body)
	}
	if r := e.get(u.ID, nil); r.status != http.StatusNotFound {
		t.Errorf("after delete: %d, want 404", r.status)
	}
	if f := files(t, e.dir); len(f) != 0 {
		t.Errorf("files left: %v", f)
	}
}

func validUnknownID() string {
	id, _ := newID()
	return id
}

func TestMethods(t *testing.T) {
	e := newEnv(t, nil)
	for _, tc := range []struct{ method, path, allow string }{
		{http.MethodGet, "/v1/media", "POST"},
		{http.MethodPut, "/v1/media/" + validUnknownID(), "GET, HEAD, DELETE"},
	} {
		r := e.do(tc.method, tc.path, "", nil, nil)
		if r.status != http.StatusMethodNotAllowed || r.header.Get("Allow") != tc.allow || errorOf(t, r).Code != CodeMethodNotAllowed {
			t.Errorf("%s %s: %d Allow %q", tc.method, tc.path, r.status, r.header.Get("Allow"))
		}
	}
}

func TestQuotaHoldsUnderConcurrentUploads(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.QuotaBytes = 10 << 10 })
	tok := e.token("+14155550100")
	statuses := make(chan int, 8)
	for range 8 {
		go func() {
			// No Content-Length, so that only the final reservation can
			// tell the uploads apart.
			statuses <- e.do(http.MethodPost, "/v1/media", tok, hideLength{bytes.NewReader(make([]byte, 3<<10))}, nil).status
		}()
	}
	created := 0
	for range 8 {
		switch st := <-statuses; st {
		case http.StatusCreated:
			created++
		case http.StatusRequestEntityTooLarge:
		default:
			t.Errorf("status %d", st)
		}
	}
	if created != 3 {
		t.Errorf("%d uploads of 3 KiB fit a 10 KiB quota, want 3", created)
	}
	if got := e.svc.used("+14155550100"); got != 9<<10 {
		t.Errorf("usage %d, want %d", got, 9<<10)
	}
	if f := files(t, e.dir); len(f) != 2*created {
		t.Errorf("files %v, want a blob and a sidecar per upload", f)
	}
}

// Two Services on one store, as the nodes of a cluster share one bucket:
// each counts what the other stored or deleted at its next sweep.
func TestQuotaRecountedBySweep(t *testing.T) {
	const alice = "+14155550100"
	a := newEnv(t, func(c *Config) { c.QuotaBytes = 10 << 10 })
	first := a.uploadOK(alice, make([]byte, 6<<10))
	b := newEnv(t, func(c *Config) { c.Dir = a.dir; c.QuotaBytes = 10 << 10; c.Now = a.clock.Now })
	if r := a.do(http.MethodDelete, "/v1/media/"+first.ID, a.token(alice), nil, nil); r.status != http.StatusNoContent {
		t.Fatalf("delete on a: %d %s", r.status, r.body)
	}
	if r := b.upload(b.token(alice), make([]byte, 5<<10)); r.status != http.StatusRequestEntityTooLarge {
		t.Errorf("b before its sweep: %d, want 413 (it still counts what a deleted)", r.status)
	}
	if _, err := b.svc.Sweep(t.Context(), a.clock.Now()); err != nil {
		t.Fatal(err)
	}
	b.uploadOK(alice, make([]byte, 5<<10))
	if got := a.svc.used(alice); got != 0 {
		t.Errorf("a before its sweep: %d bytes, want 0", got)
	}
	if _, err := a.svc.Sweep(t.Context(), a.clock.Now()); err != nil {
		t.Fatal(err)
	}
	if got := a.svc.used(alice); got != 5<<10 {
		t.Errorf("a after its sweep: %d bytes, want b's upload, %d", got, 5<<10)
	}
	if r := a.upload(a.token(alice), make([]byte, 6<<10)); r.status != http.StatusRequestEntityTooLarge {
		t.Errorf("a over the quota both hold: %d, want 413", r.status)
	}
}

// A sweep's recount keeps what uploads in progress have reserved: they
// are not listed yet.
func TestRecountKeepsReservations(t *testing.T) {
	const alice = "+14155550100"
	e := newEnv(t, func(c *Config) { c.QuotaBytes = 10 << 10 })
	e.uploadOK(alice, make([]byte, 2<<10))
	if ok, _ := e.svc.reserve(alice, 3<<10); !ok {
		t.Fatal("reserve refused")
	}
	if _, err := e.svc.Sweep(t.Context(), e.clock.Now()); err != nil {
		t.Fatal(err)
	}
	if got := e.svc.used(alice); got != 5<<10 {
		t.Errorf("after the recount: %d, want the stored 2 KiB and the reserved 3 KiB", got)
	}
	e.svc.unreserve(alice, 3<<10)
	if _, err := e.svc.Sweep(t.Context(), e.clock.Now()); err != nil {
		t.Fatal(err)
	}
	if got := e.svc.used(alice); got != 2<<10 {
		t.Errorf("after the reservation went: %d, want 2 KiB", got)
	}
}
