package buildinfo

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
)

func TestResolve(t *testing.T) {
	vcs := func(rev, modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified}}
	}
	for _, tc := range []struct {
		name  string
		stamp string
		bi    *debug.BuildInfo
		want  string
	}{
		{"stamp wins", "v1.2.3", &debug.BuildInfo{Main: debug.Module{Version: "v0.9.0"}}, "v1.2.3"},
		{"module version", "", &debug.BuildInfo{Main: debug.Module{Version: "v0.9.0"}}, "v0.9.0"},
		{"checkout", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs("0123456789abcdef0123", "false")}, "devel+0123456789ab"},
		{"dirty checkout", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs("0123456789abcdef0123", "true")}, "devel+0123456789ab-dirty"},
		{"nothing recorded", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "devel"},
		{"no build info", "", nil, "devel"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := resolve(tc.stamp, tc.bi).Version; got != tc.want {
				t.Errorf("version = %q, want %q", got, tc.want)
			}
		})
	}
}

// The documented build line stamps the version: a binary built with it
// reports what it was given.
func TestLdflagsStamp(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a binary")
	}
	dir := t.TempDir()
	main := filepath.Join(dir, "main.go")
	os.WriteFile(main, []byte(`package main

import (
	"fmt"

	"github.com/parleyhq/parley/buildinfo"
)

func main() { fmt.Print(buildinfo.Get().Version) }
`), 0o600)
	bin := filepath.Join(dir, "stamped")
	build := exec.Command("go", "build", "-o", bin, "-ldflags", "-X github.com/parleyhq/parley/buildinfo.version=v9.8.7-test", main)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != "v9.8.7-test" {
		t.Errorf("stamped binary says %q, want v9.8.7-test", got)
	}
}
