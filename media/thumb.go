package media

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"

	"golang.org/x/image/draw"
	"golang.org/x/image/webp"
)

// Errors of Thumbnail that callers may want to tell apart; any other error
// means the image is corrupt or truncated.
var (
	ErrNotImage      = errors.New("media: not a JPEG, PNG, GIF or WebP image")
	ErrTooManyPixels = errors.New("media: image has too many pixels to thumbnail")
	ErrTooMuchMemory = errors.New("media: image would need too much memory to decode")
)

const (
	// maxHeader bounds how much of an image is read, and kept to be read
	// again, before its dimensions are known. Headers are a few KiB; EXIF,
	// ICC and XMP blocks before a JPEG's frame header can make them a few
	// hundred. An image whose header is longer gets no thumbnail.
	maxHeader = 1 << 20

	// thumbQuality is the JPEG quality of thumbnails: a 100 px thumbnail
	// is a placeholder shown blurred until the download, so a few KiB is
	// worth more than fidelity.
	thumbQuality = 70
)

// imageFormat is one decoder. The formats are dispatched here on their
// magic bytes rather than through image.Decode, whose format table is
// global: a package linked in elsewhere (TIFF, BMP) must not widen what
// the upload path will decode.
type imageFormat struct {
	name   string
	config func(io.Reader) (image.Config, error)
	decode func(io.Reader) (image.Image, error)
}

var (
	formatJPEG = &imageFormat{"jpeg", jpeg.DecodeConfig, jpeg.Decode}
	formatPNG  = &imageFormat{"png", png.DecodeConfig, png.Decode}
	formatGIF  = &imageFormat{"gif", gif.DecodeConfig, gif.Decode}
	formatWebP = &imageFormat{"webp", webp.DecodeConfig, webp.Decode}
)

func sniffImage(b []byte) *imageFormat {
	switch {
	case bytes.HasPrefix(b, []byte("\xff\xd8\xff")):
		return formatJPEG
	case bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")):
		return formatPNG
	case bytes.HasPrefix(b, []byte("GIF87a")), bytes.HasPrefix(b, []byte("GIF89a")):
		return formatGIF
	case len(b) >= 12 && string(b[:4]) == "RIFF" && string(b[8:12]) == "WEBP":
		return formatWebP
	}
	return nil
}

// Thumbnail reads a JPEG, PNG, GIF (first frame) or WebP image and returns
// a JPEG of it whose longest side is at most maxSide pixels (never scaled
// up), with the aspect ratio kept, EXIF orientation applied and
// transparency flattened onto white.
//
// The image's header is read and its cost checked before anything is
// decoded: an image of more than maxPixels pixels (<= 0: DefaultMaxPixels)
// yields ErrTooManyPixels, and one whose decoding would allocate more than
// maxBytes (<= 0: DefaultMaxDecodeBytes; see [decodeCost] for how bits per
// pixel, subsampling, progressive JPEG and interlacing count) yields
// ErrTooMuchMemory, in both cases without a pixel buffer ever being
// allocated, which is what defeats decompression bombs. Anything that is
// not one of the four formats yields ErrNotImage; a corrupt image yields
// an error, never a panic.
//
// None of the decoders can decode to a reduced size (image/jpeg has no DCT
// scaling, image/png and x/image/webp no row streaming), so the bound is
// on the full decode.
func Thumbnail(r io.Reader, maxSide, maxPixels int, maxBytes int64) ([]byte, error) {
	if maxSide <= 0 {
		return nil, fmt.Errorf("media: thumbnail side %d, want > 0", maxSide)
	}
	p, err := probeImage(r, -1)
	if err != nil {
		return nil, err
	}
	if err := p.check(maxPixels, maxBytes); err != nil {
		return nil, err
	}
	return p.thumbnail(r, maxSide)
}

// probe is what the header of an image says, read before any pixel.
type probe struct {
	f    *imageFormat
	cfg  image.Config
	head []byte // every byte read from the image so far
	// cost is how many bytes decoding will allocate, from above.
	cost int64
}

