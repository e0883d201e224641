package account

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"strings"

	"github.com/parleyhq/parley/apierror"
)

// maxBody bounds request bodies: the largest valid one is well under 1 KiB.
const maxBody = 4 << 10

// Wire types of the registration API.
type (
	codeRequest struct {
		Phone string `json:"phone"`
	}
	codeResponse struct {
		Phone     string `json:"phone"`
		ExpiresIn int64  `json:"expires_in"` // seconds
	}
	verifyRequest struct {
		Phone string `json:"phone"`
		Code  string `json:"code"`
		Key   string `json:"key"` // standard base64 of 32 bytes
	}
	verifyResponse struct {
		Phone       string   `json:"phone"`
		Generation  uint64   `json:"generation"`
		ServerKey   string   `json:"server_key"`
		NativeAddr  string   `json:"native_addr"`
		NativeAddrs []string `json:"native_addrs"`
	}
	serverResponse struct {
		ServerKey   string   `json:"server_key"`
		NativeAddr  string   `json:"native_addr"`
		NativeAddrs []string `json:"native_addrs"`
	}
)

// Handler serves the registration API:
//
//	POST /v1/register/request {"phone"}                -> {"phone","expires_in"}
//	POST /v1/register/verify  {"phone","code","key"}   -> {"phone","generation","server_key","native_addr","native_addrs"}
//	GET  /v1/server                                    -> {"server_key","native_addr","native_addrs"}
//
// native_addr is the answering node's native address; native_addrs is
// every one of the server's (a cluster's nodes, itself included).
//
// Every answer, errors included, is JSON; errors are
// {"error":{"code","message"}} with the status of the Error (see the Code
// constants), and 429s carry Retry-After.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	// Methods are checked by hand, not with "POST /path" patterns, so that a
	// 405 is JSON like every other answer.
	mux.Handle("/v1/register/request", allow(s.handleRequest, http.MethodPost))
	mux.Handle("/v1/register/verify", allow(s.handleVerify, http.MethodPost))
	mux.Handle("/v1/server", allow(s.handleServer, http.MethodGet, http.MethodHead))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, &Error{Status: http.StatusNotFound, Code: CodeNotFound,
			Message: "no such endpoint: " + r.URL.Path})
	})
	return mux
}

func allow(h http.HandlerFunc, methods ...string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, m := range methods {
			if r.Method == m {
				h(w, r)
				return
			}
		}
		list := strings.Join(methods, ", ")
		w.Header().Set("Allow", list)
		writeError(w, &Error{Status: http.StatusMethodNotAllowed, Code: CodeMethodNotAllowed,
			Message: fmt.Sprintf("method %s not allowed here; use %s", r.Method, list)})
	})
}

func (s *Service) handleRequest(w http.ResponseWriter, r *http.Request) {
	var req codeRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	phone, ttl, err := s.RequestCode(r.Context(), req.Phone, s.clientAddr(r))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, codeResponse{Phone: phone, ExpiresIn: int64(ttl.Seconds())})
}

func (s *Service) handleVerify(w http.ResponseWriter, r *http.Request) {
	var req verifyRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	key, err := base64.StdEncoding.Strict().DecodeString(req.Key)
	if err != nil {
		writeError(w, &Error{Status: http.StatusBadRequest, Code: CodeInvalidKey,
			Message: "key must be standard (padded) base64 of the device's 32-byte Curve25519 public key"})
		return
	}
	acct, err := s.Verify(r.Context(), req.Phone, req.Code, key)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, verifyResponse{
		Phone:       acct.Phone,
		Generation:  acct.Generation,
		ServerKey:   base64.StdEncoding.EncodeToString(s.cfg.ServerKey),
		NativeAddr:  s.cfg.NativeAddr,
		NativeAddrs: s.nativeAddrs(r.Context()),
	})
}

func (s *Service) handleServer(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, serverResponse{
		ServerKey:   base64.StdEncoding.EncodeToString(s.cfg.ServerKey),
		NativeAddr:  s.cfg.NativeAddr,
		NativeAddrs: s.nativeAddrs(r.Context()),
	})
}

// nativeAddrs is every native address clients may use.
func (s *Service) nativeAddrs(ctx context.Context) []string {
	if s.cfg.NativeAddrs == nil {
		return []string{s.cfg.NativeAddr}
	}
	return s.cfg.NativeAddrs(ctx)
}

// fail answers err: an *Error as it says, anything else as a 500 (logged
// here, as nothing below logged it).
func (s *Service) fail(w http.ResponseWriter, r *http.Request, err error) {
	var e *Error
	if !errors.As(err, &e) {
		s.log.ErrorContext(r.Context(), "registration failed", "path", r.URL.Path, "err", err)
		e = internal(err)
	}
	writeError(w, e)
}

// decode reads exactly one JSON object, with no unknown fields, from a body
// of at most maxBody bytes.
func decode(w http.ResponseWriter, r *http.Request, v any) *Error {
	// No Content-Type is tolerated (curl, minimal clients); another one is
	// refused, which also keeps HTML forms from posting here cross-site.
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" {
			return &Error{Status: http.StatusUnsupportedMediaType, Code: CodeUnsupportedType,
				Message: "send the body as Content-Type: application/json"}
		}
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		// Anything after the object is an error too.
		if _, err2 := dec.Token(); err2 != io.EOF {
			err = errors.New("data after the JSON object")
			var tooBig *http.MaxBytesError
			if errors.As(err2, &tooBig) {
				err = err2
			}
		}
	}
	if err == nil {
		return nil
	}
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return &Error{Status: http.StatusRequestEntityTooLarge, Code: CodeTooLarge,
			Message: fmt.Sprintf("request body over %d bytes", maxBody)}
	}
	if errors.Is(err, io.EOF) {
		err = errors.New("empty body")
	}
	return &Error{Status: http.StatusBadRequest, Code: CodeBadRequest,
		Message: "bad JSON request: " + err.Error()}
}

// clientAddr is the client's IP for rate limiting: the connection's peer,
// or with TrustProxy the last X-Forwarded-For entry (the one our proxy
// added; earlier entries are whatever the client claimed).
func (s *Service) clientAddr(r *http.Request) string {
	if s.cfg.TrustProxy {
		if xff := r.Header.Values("X-Forwarded-For"); len(xff) > 0 {
			last := xff[len(xff)-1]
			if i := strings.LastIndexByte(last, ','); i >= 0 {
				last = last[i+1:]
			}
			if last = strings.TrimSpace(last); last != "" {
				return last
			}
		}
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func writeError(w http.ResponseWriter, e *Error) {
	apierror.Write(w, e.Status, e.Code, e.Message, e.RetryAfter)
}

func writeJSON(w http.ResponseWriter, status int, v any) { apierror.WriteJSON(w, status, v) }
