package media

import (
	"bytes"
	"compress/flate"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"hash/crc32"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parleyhq/parley/apierror"
)

var testSecret = []byte("0123456789abcdef0123456789abcdef")

// t0 is where every test clock starts.
var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// clock is a settable Config.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// env is a Service over a real directory behind a real loopback server.
type env struct {
	t     testing.TB
	svc   *Service
	srv   *httptest.Server
	dir   string
	clock *clock
}

// newEnv starts a Service; mod may change its Config before New.
func newEnv(t testing.TB, mod func(*Config)) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), clock: &clock{t: t0}}
	cfg := Config{
		Dir:     e.dir,
		Secret:  testSecret,
		BaseURL: "https://media.example.com/",
		Now:     e.clock.Now,
	}
	if mod != nil {
		mod(&cfg)
	}
	svc, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.svc = svc
	e.srv = httptest.NewServer(svc.Handler())
	t.Cleanup(e.srv.Close)
	return e
}

func (e *env) token(account string) string {
	tok, _ := e.svc.IssueUploadToken(account)
	return tok
}

// reply is a response read whole.
type reply struct {
	status int
	header http.Header
	body   []byte
}

func (e *env) do(method, path, token string, body io.Reader, header map[string]string) reply {
	e.t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return reply{resp.StatusCode, resp.Header, b}
}

func (e *env) upload(token string, data []byte) reply {
	e.t.Helper()
	return e.do(http.MethodPost, "/v1/media", token, bytes.NewReader(data), nil)
}

// uploadOK uploads data as account and returns the decoded 201 answer.
func (e *env) uploadOK(account string, data []byte) uploadResponse {
	e.t.Helper()
	r := e.upload(e.token(account), data)
	if r.status != http.StatusCreated {
		e.t.Fatalf("upload: %d %s", r.status, r.body)
	}
	var u uploadResponse
	if err := json.Unmarshal(r.body, &u); err != nil {
		e.t.Fatalf("upload answer %s: %v", r.body, err)
	}
	return u
}

func (e *env) get(id string, header map[string]string) reply {
	e.t.Helper()
	return e.do(http.MethodGet, "/v1/media/"+id, "", nil, header)
}

// files lists every regular file under dir, relative, sorted.
func files(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// errorOf decodes a JSON error answer.
func errorOf(t testing.TB, r reply) apierror.Detail {
	t.Helper()
	var b apierror.Body
	if err := json.Unmarshal(r.body, &b); err != nil || b.Error.Code == "" {
		t.Fatalf("not a JSON error (%d): %q", r.status, r.body)
	}
	return b.Error
}

// hideLength wraps a reader so that the client cannot learn its length
// and sends it chunked, without Content-Length.
type hideLength struct{ io.Reader }

// photo is a w x h image with smooth gradients and some noise, so that it
// compresses like a photo rather than a flat fill.
func photo(w, h int) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	rng := rand.New(rand.NewPCG(uint64(w), uint64(h)))
	for y := range h {
		for x := range w {
			img.SetNRGBA(x, y, color.NRGBA{
				R: uint8(x * 255 / max(1, w-1)),
				G: uint8(y * 255 / max(1, h-1)),
				B: uint8(128 + rng.IntN(32)),
				A: 255,
			})
		}
	}
	return img
}

