package media

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/parleyhq/parley/apierror"
)

// Error codes of the HTTP API, in {"error":{"code","message"}}.
const (
	CodeUnauthorized     = "unauthorized"       // 401: no or bad upload token
	CodeTokenExpired     = "token_expired"      // 401: ask for a new token
	CodeRateLimited      = "rate_limited"       // 429, with Retry-After
	CodeTooLarge         = "too_large"          // 413: over Config.MaxSize
	CodeQuotaExceeded    = "quota_exceeded"     // 413: over Config.QuotaBytes
	CodeBadRequest       = "bad_request"        // 400: empty or cut-off upload
	CodeNotFound         = "not_found"          // 404: unknown, malformed, expired or not yours
	CodeMethodNotAllowed = "method_not_allowed" // 405
	CodeInternal         = "internal"           // 500
)

const (
	pathPrefix  = "/v1/media"
	copyBufSize = 32 << 10
	// uploadStall is how long an upload may send nothing before it is cut
	// off. A deadline per read, not per request, lets a slow phone on a
	// bad network finish a big file while a stalled or deliberately
	// trickling client cannot hold a connection and a temporary file.
	uploadStall = time.Minute
)

// notFoundBody is the one answer to every id that does not lead to media
// the request may see: unknown, malformed, expired or someone else's. One
// body, built once, so that no case can be told from another by it.
var notFoundBody = mustJSON(apierror.Body{Error: apierror.Detail{
	Code:    CodeNotFound,
	Message: "no such media: the link is wrong, or the media expired and must be sent again",
}})

type (
	uploadResponse struct {
		ID        string    `json:"id"`
		URL       string    `json:"url"`
		Size      int64     `json:"size"`
		MIME      string    `json:"mime"`
		SHA256    string    `json:"sha256"`              // hex
		Thumbnail string    `json:"thumbnail,omitempty"` // standard base64 of a JPEG
		Expires   time.Time `json:"expires"`
	}
)

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return append(b, '\n')
}

// Handler serves the media API:
//
//	POST   /v1/media       body: the file; Authorization: Bearer <upload token>
//	                       -> 201 {"id","url","size","mime","sha256","thumbnail","expires"}
//	GET    /v1/media/{id}  the file; ranges (at most 8), ETag (the SHA-256), caching until expiry
//	HEAD   /v1/media/{id}  the same without the body
//	DELETE /v1/media/{id}  Authorization: Bearer <upload token of the owner> -> 204
//
// Errors are JSON {"error":{"code","message"}} (see the Code constants);
// 429s carry Retry-After. It routes by hand rather than with a ServeMux so
// that every answer, 404 and 405 included, is this package's JSON, and so
// that an unclean path ("/v1/media/../x") is a 404 here, not a redirect.
// Mount it for both "/v1/media" and "/v1/media/".
func (s *Service) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		switch {
		case p == pathPrefix:
			if r.Method != http.MethodPost {
				methodNotAllowed(w, http.MethodPost)
				return
			}
			s.upload(w, r)
		case strings.HasPrefix(p, pathPrefix+"/"):
			id := p[len(pathPrefix)+1:]
			switch r.Method {
			case http.MethodGet, http.MethodHead:
				s.download(w, r, id)
			case http.MethodDelete:
				s.delete(w, r, id)
			default:
				methodNotAllowed(w, "GET, HEAD, DELETE")
			}
		default:
			notFound(w)
		}
	})
}

// URL returns the download URL of a media id.
func (s *Service) URL(id string) string { return s.baseURL + pathPrefix + "/" + id }

// authenticate returns the account of the request's upload token, or
// answers 401 and returns false.
func (s *Service) authenticate(w http.ResponseWriter, r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, tok, found := strings.Cut(h, " ")
	if !found || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="parley-media"`)
		writeError(w, http.StatusUnauthorized, CodeUnauthorized,
			"missing upload token: ask for one over your connection and send it as Authorization: Bearer <token>", 0)
		return "", false
	}
	account, err := s.VerifyUploadToken(strings.TrimSpace(tok))
	if err != nil {
		code := CodeUnauthorized
		if errors.Is(err, ErrTokenExpired) {
			code = CodeTokenExpired
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="parley-media", error="invalid_token"`)
		writeError(w, http.StatusUnauthorized, code, err.Error(), 0)
		return "", false
	}
	return account, true
}