// probeImage reads the header of the image r holds, up to its dimensions
// and no further than maxHeader bytes. size is the file's length, or -1
// if unknown (it counts for WebP, whose decoder reads chunks whole).
func probeImage(r io.Reader, size int64) (p *probe, err error) {
	p = &probe{}
	defer p.recoverPanic(&err)
	// Everything the header parse reads is kept in head and read again by
	// the decoder, so r need not be seekable.
	var head bytes.Buffer
	tee := io.TeeReader(io.LimitReader(r, maxHeader), &head)
	var magic [12]byte
	n, _ := io.ReadFull(tee, magic[:])
	if p.f = sniffImage(magic[:n]); p.f == nil {
		return nil, ErrNotImage
	}
	cfg, err := p.f.config(io.MultiReader(bytes.NewReader(magic[:n]), tee))
	if err != nil {
		if head.Len() >= maxHeader {
			return nil, fmt.Errorf("media: %s header is over %d bytes", p.f.name, maxHeader)
		}
		return nil, fmt.Errorf("media: %s header: %w", p.f.name, err)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 {
		return nil, fmt.Errorf("media: %s image is %dx%d", p.f.name, cfg.Width, cfg.Height)
	}
	p.cfg, p.head = cfg, head.Bytes()
	p.cost = decodeCost(p.f, cfg, p.head)
	if p.f == formatWebP && size > 0 {
		p.cost += size
	}
	return p, nil
}

// check refuses an image over either limit (<= 0: the default).
func (p *probe) check(maxPixels int, maxBytes int64) error {
	if maxPixels <= 0 {
		maxPixels = DefaultMaxPixels
	}
	if maxBytes <= 0 {
		maxBytes = DefaultMaxDecodeBytes
	}
	w, h := p.cfg.Width, p.cfg.Height
	if int64(w)*int64(h) > int64(maxPixels) {
		return fmt.Errorf("%w: %dx%d is over %d", ErrTooManyPixels, w, h, maxPixels)
	}
	if p.cost > maxBytes {
		return fmt.Errorf("%w: %s %dx%d needs about %s, over %s",
			ErrTooMuchMemory, p.f.name, w, h, humanSize(p.cost), humanSize(maxBytes))
	}
	return nil
}

// thumbnail decodes the image (the bytes in p.head, then the rest of r,
// which must continue where probeImage stopped) and makes its thumbnail.
func (p *probe) thumbnail(rest io.Reader, maxSide int) (thumb []byte, err error) {
	defer p.recoverPanic(&err)
	f := p.f
	img, err := f.decode(io.MultiReader(bytes.NewReader(p.head), rest))
	if err != nil {
		return nil, fmt.Errorf("media: %s: %w", f.name, err)
	}
	b := img.Bounds()
	if b.Empty() {
		return nil, fmt.Errorf("media: %s image is empty", f.name)
	}
	orientation := 1
	if f == formatJPEG {
		orientation = exifOrientation(p.head)
	}

	w, h := fit(b.Dx(), b.Dy(), maxSide)
	dst := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.Draw(dst, dst.Bounds(), image.NewUniform(color.White), image.Point{}, draw.Src)
	small := prescale(img, maxSide)
	draw.CatmullRom.Scale(dst, dst.Bounds(), small, small.Bounds(), draw.Over, nil)

	var out bytes.Buffer
	if err := jpeg.Encode(&out, orient(dst, orientation), &jpeg.Options{Quality: thumbQuality}); err != nil {
		return nil, fmt.Errorf("media: encode thumbnail: %w", err)
	}
	return out.Bytes(), nil
}

// recoverPanic turns a decoder's panic into an error. The decoders are
// meant not to panic, but they parse hostile input; one bad file must
// cost its thumbnail, not the server.
func (p *probe) recoverPanic(err *error) {
	if v := recover(); v != nil {
		name := "image"
		if p.f != nil {
			name = p.f.name
		}
		*err = fmt.Errorf("media: %s decoder panicked: %v", name, v)
	}
}

// prescale shrinks a large image by an integer factor, averaging blocks,
// to between two and four times side, for Catmull-Rom to finish. Catmull-
// Rom alone would also average every source pixel (its kernel widens with
// the reduction), but it converts each pixel once per kernel tap; the box
// filter converts each once, which makes a photo's thumbnail several
// times cheaper with no visible difference at thumbnail size.
func prescale(img image.Image, side int) image.Image {
	b := img.Bounds()
	k := max(b.Dx(), b.Dy()) / (2 * side)
	if k < 2 {
		return img
	}
	w, h := b.Dx(), b.Dy()
	dw, dh := (w+k-1)/k, (h+k-1)/k
	dst := image.NewRGBA(image.Rect(0, 0, dw, dh))
	row := make([]uint8, 4*w)
	// uint64: a block can hold nearly all of a very thin image's pixels.
	sums := make([]uint64, 4*dw)
	for dy := range dh {
		clear(sums)
		y0 := b.Min.Y + dy*k
		y1 := min(y0+k, b.Max.Y)
		for y := y0; y < y1; y++ {
			readRow(img, y, row)
			for i := 0; i < len(sums); i += 4 {
				var r, g, bl, a uint64
				blk := row[k*i : min(k*(i+4), len(row))]
				for j := 0; j+3 < len(blk); j += 4 {
					r += uint64(blk[j])
					g += uint64(blk[j+1])
					bl += uint64(blk[j+2])
					a += uint64(blk[j+3])
				}
				sums[i] += r
				sums[i+1] += g
				sums[i+2] += bl
				sums[i+3] += a
			}
		}
		rows := uint64(y1 - y0)
		for dx := range dw {
			n := rows * uint64(min(k, w-dx*k))
			o := dst.PixOffset(dx, dy)
			for c := range 4 {
				dst.Pix[o+c] = uint8((sums[4*dx+c] + n/2) / n)
			}
		}
	}
	return dst
}

// readRow writes row y of img into row as premultiplied 8-bit RGBA, with
// fast paths for what the decoders return most.
func readRow(img image.Image, y int, row []uint8) {
	b := img.Bounds()
	switch m := img.(type) {
	case *image.YCbCr: // JPEG, lossy WebP
		for x, i := b.Min.X, 0; x < b.Max.X; x, i = x+1, i+4 {
			yi, ci := m.YOffset(x, y), m.COffset(x, y)
			row[i], row[i+1], row[i+2] = color.YCbCrToRGB(m.Y[yi], m.Cb[ci], m.Cr[ci])
			row[i+3] = 0xff
		}
	case *image.RGBA: // opaque PNG
		o := m.PixOffset(b.Min.X, y)
		copy(row, m.Pix[o:o+len(row)])
	case *image.NRGBA: // PNG with alpha, lossless WebP
		o := m.PixOffset(b.Min.X, y)
		for i := 0; i < len(row); i += 4 {
			a := uint32(m.Pix[o+i+3])
			row[i] = uint8(uint32(m.Pix[o+i]) * a / 0xff)
			row[i+1] = uint8(uint32(m.Pix[o+i+1]) * a / 0xff)
			row[i+2] = uint8(uint32(m.Pix[o+i+2]) * a / 0xff)
			row[i+3] = uint8(a)
		}
	case *image.Gray: // greyscale JPEG and PNG
		o := m.PixOffset(b.Min.X, y)
		for i, j := 0, o; i < len(row); i, j = i+4, j+1 {
			g := m.Pix[j]
			row[i], row[i+1], row[i+2], row[i+3] = g, g, g, 0xff
		}
	case *image.NRGBA64: // 16-bit PNG with alpha
		o := m.PixOffset(b.Min.X, y)
		for i, j := 0, o; i < len(row); i, j = i+4, j+8 {
			a := uint32(m.Pix[j+6])<<8 | uint32(m.Pix[j+7])
			for c := range 3 {
				v := uint32(m.Pix[j+2*c])<<8 | uint32(m.Pix[j+2*c+1])
				row[i+c] = uint8(v * a / 0xffff >> 8)
			}
			row[i+3] = uint8(a >> 8)
		}
	case *image.RGBA64: // opaque 16-bit PNG
		o := m.PixOffset(b.Min.X, y)
		for i, j := 0, o; i < len(row); i, j = i+4, j+8 {
			row[i], row[i+1], row[i+2], row[i+3] = m.Pix[j], m.Pix[j+2], m.Pix[j+4], m.Pix[j+6]
		}
	default: // paletted, 16-bit grey, CMYK: rarer, and fine the slow way
		for x, i := b.Min.X, 0; x < b.Max.X; x, i = x+1, i+4 {
			r, g, bl, a := m.At(x, y).RGBA()
			row[i], row[i+1], row[i+2], row[i+3] = uint8(r>>8), uint8(g>>8), uint8(bl>>8), uint8(a>>8)
		}
	}
}

// fit scales w x h down so that its longer side is at most side, keeping
// the aspect ratio, rounding, and keeping at least one pixel.
func fit(w, h, side int) (int, int) {
	long := max(w, h)
	if long <= side {
		return w, h
	}
	sw := max(1, int((int64(w)*int64(side)+int64(long)/2)/int64(long)))
	sh := max(1, int((int64(h)*int64(side)+int64(long)/2)/int64(long)))
	return sw, sh
}

// orient applies an EXIF orientation (1..8) to a thumbnail, so that it
// shows upright like the photo does in a viewer. Phones store photos as
// the sensor saw them and record the rotation in EXIF.
func orient(src *image.RGBA, o int) *image.RGBA {
	if o < 2 || o > 8 {
		return src
	}
	w, h := src.Rect.Dx(), src.Rect.Dy()
	dw, dh := w, h
	if o >= 5 {
		dw, dh = h, w
	}
	dst := image.NewRGBA(image.Rect(0, 0, dw, dh))
	for y := range h {
		for x := range w {
			var dx, dy int
			switch o {
			case 2: // mirrored
				dx, dy = w-1-x, y
			case 3: // rotated 180
				dx, dy = w-1-x, h-1-y
			case 4: // mirrored vertically
				dx, dy = x, h-1-y
			case 5: // transposed
				dx, dy = y, x
			case 6: // rotated 90 clockwise to view
				dx, dy = h-1-y, x
			case 7: // transversed
				dx, dy = h-1-y, w-1-x
			case 8: // rotated 90 counter-clockwise to view
				dx, dy = y, w-1-x
			}
			si := src.PixOffset(x, y)
			di := dst.PixOffset(dx, dy)
			copy(dst.Pix[di:di+4], src.Pix[si:si+4])
		}
	}
	return dst
}

// exifOrientation finds the Orientation tag (0x0112) of IFD0 in a JPEG's
// APP1 Exif segment, looking only at head (what the header parse read).
// It returns 1 (upright) when there is none or anything is malformed.
func exifOrientation(head []byte) int {
	if len(head) < 4 || head[0] != 0xff || head[1] != 0xd8 {
		return 1
	}
	for i := 2; i+4 <= len(head); {
		if head[i] != 0xff {
			return 1
		}
		marker := head[i+1]
		switch {
		case marker == 0xff: // fill byte
			i++
			continue
		case marker == 0x01 || 0xd0 <= marker && marker <= 0xd7: // no length
			i += 2
			continue
		case marker == 0xda || marker == 0xd9: // scan data or end: no more headers
			return 1
		}
		n := int(binary.BigEndian.Uint16(head[i+2:]))
		if n < 2 || i+2+n > len(head) {
			return 1
		}
		seg := head[i+4 : i+2+n]
		if marker == 0xe1 && bytes.HasPrefix(seg, []byte("Exif\x00\x00")) {
			return tiffOrientation(seg[6:])
		}
		i += 2 + n
	}
	return 1
}

func tiffOrientation(t []byte) int {
	if len(t) < 8 {
		return 1
	}
	var bo binary.ByteOrder
	switch string(t[:4]) {
	case "II*\x00":
		bo = binary.LittleEndian
	case "MM\x00*":
		bo = binary.BigEndian
	default:
		return 1
	}
	ifd := int64(bo.Uint32(t[4:]))
	if ifd < 8 || ifd+2 > int64(len(t)) {
		return 1
	}
	count := int64(bo.Uint16(t[ifd:]))
	for e := ifd + 2; e+12 <= int64(len(t)) && count > 0; e, count = e+12, count-1 {
		if bo.Uint16(t[e:]) != 0x0112 {
			continue
		}
		// SHORT (3), one value, stored in the first two bytes of the field.
		if bo.Uint16(t[e+2:]) != 3 || bo.Uint32(t[e+4:]) != 1 {
			return 1
		}
		if o := int(bo.Uint16(t[e+8:])); o >= 1 && o <= 8 {
			return o
		}
		return 1
	}
	return 1
}
