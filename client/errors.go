package client

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/parleyhq/parley/wire"
)

// ErrClosed is returned by calls on a client after Close.
var ErrClosed = errors.New("parley client: closed")

// ErrHandshake reports that the server closed the connection instead of
// answering the handshake. A Parley server does that when the client used a
// server key other than its own, so the usual causes are a wrong or outdated
// pinned server key, or an address that is not a Parley server.
var ErrHandshake = errors.New("handshake failed: wrong server key or server not Parley")

// LoginError is a login the server refused during the handshake. It is never
// retried: the same credentials would be refused again.
type LoginError struct {
	Code wire.Error_Code
	Text string
}

func (e *LoginError) Error() string {
	hint := ""
	switch e.Code {
	case wire.Error_LOGIN_FAILED:
		hint = "this device's key is not registered for the number: register the device again"
	case wire.Error_UNSUPPORTED_VERSION:
		hint = "the server speaks another protocol version: update the client"
	default:
		hint = "try again later"
	}
	if e.Text == "" {
		return fmt.Sprintf("login refused (%s): %s", e.Code, hint)
	}
	return fmt.Sprintf("login refused (%s): %s", e.Code, e.Text)
}

// permanent reports whether logging in again cannot help.
func (e *LoginError) permanent() bool {
	switch e.Code {
	case wire.Error_INTERNAL, wire.Error_SHUTTING_DOWN:
		return false
	}
	return true
}

// ServerError is the server's refusal of one request (a Send, a Read).
type ServerError struct {
	Code wire.Error_Code
	Text string
}

func (e *ServerError) Error() string {
	if e.Text == "" {
		return fmt.Sprintf("server refused the request (%s)", e.Code)
	}
	return fmt.Sprintf("server refused the request (%s): %s", e.Code, e.Text)
}

// CloseError is the reason the server gave when it closed the connection.
// REGISTERED_ELSEWHERE and REPLACED end the client (reconnecting would only
// be refused, or would throw out the newer connection); other codes are
// followed by a reconnect when Config.Reconnect is set.
type CloseError struct {
	Code wire.Error_Code
	Text string
	// ReconnectAfter, with SHUTTING_DOWN, is the server's hint: when to
	// come back (it spreads its clients out); 0 when it gave none.
	ReconnectAfter time.Duration
}

func (e *CloseError) Error() string {
	var hint string
	switch e.Code {
	case wire.Error_REGISTERED_ELSEWHERE:
		hint = "this device's key no longer works: register this device again to use it here"
	case wire.Error_REPLACED:
		hint = "another client logged in as this account: stop one of them"
	case wire.Error_SHUTTING_DOWN:
		hint = "reconnect later"
	default:
		hint = "reconnect; if it happens again, report it with the server's log"
	}
	msg := fmt.Sprintf("server closed the connection (%s)", e.Code)
	if e.Text != "" {
		msg += ": " + e.Text
	}
	return msg + " (" + hint + ")"
}

// terminal reports whether the client must not reconnect after this close.
func (e *CloseError) terminal() bool {
	return e.Code == wire.Error_REGISTERED_ELSEWHERE || e.Code == wire.Error_REPLACED
}

// APIError is an error answer of the HTTP API.
type APIError struct {
	// Status is the HTTP status code.
	Status int
	// Code is the server's machine-readable code ("" when the body was not
	// a Parley error, e.g. from a proxy).
	Code string
	// Message is the server's explanation, or the start of the body.
	Message string
	// RetryAfter is how long the server asked to wait (429, 503); 0 if it
	// did not say.
	RetryAfter time.Duration
}

func (e *APIError) Error() string {
	msg := fmt.Sprintf("server answered %d", e.Status)
	if e.Code != "" {
		msg += " " + e.Code
	}
	if e.Message != "" {
		msg += ": " + e.Message
	}
	// A Parley error's message already says what to do (the registration
	// API's 429 says how long to wait): the hints below are for answers
	// that do not, such as a proxy's page, so each hint is given once.
	wait := e.RetryAfter.Round(time.Second).String()
	switch {
	case e.RetryAfter > 0 && !strings.Contains(e.Message, wait):
		msg += " (try again in " + wait + ")"
	case e.Code != "" || e.RetryAfter > 0:
		// Said already.
	case e.Status == 429:
		msg += " (too many requests: wait a while and try again)"
	case e.Status >= 500:
		msg += " (the server failed: try again later, or check the server's log)"
	case e.Status == 404:
		msg += " (no such API endpoint: is this URL a Parley server's HTTP address?)"
	}
	return msg
}

// Retryable reports whether err is the server's refusal of a request that
// the same request, sent again later, may get past; a Send is sent again
// with SendWithID and the same id, so that it is stored once whatever
// happened before:
//
//   - UNAVAILABLE: the server cannot store it now (a node of a cluster
//     that cannot reach a quorum of its nodes); it recovers by itself.
//   - SHUTTING_DOWN: the server is stopping (with Config.Reconnect the
//     client resends by itself and never returns it).
//   - INTERNAL: the server failed to store it.
//   - QUEUE_FULL: the recipient's queue is full until they read it.
//
// Every other refusal (UNKNOWN_RECIPIENT, TOO_LARGE, ...) would be
// refused again, as would errors that are not the server's (the client's
// end, a cancelled context: for those, see Err and the context).
func Retryable(err error) bool {
	var se *ServerError
	return errors.As(err, &se) && RetryableCode(se.Code)
}

// RetryableCode is Retryable for a refusal's code, for a client that reads
// the frames itself (parley bench).
func RetryableCode(code wire.Error_Code) bool {
	switch code {
	case wire.Error_UNAVAILABLE, wire.Error_SHUTTING_DOWN, wire.Error_INTERNAL, wire.Error_QUEUE_FULL:
		return true
	}
	return false
}
