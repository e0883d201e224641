package account

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// FuzzNormalize checks Normalize never panics and that whatever it accepts
// is E.164 and a fixed point.
func FuzzNormalize(f *testing.F) {
	for _, s := range [][2]string{
		{"+1 415-555-0100", ""}, {"(415) 555-0100", "US"}, {"0049 30 12345678", "DE"},
		{"+", ""}, {"", "US"}, {"++1", ""}, {"+1 415 555 0100 ext. 12", ""}, {"１２３", "JP"},
		{"tel:+1-415-555-0100", ""}, {"\x00+1", "ZZ"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, raw, region string) {
		got, err := Normalize(raw, region)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		if len(got) < 2 || got[0] != '+' || strings.Trim(got[1:], "0123456789") != "" {
			t.Fatalf("Normalize(%q, %q) = %q, not E.164", raw, region, got)
		}
		if again, err := Normalize(got, ""); err != nil || again != got {
			t.Fatalf("Normalize(%q) = %q, %v; want it unchanged", got, again, err)
		}
	})
}

// fuzzHandler drives one endpoint with arbitrary bodies: it must never
// panic and must always answer 2xx/4xx with a JSON body.
func fuzzHandler(f *testing.F, path string, seeds []string) {
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	h := newHarness(f, nil).svc.Handler()
	f.Fuzz(func(t *testing.T, body []byte) {
		req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code < 200 || rec.Code >= 500 {
			t.Fatalf("status %d for %q: %s", rec.Code, body, rec.Body)
		}
		if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
			t.Fatalf("Content-Type %q", ct)
		}
		var v map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
			t.Fatalf("answer %q is not a JSON object: %v", rec.Body, err)
		}
		if rec.Code >= 400 {
			if e, ok := v["error"].(map[string]any); !ok || e["code"] == "" || e["message"] == "" {
				t.Fatalf("error answer %s lacks code and message", rec.Body)
			}
		}
	})
}

func FuzzVerifyRequest(f *testing.F) {
	fuzzHandler(f, "/v1/register/verify", []string{
		`{"phone":"+14155550100","code":"123456","key":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}`,
		`{"phone":"+14155550100","code":"123456","key":"AQ=="}`,
		`{"phone":"+14155550100","code":"12 34-56","key":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}`,
		`{"phone":null,"code":1,"key":[]}`,
		`{"phone":"x","extra":true}`,
		`{}{}`, `[]`, `"`, ``, "\xff\xfe",
	})
}

func FuzzCodeRequest(f *testing.F) {
	fuzzHandler(f, "/v1/register/request", []string{
		`{"phone":"+14155550100"}`, `{"phone":"(415) 555-0100"}`, `{"phone":"+999"}`,
		`{"PHONE":"+14155550100"}`, `{"phone":"+14155550100"} x`, `{`, `null`,
	})
}
