package account

import (
	"bytes"
	"context"
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
		if r := strayRune(raw); r >= 0 {
			t.Fatalf("NormalizePhone(%q, %q) = %q: accepted %q, which is no part of a number", raw, region, got, r)
		}
		if again, err := NormalizePhone(got, ""); err != nil || again != got {
			t.Fatalf("NormalizePhone(%q) = %q, %v; want it unchanged", got, again, err)
		}
	})
}

// strayRune is the first rune of s that is no part of a written number, or
// -1.
func strayRune(s string) rune {
	for _, r := range strings.TrimSpace(s) {
		if digitValue(r) < 0 && !isPhoneSeparator(r) && r != '+' && r != '\uff0b' {
			return r
		}
	}
	return -1
}

// fuzzHandler drives one endpoint of the real handler with arbitrary
// bodies and Content-Types. Whatever comes in, the answer is never a 5xx,
// always JSON, an error is exactly the one error shape
// {"error":{"code","message"[,"retry_after"]}} with a documented code, and
// a success names an E.164 phone that NormalizePhone gives for the one
// sent, which was made of digits and separators only. before, if set, runs first with the decoded body's phone.
func fuzzHandler(f *testing.F, path string, seeds []string, check func(t *testing.T, ok map[string]any), before func(h *harness, phone string)) {
	for _, s := range seeds {
		f.Add([]byte(s), "application/json")
	}
	f.Add([]byte(seeds[0]), "")
	f.Add([]byte(seeds[0]), "application/json; charset=utf-8")
	f.Add([]byte(seeds[0]), "text/plain")
	f.Add([]byte(seeds[0]), "application/json; charset")
	h := newHarness(f, func(c *Config) {
		// No limits, so the fuzzer reaches past the 20th request, and a
		// source of zeros, so every code is 000000.
		c.PerNumber, c.PerAddr = RateLimit{Max: -1}, RateLimit{Max: -1}
		c.Rand = zeros{}
	})
	f.Fuzz(func(t *testing.T, body []byte, contentType string) {
		// The phone as the handler reads it (encoding/json matches field
		// names without regard to case, and the last duplicate wins).
		var req verifyRequest
		_ = json.Unmarshal(body, &req)
		phone := req.Phone
		if before != nil {
			before(h, phone)
		}
		r := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
		if contentType != "" {
			r.Header.Set("Content-Type", contentType)
		}
		rec := httptest.NewRecorder()
		h.svc.Handler().ServeHTTP(rec, r)
		if rec.Code < 200 || rec.Code >= 500 {
			t.Fatalf("status %d for %q: %s", rec.Code, body, rec.Body)
		}
		if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
			t.Fatalf("Content-Type %q", ct)
		}
		if rec.Code >= 300 {
			checkErrorShape(t, rec.Code, rec.Body.Bytes())
			return
		}
		var ok map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &ok); err != nil {
			t.Fatalf("answer %q is not a JSON object: %v", rec.Body, err)
		}
		got, _ := ok["phone"].(string)
		if !IsE164(got) {
			t.Fatalf("accepted %q as phone %q, which is not E.164", phone, got)
		}
		if r := strayRune(phone); r >= 0 {
			t.Fatalf("accepted %q as phone %q: %q is no part of a number", phone, got, r)
		}
		if want, err := NormalizePhone(phone, ""); err != nil || got != want {
			t.Fatalf("accepted %q as phone %q; NormalizePhone gives %q, %v", phone, got, want, err)
		}
		check(t, ok)
	})
}

// checkErrorShape fails unless raw is exactly the one error shape, with a
// documented code.
func checkErrorShape(t *testing.T, status int, raw []byte) {
	t.Helper()
	var e struct {
		Error *struct {
			Code       *string `json:"code"`
			Message    *string `json:"message"`
			RetryAfter int64   `json:"retry_after"`
		} `json:"error"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil || e.Error == nil || e.Error.Code == nil || e.Error.Message == nil {
		t.Fatalf("%d answer %s is not {\"error\":{\"code\",\"message\"}}: %v", status, raw, err)
	}
	if !documentedCodes[*e.Error.Code] || *e.Error.Message == "" {
		t.Fatalf("%d answer %s: undocumented code or empty message", status, raw)
	}
}

var documentedCodes = map[string]bool{
	CodeBadRequest: true, CodeInvalidPhone: true, CodeInvalidKey: true, CodeRateLimited: true,
	CodeInvalidCode: true, CodeTooManyAttempts: true, CodeCodeExpired: true, CodeNoCode: true,
	CodeSMSFailed: true, CodeInternal: true, CodeNotFound: true, CodeMethodNotAllowed: true,
	CodeTooLarge: true, CodeUnsupportedType: true,
}

// zeros is a random source of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// FuzzVerifyRequest: every body's phone has a code pending (000000), so the
// fuzzer reaches wrong codes, dead codes and registrations as well as
// malformed requests.
func FuzzVerifyRequest(f *testing.F) {
	key := `"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="`
	fuzzHandler(f, "/v1/register/verify", []string{
		`{"phone":"+14155550100","code":"000000","key":` + key + `}`,
		`{"phone":"+14155550100","code":"123456","key":"AQ=="}`,
		`{"phone":"+1 (415) 555-0100","code":"000 000","key":` + key + `}`,
		`{"phone":"+14155550100","code":"12 34-56","key":` + key + `}`,
		`{"phone":"+4915123456789x","code":"000000","key":` + key + `}`,
		`{"phone":"+14155550100","code":"000000","key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}`,
		`{"phone":null,"code":1,"key":[]}`,
		`{"phone":"x","extra":true}`,
		`{}{}`, `[]`, `"`, ``, "\xff\xfe",
	}, func(t *testing.T, ok map[string]any) {
		if g, _ := ok["generation"].(float64); g < 1 {
			t.Fatalf("registered with generation %v", ok["generation"])
		}
		if ok["server_key"] == "" || ok["native_addr"] == "" {
			t.Fatalf("answer %v lacks the server's key or address", ok)
		}
	}, func(h *harness, phone string) {
		_, _, _ = h.svc.RequestCode(context.Background(), phone, "192.0.2.1")
	})
}

func FuzzCodeRequest(f *testing.F) {
	fuzzHandler(f, "/v1/register/request", []string{
		`{"phone":"+14155550100"}`, `{"phone":"(415) 555-0100"}`, `{"phone":"+999"}`,
		`{"phone":"+1800 FLOWERS"}`, `{"phone":"+4915123456789x"}`, `{"phone":"＋４９ １５１ ２３４５６７８９"}`,
		`{"PHONE":"+14155550100"}`, `{"phone":"+14155550100"} x`, `{`, `null`,
	}, func(t *testing.T, ok map[string]any) {
		if e, _ := ok["expires_in"].(float64); e <= 0 {
			t.Fatalf("code sent with expires_in %v", ok["expires_in"])
		}
	}, nil)
}
