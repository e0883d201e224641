package adversary

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/parleyhq/parley/internal/nodetest"
)

// FuzzAdminBulk posts arbitrary bodies, under arbitrary content types, to
// the admin listener's POST /admin/accounts/bulk. Whatever comes in: no
// 5xx, a refusal is a 4xx in the one error shape
// {"error":{"code","message"}}, a success is {"created","existing"}, and
// the number registered before the fuzzing keeps its key (the bulk call
// with that key answers "existing": Provision's same-key test).
func FuzzAdminBulk(f *testing.F) {
	e := &env{Node: nodetest.Start(f)}
	ctx, cancel := context.WithTimeout(context.Background(), liveness)
	victim, kp, err := e.register(ctx, f)
	cancel()
	if err != nil {
		f.Fatal(err)
	}
	victimKey := base64.StdEncoding.EncodeToString(kp.Public)
	other := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	for _, s := range []string{
		`{"accounts":[{"phone":"+15550000001","key":"` + other + `"}]}`,
		`{"accounts":[{"phone":"` + victim + `","key":"` + other + `"}]}`,
		`{"accounts":[{"phone":"+15550000002","key":"` + other + `"},{"phone":"` + victim + `","key":"` + other + `"}]}`,
		`{"accounts":[{"phone":"` + victim + `","key":"` + victimKey + `"}]}`,
		`{"accounts":[{"phone":"` + victim + `","key":"` + other + `"},{"phone":"` + victim + `","key":"` + victimKey + `"}]}`,
		`{"accounts":[{"phone":"` + victim + `","key":"` + victimKey + `"},{"phone":"` + victim + `","key":"` + other + `"}]}`,
		`{"accounts":[{"phone":"` + strings.Replace(victim, "+", "+0", 1) + `","key":"` + other + `"}]}`,
		`{"accounts":[{"phone":" ` + victim + `","key":"` + other + `"}]}`,
		`{"accounts":[{"Phone":"` + victim + `","KEY":"` + other + `"}]}`,
		`{"accounts":[{"phone":"` + victim + `","key":"` + other + `","generation":9}]}`,
		`{"accounts":[]}`, `{"accounts":null}`, `{}`, `[]`, `null`, ``, `{`, `{"accounts":[{}]}`,
		`{"accounts":[{"phone":"+15550000003","key":"AAAA"}]}`,
		`{"accounts":[{"phone":"+15550000004","key":"` + other + `"}]}{"accounts":[{"phone":"` + victim + `","key":"` + other + `"}]}`,
		`{"accounts":[{"phone":"+1555000000x","key":"` + other + `"}]}`,
		`{"accounts":[{"phone":1,"key":2}]}`,
		"\xff\xfe{}",
	} {
		f.Add([]byte(s), "application/json")
	}
	f.Add([]byte(`{"accounts":[{"phone":"`+victim+`","key":"`+other+`"}]}`), "text/plain")
	f.Add([]byte(`{"accounts":[{"phone":"`+victim+`","key":"`+other+`"}]}`), "application/json; charset=utf-8")
	f.Add([]byte(`{"accounts":[{"phone":"`+victim+`","key":"`+other+`"}]}`), "application/x-www-form-urlencoded")
	f.Add([]byte(`{"accounts":[{"phone":"`+victim+`","key":"`+other+`"}]}`), "")
	f.Add([]byte(`{"accounts":[]}`), "application/json; boundary=\"")

	hc := &http.Client{Timeout: ioGuard}
	post := func(t *testing.T, body []byte, contentType string) (int, map[string]any, string) {
		req, err := http.NewRequest(http.MethodPost, e.AdminURL()+"/admin/accounts/bulk", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatalf("answer %d is not JSON: %q", resp.StatusCode, raw)
		}
		return resp.StatusCode, m, string(raw)
	}
	check := []byte(`{"accounts":[{"phone":"` + victim + `","key":"` + victimKey + `"}]}`)

	f.Fuzz(func(t *testing.T, body []byte, contentType string) {
		if strings.ContainsFunc(contentType, func(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f }) {
			return // not a header value net/http would send
		}
		status, m, raw := post(t, body, contentType)
		switch {
		case status == http.StatusOK:
			if _, ok := m["created"].(float64); !ok {
				t.Fatalf("200 without created: %s", raw)
			}
			if _, ok := m["existing"].(float64); !ok {
				t.Fatalf("200 without existing: %s", raw)
			}
		case status >= 400 && status < 500:
			eb, _ := m["error"].(map[string]any)
			code, _ := eb["code"].(string)
			msg, _ := eb["message"].(string)
			if code == "" || msg == "" || len(m) != 1 {
				t.Fatalf("%d not in the error shape: %s", status, raw)
			}
		default:
			t.Fatalf("answered %d: %s", status, raw)
		}
		if status, m, raw := post(t, check, "application/json"); status != http.StatusOK || m["existing"] != 1.0 {
			t.Fatalf("after %q (%s): the victim's own key answers %d %s: its key was replaced", body, contentType, status, raw)
		}
	})
}