func (s *Service) upload(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	account, ok := s.authenticate(w, r)
	if !ok {
		return
	}
	now := s.cfg.Now()
	if ok, wait := s.takeUpload(account, now); !ok {
		s.limitHit("media_uploads_per_minute")
		writeError(w, http.StatusTooManyRequests, CodeRateLimited, fmt.Sprintf(
			"more than %d uploads in a minute: wait and try again", s.cfg.UploadsPerMinute), wait)
		return
	}

	// Fail fast on what the request declares; the body is then never read.
	maxSize, quota := s.cfg.MaxSize, s.cfg.QuotaBytes
	if r.ContentLength > maxSize {
		s.tooLarge(w, r.ContentLength)
		return
	}
	limit := maxSize
	if quota >= 0 {
		used := s.used(account)
		if used >= quota || r.ContentLength > quota-used {
			s.overQuota(w, used, r.ContentLength)
			return
		}
		limit = min(limit, quota-used)
	}
	// MaxBytesReader, unlike a LimitReader, also tells the server not to
	// drain the rest of an oversized body before closing the connection.
	body := http.MaxBytesReader(w, r.Body, limit)

	id, key := newID()
	bw, err := s.store.Create(ctx, key)
	if err != nil {
		s.internal(w, "create blob", err)
		return
	}
	// Until Commit succeeds, every way out removes the temporary file:
	// a cut-off or refused upload leaves nothing behind.
	defer bw.Abort()

	got, err := s.receive(w, body, bw)
	var mbe *http.MaxBytesError
	var se storeError
	switch {
	case errors.As(err, &se):
		s.internal(w, "write blob", se.err)
		return
	case errors.As(err, &mbe) && limit == maxSize:
		s.tooLarge(w, -1)
		return
	case errors.As(err, &mbe):
		s.overQuota(w, s.used(account), -1)
		return
	case err != nil:
		// The client is most likely gone and will not read this.
		s.log.Info("media: upload cut off", "user", account, "size", got.size, "err", err)
		writeError(w, http.StatusBadRequest, CodeBadRequest, fmt.Sprintf(
			"upload cut off after %s: send the whole file again", humanSize(got.size)), 0)
		return
	case got.size == 0:
		writeError(w, http.StatusBadRequest, CodeBadRequest,
			"empty upload: send the file's bytes as the request body", 0)
		return
	}
	n := got.size

	mime := detectType(got.head)
	if ok, used := s.reserve(account, n); !ok {
		s.overQuota(w, used, n)
		return
	}
	created := s.cfg.Now().UTC()
	m := Meta{
		Owner:   account,
		Size:    n,
		MIME:    mime,
		SHA256:  got.sha256,
		Created: created,
		Expires: created.Add(s.cfg.TTL),
	}
	if err := bw.Commit(ctx, m); err != nil {
		s.unreserve(account, n)
		if ctx.Err() != nil {
			return // the client left after sending it all; nothing is kept
		}
		s.internal(w, "commit blob", err)
		return
	}
	s.committed(account, n)
	s.log.Info("media: uploaded", "user", account, "blob", key[:16], "size", n, "mime", mime)

	resp := uploadResponse{
		ID: id, URL: s.URL(id), Size: n, MIME: mime, SHA256: m.SHA256, Expires: m.Expires,
	}
	if thumbnailable(mime) {
		if t, err := s.thumbnail(ctx, key); err != nil {
			// The upload stands without a thumbnail: a message can carry
			// any file, and the recipient still gets the image itself.
			s.log.Info("media: no thumbnail", "user", account, "blob", key[:16], "err", err)
			if errors.Is(err, errDecodesBusy) {
				s.limitHit("media_decode_memory")
			}
		} else {
			resp.Thumbnail = base64.StdEncoding.EncodeToString(t)
		}
	}
	w.Header().Set("Location", resp.URL)
	writeJSON(w, http.StatusCreated, resp)
}

