package account

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const phone = "+14155550100"

// lastFileCode reads the code of the last line of a file gateway's output.
func lastFileCode(t *testing.T, path, phone string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var code string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var l struct{ Phone, Code string }
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("bad line %q: %v", sc.Text(), err)
		}
		if l.Phone == phone {
			code = l.Code
		}
	}
	if code == "" {
		t.Fatalf("no code for %s in %s", phone, path)
	}
	return code
}

func TestRegisterFlowThroughFileGateway(t *testing.T) {
	path := filepath.Join(t.TempDir(), "codes.jsonl")
	h := newHarness(t, func(c *Config) {
		g, err := NewFileGateway(path)
		if err != nil {
			t.Fatal(err)
		}
		c.SMS = g
		c.DefaultRegion = "US"
	})

	r := h.request(t, "(415) 555-0100")
	wantStatus(t, r, http.StatusOK, "")
	if r.body["phone"] != phone || r.body["expires_in"] != float64(600) {
		t.Fatalf("request answered %s", r.raw)
	}

	code := lastFileCode(t, path, phone)
	r = h.verify(t, "+1 415-555-0100", code, deviceKey(1))
	wantStatus(t, r, http.StatusOK, "")
	want := map[string]any{
		"phone":       phone,
		"generation":  float64(1),
		"server_key":  base64.StdEncoding.EncodeToString(serverKey),
		"native_addr": "chat.example.net:5222",
	}
	for k, v := range want {
		if r.body[k] != v {
			t.Errorf("verify answered %s = %v, want %v", k, r.body[k], v)
		}
	}
	if got := fmt.Sprint(r.body["native_addrs"]); got != "[chat.example.net:5222]" {
		t.Errorf("verify answered native_addrs = %s, want [chat.example.net:5222]", got)
	}

	acct, err := h.accounts.Account(phone)
	if err != nil {
		t.Fatal(err)
	}
	if acct.Generation != 1 || !bytes.Equal(acct.Key, deviceKey(1)) || !acct.Created.Equal(t0) || !acct.Updated.Equal(t0) {
		t.Fatalf("stored account %+v", acct)
	}
	regs := h.registrations()
	if len(regs) != 1 || regs[0].phone != phone || regs[0].old.Generation != 0 || regs[0].new.Generation != 1 {
		t.Fatalf("OnRegistered calls %+v, want one first registration", regs)
	}
}

func TestCodeIsSingleUse(t *testing.T) {
	h := newHarness(t, nil)
	wantStatus(t, h.request(t, phone), http.StatusOK, "")
	code := h.sms.last(t, phone)
	wantStatus(t, h.verify(t, phone, code, deviceKey(1)), http.StatusOK, "")
	wantStatus(t, h.verify(t, phone, code, deviceKey(2)), http.StatusNotFound, CodeNoCode)
}

func TestCodeAcceptsSeparators(t *testing.T) {
	h := newHarness(t, nil)
	wantStatus(t, h.request(t, phone), http.StatusOK, "")
	code := h.sms.last(t, phone)
	wantStatus(t, h.verify(t, phone, code[:3]+"-"+code[3:], deviceKey(1)), http.StatusOK, "")
}

func TestWrongCodesKillTheCode(t *testing.T) {
	h := newHarness(t, nil)
	wantStatus(t, h.request(t, phone), http.StatusOK, "")
	code := h.sms.last(t, phone)

	for i := range DefaultMaxAttempts {
		r := h.verify(t, phone, wrongCode(code), deviceKey(1))
		wantStatus(t, r, http.StatusForbidden, CodeInvalidCode)
		left := DefaultMaxAttempts - 1 - i
		var want string
		switch left {
		case 0:
			want = "no tries left"
		case 1:
			want = "1 try left"
		default:
			want = fmt.Sprintf("%d tries left", left)
		}
		if !strings.Contains(r.errMessage(), want) {
			t.Errorf("try %d: message %q, want it to say %q", i+1, r.errMessage(), want)
		}
	}
	// The right code no longer works.
	r := h.verify(t, phone, code, deviceKey(1))
	wantStatus(t, r, http.StatusForbidden, CodeTooManyAttempts)
	if !strings.Contains(r.errMessage(), "request a new code") {
		t.Errorf("message %q does not say what to do", r.errMessage())
	}
	if _, err := h.accounts.Account(phone); err == nil {
		t.Fatal("an account was created with a dead code")
	}
}

