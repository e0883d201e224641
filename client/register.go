package client

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/parleyhq/parley/apierror"
	"github.com/parleyhq/parley/noise"
)

// RequestResult is the answer to a code request.
type RequestResult struct {
	// Phone is the number in E.164, as the server normalised it.
	Phone string
	// ExpiresIn is how long the code stays valid.
	ExpiresIn time.Duration
}

// Registration is the answer to a successful verification: the device key
// is now the account's credential.
type Registration struct {
	// Phone is the account's number in E.164.
	Phone string
	// Generation counts the account's registrations: 1 for the first
	// device, +1 for each device after it.
	Generation uint64
	// ServerKey is the server's static public key, which the client pins.
	ServerKey []byte
	// NativeAddr is the native protocol's host:port on the node that
	// answered, and NativeAddrs every node's (a cluster's), itself
	// included; empty from a server that predates the list.
	NativeAddr  string
	NativeAddrs []string
}

// Server is what GET /v1/server publishes.
type Server struct {
	Key         []byte
	NativeAddr  string
	NativeAddrs []string // every node's native address, as in Registration
}

// maxAPIBody bounds how much of an API answer is read: the answers are tiny,
// and a wrong URL may point at something that is not.
const maxAPIBody = 1 << 20

// defaultHTTPTimeout bounds a request made with a nil *http.Client, so a
// silent server cannot hang a caller that gave no deadline.
const defaultHTTPTimeout = 30 * time.Second

// RequestCode asks the server to send a verification code to phone by SMS.
// hc may be nil.
func RequestCode(ctx context.Context, hc *http.Client, baseURL, phone string) (RequestResult, error) {
	var out struct {
		Phone     string `json:"phone"`
		ExpiresIn int64  `json:"expires_in"`
	}
	err := callAPI(ctx, hc, http.MethodPost, baseURL, "/v1/register/request", map[string]string{"phone": phone}, &out)
	if err != nil {
		return RequestResult{}, fmt.Errorf("request code for %s: %w", phone, err)
	}
	return RequestResult{Phone: out.Phone, ExpiresIn: time.Duration(out.ExpiresIn) * time.Second}, nil
}

// Verify sends the code the user received and the device's public key; on
// success the key is the account's credential and any earlier device of the
// account is logged out. hc may be nil.
func Verify(ctx context.Context, hc *http.Client, baseURL, phone, code string, devicePub []byte) (Registration, error) {
	if len(devicePub) != noise.KeyLen {
		return Registration{}, fmt.Errorf("verify %s: device public key is %d bytes, want %d", phone, len(devicePub), noise.KeyLen)
	}
	var out struct {
		Phone       string   `json:"phone"`
		Generation  uint64   `json:"generation"`
		ServerKey   string   `json:"server_key"`
		NativeAddr  string   `json:"native_addr"`
		NativeAddrs []string `json:"native_addrs"`
	}
	in := map[string]string{"phone": phone, "code": code, "key": base64.StdEncoding.EncodeToString(devicePub)}
	if err := callAPI(ctx, hc, http.MethodPost, baseURL, "/v1/register/verify", in, &out); err != nil {
		return Registration{}, fmt.Errorf("verify %s: %w", phone, err)
	}
	key, err := decodeKey(out.ServerKey)
	if err != nil {
		return Registration{}, fmt.Errorf("verify %s: server_key: %w", phone, err)
	}
	return Registration{Phone: out.Phone, Generation: out.Generation, ServerKey: key, NativeAddr: out.NativeAddr, NativeAddrs: out.NativeAddrs}, nil
}

// ServerInfo fetches the server's public key and native addresses. hc may be
// nil.
func ServerInfo(ctx context.Context, hc *http.Client, baseURL string) (Server, error) {
	var out struct {
		ServerKey   string   `json:"server_key"`
		NativeAddr  string   `json:"native_addr"`
		NativeAddrs []string `json:"native_addrs"`
	}
	if err := callAPI(ctx, hc, http.MethodGet, baseURL, "/v1/server", nil, &out); err != nil {
		return Server{}, fmt.Errorf("server info: %w", err)
	}
	key, err := decodeKey(out.ServerKey)
	if err != nil {
		return Server{}, fmt.Errorf("server info: server_key: %w", err)
	}
	return Server{Key: key, NativeAddr: out.NativeAddr, NativeAddrs: out.NativeAddrs}, nil
}

func decodeKey(s string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("not base64: %w", err)
	}
	if len(b) != noise.KeyLen {
		return nil, fmt.Errorf("%d bytes, want %d", len(b), noise.KeyLen)
	}
	return b, nil
}

// callAPI does one JSON request and decodes a 2xx answer into out, or turns
// any other answer into an *APIError.
func callAPI(ctx context.Context, hc *http.Client, method, baseURL, path string, in, out any) error {
	if hc == nil {
		hc = &http.Client{Timeout: defaultHTTPTimeout}
	}
	if baseURL == "" {
		return errors.New("no server URL given")
	}
	u := strings.TrimRight(baseURL, "/") + path
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return fmt.Errorf("bad server URL %q: %w", baseURL, err)
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("%w (is the server running, and is %s its HTTP address?)", err, baseURL)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxAPIBody))
	if err != nil {
		return fmt.Errorf("read answer of %s %s: %w", method, u, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return parseAPIError(resp, raw)
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("answer of %s %s is not the expected JSON (is %s a Parley server?): %w", method, u, baseURL, err)
	}
	return nil
}

// parseAPIError reads {"error":{"code":..,"message":..}}; a body in another
// shape (a proxy's HTML page) still gives the status and the start of it.
func parseAPIError(resp *http.Response, raw []byte) *APIError {
	e := &APIError{Status: resp.StatusCode, RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"))}
	if d, ok := apierror.Parse(raw); ok {
		e.Code, e.Message = d.Code, d.Message
		return e
	}
	snippet := strings.TrimSpace(string(raw))
	if len(snippet) > 200 {
		snippet = snippet[:200] + "..."
	}
	if snippet == "" {
		snippet = http.StatusText(resp.StatusCode)
	}
	e.Message = strconv.QuoteToASCII(snippet)
	return e
}

// parseRetryAfter reads either form HTTP allows: seconds or a date.
func parseRetryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := time.Until(t); d > 0 {
			return d
		}
	}
	return 0
}
