package media

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"image"
	"image/color"
	"image/gif"
	"io"
	"runtime"
	"testing"
)

// TestThumbnailRefusesMemoryBombsUnderThePixelCap: a 7000x7000 16-bit
// RGBA PNG is under MaxPixels but decodes to 392 MB. The header alone
// must refuse it; failAfter fails the test if a pixel byte is read.
func TestThumbnailRefusesMemoryBombsUnderThePixelCap(t *testing.T) {
	for name, tc := range map[string]struct {
		hdr      []byte
		maxBytes int64
	}{
		"png 7000x7000 16-bit rgba":      {pngHeaderOf(7000, 7000, 16, 6), 0},
		"png 6000x6000 8-bit rgba":       {pngHeaderOf(6000, 6000, 8, 6), 0},
		"jpeg 7000x7000 4:4:4":           {jpegHeaderSOF(0xc0, 7000, 7000, 0x11, 0x11), 0},
		"progressive jpeg 5000x5000":     {jpegHeaderSOF(0xc2, 5000, 5000, 0x22, 0x11), 0},
		"png 1000x1000 gray, 500 KB cap": {pngHeaderOf(1000, 1000, 8, 0), 500_000},
	} {
		_, err := Thumbnail(&failAfter{t: t, data: bytes.NewReader(tc.hdr)}, 100, 0, tc.maxBytes)
		if !errors.Is(err, ErrTooMuchMemory) {
			t.Errorf("%s: %v, want ErrTooMuchMemory", name, err)
		}
	}
}

// jpegHeaderSOF is like jpegHeader with a chosen SOF marker and the
// sampling factors (h<<4|v) of luma and chroma.
func jpegHeaderSOF(sof byte, w, h uint16, luma, chroma byte) []byte {
	b := []byte{0xff, 0xd8, 0xff, sof, 0, 17, 8}
	b = binary.BigEndian.AppendUint16(b, h)
	b = binary.BigEndian.AppendUint16(b, w)
	b = append(b, 3, 1, luma, 0, 2, chroma, 1, 3, chroma, 1)
	return append(b, 0xff, 0xda, 0, 12)
}

func TestJPEGCostReadsTheFrameHeader(t *testing.T) {
	const w, h = 4000, 3008 // whole MCUs either way
	for _, tc := range []struct {
		name string
		hdr  []byte
		want int64
	}{
		{"baseline 4:2:0", jpegHeaderSOF(0xc0, w, h, 0x22, 0x11), w * h * 3 / 2},
		{"baseline 4:4:4", jpegHeaderSOF(0xc0, w, h, 0x11, 0x11), w * h * 3},
		{"progressive 4:2:0", jpegHeaderSOF(0xc2, w, h, 0x22, 0x11), w * h * 3 / 2 * 5},
		{"no frame header", []byte{0xff, 0xd8, 0xff, 0xda, 0, 2}, w * h * 24},
	} {
		if got := jpegCost(w, h, tc.hdr); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
}

// TestDecodeCostBoundsWhatDecodersAllocate decodes real images of each
// kind and checks that the estimate is at least what the decoder
// allocated, and not wildly more (which would refuse good photos).
func TestDecodeCostBoundsWhatDecodersAllocate(t *testing.T) {
	const w, h = 640, 480
	src := photo(w, h)
	gray := image.NewGray(src.Bounds())
	deep := image.NewNRGBA64(src.Bounds())
	pal := image.NewPaletted(src.Bounds(), color.Palette{color.Black, color.White})
	for y := range h {
		for x := range w {
			c := src.NRGBAAt(x, y)
			gray.SetGray(x, y, color.Gray{c.R})
			deep.SetNRGBA64(x, y, color.NRGBA64{uint16(c.R) << 8, uint16(c.G) << 8, 0, 0x8000})
			pal.SetColorIndex(x, y, uint8((x^y)&1))
		}
	}
	var gifData bytes.Buffer
	if err := gif.Encode(&gifData, pal, nil); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"jpeg 4:2:0", encodeJPEG(t, src)},
		{"jpeg gray", encodeJPEG(t, gray)},
		{"png rgba", encodePNG(t, src)},
		{"png gray", encodePNG(t, gray)},
		{"png 16-bit rgba", encodePNG(t, deep)},
		{"png paletted", encodePNG(t, pal)},
		{"gif", gifData.Bytes()},
	} {
		r := bytes.NewReader(tc.data)
		p, err := probeImage(r, int64(len(tc.data)))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		rest := io.MultiReader(bytes.NewReader(p.head), r)
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		if _, err := p.f.decode(rest); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		runtime.ReadMemStats(&after)
		got := int64(after.TotalAlloc - before.TotalAlloc)
		if p.cost < got || p.cost > 3*got {
			t.Errorf("%s: estimated %d bytes, the decoder allocated %d", tc.name, p.cost, got)
		}
	}
}