// received is what receive learnt of an upload on the way through.
type received struct {
	size   int64
	sha256 string // hex
	head   []byte // the first bytes, for detectType
}

// storeError marks a failure to write to the store, which is the
// server's fault, unlike a failure to read from the client.
type storeError struct{ err error }

func (e storeError) Error() string { return e.err.Error() }

// receive streams body into dst, hashing it and keeping its first bytes,
// without ever holding more than one buffer of it.
func (s *Service) receive(w http.ResponseWriter, body io.Reader, dst io.Writer) (received, error) {
	hash := sha256.New()
	head := make([]byte, 0, sniffLen)
	var n int64
	buf := s.bufs.Get().(*[copyBufSize]byte)
	defer s.bufs.Put(buf)
	// Errors are ignored: a ResponseWriter that cannot take deadlines
	// (a test recorder) simply goes without.
	rc := http.NewResponseController(w)
	// The server watches the idle connection once the body is read; a
	// deadline of ours expiring under it would cancel the request.
	defer rc.SetReadDeadline(time.Time{})
	for {
		rc.SetReadDeadline(time.Now().Add(uploadStall))
		nr, err := body.Read(buf[:])
		if nr > 0 {
			if len(head) < sniffLen {
				head = append(head, buf[:min(nr, sniffLen-len(head))]...)
			}
			if _, err := dst.Write(buf[:nr]); err != nil {
				return received{size: n}, storeError{err}
			}
			hash.Write(buf[:nr])
			n += int64(nr)
		}
		if err == io.EOF {
			return received{size: n, sha256: hex.EncodeToString(hash.Sum(nil)), head: head}, nil
		}
		if err != nil {
			return received{size: n}, err
		}
	}
}

func thumbnailable(mime string) bool {
	switch mime {
	case "image/jpeg", "image/png", "image/gif", "image/webp":
		return true
	}
	return false
}

// thumbnail makes the thumbnail of a committed blob, reading it back from
// the store (from the page cache, in practice) rather than holding the
// upload in memory. The header decides, before any pixel is decoded,
// whether the image may be decoded (MaxPixels, MaxDecodeBytes) and how
// much memory the decode reserves under DecodeMemory.
func (s *Service) thumbnail(ctx context.Context, key string) ([]byte, error) {
	rc, m, err := s.store.Open(ctx, key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	p, err := probeImage(rc, m.Size)
	if err != nil {
		return nil, err
	}
	if err := p.check(s.cfg.MaxPixels, s.cfg.MaxDecodeBytes); err != nil {
		return nil, err
	}
	release, err := s.decodes.acquire(ctx, p.cost, s.cfg.DecodeWait)
	if err != nil {
		return nil, err
	}
	defer release()
	return p.thumbnail(rc, s.cfg.ThumbMax)
}

func (s *Service) download(w http.ResponseWriter, r *http.Request, id string) {
	key, ok := parseID(id)
	if !ok {
		notFound(w)
		return
	}
	rc, m, err := s.store.Open(r.Context(), key)
	if errors.Is(err, ErrNotFound) {
		notFound(w)
		return
	}
	if err != nil {
		s.internal(w, "open blob", err)
		return
	}
	defer rc.Close()
	now := s.cfg.Now()
	if !now.Before(m.Expires) {
		// Expired but not yet swept: gone all the same.
		notFound(w)
		return
	}
	h := w.Header()
	// The content never changes under an id, so its hash is a strong ETag,
	// and it may be cached until it expires, by the client only: the URL
	// is a capability and shared caches should not hold it.
	h.Set("ETag", `"`+m.SHA256+`"`)
	h.Set("Cache-Control", "private, max-age="+strconv.FormatInt(int64(m.Expires.Sub(now)/time.Second), 10)+", immutable")
	h.Set("Content-Type", m.MIME)
	// Uploads are anyone's bytes served from our origin: never let a
	// browser run them as a page.
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "sandbox; default-src 'none'")
	if !inline(m.MIME) {
		h.Set("Content-Disposition", "attachment")
	}
	if rh := r.Header.Get("Range"); rh != "" {
		if rh = normalizeRange(rh, m.Size); rh == "" {
			r.Header.Del("Range")
		} else {
			r.Header.Set("Range", rh)
		}
	}
	http.ServeContent(w, r, "", m.Created, rc)
}

