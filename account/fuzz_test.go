package account

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// FuzzNormalizePhone checks NormalizePhone never panics, accepts only
// input made of digits, separators and a leading +, and that whatever it
// accepts is E.164 and a fixed point.
func FuzzNormalizePhone(f *testing.F) {
	for _, s := range [][2]string{
		{"+1 415-555-0100", ""}, {"(415) 555-0100", "US"}, {"0049 30 12345678", "DE"},
		{"+", ""}, {"", "US"}, {"++1", ""}, {"+1 415 555 0100 ext. 12", ""}, {"１２３", "JP"},
		{"tel:+1-415-555-0100", ""}, {"\x00+1", "ZZ"}, {"+4915123456789x", ""}, {"+1800 FLOWERS", ""},
		{"+49 30 1234567890123", ""}, {"＋１ ４１５ ５５５ ０１００", ""}, {"030 1234567", "de"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, raw, region string) {
		got, err := NormalizePhone(raw, region)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		if !IsE164(got) {
			t.Fatalf("NormalizePhone(%q, %q) = %q, not E.164", raw, region, got)
		}
		for _, r := range strings.TrimSpace(raw) {
			if digitValue(r) < 0 && !isPhoneSeparator(r) && r != '+' && r != '\uff0b' {
				t.Fatalf("NormalizePhone(%q, %q) = %q: accepted %q, which is no part of a number", raw, region, got, r)
			}
		}
		if again, err := NormalizePhone(got, ""); err != nil || again != got {
			t.Fatalf("NormalizePhone(%q) = %q, %v; want it unchanged", got, again, err)
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
