package main

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/parleyhq/parley/node"
	"github.com/parleyhq/parley/upgrade"
)

// These tests run real parley processes built from this tree with
// different stamped versions, and upgrade them live.

// buildParley builds this tree's parley with its version stamped.
func buildParley(t *testing.T, version string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "parley-"+version)
	cmd := exec.Command("go", "build", "-o", bin, "-ldflags", "-X github.com/parleyhq/parley/buildinfo.version="+version, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// server is a parley serve process and its successors.
type server struct {
	admin, native, data string
	serverKey           []byte
	log                 string
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startServer starts bin as a server until the test ends. The test process
// becomes a subreaper, so that the processes that take over (children of
// the one they replace) are its children too, and are reaped.
func startServer(t *testing.T, bin string) *server {
	t.Helper()
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	s := &server{admin: freePort(t), native: freePort(t), data: filepath.Join(dir, "data"), log: filepath.Join(dir, "serve.log")}
	logf, err := os.Create(s.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "serve", "--data", s.data, "--listen", s.native, "--http", freePort(t), "--admin", s.admin)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "PARLEY_ADMIN_TOKEN=") // no token: loopback
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go cmd.Wait()
	t.Cleanup(func() {
		if v, err := s.version(); err == nil {
			syscall.Kill(v.PID, syscall.SIGTERM)
			waitGone(v.PID)
		}
		syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
		if t.Failed() {
			b, _ := os.ReadFile(s.log)
			t.Logf("server log:\n%s", b)
		}
	})
	deadline := time.Now().Add(guard)
	for {
		if _, err := s.version(); err == nil {
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(s.log)
			t.Fatalf("server did not start:\n%s", b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	f, _ := os.Open(s.log)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, ok := strings.CutPrefix(sc.Text(), "server key: "); ok {
			s.serverKey, _ = hex.DecodeString(k)
		}
	}
	if len(s.serverKey) != 32 {
		t.Fatal("server printed no key")
	}
	return s
}

// waitGone reaps pid (a child of this subreaper), for at most a few seconds.
func waitGone(pid int) {
	for i := 0; i < 200; i++ {
		var ws syscall.WaitStatus
		if got, _ := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil); got == pid {
			return
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func (s *server) version() (node.Version, error) {
	var v node.Version
	resp, err := (&http.Client{Timeout: guard}).Get("http://" + s.admin + "/admin/version")
	if err != nil {
		return v, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return v, fmt.Errorf("GET /admin/version: %s", resp.Status)
	}
	return v, json.NewDecoder(resp.Body).Decode(&v)
}

func (s *server) mustVersion(t *testing.T) node.Version {
	t.Helper()
	v, err := s.version()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// upgrade runs parley upgrade --json to bin and returns its report.
func (s *server) upgrade(t *testing.T, bin string) (upgrade.Report, result) {
	t.Helper()
	r := parley(t, "", "upgrade", "--admin", s.admin, "--binary", bin, "--json")
	var rep upgrade.Report
	if r.err == nil {
		if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
			t.Fatalf("upgrade --json printed %q: %v", r.stdout, err)
		}
	}
	return rep, r
}

// dialer dials the native listener without pause until stopped, counting
// refusals: a handover must never leave the port closed.
type dialer struct {
	stop           chan struct{}
	wg             sync.WaitGroup
	dials, refused atomic.Int64
}

func startDialing(addr string) *dialer {
	d := &dialer{stop: make(chan struct{})}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		for i := 0; i < 1_000_000; i++ {
			select {
			case <-d.stop:
				return
			default:
			}
			c, err := net.DialTimeout("tcp", addr, guard)
			d.dials.Add(1)
			if err != nil {
				d.refused.Add(1)
				continue
			}
			c.Close()
			time.Sleep(time.Millisecond)
		}
	}()
	return d
}

func (d *dialer) done() (dials, refused int64) {
	close(d.stop)
	d.wg.Wait()
	return d.dials.Load(), d.refused.Load()
}

// A live upgrade to another build: the version and the process change, the
// native port never refuses a connection, and the new process serves.
// A second upgrade right after works the same.
func TestUpgradeListeners(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs parley binaries")
	}
	v1, v2 := buildParley(t, "v1-test"), buildParley(t, "v2-test")
	s := startServer(t, v1)
	before := s.mustVersion(t)
	if before.Version != "v1-test" {
		t.Fatalf("old server says %q", before.Version)
	}
	d := startDialing(s.native)
	rep, r := s.upgrade(t, v2)
	r.must(t)
	after := s.mustVersion(t)
	if after.Version != "v2-test" || after.PID == before.PID || rep.NewPID != after.PID || rep.OldPID != before.PID || rep.NewVersion != "v2-test" || rep.OldVersion != "v1-test" {
		t.Errorf("after the upgrade: %+v, report %+v", after, rep)
	}
	// The old process is gone.
	waitGone(before.PID)
	if err := syscall.Kill(before.PID, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("old process %d still there (%v)", before.PID, err)
	}
	// And a second one, back to v1.
	rep, r = s.upgrade(t, v1)
	r.must(t)
	if v := s.mustVersion(t); v.Version != "v1-test" || v.PID != rep.NewPID {
		t.Errorf("after the second upgrade: %+v, report %+v", v, rep)
	}
	if dials, refused := d.done(); refused > 0 || dials == 0 {
		t.Errorf("%d of %d dials refused during two upgrades", refused, dials)
	}
}

// An upgrade to a binary that dies at start fails with its last lines, and
// the old process goes on serving.
func TestUpgradeToBrokenBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs parley binaries")
	}
	v1 := buildParley(t, "v1-test")
	broken := filepath.Join(t.TempDir(), "broken")
	os.WriteFile(broken, []byte("#!/bin/sh\necho 'panic: this build is broken' >&2\nexit 2\n"), 0o755)
	s := startServer(t, v1)
	before := s.mustVersion(t)
	d := startDialing(s.native)
	_, r := s.upgrade(t, broken)
	if r.err == nil {
		t.Fatal("upgrade to a broken binary succeeded")
	}
	if msg := r.err.Error(); !strings.Contains(msg, "panic: this build is broken") || !strings.Contains(msg, "exit status 2") {
		t.Errorf("the failure does not show the new process's end: %v", msg)
	}
	if v := s.mustVersion(t); v.PID != before.PID || v.Version != "v1-test" {
		t.Errorf("after a failed upgrade: %+v, want the old process %+v", v, before)
	}
	if dials, refused := d.done(); refused > 0 || dials == 0 {
		t.Errorf("%d of %d dials refused", refused, dials)
	}
	// The old one can still be upgraded.
	_, r = s.upgrade(t, v1)
	r.must(t)
}
