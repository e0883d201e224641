package media

import (
	"errors"
	"fmt"
	"strings"
)

// ErrBadRef is wrapped by what CheckRef returns.
var ErrBadRef = errors.New("media: not a link to media on this server")

// CheckRef checks the media fields of a message a client sends (its url,
// id and mime) before the server forwards them: the url must be exactly
// the download URL this Service builds for the id (the one the upload
// answered, Service.URL), or one built on a base of AcceptBaseURLs, the id must have the form of an id this
// Service issues, and the mime must be one the upload's sniffer can
// produce. It does not look the id up in the store: it checks form, not
// existence, and does no I/O.
//
// A link elsewhere ("http://evil.example/x"), a path ("../../etc/passwd")
// or a type the server never names ("text/html" without the charset the
// sniffer adds) is refused with an error that wraps ErrBadRef and says
// which field is wrong; the sender should send the fields as the upload
// answered them.
func (s *Service) CheckRef(url, id, mime string) error {
	if _, ok := parseID(id); !ok {
		return fmt.Errorf("%w: media id %s is not one this server issues; send the id the upload answered", ErrBadRef, clip(id))
	}
	if want := s.URL(id); url != want && !s.peerLink(url, id) {
		return fmt.Errorf("%w: media url %s is not this server's link for id %s (%s); send the url the upload answered", ErrBadRef, clip(url), id, want)
	}
	if !sniffable(mime) {
		return fmt.Errorf("%w: media type %s is not one this server detects; send the mime the upload answered", ErrBadRef, clip(mime))
	}
	return nil
}

// peerLink reports whether url is the link for id on a base of
// AcceptBaseURLs.
func (s *Service) peerLink(url, id string) bool {
	p := s.peerBases.Load()
	if p == nil {
		return false
	}
	for _, b := range *p {
		rest, ok := strings.CutPrefix(url, b)
		if rest, ok2 := strings.CutPrefix(rest, pathPrefix+"/"); ok && ok2 && rest == id {
			return true
		}
	}
	return false
}

// clip quotes s for an error message, cut to a length worth reading.
func clip(s string) string {
	const n = 80
	if len(s) > n {
		return fmt.Sprintf("%q...", s[:n])
	}
	return fmt.Sprintf("%q", s)
}

// sniffable reports whether detectType can return mime: the types of
// sniffContainer, and those of http.DetectContentType (Go's
// net/http/sniff.go). FuzzDetectType holds detectType to this list.
func sniffable(mime string) bool {
	switch mime {
	case // sniffContainer
		"audio/mp4", "video/quicktime", "video/3gpp", "video/3gpp2",
		"image/heic", "image/heic-sequence", "image/heif", "image/avif",
		"video/mp4", "audio/ogg", "video/ogg", "application/ogg",
		"audio/amr", "audio/flac", "video/x-matroska", "video/webm",
		"audio/aac", "audio/mpeg",
		// http.DetectContentType
		"application/octet-stream", "application/pdf",
		"application/postscript", "application/vnd.ms-fontobject",
		"application/wasm", "application/x-gzip",
		"application/x-rar-compressed", "application/zip",
		"audio/aiff", "audio/midi", "audio/wave",
		"font/collection", "font/otf", "font/ttf", "font/woff", "font/woff2",
		"image/bmp", "image/gif", "image/jpeg", "image/png",
		"image/vnd.microsoft.icon", "image/webp", "image/x-icon",
		"text/html; charset=utf-8", "text/plain; charset=utf-16be",
		"text/plain; charset=utf-16le", "text/plain; charset=utf-8",
		"text/xml; charset=utf-8", "video/avi":
		return true
	}
	return false
}
