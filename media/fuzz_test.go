package media

import (
	"bytes"
	"encoding/binary"
	"errors"
	"image/jpeg"
	"strings"
	"testing"
)

// FuzzThumbnail checks that no input makes Thumbnail panic or answer
// anything but a small JPEG or an error.
func FuzzThumbnail(f *testing.F) {
	for _, seed := range [][]byte{
		nil,
		encodePNG(f, photo(30, 20)),
		encodeJPEG(f, photo(30, 20)),
		encodeGIF(f, photo(30, 20)),
		withEXIFOrientation(encodeJPEG(f, photo(30, 20)), 6, binary.BigEndian),
		[]byte(webpLossless),
		[]byte(webpLossy),
		pngHeader(100000, 100000),
		gifHeader(65535, 65535),
		webpHeader(40000, 40000),
		jpegHeader(65500, 65500),
		[]byte("\xff\xd8\xff\xe1\x00\x10Exif\x00\x00MM\x00*\x00\x00\x00\x08"),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		// A low pixel limit keeps each run cheap; the limit's own
		// correctness is tested elsewhere.
		th, err := Thumbnail(bytes.NewReader(data), 16, 1<<16, 1<<20)
		if err != nil {
			if th != nil {
				t.Fatal("thumbnail with an error")
			}
			return
		}
		img, err := jpeg.Decode(bytes.NewReader(th))
		if err != nil {
			t.Fatalf("thumbnail is not a JPEG: %v", err)
		}
		if b := img.Bounds(); b.Dx() > 16 || b.Dy() > 16 || b.Empty() {
			t.Fatalf("thumbnail is %v", b.Size())
		}
	})
}

// FuzzVerifyUploadToken checks that nothing but an issued token verifies,
// and that verification never panics.
func FuzzVerifyUploadToken(f *testing.F) {
	e := newEnv(f, nil)
	good := e.token("+14155550100")
	for _, seed := range []string{"", ".", good, good + "x", strings.ToUpper(good), "AQAAAAAAAAAA.AAAA", strings.Repeat("A", 600)} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		account, err := e.svc.VerifyUploadToken(tok)
		switch {
		case err == nil && (tok != good || account != "+14155550100"):
			t.Fatalf("%q verified as %q", tok, account)
		case err != nil && !errors.Is(err, ErrTokenInvalid) && !errors.Is(err, ErrTokenExpired):
			t.Fatalf("unexpected error %v", err)
		case err != nil && account != "":
			t.Fatalf("account %q with an error", account)
		}
	})
}

// FuzzMediaID checks that the id parser accepts exactly the canonical
// spelling of 16 bytes, and maps it to a key safe for a path.
func FuzzMediaID(f *testing.F) {
	id, _ := newID()
	for _, seed := range []string{"", id, id[:21] + "B", "../../../../etc/passwd", "%2e%2e%2f", strings.Repeat("_", 22), strings.Repeat("-", 22), "AAAAAAAAAAAAAAAAAAAAAA", "AAAAAAAAAAAAAAAAAAAAAB"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		key, ok := parseID(s)
		if !ok {
			return
		}
		if !validKey(key) || strings.ContainsAny(key, "./\\") {
			t.Fatalf("%q gives key %q", s, key)
		}
		b, err := idEncoding.DecodeString(s)
		if err != nil || len(b) != idBytes || idEncoding.EncodeToString(b) != s {
			t.Fatalf("%q accepted but is not canonical", s)
		}
	})
}

// FuzzDetectType checks the sniffer on arbitrary starts of files.
func FuzzDetectType(f *testing.F) {
	for _, seed := range []string{"", "OggS\x00", "\x00\x00\x00\x08ftyp", "\x00\x00\x00\xffftypisom", "\xff\xf1", "\xff\xfb\x90", "\x1a\x45\xdf\xa3"} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if mt := detectType(b); mt == "" {
			t.Fatal("no type")
		}
	})
}