// TestUploadOfAMemoryBombIsStoredWithoutThumbnail uploads a whole 7000 x
// 7000 16-bit RGBA PNG (some 380 KB) through the real handler: it is
// kept, without a thumbnail, and nothing near its 392 MB is allocated.
func TestUploadOfAMemoryBombIsStoredWithoutThumbnail(t *testing.T) {
	bomb := pngBomb(t, 7000, 7000)
	e := newEnv(t, nil)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	u := e.uploadOK("+14155550100", bomb)
	runtime.ReadMemStats(&after)
	if u.Thumbnail != "" {
		t.Errorf("got a thumbnail of a 392 MB decode")
	}
	if u.MIME != "image/png" || u.Size != int64(len(bomb)) {
		t.Errorf("stored %s of %d bytes, want image/png of %d", u.MIME, u.Size, len(bomb))
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 32<<20 {
		t.Errorf("the upload allocated %s: the image was decoded", humanSize(int64(got)))
	}
}

func TestDecodeGate(t *testing.T) {
	ctx := t.Context()
	g := newDecodeGate(2, 100)
	if _, err := g.acquire(ctx, 101, 0); !errors.Is(err, ErrTooMuchMemory) {
		t.Errorf("101 bytes of 100: %v, want ErrTooMuchMemory", err)
	}
	r60, err := g.acquire(ctx, 60, 0)
	if err != nil {
		t.Fatal(err)
	}
	// 60 + 50 > 100: over the memory, so no waiting means no decode.
	if _, err := g.acquire(ctx, 50, -1); !errors.Is(err, errDecodesBusy) {
		t.Errorf("over the memory without waiting: %v, want errDecodesBusy", err)
	}
	// A waiter gives up when its context ends, and leaves no trace.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := g.acquire(cctx, 50, 0); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled wait: %v", err)
	}
	// First come, first served: 50 waits for memory, and 10 (which would
	// fit) waits behind it rather than overtaking.
	admitted := make(chan int64, 2)
	releases := make(chan func(), 2)
	for i, n := range []int64{50, 10} {
		go func() {
			rel, err := g.acquire(ctx, n, 0)
			if err != nil {
				t.Error(err)
				return
			}
			admitted <- n
			releases <- rel
		}()
		// Queued or admitted, the acquire has decided.
		waitFor(t, func() bool { g.mu.Lock(); defer g.mu.Unlock(); return g.runs+g.waiters.Len() == 2+i })
	}
	g.mu.Lock()
	runs, bytes := g.runs, g.bytes
	g.mu.Unlock()
	if runs != 1 || bytes != 60 {
		t.Fatalf("%d decodes, %d bytes running with 50 queued first; want only the 60", runs, bytes)
	}
	r60()
	if a, b := <-admitted, <-admitted; a+b != 60 {
		t.Errorf("admitted %d and %d, want 50 and 10", a, b)
	}
	// Two decodes run; a third waits for a slot, memory or not.
	if _, err := g.acquire(ctx, 1, -1); !errors.Is(err, errDecodesBusy) {
		t.Errorf("a third decode: %v, want errDecodesBusy", err)
	}
	(<-releases)()
	(<-releases)()
	if g.runs != 0 || g.bytes != 0 {
		t.Errorf("after all releases: %d runs, %d bytes", g.runs, g.bytes)
	}
}

// waitFor polls cond until it holds, failing the test at the test's
// deadline rather than hanging.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-t.Context().Done():
			t.Fatal("condition never held")
		default:
			runtime.Gosched()
		}
	}
}

// TestUploadWithoutThumbnailWhenDecodesAreBusy: an upload does not wait
// for a decode past DecodeWait; it is stored without a thumbnail.
func TestUploadWithoutThumbnailWhenDecodesAreBusy(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.DecodeWait = -1 })
	release, err := e.svc.decodes.acquire(t.Context(), e.svc.cfg.DecodeMemory, 0)
	if err != nil {
		t.Fatal(err)
	}
	data := encodePNG(t, photo(300, 200))
	if u := e.uploadOK("+14155550100", data); u.Thumbnail != "" {
		t.Error("thumbnail made while all decode memory was taken")
	}
	release()
	if u := e.uploadOK("+14155550100", data); u.Thumbnail == "" {
		t.Error("no thumbnail once decode memory was free")
	}
}
