package apierror_test

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/parleyhq/parley/apierror"
)

func TestWriteThenParse(t *testing.T) {
	rec := httptest.NewRecorder()
	apierror.Write(rec, http.StatusTooManyRequests, "rate_limited", "wait and try again", 1500*time.Millisecond)
	if rec.Code != http.StatusTooManyRequests {
		t.Fatalf("status %d, want 429", rec.Code)
	}
	if got := rec.Header().Get("Retry-After"); got != "2" {
		t.Errorf("Retry-After %q, want 2 (rounded up)", got)
	}
	if got := rec.Header().Get("Content-Type"); got != "application/json" {
		t.Errorf("Content-Type %q", got)
	}
	d, ok := apierror.Parse(rec.Body.Bytes())
	if !ok || d.Code != "rate_limited" || d.Message != "wait and try again" || d.RetryAfter != 2 {
		t.Errorf("Parse(%s) = %+v, %v", rec.Body.Bytes(), d, ok)
	}
}

func TestParseOtherShapes(t *testing.T) {
	for _, raw := range []string{"", "<html>bad gateway</html>", `{"error":"a string"}`, `{"error":{}}`, `{"other":1}`} {
		if d, ok := apierror.Parse([]byte(raw)); ok {
			t.Errorf("Parse(%q) = %+v, true; want false", raw, d)
		}
	}
}
