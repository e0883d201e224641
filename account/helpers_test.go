package account

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parleyhq/parley/store"
)

// memAccounts is an in-memory Accounts; the real store is tested elsewhere.
type memAccounts struct {
	mu sync.Mutex
	m  map[string]store.Account
}

func newMemAccounts() *memAccounts { return &memAccounts{m: make(map[string]store.Account)} }

func (a *memAccounts) Account(phone string) (store.Account, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	acct, ok := a.m[phone]
	if !ok {
		return store.Account{}, store.ErrNotFound
	}
	return acct, nil
}

func (a *memAccounts) PutAccount(acct store.Account) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.m[acct.Phone] = acct
	return nil
}

// clock is a settable Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// codeBox is an in-test Gateway that remembers the last code per phone.
type codeBox struct {
	mu    sync.Mutex
	codes map[string]string
}

func (b *codeBox) Send(_ context.Context, phone, code string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.codes == nil {
		b.codes = make(map[string]string)
	}
	b.codes[phone] = code
	return nil
}

func (b *codeBox) last(t *testing.T, phone string) string {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	c, ok := b.codes[phone]
	if !ok {
		t.Fatalf("no code was sent to %s", phone)
	}
	return c
}

type registration struct {
	phone    string
	old, new store.Account
}

// harness is a Service behind a real loopback HTTP server.
type harness struct {
	svc      *Service
	srv      *httptest.Server
	clock    *clock
	sms      *codeBox
	accounts *memAccounts

	mu   sync.Mutex
	regs []registration
}

var (
	serverKey = bytes.Repeat([]byte{0x5e}, KeySize)
	t0        = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
)

func quietLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

// newHarness starts a service with an in-test gateway; mod may change the
// config before the service is built.
func newHarness(t testing.TB, mod func(*Config)) *harness {
	t.Helper()
	h := &harness{clock: &clock{t: t0}, sms: &codeBox{}, accounts: newMemAccounts()}
	cfg := Config{
		Accounts:   h.accounts,
		SMS:        h.sms,
		Log:        quietLog(),
		Now:        h.clock.Now,
		ServerKey:  serverKey,
		NativeAddr: "chat.example.net:5222",
		OnRegistered: func(phone string, old, new store.Account) {
			h.mu.Lock()
			h.regs = append(h.regs, registration{phone, old, new})
			h.mu.Unlock()
		},
	}
	if mod != nil {
		mod(&cfg)
	}
	svc, err := NewService(cfg)
	if err != nil {
		t.Fatalf("NewService: %v", err)
	}
	h.svc = svc
	h.srv = httptest.NewServer(svc.Handler())
	t.Cleanup(h.srv.Close)
	return h
}

func (h *harness) registrations() []registration {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]registration(nil), h.regs...)
}

// reply is an HTTP answer with its JSON body decoded.
type reply struct {
	status int
	header http.Header
	body   map[string]any
	raw    []byte
}

func (r reply) errCode() string {
	e, _ := r.body["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

func (r reply) errMessage() string {
	e, _ := r.body["error"].(map[string]any)
	m, _ := e["message"].(string)
	return m
}

func (h *harness) do(t testing.TB, method, path, body string, hdr ...string) reply {
	t.Helper()
	req, err := http.NewRequest(method, h.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := h.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	r := reply{status: resp.StatusCode, header: resp.Header, raw: raw}
	if method != http.MethodHead {
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Fatalf("%s %s: Content-Type %q, want application/json (body %s)", method, path, ct, raw)
		}
		if err := json.Unmarshal(raw, &r.body); err != nil {
			t.Fatalf("%s %s: body is not a JSON object: %v: %s", method, path, err, raw)
		}
	}
	return r
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func (h *harness) request(t testing.TB, phone string, hdr ...string) reply {
	t.Helper()
	return h.do(t, http.MethodPost, "/v1/register/request", mustJSON(map[string]string{"phone": phone}), hdr...)
}

func (h *harness) verify(t testing.TB, phone, code string, key []byte) reply {
	t.Helper()
	return h.do(t, http.MethodPost, "/v1/register/verify", mustJSON(map[string]string{
		"phone": phone, "code": code, "key": base64.StdEncoding.EncodeToString(key),
	}))
}

// wantStatus fails unless r has the status and (for errors) error code.
func wantStatus(t testing.TB, r reply, status int, code string) {
	t.Helper()
	if r.status != status || r.errCode() != code {
		t.Fatalf("got %d %q, want %d %q; body %s", r.status, r.errCode(), status, code, r.raw)
	}
}

// deviceKey is a 32-byte stand-in for a device's public key.
func deviceKey(b byte) []byte { return bytes.Repeat([]byte{b}, KeySize) }

// wrongCode is a well-formed code that differs from code.
func wrongCode(code string) string {
	if code == "000000" {
		return "111111"
	}
	return "000000"
}

// switchGateway fails every send while fail is set.
type switchGateway struct {
	mu   sync.Mutex
	fail bool
}

func (g *switchGateway) set(fail bool) {
	g.mu.Lock()
	g.fail = fail
	g.mu.Unlock()
}

func (g *switchGateway) Send(context.Context, string, string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.fail {
		return errors.New("provider down")
	}
	return nil
}
