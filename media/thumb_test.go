package media

import (
	"bytes"
	"encoding/binary"
	"errors"
	"image"
	"image/color"
	"image/jpeg"
	"strings"
	"testing"
)

func TestThumbnailSize(t *testing.T) {
	for _, tc := range []struct {
		w, h, side   int
		wantW, wantH int
		format       string
		encode       func(testing.TB, image.Image) []byte
	}{
		{400, 300, 100, 100, 75, "png", encodePNG},
		{300, 400, 100, 75, 100, "png", encodePNG},
		{1000, 10, 100, 100, 1, "jpeg", encodeJPEG},
		{10, 1000, 100, 1, 100, "jpeg", encodeJPEG},
		{3000, 1, 100, 100, 1, "png", encodePNG},
		{100, 100, 100, 100, 100, "gif", encodeGIF},
		{99, 50, 100, 99, 50, "gif", encodeGIF},
		{300, 200, 64, 64, 43, "jpeg", encodeJPEG},
	} {
		data := tc.encode(t, photo(tc.w, tc.h))
		th, err := Thumbnail(bytes.NewReader(data), tc.side, 0, 0)
		if err != nil {
			t.Errorf("%s %dx%d: %v", tc.format, tc.w, tc.h, err)
			continue
		}
		img, err := jpeg.Decode(bytes.NewReader(th))
		if err != nil {
			t.Errorf("%s %dx%d: thumbnail is not a JPEG: %v", tc.format, tc.w, tc.h, err)
			continue
		}
		if b := img.Bounds(); b.Dx() != tc.wantW || b.Dy() != tc.wantH {
			t.Errorf("%s %dx%d side %d: %v, want %dx%d", tc.format, tc.w, tc.h, tc.side, b.Size(), tc.wantW, tc.wantH)
		}
	}
}

func TestThumbnailKeepsTheColours(t *testing.T) {
	// Left half red, right half blue; the thumbnail's corners must say so.
	src := image.NewNRGBA(image.Rect(0, 0, 400, 200))
	for y := range 200 {
		for x := range 400 {
			c := color.NRGBA{255, 0, 0, 255}
			if x >= 200 {
				c = color.NRGBA{0, 0, 255, 255}
			}
			src.Set(x, y, c)
		}
	}
	img := mustThumb(t, encodePNG(t, src))
	if r, _, b, _ := img.At(5, 25).RGBA(); r>>8 < 200 || b>>8 > 60 {
		t.Errorf("left is %v, want red", img.At(5, 25))
	}
	if r, _, b, _ := img.At(94, 25).RGBA(); b>>8 < 200 || r>>8 > 60 {
		t.Errorf("right is %v, want blue", img.At(94, 25))
	}
}

func TestThumbnailFlattensTransparencyOntoWhite(t *testing.T) {
	img := mustThumb(t, encodePNG(t, image.NewNRGBA(image.Rect(0, 0, 20, 20))))
	if r, g, b, _ := img.At(10, 10).RGBA(); r>>8 < 245 || g>>8 < 245 || b>>8 < 245 {
		t.Errorf("transparent pixel became %v, want white", img.At(10, 10))
	}
}

