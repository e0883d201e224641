package client

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzParseAPIError: any error answer (a Parley error, a proxy's page,
// garbage) becomes an *APIError whose text is what the server said and at
// most one hint, which does not repeat a wait the message gives; from a
// foreign body, one line of valid UTF-8.
func FuzzParseAPIError(f *testing.F) {
	for _, s := range []struct {
		status     int
		retryAfter string
		body       string
	}{
		{429, "322", `{"error":{"code":"rate_limited","message":"too many codes; wait 5m22s and try again"}}`},
		{429, "42", `{"error":{"code":"rate_limited","message":"too many"}}`},
		{502, "", "<html>upstream\ndown</html>"},
		{500, "Wed, 21 Oct 2015 07:28:00 GMT", `{"error":{"code":"internal","message":"internal error; try again later"}}`},
		{404, "-1", `{"error":{}}`},
		{400, "99999999999999999999", "\xff\x00"},
	} {
		f.Add(s.status, s.retryAfter, []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, status int, retryAfter string, body []byte) {
		resp := &http.Response{StatusCode: status, Header: http.Header{}}
		resp.Header.Set("Retry-After", retryAfter)
		e := parseAPIError(resp, body)
		msg := e.Error()
		if e.Code == "" && strings.ContainsAny(msg, "\n\r") {
			t.Fatalf("a body that is not a Parley error broke the line: %q", msg)
		}
		if e.Code == "" && !utf8.ValidString(msg) {
			t.Fatalf("invalid UTF-8 from a foreign body: %q", msg)
		}
		if e.RetryAfter < 0 {
			t.Fatalf("negative RetryAfter %v from %q", e.RetryAfter, retryAfter)
		}
		said := fmt.Sprintf("server answered %d", e.Status)
		if e.Code != "" {
			said += " " + e.Code
		}
		if e.Message != "" {
			said += ": " + e.Message
		}
		hint, ok := strings.CutPrefix(msg, said)
		if !ok {
			t.Fatalf("%q does not start with what the server said, %q", msg, said)
		}
		if hint != "" && (!strings.HasPrefix(hint, " (") || strings.Count(hint, " (") != 1) {
			t.Fatalf("hint %q is not one parenthesis", hint)
		}
		if wait := e.RetryAfter.Round(time.Second).String(); e.RetryAfter > 0 && strings.Contains(e.Message, wait) && strings.Contains(hint, wait) {
			t.Fatalf("wait given twice: %q", msg)
		}
	})
}
