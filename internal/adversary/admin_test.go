package adversary

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/parleyhq/parley/client"
	"github.com/parleyhq/parley/node"
	"github.com/parleyhq/parley/noise"
	"github.com/parleyhq/parley/wire"
)

// bulkBody is a POST /admin/accounts/bulk body binding each phone to key.
func bulkBody(key []byte, phones ...string) string {
	var req struct {
		Accounts []node.BulkAccount `json:"accounts"`
	}
	for _, p := range phones {
		req.Accounts = append(req.Accounts, node.BulkAccount{Phone: p, Key: base64.StdEncoding.EncodeToString(key)})
	}
	b, err := json.Marshal(req)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// adminAnswer is an admin listener's answer: its status and decoded body.
type adminAnswer struct {
	status int
	body   map[string]any
	raw    string
}

// errorCode is the code of a {"error":{"code","message"}} answer, or "".
func (a adminAnswer) errorCode() string {
	if m, ok := a.body["error"].(map[string]any); ok {
		c, _ := m["code"].(string)
		return c
	}
	return ""
}

// adminPost posts body to the admin listener's path; edit sets the
// request's headers as the attack needs.
func adminPost(t *testing.T, e *env, path, body string, edit func(*http.Request)) adminAnswer {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, e.AdminURL()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if edit != nil {
		edit(req)
	}
	resp, err := (&http.Client{Timeout: ioGuard}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	a := adminAnswer{status: resp.StatusCode, raw: string(raw)}
	if err := json.Unmarshal(raw, &a.body); err != nil {
		t.Errorf("POST %s answered %d with a body that is not JSON: %q", path, resp.StatusCode, raw)
	}
	return a
}

// Admin takeover: a web page the operator visits, or a DNS-rebinding
// name, tries to rebind a registered number to the attacker's key through
// the bulk endpoint of a loopback admin listener with no token; a script
// tries with a token in the URL. Every try is refused, the account and its
// live device are untouched, and other users are served meanwhile.
func TestAdminTakeover(t *testing.T) {
	e := start(t, node.Limits{})
	victim := e.newUser(t)
	other := e.newUser(t)
	attacker, err := noise.GenerateKeypair(nil)
	if err != nil {
		t.Fatal(err)
	}
	fresh := e.newPhone() // unregistered: must not be created by a refused request
	steal := bulkBody(attacker.Public, fresh, victim.phone)
	crossBefore := e.metric(t, `parley_admin_refused_total{reason="cross_site"}`)

	for _, tc := range []struct {
		name      string
		edit      func(*http.Request)
		status    int
		code      string // the error's code
		crossSite bool   // counted as a cross-site refusal
	}{
		{"text/plain simple request", func(r *http.Request) { r.Header.Set("Content-Type", "text/plain") }, http.StatusUnsupportedMediaType, "unsupported_media_type", false},
		{"form simple request", func(r *http.Request) { r.Header.Set("Content-Type", "application/x-www-form-urlencoded") }, http.StatusUnsupportedMediaType, "unsupported_media_type", false},
		{"no content type", func(r *http.Request) { r.Header.Del("Content-Type") }, http.StatusUnsupportedMediaType, "unsupported_media_type", false},
		{"foreign Origin", func(r *http.Request) { r.Header.Set("Origin", "http://evil.example") }, http.StatusForbidden, "cross_site", true},
		{"null Origin", func(r *http.Request) { r.Header.Set("Origin", "null") }, http.StatusForbidden, "cross_site", true},
		{"Sec-Fetch-Site cross-site", func(r *http.Request) { r.Header.Set("Sec-Fetch-Site", "cross-site") }, http.StatusForbidden, "cross_site", true},
		{"Sec-Fetch-Site same-site", func(r *http.Request) { r.Header.Set("Sec-Fetch-Site", "same-site") }, http.StatusForbidden, "cross_site", true},
		{"rebinding Host", func(r *http.Request) { r.Host = "evil.example" }, http.StatusForbidden, "cross_site", true},
		{"rebinding Host with port", func(r *http.Request) { r.Host = "attacker.example:" + r.URL.Port() }, http.StatusForbidden, "cross_site", true},
		{"overwrite through the front door", nil, http.StatusConflict, "account_exists", false},
	} {
		a := adminPost(t, e, "/admin/accounts/bulk", steal, tc.edit)
		if a.status != tc.status || a.errorCode() != tc.code {
			t.Errorf("%s: %d %s, want %d with error code %q", tc.name, a.status, a.raw, tc.status, tc.code)
		}
	}
	if got := e.metric(t, `parley_admin_refused_total{reason="cross_site"}`) - crossBefore; got != 6 {
		t.Errorf("parley_admin_refused_total{reason=cross_site} rose by %v, want 6", got)
	}

	ctx, cancel := context.WithTimeout(t.Context(), liveness)
	defer cancel()
	// The account is the victim's still: the attacker's key does not log
	// in, the refused request created nothing, and the victim's own key
	// provisions as "existing" (Provision's test for the same key).
	for _, phone := range []string{victim.phone, fresh} {
		c, err := e.login(ctx, phone, attacker)
		var le *client.LoginError
		if !errors.As(err, &le) || le.Code != wire.Error_LOGIN_FAILED {
			if c != nil {
				c.Close()
			}
			t.Errorf("attacker's key logging in as %s: %v, want LOGIN_FAILED", phone, err)
		}
	}
	if a := adminPost(t, e, "/admin/accounts/bulk", bulkBody(victim.kp.Public, victim.phone), nil); a.status != http.StatusOK || a.body["existing"] != 1.0 {
		t.Errorf("the victim's own key: %d %s, want 200 existing 1", a.status, a.raw)
	}
	// The real device was never thrown out, and still sends and receives.
	if err := roundTrip(t.Context(), victim.Client, other.Client, other.phone); err != nil {
		t.Errorf("the victim's device after the attack: %v", err)
	}
	if err := roundTrip(t.Context(), other.Client, victim.Client, victim.phone); err != nil {
		t.Errorf("the victim's device after the attack: %v", err)
	}
	e.checkServes(t)
}

// With an admin token set, the token is taken from the Authorization
// header only: one in the URL (where logs and shell history keep it) is
// refused and counted, even when it is the right one.
func TestAdminTokenOnlyInHeader(t *testing.T) {
	const token = "adversary-test-token"
	e := start(t, node.Limits{}, func(c *node.Config) { c.AdminToken = token })
	e.token = token
	before := e.metric(t, `parley_admin_refused_total{reason="token"}`)
	get := func(url string, edit func(*http.Request)) int {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if edit != nil {
			edit(req)
		}
		resp, err := (&http.Client{Timeout: ioGuard}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, q := range []string{"?token=", "?access_token=", "?admin_token=", "?auth="} {
		if got := get(e.AdminURL()+"/admin/limits"+q+token, nil); got != http.StatusUnauthorized {
			t.Errorf("token in the query (%s): %d, want 401", q, got)
		}
	}
	if got := get(e.AdminURL()+"/admin/limits", func(r *http.Request) { r.Header.Set("Authorization", "Bearer wrong") }); got != http.StatusUnauthorized {
		t.Errorf("wrong token: %d, want 401", got)
	}
	// A token does not let a cross-site request through.
	if got := get(e.AdminURL()+"/admin/limits", func(r *http.Request) {
		r.Header.Set("Authorization", "Bearer "+token)
		r.Header.Set("Sec-Fetch-Site", "cross-site")
	}); got != http.StatusForbidden {
		t.Errorf("cross-site request with the token: %d, want 403", got)
	}
	if got := get(e.AdminURL()+"/admin/limits", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+token) }); got != http.StatusOK {
		t.Errorf("the token in its header: %d, want 200", got)
	}
	if got := e.metric(t, `parley_admin_refused_total{reason="token"}`) - before; got != 5 {
		t.Errorf("parley_admin_refused_total{reason=token} rose by %v, want 5", got)
	}
	e.checkServes(t)
}
