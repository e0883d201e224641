package node_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"testing"

	"github.com/parleyhq/parley/account"
	"github.com/parleyhq/parley/internal/nodetest"
	"github.com/parleyhq/parley/node"
	"github.com/parleyhq/parley/noise"
)

// TestAccountAPIOnPebble: the registration API as a node serves it, with
// the accounts in its Pebble directory, across a restart. The account
// package's API tests run on an in-memory store with a fake clock, which
// lets them cover every rule quickly; this one shows the same answers come
// from the real assembly, and that what it stores survives. (It lives
// here, not in account, so that the account package's tests and fuzz
// builds do not compile the whole node.)
func TestAccountAPIOnPebble(t *testing.T) {
	const phone = "+14155550100"
	dir := t.TempDir()
	start := func() *nodetest.Node {
		return nodetest.Start(t, func(c *node.Config) { c.DataDir = dir })
	}
	tn := start()

	type answer struct {
		status int
		body   map[string]any
	}
	post := func(t *testing.T, path string, in map[string]string) answer {
		t.Helper()
		b, _ := json.Marshal(in)
		resp, err := http.Post(tn.HTTPURL()+path, "application/json", bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		a := answer{status: resp.StatusCode}
		if err := json.Unmarshal(raw, &a.body); err != nil {
			t.Fatalf("POST %s answered %d %q, not JSON", path, resp.StatusCode, raw)
		}
		return a
	}
	wantError := func(t *testing.T, a answer, status int, code string) {
		t.Helper()
		e, _ := a.body["error"].(map[string]any)
		if a.status != status || e == nil || e["code"] != code || e["message"] == "" {
			t.Fatalf("answered %d %v, want %d with error code %s and a message", a.status, a.body, status, code)
		}
	}
	key := func(t *testing.T) string {
		t.Helper()
		kp, err := noise.GenerateKeypair(nil)
		if err != nil {
			t.Fatal(err)
		}
		return base64.StdEncoding.EncodeToString(kp.Public)
	}
	// register requests a code and verifies it with k, and returns the
	// generation the node answers.
	register := func(t *testing.T, k string) float64 {
		t.Helper()
		if a := post(t, "/v1/register/request", map[string]string{"phone": phone}); a.status != http.StatusOK || a.body["phone"] != phone {
			t.Fatalf("request answered %d %v", a.status, a.body)
		}
		code := tn.Codes.Code(t, phone)
		a := post(t, "/v1/register/verify", map[string]string{"phone": phone, "code": code, "key": k})
		if a.status != http.StatusOK || a.body["phone"] != phone ||
			a.body["server_key"] != base64.StdEncoding.EncodeToString(tn.PublicKey()) || a.body["native_addr"] != tn.NativeAddr() {
			t.Fatalf("verify answered %d %v", a.status, a.body)
		}
		// The code is single use.
		wantError(t, post(t, "/v1/register/verify", map[string]string{"phone": phone, "code": code, "key": k}), http.StatusNotFound, account.CodeNoCode)
		g, _ := a.body["generation"].(float64)
		return g
	}

	wantError(t, post(t, "/v1/register/request", map[string]string{"phone": "bogus"}), http.StatusBadRequest, account.CodeInvalidPhone)
	first, second := key(t), key(t)
	if g := register(t, first); g != 1 {
		t.Fatalf("first registration: generation %v, want 1", g)
	}
	if a := post(t, "/v1/register/request", map[string]string{"phone": phone}); a.status != http.StatusOK {
		t.Fatalf("request answered %d %v", a.status, a.body)
	}
	wantError(t, post(t, "/v1/register/verify", map[string]string{"phone": phone, "code": "000000", "key": first}), http.StatusForbidden, account.CodeInvalidCode)

	// After a restart on the same directory the account is still there: a
	// new device moves it on to generation 2, and the same device again
	// keeps it there.
	if err := tn.Close(); err != nil {
		t.Fatal(err)
	}
	tn = start()
	if g := register(t, second); g != 2 {
		t.Fatalf("a new device after a restart: generation %v, want 2", g)
	}
	if g := register(t, second); g != 2 {
		t.Fatalf("the same device again: generation %v, want 2", g)
	}
}
