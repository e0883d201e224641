package node_test

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/parleyhq/parley/buildinfo"
	"github.com/parleyhq/parley/node"
)

// GET /admin/version names the running build and process; the metrics carry
// the same build as parley_build_info.
func TestAdminVersion(t *testing.T) {
	n := startNodeWith(t, node.Limits{})
	hc := &http.Client{Timeout: ioGuard}
	resp, err := hc.Get(n.AdminURL() + "/admin/version")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got node.Version
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	want := buildinfo.Get()
	if got.Version != want.Version || got.Go != want.Go || got.PID != os.Getpid() || got.Started.IsZero() {
		t.Errorf("/admin/version = %+v, want %+v, pid %d and a start time", got, want, os.Getpid())
	}

	resp, err = hc.Get(n.AdminURL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	line := `parley_build_info{go="` + want.Go + `",version="` + want.Version + `"} 1`
	if !strings.Contains(string(body), line) {
		t.Errorf("metrics lack %s", line)
	}
}

// /admin/version goes through the admin guard like the other admin
// endpoints.
func TestAdminVersionNeedsTheToken(t *testing.T) {
	n, err := node.Start(t.Context(), node.Config{
		DataDir: t.TempDir(), Listen: "127.0.0.1:0", HTTP: "127.0.0.1:0", Admin: "127.0.0.1:0",
		SMS: &codeGateway{}, AdminToken: "s3cret", Log: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	hc := &http.Client{Timeout: ioGuard}
	for _, tc := range []struct {
		auth string
		want int
	}{{"", http.StatusUnauthorized}, {"Bearer s3cret", http.StatusOK}} {
		req, _ := http.NewRequest("GET", n.AdminURL()+"/admin/version", nil)
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("GET /admin/version with %q: status %d, want %d", tc.auth, resp.StatusCode, tc.want)
		}
	}
}