func TestExpiredCode(t *testing.T) {
	tests := []struct {
		name   string
		sweep  bool
		status int
		code   string
	}{
		{"dropped on access", false, http.StatusGone, CodeCodeExpired},
		{"dropped by sweep", true, http.StatusNotFound, CodeNoCode},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, nil)
			wantStatus(t, h.request(t, phone), http.StatusOK, "")
			code := h.sms.last(t, phone)
			h.clock.Advance(DefaultCodeTTL)
			if tt.sweep {
				h.svc.Sweep(h.clock.Now())
			}
			wantStatus(t, h.verify(t, phone, code, deviceKey(1)), tt.status, tt.code)
		})
	}
}

func TestCodeWorksUntilItExpires(t *testing.T) {
	h := newHarness(t, nil)
	wantStatus(t, h.request(t, phone), http.StatusOK, "")
	code := h.sms.last(t, phone)
	h.clock.Advance(DefaultCodeTTL - time.Second)
	h.svc.Sweep(h.clock.Now())
	wantStatus(t, h.verify(t, phone, code, deviceKey(1)), http.StatusOK, "")
}

func TestNewRequestReplacesCode(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		// 32 bytes for the service's hash key, then the codes 000001 and 000002.
		c.Rand = io.MultiReader(bytes.NewReader(make([]byte, 32)), bytes.NewReader([]byte{0, 0, 0, 1, 0, 0, 0, 2}))
	})
	wantStatus(t, h.request(t, phone), http.StatusOK, "")
	h.clock.Advance(30 * time.Second)
	wantStatus(t, h.request(t, phone), http.StatusOK, "")
	if got := h.sms.last(t, phone); got != "000002" {
		t.Fatalf("second code %q, want 000002 from the injected Rand", got)
	}
	wantStatus(t, h.verify(t, phone, "000001", deviceKey(1)), http.StatusForbidden, CodeInvalidCode)
	wantStatus(t, h.verify(t, phone, "000002", deviceKey(1)), http.StatusOK, "")
}

func TestPerNumberRateLimit(t *testing.T) {
	h := newHarness(t, nil)
	steps := []struct {
		advance    time.Duration
		status     int
		retryAfter string
	}{
		{0, http.StatusOK, ""},
		{0, http.StatusTooManyRequests, "30"},                 // too soon after the first
		{29 * time.Second, http.StatusTooManyRequests, "1"},   // still too soon
		{1 * time.Second, http.StatusOK, ""},                  // 30s: second
		{30 * time.Second, http.StatusOK, ""},                 // 60s: third
		{30 * time.Second, http.StatusTooManyRequests, "510"}, // 90s: 3 in 10 min; the first leaves the window at 600s
		{510 * time.Second, http.StatusOK, ""},                // 600s
	}
	for i, s := range steps {
		h.clock.Advance(s.advance)
		r := h.request(t, phone)
		code := ""
		if s.status == http.StatusTooManyRequests {
			code = CodeRateLimited
		}
		if r.status != s.status || r.errCode() != code || r.header.Get("Retry-After") != s.retryAfter {
			t.Fatalf("step %d: got %d %q Retry-After %q, want %d %q %q; body %s",
				i, r.status, r.errCode(), r.header.Get("Retry-After"), s.status, code, s.retryAfter, r.raw)
		}
	}
}

func TestPerAddrRateLimit(t *testing.T) {
	h := newHarness(t, nil)
	// 555-0100..0199 are reserved for fiction, and valid.
	number := func(i int) string { return fmt.Sprintf("+1415555%04d", 100+i) }
	for i := range 20 {
		wantStatus(t, h.request(t, number(i)), http.StatusOK, "")
	}
	r := h.request(t, number(20))
	wantStatus(t, r, http.StatusTooManyRequests, CodeRateLimited)
	if got := r.header.Get("Retry-After"); got != "600" {
		t.Fatalf("Retry-After %q, want 600", got)
	}
	if r.body["error"].(map[string]any)["retry_after"] != float64(600) {
		t.Fatalf("body %s lacks retry_after 600", r.raw)
	}
	h.clock.Advance(10 * time.Minute)
	wantStatus(t, h.request(t, number(20)), http.StatusOK, "")
}

