// Package apierror is the one JSON error shape of Parley's HTTP APIs (the
// registration and media APIs and the admin listener), written by the
// servers and read by the SDK and the tools:
//
//	{"error":{"code":"invalid_phone","message":"...","retry_after":30}}
//
// code is stable and meant for programs (each API lists its codes);
// message is a sentence for people that says what to do; retry_after, in
// seconds, is present when the client should come back later, and then the
// answer carries the same value in a Retry-After header.
package apierror

import (
	"encoding/json"
	"math"
	"net/http"
	"strconv"
	"time"
)

// Body is the JSON of an error answer.
type Body struct {
	Error Detail `json:"error"`
}

// Detail is what the error says.
type Detail struct {
	Code       string `json:"code"`
	Message    string `json:"message"`
	RetryAfter int64  `json:"retry_after,omitempty"` // seconds, as the header
}

// Write answers status with the error code and msg; a positive retryAfter
// (rounded up to whole seconds) also sets Retry-After.
func Write(w http.ResponseWriter, status int, code, msg string, retryAfter time.Duration) {
	d := Detail{Code: code, Message: msg}
	if retryAfter > 0 {
		d.RetryAfter = int64(math.Ceil(retryAfter.Seconds()))
		w.Header().Set("Retry-After", strconv.FormatInt(d.RetryAfter, 10))
	}
	WriteJSON(w, status, Body{Error: d})
}

// WriteJSON answers status with v as JSON, never cached and never sniffed
// as anything else by a browser.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client may be gone; nothing to do
}

// Parse reads an error answer's body; ok is false when raw is not in this
// shape (a proxy's HTML page, say), and the caller falls back to the status.
func Parse(raw []byte) (d Detail, ok bool) {
	var b Body
	if json.Unmarshal(raw, &b) != nil || (b.Error.Code == "" && b.Error.Message == "") {
		return Detail{}, false
	}
	return b.Error, true
}
