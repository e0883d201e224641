package account

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestFileGatewayAppendsJSONLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "codes.jsonl")
	g, err := NewFileGateway(path)
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if err := g.Send(t.Context(), fmt.Sprintf("+1415555%04d", 100+i), fmt.Sprintf("%06d", i)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Errorf("file mode %v, want 0600", mode)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	seen := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var line map[string]string
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil || len(line) != 2 {
			t.Fatalf("line %q is not {\"phone\",\"code\"}: %v", sc.Text(), err)
		}
		seen[line["phone"]] = line["code"]
	}
	for i := range n {
		if p, c := fmt.Sprintf("+1415555%04d", 100+i), fmt.Sprintf("%06d", i); seen[p] != c {
			t.Errorf("code for %s: %q, want %q", p, seen[p], c)
		}
	}
}

func TestFileGatewayBadPath(t *testing.T) {
	if _, err := NewFileGateway(filepath.Join(t.TempDir(), "no", "such", "dir", "codes")); err == nil {
		t.Fatal("NewFileGateway accepted a path in a missing directory")
	}
}

// providerRequest is what the stand-in SMS provider saw.
type providerRequest struct {
	method, contentType, auth string
	user, pass                string
	basic                     bool
	body                      map[string]string
}

// standInProvider is a local HTTP server playing the SMS provider: it
// records each request and answers status with body.
func standInProvider(t *testing.T, status int, body string) (*httptest.Server, <-chan providerRequest) {
	t.Helper()
	got := make(chan providerRequest, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pr := providerRequest{method: r.Method, contentType: r.Header.Get("Content-Type"), auth: r.Header.Get("Authorization")}
		pr.user, pr.pass, pr.basic = r.BasicAuth()
		raw, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(raw, &pr.body); err != nil {
			t.Errorf("provider got a non-JSON body %q", raw)
		}
		got <- pr
		w.WriteHeader(status)
		io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv, got
}

func TestHTTPGatewayPostsCode(t *testing.T) {
	tests := []struct {
		name      string
		token     string
		user      string
		pass      string
		wantAuth  string
		wantBasic bool
	}{
		{name: "bearer token", token: "s3cret", wantAuth: "Bearer s3cret"},
		{name: "basic auth", user: "parley", pass: "pw", wantBasic: true},
		{name: "no credentials"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, got := standInProvider(t, http.StatusAccepted, `{"id":"m1"}`)
			g, err := NewHTTPGateway(HTTPGatewayConfig{URL: srv.URL + "/sms", Token: tt.token, User: tt.user, Password: tt.pass, Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if err := g.Send(t.Context(), "+14155550100", "123456"); err != nil {
				t.Fatalf("Send: %v", err)
			}
			pr := <-got
			if pr.method != http.MethodPost || pr.contentType != "application/json" {
				t.Errorf("got %s with Content-Type %q, want a JSON POST", pr.method, pr.contentType)
			}
			if pr.body["to"] != "+14155550100" || pr.body["message"] != "Your Parley code is 123456" || len(pr.body) != 2 {
				t.Errorf("body %v", pr.body)
			}
			switch {
			case tt.wantBasic:
				if !pr.basic || pr.user != tt.user || pr.pass != tt.pass {
					t.Errorf("basic auth %v %q %q, want %q %q", pr.basic, pr.user, pr.pass, tt.user, tt.pass)
				}
			default:
				if pr.auth != tt.wantAuth {
					t.Errorf("Authorization %q, want %q", pr.auth, tt.wantAuth)
				}
			}
		})
	}
}

func TestHTTPGatewayReportsProviderError(t *testing.T) {
	srv, _ := standInProvider(t, http.StatusInternalServerError, `{"error":"insufficient credit"}`)
	g, err := NewHTTPGateway(HTTPGatewayConfig{URL: srv.URL, Token: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	err = g.Send(t.Context(), "+14155550100", "123456")
	if err == nil {
		t.Fatal("Send reported success for a 500")
	}
	for _, want := range []string{"500", "insufficient credit"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Errorf("error %q leaks the token", err)
	}
}

func TestHTTPGatewayHonoursContext(t *testing.T) {
	srv, _ := standInProvider(t, http.StatusOK, "")
	g, err := NewHTTPGateway(HTTPGatewayConfig{URL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := g.Send(ctx, "+14155550100", "123456"); err == nil {
		t.Fatal("Send succeeded with a cancelled context")
	}
}

func TestNewHTTPGatewayRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  HTTPGatewayConfig
	}{
		{"no URL", HTTPGatewayConfig{}},
		{"relative URL", HTTPGatewayConfig{URL: "/sms"}},
		{"not http", HTTPGatewayConfig{URL: "ftp://sms.example/"}},
		{"token and user", HTTPGatewayConfig{URL: "https://sms.example/", Token: "t", User: "u"}},
		{"negative timeout", HTTPGatewayConfig{URL: "https://sms.example/", Timeout: -time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewHTTPGateway(tt.cfg); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestParseGateway(t *testing.T) {
	dir := t.TempDir()
	httpCfg := HTTPGatewayConfig{URL: "https://sms.example/send", Token: "t"}
	tests := []struct {
		spec    string
		want    string // the gateway's type, or "" for an error
		wantErr string
	}{
		{"log", "*account.LogGateway", ""},
		{"file:" + filepath.Join(dir, "codes"), "*account.FileGateway", ""},
		{"http", "*account.HTTPGateway", ""},
		{"file:", "", "empty path"},
		{"twilio", "", `want "log", "file:PATH" or "http"`},
		{"", "", `want "log", "file:PATH" or "http"`},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			g, err := ParseGateway(tt.spec, httpCfg, quietLog())
			if tt.want != "" {
				if err != nil || fmt.Sprintf("%T", g) != tt.want {
					t.Fatalf("ParseGateway(%q) = %T, %v; want %s", tt.spec, g, err, tt.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ParseGateway(%q) error %v, want one saying %q", tt.spec, err, tt.wantErr)
			}
		})
	}
}

func TestLogGatewayLogsPhoneAndCode(t *testing.T) {
	var buf strings.Builder
	g := NewLogGateway(slog.New(slog.NewJSONHandler(&buf, nil)))
	if err := g.Send(t.Context(), "+14155550100", "123456"); err != nil {
		t.Fatal(err)
	}
	var line map[string]any
	if err := json.Unmarshal([]byte(buf.String()), &line); err != nil {
		t.Fatalf("log line %q: %v", buf.String(), err)
	}
	if line["phone"] != "+14155550100" || line["code"] != "123456" {
		t.Fatalf("log line %s lacks phone and code", buf.String())
	}
}