func TestClientAddressForRateLimit(t *testing.T) {
	tests := []struct {
		name       string
		trustProxy bool
		// the second request, from "another client" per X-Forwarded-For
		status int
	}{
		{"X-Forwarded-For ignored by default", false, http.StatusTooManyRequests},
		{"X-Forwarded-For used with TrustProxy", true, http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, func(c *Config) {
				c.PerAddr = RateLimit{Max: 1, Window: time.Minute}
				c.TrustProxy = tt.trustProxy
			})
			wantStatus(t, h.request(t, "+14155550100", "X-Forwarded-For", "198.51.100.1"), http.StatusOK, "")
			// The client-supplied first entry is never trusted; the proxy's last one is.
			r := h.request(t, "+14155550101", "X-Forwarded-For", "198.51.100.1, 198.51.100.2")
			if r.status != tt.status {
				t.Fatalf("second client got %d, want %d; body %s", r.status, tt.status, r.raw)
			}
		})
	}
}

func TestReRegistrationMovesAccount(t *testing.T) {
	h := newHarness(t, nil)
	wantStatus(t, h.request(t, phone), http.StatusOK, "")
	wantStatus(t, h.verify(t, phone, h.sms.last(t, phone), deviceKey(1)), http.StatusOK, "")

	h.clock.Advance(time.Hour)
	wantStatus(t, h.request(t, phone), http.StatusOK, "")
	r := h.verify(t, phone, h.sms.last(t, phone), deviceKey(2))
	wantStatus(t, r, http.StatusOK, "")
	if r.body["generation"] != float64(2) {
		t.Fatalf("generation %v, want 2", r.body["generation"])
	}

	acct, _ := h.accounts.Account(phone)
	if acct.Generation != 2 || !bytes.Equal(acct.Key, deviceKey(2)) ||
		!acct.Created.Equal(t0) || !acct.Updated.Equal(t0.Add(time.Hour)) {
		t.Fatalf("stored account %+v", acct)
	}
	regs := h.registrations()
	if len(regs) != 2 {
		t.Fatalf("%d OnRegistered calls, want 2", len(regs))
	}
	got := regs[1]
	if got.phone != phone ||
		got.old.Generation != 1 || !bytes.Equal(got.old.Key, deviceKey(1)) ||
		got.new.Generation != 2 || !bytes.Equal(got.new.Key, deviceKey(2)) {
		t.Fatalf("OnRegistered(%s, %+v, %+v), want the move from key 1 to key 2", got.phone, got.old, got.new)
	}
}

func TestReverifySameKeyKeepsGeneration(t *testing.T) {
	h := newHarness(t, nil)
	wantStatus(t, h.request(t, phone), http.StatusOK, "")
	wantStatus(t, h.verify(t, phone, h.sms.last(t, phone), deviceKey(1)), http.StatusOK, "")

	h.clock.Advance(time.Hour)
	wantStatus(t, h.request(t, phone), http.StatusOK, "")
	r := h.verify(t, phone, h.sms.last(t, phone), deviceKey(1))
	wantStatus(t, r, http.StatusOK, "")
	if r.body["generation"] != float64(1) {
		t.Fatalf("generation %v, want 1", r.body["generation"])
	}
	if acct, _ := h.accounts.Account(phone); !acct.Updated.Equal(t0.Add(time.Hour)) {
		t.Fatalf("Updated %v, want %v", acct.Updated, t0.Add(time.Hour))
	}
	if n := len(h.registrations()); n != 1 {
		t.Fatalf("%d OnRegistered calls, want 1 (the first registration only)", n)
	}
}

func TestProviderFailureAnswers502(t *testing.T) {
	provider := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "upstream exploded", http.StatusInternalServerError)
	}))
	defer provider.Close()
	h := newHarness(t, func(c *Config) {
		g, err := NewHTTPGateway(HTTPGatewayConfig{URL: provider.URL, Token: "t", Client: provider.Client()})
		if err != nil {
			t.Fatal(err)
		}
		c.SMS = g
	})
	r := h.request(t, phone)
	wantStatus(t, r, http.StatusBadGateway, CodeSMSFailed)
	if strings.Contains(r.errMessage(), "exploded") {
		t.Errorf("message %q leaks the provider's answer to the client", r.errMessage())
	}
	// Nothing was sent, so nothing is pending.
	wantStatus(t, h.verify(t, phone, "123456", deviceKey(1)), http.StatusNotFound, CodeNoCode)
}

