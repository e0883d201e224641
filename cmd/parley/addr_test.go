package main

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestListenerURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"http://127.0.0.1:9090", "http://127.0.0.1:9090"},
		{"https://admin.example.com/", "https://admin.example.com"},
		{"http://10.0.0.5:9090/prefix", "http://10.0.0.5:9090/prefix"},
		// HOST:PORT, as serve --admin takes it.
		{"127.0.0.1:9090", "http://127.0.0.1:9090"},
		{" localhost:9090 ", "http://localhost:9090"},
		{"[::1]:9090", "http://[::1]:9090"},
		{"10.0.0.5:9090", "http://10.0.0.5:9090"},
		// Addresses to listen on, dialled on loopback.
		{":9090", "http://127.0.0.1:9090"},
		{"0.0.0.0:9090", "http://127.0.0.1:9090"},
		{"[::]:9090", "http://[::1]:9090"},
		{"http://0.0.0.0:9090", "http://127.0.0.1:9090"},

		{"", ""},
		{"ftp://127.0.0.1:9090", ""},
		{"http://", ""},
		{"http://user:pw@127.0.0.1:9090", ""},
		{"127.0.0.1:port", ""},
	}
	for _, tt := range tests {
		got, err := listenerURL("--admin", tt.in, "http://127.0.0.1:9090")
		switch {
		case tt.want == "" && err == nil:
			t.Errorf("listenerURL(%q) = %q, want an error", tt.in, got)
		case tt.want == "" && !strings.Contains(err.Error(), "e.g. http://127.0.0.1:9090 or 127.0.0.1:9090"):
			t.Errorf("listenerURL(%q): error %q does not show both forms", tt.in, err)
		case tt.want != "" && (err != nil || got != tt.want):
			t.Errorf("listenerURL(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

// TestAdminAsHostPort: PARLEY_ADMIN set the way 'parley serve' reads it
// (HOST:PORT, or :PORT for every interface) works for top and bench too,
// as does a URL.
func TestAdminAsHostPort(t *testing.T) {
	e := startNode(t)
	hostPort := strings.TrimPrefix(e.n.AdminURL(), "http://")
	_, port, _ := strings.Cut(hostPort, ":")
	// One state for every run: the accounts it names are provisioned once
	// and found in place after (the server never replaces an account).
	state := filepath.Join(t.TempDir(), "bench.json")
	for _, admin := range []string{hostPort, ":" + port, e.n.AdminURL()} {
		t.Run(admin, func(t *testing.T) {
			t.Setenv("PARLEY_ADMIN", admin)
			r := parley(t, "", "top", "--once", "--json").must(t)
			got := jsonLines(t, r.stdout)
			if len(got) != 1 || got[0]["totals"] == nil {
				t.Fatalf("top printed %s", r.stdout)
			}
			r = parley(t, "", "bench", "setup", "--users", "2", "--state", state, "--server", strings.TrimPrefix(e.n.HTTPURL(), "http://"), "--json", "-q").must(t)
			if got := jsonLines(t, r.stdout); len(got) != 1 {
				t.Fatalf("bench setup printed %s", r.stdout)
			}
		})
	}
}