func inline(mime string) bool {
	return strings.HasPrefix(mime, "image/") || strings.HasPrefix(mime, "audio/") || strings.HasPrefix(mime, "video/")
}

// delete lets the owner remove media before they expire, freeing quota.
// Someone else's media answer the same 404 as unknown ones.
func (s *Service) delete(w http.ResponseWriter, r *http.Request, id string) {
	account, ok := s.authenticate(w, r)
	if !ok {
		return
	}
	key, ok := parseID(id)
	if !ok {
		notFound(w)
		return
	}
	m, err := s.store.Stat(r.Context(), key)
	if errors.Is(err, ErrNotFound) {
		notFound(w)
		return
	}
	if err != nil {
		s.internal(w, "stat blob", err)
		return
	}
	if subtle.ConstantTimeCompare([]byte(m.Owner), []byte(account)) != 1 || !s.cfg.Now().Before(m.Expires) {
		notFound(w)
		return
	}
	switch err := s.store.Delete(r.Context(), key); {
	case errors.Is(err, ErrNotFound):
		notFound(w) // swept or deleted meanwhile
		return
	case err != nil:
		s.internal(w, "delete blob", err)
		return
	}
	s.release(m.Owner, m.Size)
	s.log.Info("media: deleted", "user", account, "blob", key[:16])
	w.WriteHeader(http.StatusNoContent)
}

func (s *Service) tooLarge(w http.ResponseWriter, size int64) {
	msg := fmt.Sprintf("file is over the %s limit: send a smaller file", humanSize(s.cfg.MaxSize))
	if size >= 0 {
		msg = fmt.Sprintf("file is %s, over the %s limit: send a smaller file", humanSize(size), humanSize(s.cfg.MaxSize))
	}
	s.limitHit("media_max_size")
	writeError(w, http.StatusRequestEntityTooLarge, CodeTooLarge, msg, 0)
}

// overQuota answers 413, not 403: the account may upload, just not this
// much now. The code tells it apart from too_large. There is no
// Retry-After: space comes back when the owner deletes media or old media
// expire, which may be days away.
func (s *Service) overQuota(w http.ResponseWriter, used, size int64) {
	need := ""
	if size >= 0 {
		need = fmt.Sprintf(", this file needs %s", humanSize(size))
	}
	s.limitHit("media_quota")
	writeError(w, http.StatusRequestEntityTooLarge, CodeQuotaExceeded, fmt.Sprintf(
		"storage quota full: %s of %s used%s; delete media or wait for old media to expire",
		humanSize(used), humanSize(s.cfg.QuotaBytes), need), 0)
}

func (s *Service) internal(w http.ResponseWriter, what string, err error) {
	s.log.Error("media: "+what, "err", err)
	writeError(w, http.StatusInternalServerError, CodeInternal, "the server could not store or read the media: try again later", 0)
}

func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	writeError(w, http.StatusMethodNotAllowed, CodeMethodNotAllowed, "method not allowed here: use "+allow, 0)
}

func notFound(w http.ResponseWriter) {
	setJSONHeaders(w)
	w.WriteHeader(http.StatusNotFound)
	w.Write(notFoundBody)
}

func setJSONHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
}

func writeError(w http.ResponseWriter, status int, code, msg string, retryAfter time.Duration) {
	apierror.Write(w, status, code, msg, retryAfter)
}

func writeJSON(w http.ResponseWriter, status int, v any) { apierror.WriteJSON(w, status, v) }

// humanSize writes a byte count the way a person reads it: "512 bytes",
// "1.5 MiB", "64 MiB".
func humanSize(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " bytes"
	}
	v, i := float64(n), 0
	for v >= unit && i < 3 {
		v /= unit
		i++
	}
	name := [...]string{"bytes", "KiB", "MiB", "GiB"}[i]
	if v < 10 && math.Round(v) != v {
		return strconv.FormatFloat(math.Floor(v*10)/10, 'f', 1, 64) + " " + name
	}
	return strconv.FormatInt(int64(v), 10) + " " + name
}