func TestFailedSendDoesNotUseNumberQuota(t *testing.T) {
	gw := &switchGateway{fail: true}
	h := newHarness(t, func(c *Config) { c.SMS = gw })
	for range 3 {
		wantStatus(t, h.request(t, phone), http.StatusBadGateway, CodeSMSFailed)
	}
	gw.set(false)
	wantStatus(t, h.request(t, phone), http.StatusOK, "")
}

func TestServerInfo(t *testing.T) {
	h := newHarness(t, nil)
	r := h.do(t, http.MethodGet, "/v1/server", "")
	wantStatus(t, r, http.StatusOK, "")
	if r.body["server_key"] != base64.StdEncoding.EncodeToString(serverKey) || r.body["native_addr"] != "chat.example.net:5222" {
		t.Fatalf("GET /v1/server answered %s", r.raw)
	}
	if got := fmt.Sprint(r.body["native_addrs"]); got != "[chat.example.net:5222]" {
		t.Fatalf("GET /v1/server native_addrs = %s, want [chat.example.net:5222] (a server alone lists itself)", got)
	}
}

func TestServerInfoListsEveryNode(t *testing.T) {
	nodes := []string{"a.example.net:5222", "chat.example.net:5222"}
	h := newHarness(t, func(c *Config) {
		c.NativeAddrs = func(context.Context) []string { return nodes }
	})
	r := h.do(t, http.MethodGet, "/v1/server", "")
	wantStatus(t, r, http.StatusOK, "")
	if got := fmt.Sprint(r.body["native_addrs"]); got != fmt.Sprint(nodes) {
		t.Fatalf("GET /v1/server native_addrs = %s, want %v", got, nodes)
	}
}

func TestBadRequests(t *testing.T) {
	key := base64.StdEncoding.EncodeToString(deviceKey(1))
	verify := func(fields string) string { return `{"phone":"+14155550100",` + fields + `}` }
	tests := []struct {
		name         string
		method, path string
		body         string
		contentType  string
		status       int
		code         string
	}{
		{"not JSON", "POST", "/v1/register/request", `phone=+14155550100`, "", 400, CodeBadRequest},
		{"truncated JSON", "POST", "/v1/register/request", `{"phone":"+1415`, "", 400, CodeBadRequest},
		{"empty body", "POST", "/v1/register/request", ``, "", 400, CodeBadRequest},
		{"JSON array", "POST", "/v1/register/request", `["+14155550100"]`, "", 400, CodeBadRequest},
		{"two objects", "POST", "/v1/register/request", `{"phone":"+14155550100"}{}`, "", 400, CodeBadRequest},
		{"unknown field", "POST", "/v1/register/request", `{"phone":"+14155550100","name":"x"}`, "", 400, CodeBadRequest},
		{"wrong type", "POST", "/v1/register/request", `{"phone":14155550100}`, "", 400, CodeBadRequest},
		{"oversized body", "POST", "/v1/register/request", `{"phone":"` + strings.Repeat("1", 5000) + `"}`, "", 413, CodeTooLarge},
		{"form content type", "POST", "/v1/register/request", `{"phone":"+14155550100"}`, "application/x-www-form-urlencoded", 415, CodeUnsupportedType},
		{"invalid phone", "POST", "/v1/register/request", `{"phone":"+1 123 555 0100"}`, "", 400, CodeInvalidPhone},
		{"phone without country code", "POST", "/v1/register/request", `{"phone":"4155550100"}`, "", 400, CodeInvalidPhone},
		{"GET on request", "GET", "/v1/register/request", ``, "", 405, CodeMethodNotAllowed},
		{"PUT on verify", "PUT", "/v1/register/verify", verify(`"code":"123456","key":"` + key + `"`), "", 405, CodeMethodNotAllowed},
		{"POST on server", "POST", "/v1/server", `{}`, "", 405, CodeMethodNotAllowed},
		{"unknown path", "GET", "/v1/nope", ``, "", 404, CodeNotFound},
		{"bad base64 key", "POST", "/v1/register/verify", verify(`"code":"123456","key":"not base64!"`), "", 400, CodeInvalidKey},
		{"unpadded base64 key", "POST", "/v1/register/verify", verify(`"code":"123456","key":"` + strings.TrimRight(key, "=") + `"`), "", 400, CodeInvalidKey},
		{"31-byte key", "POST", "/v1/register/verify", verify(`"code":"123456","key":"` + base64.StdEncoding.EncodeToString(deviceKey(1)[:31]) + `"`), "", 400, CodeInvalidKey},
		{"33-byte key", "POST", "/v1/register/verify", verify(`"code":"123456","key":"` + base64.StdEncoding.EncodeToString(append(deviceKey(1), 1)) + `"`), "", 400, CodeInvalidKey},
		{"all-zero key", "POST", "/v1/register/verify", verify(`"code":"123456","key":"` + base64.StdEncoding.EncodeToString(make([]byte, 32)) + `"`), "", 400, CodeInvalidKey},
		{"missing key", "POST", "/v1/register/verify", verify(`"code":"123456"`), "", 400, CodeInvalidKey},
		{"5-digit code", "POST", "/v1/register/verify", verify(`"code":"12345","key":"` + key + `"`), "", 400, CodeBadRequest},
		{"letters in code", "POST", "/v1/register/verify", verify(`"code":"12345a","key":"` + key + `"`), "", 400, CodeBadRequest},
		{"no code pending", "POST", "/v1/register/verify", verify(`"code":"123456","key":"` + key + `"`), "", 404, CodeNoCode},
	}
	h := newHarness(t, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, h.srv.URL+tt.path, strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			if tt.contentType != "" {
				req.Header.Set("Content-Type", tt.contentType)
			}
			resp, err := h.srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body struct {
				Error struct{ Code, Message string }
			}
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Fatalf("body is not JSON: %v", err)
			}
			if resp.StatusCode != tt.status || body.Error.Code != tt.code || body.Error.Message == "" {
				t.Fatalf("got %d %+v, want %d %q with a message", resp.StatusCode, body.Error, tt.status, tt.code)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Fatalf("Content-Type %q", ct)
			}
			if tt.status == 405 && resp.Header.Get("Allow") == "" {
				t.Fatal("405 without an Allow header")
			}
		})
	}
}

