package media

import (
	"container/list"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	"image/color"
	"sync"
	"time"
)

// decodeCost estimates, from above, how many bytes decoding an image with
// header cfg allocates: its pixel buffers as the decoder lays them out,
// plus what the decoder holds beside them. head is the header as read,
// for what DecodeConfig does not tell (JPEG subsampling and progressive
// mode, PNG interlacing).
func decodeCost(f *imageFormat, cfg image.Config, head []byte) int64 {
	return decoderState + pixelCost(f, cfg, head)
}

// decoderState is what a decoder holds besides pixels, rounded up:
// Huffman and quantisation tables, zlib and LZW state, buffered readers.
const decoderState = 256 << 10

func pixelCost(f *imageFormat, cfg image.Config, head []byte) int64 {
	w, h := int64(cfg.Width), int64(cfg.Height)
	px := w * h
	switch f {
	case formatJPEG:
		return jpegCost(w, h, head)
	case formatPNG:
		c := px * bytesPerPixel(cfg.ColorModel)
		// Adam7 decodes each pass into its own image, then copies them
		// into the final one.
		if len(head) > 28 && head[28] == 1 {
			c *= 2
		}
		// Two filter rows of at most 8 bytes a pixel.
		return c + 2*(8*w+1)
	case formatGIF:
		// One paletted frame, no larger than the screen (the decoder
		// checks), and only the first.
		return px
	case formatWebP:
		switch cfg.ColorModel {
		case color.YCbCrModel:
			// VP8: 4:2:0 in whole 16x16 macroblocks, and per-macroblock
			// state.
			return 2 * ((w + 15) &^ 15) * ((h + 15) &^ 15)
		case color.NYCbCrAModel:
			// VP8 plus an alpha plane decoded through a whole VP8L image.
			return 12 * ((w + 15) &^ 15) * ((h + 15) &^ 15)
		}
		// VP8L: ARGB pixels, a transform's copy of them, then NRGBA.
		return 12 * px
	}
	return 8 * px
}

// bytesPerPixel is the size of a pixel of the image type a decoder
// returns for a colour model; unknown models count as the largest.
func bytesPerPixel(m color.Model) int64 {
	if _, ok := m.(color.Palette); ok {
		return 1
	}
	switch m {
	case color.GrayModel, color.AlphaModel:
		return 1
	case color.Gray16Model, color.Alpha16Model:
		return 2
	case color.RGBAModel, color.NRGBAModel, color.CMYKModel:
		return 4
	}
	return 8 // RGBA64, NRGBA64
}

// jpegCost reads the frame header (SOFn) in head for the components'
// sampling factors and the coding: image/jpeg allocates each component
// in whole MCUs; a 4-component image is converted into a new CMYK one;
// a progressive image keeps every DCT block (64 int32s) until the end.
// Without a readable frame header it assumes the worst: four
// components, no subsampling, progressive.
func jpegCost(w, h int64, head []byte) int64 {
	comps, progressive, ok := jpegFrame(head)
	if !ok {
		return (4 + 4 + 4*4) * w * h
	}
	hmax, vmax := int64(1), int64(1)
	for _, c := range comps {
		hmax, vmax = max(hmax, int64(c[0])), max(vmax, int64(c[1]))
	}
	mxx, myy := (w+8*hmax-1)/(8*hmax), (h+8*vmax-1)/(8*vmax)
	var samples int64
	for _, c := range comps {
		samples += mxx * 8 * int64(c[0]) * myy * 8 * int64(c[1])
	}
	cost := samples
	if len(comps) == 4 {
		cost += 4 * mxx * 8 * hmax * myy * 8 * vmax
	}
	if progressive {
		cost += 4 * samples
	}
	return cost
}

