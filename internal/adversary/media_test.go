package adversary

import (
	"bytes"
	"compress/flate"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"image"
	"image/png"
	"net/http"
	"runtime"
	"sync"
	"testing"

	"github.com/parleyhq/parley/client"
	"github.com/parleyhq/parley/node"
	"github.com/parleyhq/parley/wire"
)

func pngChunk(typ string, data []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(data)))
	b = append(append(b, typ...), data...)
	return binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(append([]byte(typ), data...)))
}

// pngBomb is a whole, valid w x h 16-bit RGBA PNG of transparent black:
// 7000x7000 decodes to 392 MB and is some 380 KB here. Its zlib stream is
// one compressed MiB of zeros repeated, each copy ending on a sync flush,
// so that building it stays fast under -race.
func pngBomb(t *testing.T, w, h int) []byte {
	t.Helper()
	total := int64(h) * (1 + 8*int64(w)) // a filter byte and 8 bytes a pixel per row
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
	z := []byte{0x78, 0xda}
	one := deflate(chunk, false)
	for range total / chunk {
		z = append(z, one...)
	}
	z = append(z, deflate(int(total%chunk), true)...)
	z = binary.BigEndian.AppendUint32(z, uint32(total%65521)<<16|1) // Adler-32 of zeros
	ihdr := binary.BigEndian.AppendUint32(nil, uint32(w))
	ihdr = binary.BigEndian.AppendUint32(ihdr, uint32(h))
	ihdr = append(ihdr, 16, 6, 0, 0, 0) // 16-bit, RGBA, deflate, filter 0, no interlace
	out := append([]byte("\x89PNG\r\n\x1a\n"), pngChunk("IHDR", ihdr)...)
	out = append(out, pngChunk("IDAT", z)...)
	return append(out, pngChunk("IEND", nil)...)
}

// upload uploads body with c's token from the attacker's address.
func upload(ctx context.Context, c *client.Client, hc *http.Client, body []byte) (*wire.Media, error) {
	tok, err := c.UploadToken(ctx)
	if err != nil {
		return nil, err
	}
	return client.Upload(ctx, hc, tok, bytes.NewReader(body), int64(len(body)))
}

// The decompression bomb: four 7000x7000 16-bit RGBA PNGs uploaded at
// once are stored without thumbnails, judged from their headers: nothing
// near their 392 MB each is allocated. A small image still gets one.
func TestMediaDecompressionBomb(t *testing.T) {
	e := start(t, node.Limits{}, func(c *node.Config) { c.MediaMaxSize = 1 << 20 })
	bomb := pngBomb(t, 7000, 7000)
	m := e.newUser(t)
	hc := httpFrom("127.0.0.2")

	var small bytes.Buffer
	if err := png.Encode(&small, image.NewRGBA(image.Rect(0, 0, 64, 64))); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), liveness)
	defer cancel()
	if got, err := upload(ctx, m.Client, hc, small.Bytes()); err != nil || len(got.Thumbnail) == 0 {
		t.Fatalf("a small PNG: %v (thumbnail %d bytes), want a thumbnail", err, len(got.GetThumbnail()))
	}

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			got, err := upload(ctx, m.Client, hc, bomb)
			switch {
			case err != nil:
				t.Errorf("bomb %d: %v", i, err)
			case len(got.Thumbnail) > 0:
				t.Errorf("bomb %d got a thumbnail: it was decoded", i)
			case got.Mime != "image/png" || got.Size != uint64(len(bomb)):
				t.Errorf("bomb %d stored as %s of %d bytes, want image/png of %d", i, got.Mime, got.Size, len(bomb))
			}
		})
	}
	e.checkServes(t) // meanwhile
	wg.Wait()
	runtime.ReadMemStats(&after)
	// One decode would allocate 392 MB; this bound is far above what the
	// uploads, the normal users and the race detector's bookkeeping take.
	if got := after.TotalAlloc - before.TotalAlloc; got > 128<<20 {
		t.Errorf("four bomb uploads allocated %d MiB: an image was decoded", got>>20)
	}
}

// Many parallel uploads near the size limit from one account: the
// account's upload rate bounds how many are taken (the rest are 429 with a
// Retry-After, refused before their bodies are read), and one over the
// limit is 413 from its declared length; others are served meanwhile.
func TestMediaUploadFlood(t *testing.T) {
	const (
		maxSize  = 256 << 10
		parallel = 40
		perMin   = 30 // media's DefaultUploadsPerMinute
	)
	e := start(t, node.Limits{}, func(c *node.Config) { c.MediaMaxSize = maxSize })
	m := e.newUser(t)
	hc := httpFrom("127.0.0.2")
	ctx, cancel := context.WithTimeout(t.Context(), liveness)
	defer cancel()
	tok, err := m.UploadToken(ctx)
	if err != nil {
		t.Fatal(err)
	}
	near := make([]byte, maxSize-1024)
	rand.Read(near)

	var wg sync.WaitGroup
	results := make(chan error, parallel)
	for range parallel {
		wg.Go(func() {
			_, err := client.Upload(ctx, hc, tok, bytes.NewReader(near), int64(len(near)))
			results <- err
		})
	}
	e.checkServes(t) // meanwhile
	wg.Wait()
	close(results)
	taken, limited := 0, 0
	for err := range results {
		var ae *client.APIError
		switch {
		case err == nil:
			taken++
		case errors.As(err, &ae) && ae.Status == http.StatusTooManyRequests && ae.RetryAfter > 0:
			limited++
		default:
			t.Errorf("upload: %v, want it taken or 429 with Retry-After", err)
		}
	}
	if taken > perMin || taken+limited != parallel || limited < parallel-perMin {
		t.Errorf("%d parallel uploads: %d taken, %d rate limited; want at most %d taken", parallel, taken, limited, perMin)
	}

	// Over the limit: refused from the declared length.
	other := e.newUser(t)
	big := make([]byte, maxSize+1)
	_, err = upload(ctx, other.Client, hc, big)
	var ae *client.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusRequestEntityTooLarge {
		t.Errorf("an upload over the limit: %v, want 413", err)
	}
}
