package media

import (
	"bytes"
	"encoding/binary"
	"errors"
	"image/jpeg"
	"net/http"
	"net/http/httptest"
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
		// A thumbnail is only made of what the header allowed.
		p, err := probeImage(bytes.NewReader(data), int64(len(data)))
		if err != nil || p.check(1<<16, 1<<20) != nil {
			t.Fatalf("thumbnail made of an image whose header is refused: %v", err)
		}
		if again, _ := Thumbnail(bytes.NewReader(data), 16, 1<<16, 1<<20); !bytes.Equal(again, th) {
			t.Fatal("two thumbnails of the same bytes differ")
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
		if !ValidKey(key) || strings.ContainsAny(key, "./\\") {
			t.Fatalf("%q gives key %q", s, key)
		}
		b, err := idEncoding.DecodeString(s)
		if err != nil || len(b) != idBytes || idEncoding.EncodeToString(b) != s {
			t.Fatalf("%q accepted but is not canonical", s)
		}
		if keyOf(b) != key {
			t.Fatalf("%q: key %q is not the key of its bytes", s, key)
		}
	})
}

// FuzzDetectType checks the sniffer on arbitrary starts of files: it
// names a type the server admits to (sniffable, what CheckRef accepts),
// the same one each time, and looks at no more than sniffLen bytes. The
// seeds hold a start of every kind both sniffers know.
func FuzzDetectType(f *testing.F) {
	for _, seed := range []string{
		"", "OggS\x00", "\x00\x00\x00\x08ftyp", "\x00\x00\x00\xffftypisom", "\xff\xf1", "\xff\xfb\x90", "\x1a\x45\xdf\xa3",
		// sniffContainer
		"\x00\x00\x00\x14ftypM4A \x00\x00\x00\x00", "\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00",
		"\x00\x00\x00\x14ftyp3gp4\x00\x00\x00\x00", "\x00\x00\x00\x14ftyp3g2a\x00\x00\x00\x00",
		"\x00\x00\x00\x14ftypheic\x00\x00\x00\x00", "\x00\x00\x00\x14ftyphevc\x00\x00\x00\x00",
		"\x00\x00\x00\x14ftypmif1\x00\x00\x00\x00", "\x00\x00\x00\x14ftypavif\x00\x00\x00\x00",
		"OggS\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x13OpusHead",
		"OggS\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x13\x80theora",
		"#!AMR\n", "fLaC", "\x1a\x45\xdf\xa3\x01\x00\x00\x00\x00\x00\x00\x1fB\x82\x88matroska",
		// http.DetectContentType
		"<!DOCTYPE HTML>", " <p>x", "<?xml version", "%PDF-1.7", "%!PS-Adobe-3.0", "\xfe\xff\x00a", "\xff\xfe" + "a\x00",
		"\xef\xbb\xbfhi", "\x00\x00\x01\x00", "BM", "GIF89a", "RIFF\x00\x00\x00\x00WEBPVP8 ", "\x89PNG\r\n\x1a\n",
		"\xff\xd8\xff", "FORM\x00\x00\x00\x00AIFF", "ID3", "MThd\x00\x00\x00\x06", "RIFF\x00\x00\x00\x00AVI ",
		"RIFF\x00\x00\x00\x00WAVE", "\x00\x01\x00\x00", "OTTO", "ttcf", "wOFF", "wOF2", "\x1f\x8b\x08", "PK\x03\x04",
		"Rar!\x1a\x07\x00", "\x00asm", "plain text", "\x00\x01\x02binary",
		strings.Repeat("\x00", 34) + "LP",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		mt := detectType(b)
		if !sniffable(mt) {
			t.Fatalf("%q sniffed as %q, which sniffable does not list", b, mt)
		}
		if again := detectType(bytes.Clone(b)); again != mt {
			t.Fatalf("%q sniffed as %q, then %q", b, mt, again)
		}
		if len(b) > sniffLen {
			if head := detectType(b[:sniffLen]); head != mt {
				t.Fatalf("%q: %q, but its first %d bytes %q", b, mt, sniffLen, head)
			}
		}
	})
}

// FuzzAuthorization checks the upload's Authorization header as the
// handler parses it: only "Bearer" (in any case) and the issued token,
// with spaces around it, pass; everything else is a 401 with a
// WWW-Authenticate challenge and a JSON error, never a panic.
func FuzzAuthorization(f *testing.F) {
	e := newEnv(f, nil)
	good := e.token("+14155550100")
	for _, seed := range []string{"", "Bearer", "Bearer ", "Bearer " + good, "bearer  " + good + " ", "Basic " + good, "Bearer\t" + good, "Bearer " + good + "x", "Bearer " + good + " " + good} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, h string) {
		req := httptest.NewRequest(http.MethodPost, "/v1/media", nil)
		req.Header["Authorization"] = []string{h}
		w := httptest.NewRecorder()
		account, ok := e.svc.authenticate(w, req)
		scheme, tok, _ := strings.Cut(h, " ")
		want := strings.EqualFold(scheme, "Bearer") && strings.TrimSpace(tok) == good
		switch {
		case ok != want:
			t.Fatalf("%q: accepted %v, want %v", h, ok, want)
		case ok && account != "+14155550100":
			t.Fatalf("%q: account %q", h, account)
		case !ok && (w.Code != http.StatusUnauthorized || w.Header().Get("WWW-Authenticate") == "" || w.Header().Get("Content-Type") != "application/json"):
			t.Fatalf("%q: refused with %d, %v", h, w.Code, w.Header())
		}
	})
}