func encodePNG(t testing.TB, img image.Image) []byte {
	t.Helper()
	var b bytes.Buffer
	// BestSpeed: the tests encode many images, under the race detector.
	enc := png.Encoder{CompressionLevel: png.BestSpeed}
	if err := enc.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func encodeJPEG(t testing.TB, img image.Image) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := jpeg.Encode(&b, img, &jpeg.Options{Quality: 90}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func encodeGIF(t testing.TB, img image.Image) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := gif.Encode(&b, img, nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// Known-good 1x1 WebP files (the feature probes browsers' detection
// scripts use): lossless (VP8L, transparent) and lossy (VP8).
const (
	webpLossless = "RIFF\x1a\x00\x00\x00WEBPVP8L\x0d\x00\x00\x00\x2f\x00\x00\x00\x10\x07\x10\x11\x11\x88\x88\xfe\x07\x00"
	webpLossy    = "RIFF\x22\x00\x00\x00WEBPVP8 \x16\x00\x00\x00\x30\x01\x00\x9d\x01\x2a\x01\x00\x01\x00\x0e\xc0\xfe\x25\xa4\x00\x03\x70\x00\x00\x00\x00"
)

// pngChunk frames a PNG chunk with its length and CRC.
func pngChunk(typ string, data []byte) []byte {
	var b []byte
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	b = append(b, typ...)
	b = append(b, data...)
	return binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(append([]byte(typ), data...)))
}

// pngHeader is a PNG signature and a valid IHDR declaring w x h 8-bit RGBA,
// with no pixel data: all a decompression bomb needs to show.
func pngHeader(w, h uint32) []byte {
	ihdr := binary.BigEndian.AppendUint32(nil, w)
	ihdr = binary.BigEndian.AppendUint32(ihdr, h)
	ihdr = append(ihdr, 8, 6, 0, 0, 0) // depth, RGBA, deflate, filter, no interlace
	return append([]byte("\x89PNG\r\n\x1a\n"), pngChunk("IHDR", ihdr)...)
}

// gifHeader is a GIF header declaring a w x h logical screen.
func gifHeader(w, h uint16) []byte {
	b := []byte("GIF89a")
	b = binary.LittleEndian.AppendUint16(b, w)
	b = binary.LittleEndian.AppendUint16(b, h)
	b = append(b, 0, 0, 0) // no global palette
	// An image descriptor the size of the screen, then junk.
	b = append(b, 0x2c, 0, 0, 0, 0)
	b = binary.LittleEndian.AppendUint16(b, w)
	b = binary.LittleEndian.AppendUint16(b, h)
	return append(b, 0x80, 0, 0, 0, 0, 0, 0, 2)
}

// webpHeader is an extended-format (VP8X) WebP header declaring a w x h
// canvas, with no image data.
func webpHeader(w, h uint32) []byte {
	vp8x := []byte{0, 0, 0, 0}
	vp8x = append(vp8x, byte(w-1), byte((w-1)>>8), byte((w-1)>>16))
	vp8x = append(vp8x, byte(h-1), byte((h-1)>>8), byte((h-1)>>16))
	body := append([]byte("WEBPVP8X"), binary.LittleEndian.AppendUint32(nil, uint32(len(vp8x)))...)
	body = append(body, vp8x...)
	return append(append([]byte("RIFF"), binary.LittleEndian.AppendUint32(nil, uint32(len(body)))...), body...)
}

// withEXIFOrientation inserts an APP1 Exif segment with an Orientation tag
// right after a JPEG's SOI marker.
type byteOrder interface {
	binary.ByteOrder
	binary.AppendByteOrder
}

func withEXIFOrientation(jpg []byte, o uint16, bo byteOrder) []byte {
	tiff := []byte("MM\x00*")
	if bo.String() == binary.LittleEndian.String() {
		tiff = []byte("II*\x00")
	}
	tiff = bo.AppendUint32(tiff, 8)      // IFD0 offset
	tiff = bo.AppendUint16(tiff, 2)      // entries
	tiff = bo.AppendUint16(tiff, 0x010f) // Make, ASCII, 4 bytes inline
	tiff = bo.AppendUint16(tiff, 2)
	tiff = bo.AppendUint32(tiff, 4)
	tiff = append(tiff, "Go\x00\x00"...)
	tiff = bo.AppendUint16(tiff, 0x0112) // Orientation, SHORT, 1
	tiff = bo.AppendUint16(tiff, 3)
	tiff = bo.AppendUint32(tiff, 1)
	tiff = bo.AppendUint16(tiff, o)
	tiff = append(tiff, 0, 0)
	tiff = bo.AppendUint32(tiff, 0) // no next IFD
	seg := append([]byte("Exif\x00\x00"), tiff...)
	out := append([]byte{}, jpg[:2]...)
	out = append(out, 0xff, 0xe1)
	out = binary.BigEndian.AppendUint16(out, uint16(len(seg)+2))
	out = append(out, seg...)
	return append(out, jpg[2:]...)
}

// failAfter is a reader that yields data, then fails the test if read
// again: proof that a parser stopped where it should.
type failAfter struct {
	t    testing.TB
	data *bytes.Reader
}

func (f *failAfter) Read(p []byte) (int, error) {
	if f.data.Len() == 0 {
		f.t.Error("read past the header: the image was being decoded")
		return 0, io.ErrUnexpectedEOF
	}
	return f.data.Read(p)
}

// decodeThumb decodes a Base64 thumbnail and checks that it is a JPEG.
func decodeThumb(t testing.TB, b64 string) image.Image {
	t.Helper()
	if b64 == "" {
		t.Fatal("no thumbnail")
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		t.Fatalf("thumbnail base64: %v", err)
	}
	img, format, err := image.Decode(bytes.NewReader(raw))
	if err != nil || format != "jpeg" {
		t.Fatalf("thumbnail is %q, %v; want a JPEG", format, err)
	}
	return img
}

func lines(s ...string) string { return strings.Join(s, "\r\n") }

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// pngHeaderOf is a PNG signature and a valid IHDR declaring w x h of the
// given bit depth and colour type (6: RGBA), not interlaced.
func pngHeaderOf(w, h uint32, depth, colorType byte) []byte {
	ihdr := binary.BigEndian.AppendUint32(nil, w)
	ihdr = binary.BigEndian.AppendUint32(ihdr, h)
	ihdr = append(ihdr, depth, colorType, 0, 0, 0)
	return append([]byte("\x89PNG\r\n\x1a\n"), pngChunk("IHDR", ihdr)...)
}

// pngBomb is a whole, valid w x h 16-bit RGBA PNG of transparent black:
// all its pixel data (filter bytes included) is zeros, so it compresses
// about a thousandfold (7000x7000 is 392 MB decoded, some 380 KB here).
// The zlib stream is one compressed MiB of zeros repeated, each copy
// ending on a sync flush so that copies can follow each other, and
// built without compressing the whole: the test stays fast under -race.
func pngBomb(t testing.TB, w, h int) []byte {
	t.Helper()
	total := int64(h) * (1 + 8*int64(w))
	const chunk = 1 << 20
	zeros := make([]byte, chunk)
	deflate := func(n int, final bool) []byte {
		var b bytes.Buffer
		fw, err := flate.NewWriter(&b, flate.BestCompression)
		if err != nil {
			t.Fatal(err)
		}
		fw.Write(zeros[:n])
		if final {
			err = fw.Close()
		} else {
			err = fw.Flush()
		}
		if err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	z := []byte{0x78, 0xda} // zlib header: deflate, 32 KiB window, best compression
	one := deflate(chunk, false)
	for range total / chunk {
		z = append(z, one...)
	}
	z = append(z, deflate(int(total%chunk), true)...)
	// Adler-32 of zeros: a stays 1, b adds 1 per byte.
	z = binary.BigEndian.AppendUint32(z, uint32(total%65521)<<16|1)
	out := pngHeaderOf(uint32(w), uint32(h), 16, 6)
	out = append(out, pngChunk("IDAT", z)...)
	return append(out, pngChunk("IEND", nil)...)
}
