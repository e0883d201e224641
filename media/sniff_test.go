package media

import (
	"testing"
)

func TestDetectType(t *testing.T) {
	ftyp := func(major string, compat ...string) []byte {
		b := []byte{0, 0, 0, byte(16 + 4*len(compat))}
		b = append(b, "ftyp"+major+"\x00\x00\x00\x00"...)
		for _, c := range compat {
			b = append(b, c...)
		}
		return append(b, "\x00\x00\x00\x08free"...)
	}
	oggPage := func(codec string) []byte {
		b := []byte("OggS\x00\x02")
		b = append(b, make([]byte, 20)...)
		return append(append(b, 1, byte(len(codec))), codec...)
	}
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"m4a", ftyp("M4A ", "M4A ", "mp42", "isom"), "audio/mp4"},
		{"mp4", ftyp("isom", "isom", "iso2", "avc1", "mp41"), "video/mp4"},
		{"quicktime", ftyp("qt  ", "qt  "), "video/quicktime"},
		{"3gp", ftyp("3gp4", "isom"), "video/3gpp"},
		{"heic", ftyp("heic", "mif1", "heic"), "image/heic"},
		{"avif", ftyp("avif", "avif", "mif1"), "image/avif"},
		{"unknown brand, mp4 compatible", ftyp("abcd", "mp42"), "video/mp4"},
		{"opus", oggPage("OpusHead"), "audio/ogg"},
		{"vorbis", oggPage("\x01vorbis"), "audio/ogg"},
		{"theora", oggPage("\x80theora"), "video/ogg"},
		{"other ogg", oggPage("something"), "application/ogg"},
		{"amr", []byte("#!AMR\n\x3c\x00"), "audio/amr"},
		{"flac", []byte("fLaC\x00\x00\x00\x22"), "audio/flac"},
		{"aac adts", []byte{0xff, 0xf1, 0x50, 0x80, 0x02, 0x1f, 0xfc}, "audio/aac"},
		{"mp3 frame", []byte{0xff, 0xfb, 0x90, 0x64, 0, 0, 0, 0}, "audio/mpeg"},
		{"mp3 id3", []byte("ID3\x04\x00\x00\x00\x00\x00\x00"), "audio/mpeg"},
		{"webm", []byte("\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm"), "video/webm"},
		{"matroska", []byte("\x1a\x45\xdf\xa3\xa3\x42\x86\x81\x01\x42\x82\x88matroska"), "video/x-matroska"},
		{"wav", []byte("RIFF\x24\x00\x00\x00WAVEfmt "), "audio/wave"},
		{"jpeg", []byte("\xff\xd8\xff\xe0\x00\x10JFIF"), "image/jpeg"},
		{"png", []byte("\x89PNG\r\n\x1a\n"), "image/png"},
		{"webp", []byte(webpLossless), "image/webp"},
		{"pdf", []byte("%PDF-1.4"), "application/pdf"},
		{"text", []byte("hello, world"), "text/plain; charset=utf-8"},
		{"binary", []byte{0, 1, 2, 3, 0xfe}, "application/octet-stream"},
		{"empty", nil, "text/plain; charset=utf-8"},
	} {
		if got := detectType(tc.data); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
