package client

// Media: pictures, audio, video and files travel over HTTP, never on the
// connection. A device asks its connection for an upload token
// (Client.UploadToken), uploads the file with it (Upload), and sends the
// returned wire.Media in a message (Client.SendMedia). A recipient finds it
// in Incoming.Message.Media and downloads it by its URL (Download, or
// DownloadVerified to check it against the SHA-256 the message carries).

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/parleyhq/parley/wire"
)

// UploadToken authorises this account's uploads until Expires: POST the
// file to URL with "Authorization: Bearer <Token>" (Upload does that). A
// token may be used for several uploads until it expires.
type UploadToken struct {
	Token   string
	URL     string
	Expires time.Time
}

// ErrSHA256Mismatch is DownloadVerified's error when the bytes downloaded do
// not hash to the SHA-256 the message named.
var ErrSHA256Mismatch = errors.New("download does not match the SHA-256 in the message: the file is corrupt or was replaced")

// mediaHTTP is the HTTP client used when the caller passes none. It has no
// overall timeout, unlike the API calls': a large file on a slow link takes
// what it takes, and ctx bounds it. A server that accepts the connection
// but never answers is still cut off.
var mediaHTTP = &http.Client{Transport: mediaTransport()}

func mediaTransport() http.RoundTripper {
	t, ok := http.DefaultTransport.(*http.Transport)
	if !ok {
		return http.DefaultTransport
	}
	t = t.Clone()
	// Counted from the end of the request body: it covers the server
	// storing the upload and making its thumbnail.
	t.ResponseHeaderTimeout = defaultHTTPTimeout
	return t
}

// UploadToken asks the server for a token to upload media with. Errors:
// *ServerError when the server refuses (BAD_REQUEST from a server that takes
// no media), ctx's error, or why the client ended. Should the connection
// drop first, the request is sent again after the reconnect.
func (c *Client) UploadToken(ctx context.Context) (UploadToken, error) {
	id := c.NewID()
	f, err := c.do(ctx, id, &wire.Frame{Kind: &wire.Frame_UploadRequest{UploadRequest: &wire.UploadRequest{Id: id}}})
	if err != nil {
		return UploadToken{}, fmt.Errorf("upload token: %w", err)
	}
	t := f.GetUploadToken()
	if t == nil {
		return UploadToken{}, fmt.Errorf("upload token: server answered with %T, not an UploadToken", f.Kind)
	}
	if t.Token == "" || t.Url == "" {
		return UploadToken{}, errors.New("upload token: the server's answer has no token or no URL")
	}
	return UploadToken{Token: t.Token, URL: t.Url, Expires: time.Unix(0, t.Expires)}, nil
}

// SendMedia sends media (as Upload returned it, with a Caption if wanted)
// to the account to, as a message with an empty body, and returns once the
// server has stored it in the recipient's queue. Ids and resends work as
// for Send.
func (c *Client) SendMedia(ctx context.Context, to string, m *wire.Media) (SendAck, error) {
	if m == nil {
		return SendAck{}, errors.New("send media: no media")
	}
	return c.send(ctx, c.NewID(), false, to, nil, m)
}

// SendMediaWithID is SendMedia with an id the caller chose (see
// SendWithID).
func (c *Client) SendMediaWithID(ctx context.Context, id uint64, to string, m *wire.Media) (SendAck, error) {
	if m == nil {
		return SendAck{}, errors.New("send media: no media")
	}
	return c.send(ctx, id, true, to, nil, m)
}

// Upload streams size bytes from r to the media server with tok, and returns
// the media to send in a message: URL, id, size, MIME type (sniffed by the
// server), SHA-256 and, for images, a JPEG thumbnail. r is read as the
// request goes out, never whole into memory. A size below 0 means unknown
// (the body is then sent chunked); a reader that gives other than size
// bytes fails the upload. hc may be nil (no overall timeout: ctx bounds the
// upload).
//
// The server's refusals are *APIError: 401 (Code "token_expired": ask for
// a new token), 413 ("too_large", "quota_exceeded"), 429 (RetryAfter says
// how long to wait).
func Upload(ctx context.Context, hc *http.Client, tok UploadToken, r io.Reader, size int64) (*wire.Media, error) {
	if hc == nil {
		hc = mediaHTTP
	}
	if tok.URL == "" || tok.Token == "" {
		return nil, errors.New("upload: the upload token has no URL or no token: get one with Client.UploadToken")
	}
	if r == nil {
		return nil, errors.New("upload: no file (nil reader)")
	}
	// The guard hides r's type, so that NewRequest neither buffers nor
	// sizes it (the length is what the caller said), and it is shut before
	// Upload returns: the transport may still be writing the body when an
	// early answer (401, 413) arrives, and must not read r after that.
	body := &guardedReader{r: r}
	defer body.Close()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, tok.URL, body)
	if err != nil {
		return nil, fmt.Errorf("upload: bad upload URL %q: %w", tok.URL, err)
	}
	req.ContentLength = -1
	if size >= 0 {
		req.ContentLength = size
	}
	req.Header.Set("Authorization", "Bearer "+tok.Token)
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("upload to %s: %w", tok.URL, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxAPIBody))
	if err != nil {
		return nil, fmt.Errorf("upload to %s: read the answer: %w", tok.URL, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, fmt.Errorf("upload to %s: %w", tok.URL, parseAPIError(resp, raw))
	}
	m, err := parseUpload(raw)
	if err != nil {
		return nil, fmt.Errorf("upload to %s: the answer is not a media server's: %w", tok.URL, err)
	}
	if size >= 0 && m.Size != uint64(size) {
		return nil, fmt.Errorf("upload to %s: the server stored %d bytes, %d were sent", tok.URL, m.Size, size)
	}
	return m, nil
}

