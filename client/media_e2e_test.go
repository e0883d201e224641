package client_test

// Media end to end: upload token over the connection, upload over HTTP,
// the message carrying the link, download, all against a real node.

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parleyhq/parley/client"
	"github.com/parleyhq/parley/media"
)

// gradientPNG encodes a w x h PNG with a colour gradient (and so a
// thumbnail worth the name).
func gradientPNG(t *testing.T, w, h int) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.RGBA{R: uint8(255 * x / w), G: uint8(255 * y / h), B: uint8((x + y) % 256), A: 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// onlyReader hides a reader's type, as a file or a pipe would, so that
// nothing can size or rewind it.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// Alice uploads a picture and sends it with a caption; Bob receives the
// link, SHA-256 and thumbnail, and downloads the same bytes.
func TestE2EMedia(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	aKey, bKey := newKey(t), newKey(t)
	tn.register(t, alice, aKey)
	tn.register(t, bob, bKey)
	a := dial(t, tn.config(t, alice, aKey))
	b := dial(t, tn.config(t, bob, bKey))

	pic := gradientPNG(t, 640, 480)
	sum := sha256.Sum256(pic)

	tok, err := a.UploadToken(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if tok.Token == "" || !strings.HasPrefix(tok.URL, tn.n.HTTPURL()) || !tok.Expires.After(time.Now()) {
		t.Fatalf("UploadToken = %+v", tok)
	}
	m, err := client.Upload(testCtx(t), nil, tok, onlyReader{bytes.NewReader(pic)}, int64(len(pic)))
	if err != nil {
		t.Fatal(err)
	}
	if m.Mime != "image/png" || m.Size != uint64(len(pic)) || !bytes.Equal(m.Sha256, sum[:]) || m.Id == "" ||
		!strings.HasSuffix(m.Url, "/v1/media/"+m.Id) || len(m.Thumbnail) == 0 {
		t.Fatalf("Upload = url %q id %q size %d mime %q sha256 %x thumbnail %d bytes", m.Url, m.Id, m.Size, m.Mime, m.Sha256, len(m.Thumbnail))
	}
	m.Caption = "the view"
	ack, err := a.SendMedia(testCtx(t), bob, m)
	if err != nil {
		t.Fatal(err)
	}

	in := recvN(t, b, 1)[0]
	msg := in.Message
	if msg == nil || msg.From != alice || msg.Id != ack.ID || msg.ServerId != ack.ServerID || len(msg.Body) != 0 {
		t.Fatalf("Bob received %+v, want alice's media message %+v", in, ack)
	}
	got := msg.Media
	if got == nil || got.Url != m.Url || got.Id != m.Id || got.Size != m.Size || got.Mime != "image/png" ||
		!bytes.Equal(got.Sha256, sum[:]) || got.Caption != "the view" || !bytes.Equal(got.Thumbnail, m.Thumbnail) {
		t.Fatalf("received media %v, want %v", got, m)
	}
	thumb, err := jpeg.Decode(bytes.NewReader(got.Thumbnail))
	if err != nil {
		t.Fatalf("thumbnail is not a JPEG: %v", err)
	}
	if w, h := thumb.Bounds().Dx(), thumb.Bounds().Dy(); max(w, h) > 100 || min(w, h) < 1 || w <= h {
		t.Fatalf("thumbnail is %dx%d, want the 4:3 picture in at most 100 px", w, h)
	}
	if err := b.Ack(in.Seq); err != nil {
		t.Fatal(err)
	}

	var file bytes.Buffer
	n, err := client.DownloadVerified(testCtx(t), nil, got.Url, got.Sha256, &file)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(len(pic)) || !bytes.Equal(file.Bytes(), pic) {
		t.Fatalf("downloaded %d bytes, not the %d uploaded", n, len(pic))
	}
	n, dsum, err := client.Download(testCtx(t), nil, got.Url, io.Discard)
	if err != nil || n != int64(len(pic)) || !bytes.Equal(dsum, sum[:]) {
		t.Fatalf("Download = %d, %x, %v", n, dsum, err)
	}

	// A different hash than the message's is a corrupt or replaced file.
	wrong := bytes.Clone(got.Sha256)
	wrong[0] ^= 1
	if _, err := client.DownloadVerified(testCtx(t), nil, got.Url, wrong, io.Discard); !errors.Is(err, client.ErrSHA256Mismatch) {
		t.Fatalf("download against another hash: err = %v, want ErrSHA256Mismatch", err)
	}
	// An unknown id is a 404.
	unknown := strings.TrimSuffix(got.Url, got.Id) + strings.Repeat("A", len(got.Id))
	_, _, err = client.Download(testCtx(t), nil, unknown, io.Discard)
	var ae *client.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusNotFound || ae.Code != media.CodeNotFound {
		t.Fatalf("download of an unknown id: err = %v, want APIError 404", err)
	}

	// A file of unknown length goes chunked; a non-image gets no thumbnail.
	text := []byte(strings.Repeat("plain text, not a picture\n", 1000))
	m2, err := client.Upload(testCtx(t), nil, tok, onlyReader{bytes.NewReader(text)}, -1)
	if err != nil {
		t.Fatal(err)
	}
	if m2.Size != uint64(len(text)) || len(m2.Thumbnail) != 0 || m2.Id == m.Id {
		t.Fatalf("chunked upload = size %d, thumbnail %d bytes, id %q", m2.Size, len(m2.Thumbnail), m2.Id)
	}
	if _, err := a.SendMedia(testCtx(t), bob, m2); err != nil {
		t.Fatal(err)
	}
	if in := recvN(t, b, 1)[0]; in.Message.GetMedia().GetId() != m2.Id || len(in.Message.GetMedia().GetThumbnail()) != 0 {
		t.Fatalf("second media message = %+v", in)
	}
}

// An upload with a garbage, forged or expired token is refused with 401.
func TestE2EUploadBadToken(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	key := newKey(t)
	tn.register(t, alice, key)
	a := dial(t, tn.config(t, alice, key))
	tok, err := a.UploadToken(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}

	// An expired token, minted with the node's own secret by a clock an
	// hour behind.
	secret, err := os.ReadFile(filepath.Join(tn.data, "media.secret"))
	if err != nil {
		t.Fatal(err)
	}
	past, err := media.New(media.Config{Dir: t.TempDir(), Secret: secret, Now: func() time.Time { return time.Now().Add(-time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	expired, _ := past.IssueUploadToken(alice)

	forged := []byte(tok.Token)
	forged[len(forged)-2] ^= 1
	pic := gradientPNG(t, 64, 48)
	for _, tt := range []struct {
		name, token, code string
	}{
		{"garbage", "garbage", media.CodeUnauthorized},
		{"forged", string(forged), media.CodeUnauthorized},
		{"expired", expired, media.CodeTokenExpired},
	} {
		t.Run(tt.name, func(t *testing.T) {
			bad := client.UploadToken{Token: tt.token, URL: tok.URL, Expires: tok.Expires}
			_, err := client.Upload(testCtx(t), nil, bad, bytes.NewReader(pic), int64(len(pic)))
			var ae *client.APIError
			if !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized || ae.Code != tt.code {
				t.Fatalf("err = %v, want APIError 401 %s", err, tt.code)
			}
		})
	}
	// The good token still works.
	if _, err := client.Upload(testCtx(t), nil, tok, bytes.NewReader(pic), int64(len(pic))); err != nil {
		t.Fatal(err)
	}
}