func mustThumb(t *testing.T, data []byte) image.Image {
	t.Helper()
	th, err := Thumbnail(bytes.NewReader(data), 100, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	img, err := jpeg.Decode(bytes.NewReader(th))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestThumbnailEXIFOrientation(t *testing.T) {
	// A 300x200 photo whose top-left quarter is black, the rest white.
	src := image.NewGray(image.Rect(0, 0, 300, 200))
	for y := range 200 {
		for x := range 300 {
			if x >= 150 || y >= 100 {
				src.SetGray(x, y, color.Gray{255})
			}
		}
	}
	plain := encodeJPEG(t, src)
	// Where the black quarter ends up in a 100 px thumbnail, for each
	// orientation, and the thumbnail's size.
	for _, tc := range []struct {
		o            uint16
		w, h         int
		darkX, darkY int
	}{
		{1, 100, 67, 10, 10},
		{2, 100, 67, 90, 10},
		{3, 100, 67, 90, 57},
		{4, 100, 67, 10, 57},
		{5, 67, 100, 10, 10},
		{6, 67, 100, 57, 10},
		{7, 67, 100, 57, 90},
		{8, 67, 100, 10, 90},
	} {
		for _, bo := range []byteOrder{binary.BigEndian, binary.LittleEndian} {
			img := mustThumb(t, withEXIFOrientation(plain, tc.o, bo))
			if b := img.Bounds(); b.Dx() != tc.w || b.Dy() != tc.h {
				t.Errorf("orientation %d (%s): %v, want %dx%d", tc.o, bo, b.Size(), tc.w, tc.h)
				continue
			}
			if y := color.GrayModel.Convert(img.At(tc.darkX, tc.darkY)).(color.Gray).Y; y > 60 {
				t.Errorf("orientation %d (%s): (%d,%d) is %d, want dark", tc.o, bo, tc.darkX, tc.darkY, y)
			}
		}
	}
	if got := exifOrientation(withEXIFOrientation(plain, 9, binary.BigEndian)); got != 1 {
		t.Errorf("orientation 9 read as %d, want 1", got)
	}
}

// TestThumbnailRefusesBombsBeforeDecoding feeds headers that declare huge
// images, followed by a reader that fails the test if touched: the
// dimensions alone must decide, with no pixel buffer allocated.
func TestThumbnailRefusesBombsBeforeDecoding(t *testing.T) {
	for name, hdr := range map[string][]byte{
		"png 100000x100000": pngHeader(100000, 100000),
		"png 50 Mpx + 1":    pngHeader(50_000_001, 1),
		"gif 65535x65535":   gifHeader(65535, 65535),
		"webp 60000x60000":  webpHeader(40000, 40000),
		"jpeg 65500x65500":  jpegHeader(65500, 65500),
	} {
		_, err := Thumbnail(&failAfter{t: t, data: bytes.NewReader(hdr)}, 100, DefaultMaxPixels, 0)
		if !errors.Is(err, ErrTooManyPixels) {
			t.Errorf("%s: %v, want ErrTooManyPixels", name, err)
		}
	}
	// The limit is the caller's.
	data := encodePNG(t, photo(200, 100))
	if _, err := Thumbnail(bytes.NewReader(data), 100, 19_999, 0); !errors.Is(err, ErrTooManyPixels) {
		t.Errorf("200x100 with a limit of 19999: %v, want ErrTooManyPixels", err)
	}
	if _, err := Thumbnail(bytes.NewReader(data), 100, 20_000, 0); err != nil {
		t.Errorf("200x100 with a limit of 20000: %v", err)
	}
}

// jpegHeader is SOI, a baseline SOF0 declaring w x h with 3 components,
// and the start of a scan (where a JPEG's header ends).
func jpegHeader(w, h uint16) []byte {
	b := []byte{0xff, 0xd8, 0xff, 0xc0, 0, 17, 8}
	b = binary.BigEndian.AppendUint16(b, h)
	b = binary.BigEndian.AppendUint16(b, w)
	b = append(b, 3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1)
	return append(b, 0xff, 0xda, 0, 12)
}

func TestThumbnailErrors(t *testing.T) {
	good := encodeJPEG(t, photo(120, 80))
	hugeHeader := append([]byte{0xff, 0xd8}, bytes.Repeat(append([]byte{0xff, 0xe2, 0xff, 0xff}, make([]byte, 0xfffd)...), 20)...)
	for name, tc := range map[string]struct {
		data []byte
		want error
	}{
		"empty":             {nil, ErrNotImage},
		"text":              {[]byte("hello, world"), ErrNotImage},
		"bmp":               {[]byte("BM\x36\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00"), ErrNotImage},
		"heic":              {[]byte("\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"), ErrNotImage},
		"magic only":        {[]byte("\x89PNG\r\n\x1a\n"), nil},
		"truncated jpeg":    {good[:len(good)/2], nil},
		"corrupt jpeg":      {append(good[:300:300], bytes.Repeat([]byte{0}, 2000)...), nil},
		"zero-width png":    {pngHeader(0, 10), nil},
		"bad png checksum":  {append(pngHeader(10, 10)[:29], 0, 0, 0, 0), nil},
		"header over 1 MiB": {hugeHeader, nil},
	} {
		th, err := Thumbnail(bytes.NewReader(tc.data), 100, 0, 0)
		if err == nil || th != nil {
			t.Errorf("%s: %d bytes, %v; want an error", name, len(th), err)
			continue
		}
		if tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
		if errors.Is(err, ErrTooManyPixels) {
			t.Errorf("%s: %v", name, err)
		}
		if !strings.HasPrefix(err.Error(), "media: ") {
			t.Errorf("%s: error %q does not say where it is from", name, err)
		}
	}
	if _, err := Thumbnail(bytes.NewReader(good), 0, 0, 0); err == nil {
		t.Error("side 0 accepted")
	}
}

// TestReadRowMatchesAt checks each fast path of readRow against the
// image's own At, which the slow path uses.
func TestReadRowMatchesAt(t *testing.T) {
	r := image.Rect(3, 5, 40, 9) // a non-zero origin catches offset mistakes
	ycc := image.NewYCbCr(r, image.YCbCrSubsampleRatio420)
	rgba, nrgba, gray := image.NewRGBA(r), image.NewNRGBA(r), image.NewGray(r)
	rgba64, nrgba64 := image.NewRGBA64(r), image.NewNRGBA64(r)
	for i := range nrgba64.Pix {
		nrgba64.Pix[i] = uint8(i * 29)
		rgba64.Pix[i] = uint8(i * 17)
		if i%8 >= 6 {
			rgba64.Pix[i] = 0xff // premultiplied: keep it valid
		}
	}
	pal := image.NewPaletted(r, color.Palette{color.Black, color.NRGBA{200, 100, 50, 128}})
	for i := range ycc.Y {
		ycc.Y[i] = uint8(i * 7)
	}
	for i := range ycc.Cb {
		ycc.Cb[i], ycc.Cr[i] = uint8(i*13), uint8(255-i*5)
	}
	for i := range nrgba.Pix {
		rgba.Pix[i], nrgba.Pix[i] = uint8(i*3), uint8(i*11)
	}
	for i := 3; i < len(rgba.Pix); i += 4 {
		rgba.Pix[i] = 0xff // premultiplied: keep it valid
	}
	for i := range gray.Pix {
		gray.Pix[i] = uint8(i * 5)
		pal.Pix[i] = uint8(i % 2)
	}
	for name, img := range map[string]image.Image{"ycbcr": ycc, "rgba": rgba, "nrgba": nrgba, "gray": gray, "paletted": pal, "rgba64": rgba64, "nrgba64": nrgba64} {
		row := make([]uint8, 4*r.Dx())
		for y := r.Min.Y; y < r.Max.Y; y++ {
			readRow(img, y, row)
			for x := r.Min.X; x < r.Max.X; x++ {
				cr, cg, cb, ca := img.At(x, y).RGBA()
				want := [4]uint32{cr >> 8, cg >> 8, cb >> 8, ca >> 8}
				i := 4 * (x - r.Min.X)
				for c := range 4 {
					if d := int(row[i+c]) - int(want[c]); d < -1 || d > 1 {
						t.Fatalf("%s (%d,%d): %v, want %v", name, x, y, row[i:i+4], want)
					}
				}
			}
		}
	}
}