// parseUpload reads the 201 answer of an upload.
func parseUpload(raw []byte) (*wire.Media, error) {
	var out struct {
		ID        string `json:"id"`
		URL       string `json:"url"`
		Size      int64  `json:"size"`
		MIME      string `json:"mime"`
		SHA256    string `json:"sha256"`
		Thumbnail string `json:"thumbnail"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, err
	}
	if out.URL == "" || out.Size < 0 {
		return nil, errors.New("no url, or a negative size")
	}
	sum, err := hex.DecodeString(out.SHA256)
	if err != nil || len(sum) != sha256.Size {
		return nil, fmt.Errorf("sha256 %q is not %d bytes in hex", out.SHA256, sha256.Size)
	}
	m := &wire.Media{Url: out.URL, Id: out.ID, Size: uint64(out.Size), Mime: out.MIME, Sha256: sum}
	if out.Thumbnail != "" {
		if m.Thumbnail, err = base64.StdEncoding.DecodeString(out.Thumbnail); err != nil {
			return nil, fmt.Errorf("thumbnail is not base64: %w", err)
		}
	}
	return m, nil
}

// Download GETs url (a Media.Url: the URL is the capability, no
// credentials are sent) and streams the file to w, hashing it on the way.
// It returns the bytes written and their SHA-256. hc may be nil (no overall
// timeout: ctx bounds the download). A refusal is an *APIError: 404 means
// the media do not exist or expired.
//
// Download checks nothing against the message: use DownloadVerified for
// that, and keep what w received only once it succeeds.
func Download(ctx context.Context, hc *http.Client, url string, w io.Writer) (n int64, sum []byte, err error) {
	if hc == nil {
		hc = mediaHTTP
	}
	if url == "" {
		return 0, nil, errors.New("download: no URL")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, fmt.Errorf("download: bad URL %q: %w", url, err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("download %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxAPIBody))
		return 0, nil, fmt.Errorf("download %s: %w", url, parseAPIError(resp, raw))
	}
	h := sha256.New()
	n, err = io.Copy(io.MultiWriter(w, h), resp.Body)
	if err != nil {
		return n, nil, fmt.Errorf("download %s: cut off after %d bytes: %w", url, n, err)
	}
	return n, h.Sum(nil), nil
}

// DownloadVerified is Download checked against want, the SHA-256 the
// message carried (Media.Sha256): a file that does not match gives
// ErrSHA256Mismatch. w has received the bytes by then, so a caller writing
// to a file keeps it only when DownloadVerified succeeds.
func DownloadVerified(ctx context.Context, hc *http.Client, url string, want []byte, w io.Writer) (int64, error) {
	if len(want) != sha256.Size {
		return 0, fmt.Errorf("download %s: the expected SHA-256 is %d bytes, want %d", url, len(want), sha256.Size)
	}
	n, sum, err := Download(ctx, hc, url, w)
	if err != nil {
		return n, err
	}
	if err := VerifySHA256(sum, want); err != nil {
		return n, fmt.Errorf("download %s: %w", url, err)
	}
	return n, nil
}

// VerifySHA256 returns ErrSHA256Mismatch unless got equals want.
func VerifySHA256(got, want []byte) error {
	if len(want) != sha256.Size || !bytes.Equal(got, want) {
		return ErrSHA256Mismatch
	}
	return nil
}

// guardedReader passes reads to r until closed, and never after: Close
// waits for a read in progress.
type guardedReader struct {
	mu     sync.Mutex
	r      io.Reader
	closed bool
}

var errUploadEnded = errors.New("upload ended")

func (g *guardedReader) Read(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return 0, errUploadEnded
	}
	return g.r.Read(p)
}

func (g *guardedReader) Close() error {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	return nil
}
