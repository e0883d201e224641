package node_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/parleyhq/parley/wire"
)

// adminPost posts body to the admin listener with the given content type
// and extra headers, and returns the status and the error code answered.
func adminPost(t *testing.T, url, contentType string, body []byte, header ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := (&http.Client{Timeout: ioGuard}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var eb struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&eb)
	if eb.Error.Code == "" && resp.StatusCode/100 != 2 {
		eb.Error.Code = "?"
	}
	return resp.StatusCode, eb.Error.Code
}

// The attack: a web page the operator visits posts a text/plain body to the
// loopback admin listener (a "simple request", no CORS preflight) and binds
// a registered number to the attacker's key. None of its forms may work,
// and the real device keeps its account and its connection.
func TestBulkNeverReplacesAnAccount(t *testing.T) {
	gw := &codeGateway{}
	n := startNodeIn(t, t.TempDir(), gw)
	akp, _ := register(t, n.HTTPURL(), alicePhone, gw.code)
	alice, _ := loginFull(t, n, alicePhone, akp)
	defer alice.Close()

	evil := newKeypair(t)
	body, _ := json.Marshal(map[string]any{"accounts": []map[string]string{{"phone": alicePhone, "key": base64.StdEncoding.EncodeToString(evil.Public)}}})
	url := n.AdminURL() + "/admin/accounts/bulk"
	for _, tc := range []struct {
		name        string
		contentType string
		header      []string
		wantStatus  int
		wantCode    string
	}{
		{"text/plain body", "text/plain", nil, http.StatusUnsupportedMediaType, "unsupported_media_type"},
		{"form body", "application/x-www-form-urlencoded", nil, http.StatusUnsupportedMediaType, "unsupported_media_type"},
		{"cross-site browser request", "application/json", []string{"Sec-Fetch-Site", "cross-site"}, http.StatusForbidden, "cross_site"},
		{"foreign origin", "application/json", []string{"Origin", "http://evil.example"}, http.StatusForbidden, "cross_site"},
		{"from a script, over an existing account", "application/json", nil, http.StatusConflict, "account_exists"},
	} {
		status, code := adminPost(t, url, tc.contentType, body, tc.header...)
		if status != tc.wantStatus || code != tc.wantCode {
			t.Errorf("%s: %d %q, want %d %q", tc.name, status, code, tc.wantStatus, tc.wantCode)
		}
	}
	// The attacker's key does not log in; the real device's does, and its
	// first connection was never told it was replaced.
	if _, err := dialLogin(n.NativeAddr(), n.PublicKey(), alicePhone, evil); err == nil || !strings.Contains(err.Error(), "not registered") {
		t.Errorf("login with the attacker's key: %v, want refused as not registered", err)
	}
	if err := alice.writeFrame(&wire.Frame{Kind: &wire.Frame_Ping{Ping: &wire.Ping{Id: 7}}}); err != nil {
		t.Fatal(err)
	}
	for {
		f, err := alice.readFrame(ioGuard)
		if err != nil {
			t.Fatalf("the real device's connection after the attempts: %v", err)
		}
		if p := f.GetPong(); p != nil && p.Id == 7 {
			break
		}
		if c := f.GetClose(); c != nil {
			t.Fatalf("the real device's connection was closed: %v", c)
		}
	}
}

// Provisioning the same accounts twice (a repeated bench setup) is not an
// error and changes nothing; a new number is created.
func TestBulkIsRepeatable(t *testing.T) {
	gw := &codeGateway{}
	n := startNodeIn(t, t.TempDir(), gw)
	kp := newKeypair(t)
	body := map[string]any{"accounts": []map[string]string{{"phone": bobPhone, "key": base64.StdEncoding.EncodeToString(kp.Public)}}}
	for i, want := range []map[string]int{{"created": 1, "existing": 0}, {"created": 0, "existing": 1}} {
		var got map[string]int
		if err := postJSON(n.AdminURL()+"/admin/accounts/bulk", body, &got); err != nil {
			t.Fatalf("run %d: %v", i+1, err)
		}
		if got["created"] != want["created"] || got["existing"] != want["existing"] {
			t.Errorf("run %d: %v, want %v", i+1, got, want)
		}
	}
	c, err := dialLogin(n.NativeAddr(), n.PublicKey(), bobPhone, kp)
	if err != nil {
		t.Fatalf("provisioned account does not log in: %v", err)
	}
	c.Close()
	var ae *apiError
	bad := map[string]any{"accounts": []map[string]string{{"phone": "0155", "key": base64.StdEncoding.EncodeToString(kp.Public)}}}
	if err := postJSON(n.AdminURL()+"/admin/accounts/bulk", bad, nil); !errors.As(err, &ae) || ae.Code != "invalid_phone" {
		t.Errorf("bulk with a malformed number: %v, want invalid_phone", err)
	}
	// A body with more after its object (two uploads run together) is
	// refused whole, not half taken.
	carol := `{"accounts":[{"phone":"` + carolPhone + `","key":"` + base64.StdEncoding.EncodeToString(newKeypair(t).Public) + `"}]}`
	if status, code := adminPost(t, n.AdminURL()+"/admin/accounts/bulk", "application/json", []byte(carol+carol)); status != http.StatusBadRequest || code != "bad_request" {
		t.Errorf("bulk with data after its object: %d %q, want 400 bad_request", status, code)
	}
	if _, err := dialLogin(n.NativeAddr(), n.PublicKey(), carolPhone, newKeypair(t)); err == nil || !strings.Contains(err.Error(), "no account has this number") {
		t.Errorf("the number in a refused bulk body: login %v, want no account", err)
	}
}