// smsProvider is a local HTTP server standing in for an SMS provider: it
// records the numbers the http gateway posted codes to.
type smsProvider struct {
	mu  sync.Mutex
	tos []string
}

func startSMSProvider(t *testing.T) (*smsProvider, Gateway) {
	t.Helper()
	p := &smsProvider{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var m struct{ To, Message string }
		if err := json.NewDecoder(r.Body).Decode(&m); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		p.mu.Lock()
		p.tos = append(p.tos, m.To)
		p.mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	g, err := NewHTTPGateway(HTTPGatewayConfig{URL: srv.URL, Client: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	return p, g
}

func (p *smsProvider) sent() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.tos...)
}

// TestTypoSendsNoSMS: a number with a typo in it is refused with one
// message that says what to do, and no SMS goes anywhere. Before, letters
// became keypad digits and trailing junk was dropped, so these reached a
// number the user never typed.
func TestTypoSendsNoSMS(t *testing.T) {
	provider, gw := startSMSProvider(t)
	h := newHarness(t, func(c *Config) { c.SMS = gw })
	for _, phone := range []string{"+4915123456789x", "+1800 FLOWERS", "+1 415 555 0100 ext 5", "tel:+14155550100"} {
		r := h.request(t, phone)
		wantStatus(t, r, http.StatusBadRequest, CodeInvalidPhone)
		if msg := r.errMessage(); !strings.Contains(msg, "contains") || strings.Count(msg, "e.g.") != 1 {
			t.Errorf("%q: message %q should name the stray character and give one example", phone, msg)
		}
	}
	if got := provider.sent(); len(got) != 0 {
		t.Fatalf("the provider was asked to text %v", got)
	}
	// The same number written as people do write it goes through.
	wantStatus(t, h.request(t, "+49 (151) 234-567.89"), http.StatusOK, "")
	if got := provider.sent(); len(got) != 1 || got[0] != "+4915123456789" {
		t.Fatalf("the provider was asked to text %v, want [+4915123456789]", got)
	}
}

// TestErrorMessagesSayItOnce: the API's messages carry their hint once
// (they used to repeat the example number after the normaliser's own).
func TestErrorMessagesSayItOnce(t *testing.T) {
	h := newHarness(t, nil)
	for _, phone := range []string{"4155550100", "", "+1 415 555", "+999 123456"} {
		r := h.request(t, phone)
		wantStatus(t, r, http.StatusBadRequest, CodeInvalidPhone)
		if msg := r.errMessage(); strings.Count(msg, "e.g.") > 1 || strings.Count(msg, "international format") > 1 {
			t.Errorf("%q: message %q repeats itself", phone, msg)
		}
	}
}