// jpegFrame walks a JPEG's marker segments to its frame header and returns
// each component's horizontal and vertical sampling factors (1..4) and
// whether the coding is progressive.
func jpegFrame(head []byte) (comps [][2]byte, progressive, ok bool) {
	if len(head) < 4 || head[0] != 0xff || head[1] != 0xd8 {
		return nil, false, false
	}
	for i := 2; i+4 <= len(head); {
		if head[i] != 0xff {
			return nil, false, false
		}
		marker := head[i+1]
		switch {
		case marker == 0xff:
			i++
			continue
		case marker == 0x01 || 0xd0 <= marker && marker <= 0xd7:
			i += 2
			continue
		case marker == 0xda || marker == 0xd9:
			return nil, false, false
		}
		n := int(binary.BigEndian.Uint16(head[i+2:]))
		if n < 2 || i+2+n > len(head) {
			return nil, false, false
		}
		seg := head[i+4 : i+2+n]
		if marker >= 0xc0 && marker <= 0xcf && marker != 0xc4 && marker != 0xc8 && marker != 0xcc {
			// precision, height, width, count, then 3 bytes a component.
			if len(seg) < 6 {
				return nil, false, false
			}
			nc := int(seg[5])
			if nc < 1 || nc > 4 || len(seg) < 6+3*nc {
				return nil, false, false
			}
			for c := range nc {
				hv := seg[6+3*c+1]
				hf, vf := hv>>4, hv&0xf
				if hf < 1 || hf > 4 || vf < 1 || vf > 4 {
					return nil, false, false
				}
				comps = append(comps, [2]byte{hf, vf})
			}
			return comps, marker == 0xc2 || marker == 0xc6 || marker == 0xca || marker == 0xce, true
		}
		i += 2 + n
	}
	return nil, false, false
}

// decodeGate bounds the image decodes running at once, in number (for
// the CPU) and in the bytes they may allocate together (for memory). It
// is a weighted semaphore, first come first served, so that a large
// decode is not starved by small ones.
type decodeGate struct {
	maxRuns  int
	maxBytes int64

	mu      sync.Mutex
	runs    int
	bytes   int64
	waiters list.List // of *gateWaiter, in arrival order
}

type gateWaiter struct {
	n     int64
	ready chan struct{} // closed when admitted
}

func newDecodeGate(maxRuns int, maxBytes int64) *decodeGate {
	return &decodeGate{maxRuns: maxRuns, maxBytes: maxBytes}
}

// fits reports whether a decode of n bytes may start now; mu is held.
func (g *decodeGate) fits(n int64) bool {
	return g.runs < g.maxRuns && g.bytes+n <= g.maxBytes
}

// acquire admits a decode that needs n bytes (at most maxBytes), waiting
// for its turn until ctx is done or, with wait > 0, wait has passed; with
// wait < 0 it does not wait at all. It returns the function that ends the
// decode, or an error saying why the decode may not start.
func (g *decodeGate) acquire(ctx context.Context, n int64, wait time.Duration) (release func(), err error) {
	if n > g.maxBytes {
		return nil, fmt.Errorf("%w: needs %s, all decodes together may use %s",
			ErrTooMuchMemory, humanSize(n), humanSize(g.maxBytes))
	}
	g.mu.Lock()
	if g.waiters.Len() == 0 && g.fits(n) {
		g.runs++
		g.bytes += n
		g.mu.Unlock()
		return func() { g.release(n) }, nil
	}
	if wait < 0 {
		g.mu.Unlock()
		return nil, errDecodesBusy
	}
	w := &gateWaiter{n: n, ready: make(chan struct{})}
	elem := g.waiters.PushBack(w)
	g.mu.Unlock()

	var timeout <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-w.ready:
		return func() { g.release(n) }, nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-timeout:
		err = errDecodesBusy
	}
	g.mu.Lock()
	select {
	case <-w.ready:
		// Admitted meanwhile: give the place back.
		g.mu.Unlock()
		g.release(n)
		return nil, err
	default:
	}
	g.waiters.Remove(elem)
	// Leaving the head of the queue may let those behind in.
	g.admit()
	g.mu.Unlock()
	return nil, err
}

var errDecodesBusy = errors.New("media: image decodes are using all their memory or slots (Config.DecodeMemory, MaxDecodes); stored without a thumbnail")

func (g *decodeGate) release(n int64) {
	g.mu.Lock()
	g.runs--
	g.bytes -= n
	g.admit()
	g.mu.Unlock()
}

// admit lets in waiters from the front while they fit; mu is held.
func (g *decodeGate) admit() {
	for e := g.waiters.Front(); e != nil; e = g.waiters.Front() {
		w := e.Value.(*gateWaiter)
		if !g.fits(w.n) {
			return
		}
		g.runs++
		g.bytes += w.n
		g.waiters.Remove(e)
		close(w.ready)
	}
}
