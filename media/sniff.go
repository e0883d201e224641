package media

import (
	"bytes"
	"encoding/binary"
	"net/http"
)

// sniffLen is how much of the start of a file detectType looks at, the
// same as http.DetectContentType.
const sniffLen = 512

// detectType returns the media type of a file from its first bytes; the
// client's Content-Type is never trusted. It adds to
// http.DetectContentType the containers a messenger sees most that the
// standard sniffer does not name: ISO BMFF brands (M4A voice and music,
// QuickTime and 3GPP video, HEIC and AVIF photos), Ogg Opus voice notes,
// AMR, FLAC, AAC (ADTS), bare MPEG audio frames and Matroska.
func detectType(b []byte) string {
	if len(b) > sniffLen {
		b = b[:sniffLen]
	}
	if t := sniffContainer(b); t != "" {
		return t
	}
	return http.DetectContentType(b)
}

func sniffContainer(b []byte) string {
	switch {
	case len(b) >= 12 && string(b[4:8]) == "ftyp":
		return sniffFtyp(b)
	case bytes.HasPrefix(b, []byte("OggS\x00")):
		switch {
		// The first page's packet starts at 27 + number of segments; a
		// codec header of a single-segment first page sits at 28.
		case len(b) >= 36 && string(b[28:36]) == "OpusHead",
			len(b) >= 35 && string(b[28:35]) == "\x01vorbis",
			len(b) >= 33 && string(b[28:33]) == "\x7fFLAC",
			len(b) >= 36 && string(b[28:36]) == "Speex   ":
			return "audio/ogg"
		case len(b) >= 35 && string(b[28:35]) == "\x80theora":
			return "video/ogg"
		}
		return "application/ogg"
	case bytes.HasPrefix(b, []byte("#!AMR\n")), bytes.HasPrefix(b, []byte("#!AMR-WB\n")):
		return "audio/amr"
	case bytes.HasPrefix(b, []byte("fLaC")):
		return "audio/flac"
	case bytes.HasPrefix(b, []byte("\x1a\x45\xdf\xa3")):
		// EBML: WebM is a Matroska profile; the DocType says which.
		if bytes.Contains(b[:min(len(b), 64)], []byte("matroska")) {
			return "video/x-matroska"
		}
		return "video/webm"
	case len(b) >= 4 && b[0] == 0xff && b[1]&0xf6 == 0xf0 && (b[2]>>2)&0xf <= 12:
		// ADTS: 12-bit sync, layer 0, a defined sampling frequency index.
		return "audio/aac"
	case len(b) >= 4 && isMPEGAudioFrame(b):
		return "audio/mpeg"
	}
	return ""
}

// isMPEGAudioFrame matches an MPEG audio frame header (MP3 without ID3):
// 11-bit sync, a defined version and layer, a bitrate index that is neither
// free nor bad, and a defined sample rate.
func isMPEGAudioFrame(b []byte) bool {
	h := binary.BigEndian.Uint32(b)
	return h>>21 == 0x7ff &&
		(h>>19)&3 != 1 && // version: reserved
		(h>>17)&3 != 0 && // layer: reserved
		(h>>12)&0xf != 0 && (h>>12)&0xf != 0xf &&
		(h>>10)&3 != 3
}

// sniffFtyp names an ISO base media file by its major brand, falling back
// to the compatible brands.
func sniffFtyp(b []byte) string {
	size := int(binary.BigEndian.Uint32(b))
	if size < 16 || size > len(b) {
		size = min(len(b), sniffLen)
	}
	brands := [][]byte{b[8:12]}
	for i := 16; i+4 <= size; i += 4 {
		brands = append(brands, b[i:i+4])
	}
	for _, br := range brands {
		switch string(br) {
		case "M4A ", "M4B ", "M4P ", "F4A ", "F4B ":
			return "audio/mp4"
		case "qt  ":
			return "video/quicktime"
		case "3gp4", "3gp5", "3gp6", "3gp7", "3gs7", "3ge6", "3ge7", "3gg6":
			return "video/3gpp"
		case "3g2a", "3g2b", "3g2c":
			return "video/3gpp2"
		case "heic", "heix", "heim", "heis":
			return "image/heic"
		case "hevc", "hevx":
			return "image/heic-sequence"
		case "mif1", "msf1":
			return "image/heif"
		case "avif", "avis":
			return "image/avif"
		case "isom", "iso2", "iso4", "iso5", "iso6", "mp41", "mp42", "avc1", "M4V ", "M4VH", "M4VP", "dash", "MSNV", "NDAS", "F4V ", "F4P ", "mmp4":
			return "video/mp4"
		}
	}
	return ""
}
