//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/parleyhq/parley/client"
	"github.com/parleyhq/parley/monitor"
	"github.com/parleyhq/parley/node"
	"github.com/parleyhq/parley/noise"
	"github.com/parleyhq/parley/upgrade"
)

// These tests run real parley processes built from this tree with
// different stamped versions, and upgrade them live.

// buildParley builds this tree's parley with its version stamped.
func buildParley(t *testing.T, version string) string {
	t.Helper()
	return buildParleyWith(t, version, "")
}

// buildParleyWith builds it with more -ldflags too.
func buildParleyWith(t *testing.T, version, ldflags string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "parley-"+version)
	cmd := exec.Command("go", "build", "-o", bin, "-ldflags", "-X github.com/parleyhq/parley/buildinfo.version="+version+" "+ldflags, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// server is a parley serve process and its successors.
type server struct {
	admin, native, data string
	http                string // the public HTTP API's URL
	serverKey           []byte
	log                 string
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
	// Port 0 everywhere, and the ports read from what the server prints: a
	// port found free and then passed on can be taken by another test's
	// process in between.
	s := &server{data: filepath.Join(dir, "data"), log: filepath.Join(dir, "serve.log")}
	logf, err := os.Create(s.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "serve", "--data", s.data, "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--admin", "127.0.0.1:0")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "PARLEY_ADMIN_TOKEN=") // no token: loopback
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go cmd.Wait()
	t.Cleanup(func() {
		if s.admin != "" {
			if v, err := s.version(); err == nil {
				syscall.Kill(v.PID, syscall.SIGTERM)
				waitGone(v.PID)
			}
		}
		syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
		if t.Failed() {
			b, _ := os.ReadFile(s.log)
			t.Logf("server log:\n%s", b)
		}
	})
	deadline := time.Now().Add(guard)
	for s.admin == "" {
		b, _ := os.ReadFile(s.log)
		for _, line := range strings.Split(string(b), "\n") {
			var native, http, admin string
			if _, err := fmt.Sscanf(line, "parley serving: native %s http %s admin %s", &native, &http, &admin); err == nil {
				s.native = strings.TrimSuffix(native, ",")
				s.http = strings.TrimSuffix(http, ",")
				s.admin = strings.TrimPrefix(admin, "http://")
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("server did not start:\n%s", b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for {
		if _, err := s.version(); err == nil {
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(s.log)
			t.Fatalf("server did not answer:\n%s", b)
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
	return v, s.getAdmin("/admin/version", &v)
}

// getAdmin decodes the JSON that GET path answers on the admin listener
// into v.
func (s *server) getAdmin(path string, v any) error {
	resp, err := (&http.Client{Timeout: guard}).Get("http://" + s.admin + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// mustBeScheduled checks that the server runs as parley serve promises:
// the pollers and GOMAXPROCS of pollerProcs (its test pins the figures),
// and the workers sized on the CPUs alone.
// The CPUs are this test process's GOMAXPROCS, which the server, started
// with the same environment on the same machine, starts with too.
//
// A process started by an upgrade takes its pollers' Ps just after it has
// taken over (runServer), so its admin listener, inherited and already
// answering, may show the CPUs' GOMAXPROCS for a moment: the check is
// repeated for a while before it fails.
func (s *server) mustBeScheduled(t *testing.T) {
	t.Helper()
	cpus := runtime.GOMAXPROCS(0)
	pollers, procs := pollerProcs(cpus, 0)
	if _, set := os.LookupEnv("GOMAXPROCS"); set {
		procs = cpus
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var st node.ProcessStats
		if err := s.getAdmin("/admin/process", &st); err != nil {
			t.Fatal(err)
		}
		if st.Pollers == pollers && st.GoMaxProcs == procs && st.Workers == 4*cpus {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%d CPUs: the server runs %d pollers, GOMAXPROCS %d, %d workers; want %d, %d, %d", cpus, st.Pollers, st.GoMaxProcs, st.Workers, pollers, procs, 4*cpus)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
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
	s.mustBeScheduled(t)
	d := startDialing(s.native)
	rep, r := s.upgrade(t, v2)
	r.must(t)
	s.mustBeScheduled(t)
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

// parley bench pairs --upgrade-at: paced pairs send through a live upgrade
// to another build, and the bench's loss check (every accepted message
// delivered exactly once, in order, with its receipt; the queues proved
// empty after) passes with no connection dropped. A message committed
// while the old process quiesced once waited here, undelivered, until
// something else woke its recipient's session.
func TestBenchThroughUpgradeLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs parley binaries")
	}
	v1, v2 := buildParley(t, "v1-test"), buildParley(t, "v2-test")
	s := startServer(t, v1)
	state := filepath.Join(t.TempDir(), "bench.json")
	common := []string{"--admin", s.admin, "--addr", s.native, "--state", state, "-q"}
	parley(t, "", append([]string{"bench", "setup", "--users", "200", "--server", s.http}, common...)...).must(t)
	r := parley(t, "", append([]string{"bench", "pairs", "--pairs", "100", "--rate", "1500", "--tick", "5ms",
		"--duration", "4s", "--upgrade-at", "1500ms", "--upgrade-binary", v2, "--json"}, common...)...)
	var res struct {
		Sent, Delivered, Lost, Errors int64
		ErrorSamples                  []string `json:"error_samples"`
		Dropped                       int64    `json:"dropped_conns"`
		Upgrade                       struct {
			Report *upgrade.Report
			Error  string
		}
	}
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("bench pairs printed %q (%v): %v\n%s", r.stdout, r.err, err, r.stderr)
	}
	if res.Upgrade.Report == nil {
		t.Fatalf("no upgrade happened: %s", res.Upgrade.Error)
	}
	if rep := res.Upgrade.Report; rep.NewVersion != "v2-test" || rep.Connections != 200 {
		t.Errorf("upgrade report %+v, want v2-test and the 200 connections handed over", rep)
	}
	if res.Lost != 0 || res.Dropped != 0 || res.Errors != 0 || res.Sent == 0 || res.Delivered != res.Sent {
		t.Errorf("through the upgrade: sent %d, delivered %d, lost %d, dropped %d, errors %d %q",
			res.Sent, res.Delivered, res.Lost, res.Dropped, res.Errors, res.ErrorSamples)
	}
	if v := s.mustVersion(t); v.Version != "v2-test" {
		t.Errorf("the server runs %q after the run", v.Version)
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

// An upgrade whose new process dies after the old one let go of the store
// (this build crashes once it has opened the store and adopted the
// connections, before it says it serves): the old process takes the store
// back and serves on. The connections it handed over are closed, since
// their state went with the dead process; their clients log in again and
// nothing acked is lost. Before the take-back, the old process exited.
func TestUpgradeTakesBackAfterRelease(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs parley binaries")
	}
	v1 := buildParley(t, "v1-test")
	crash := buildParleyWith(t, "v2-crash", "-X main.crashBeforeServing=1")
	s := startServer(t, v1)
	before := s.mustVersion(t)
	const n = 2
	p := connectPairs(t, s, n)
	ctx, cancel := context.WithTimeout(t.Context(), 2*guard)
	defer cancel()
	for i := range n {
		for k := range 5 {
			if _, err := p.senders[i].Send(ctx, p.phones[n+i], []byte(fmt.Sprintf("before %d", k))); err != nil {
				t.Fatal(err)
			}
		}
	}
	_, r := s.upgrade(t, crash)
	if r.err == nil || !strings.Contains(r.err.Error(), "took the store back") || !strings.Contains(r.err.Error(), "stamped to crash") {
		t.Fatalf("upgrade to a build that crashes after the release: %v", r.err)
	}
	if v := s.mustVersion(t); v.PID != before.PID || v.Version != "v1-test" {
		t.Fatalf("after the failed upgrade %+v serves, want the old process %+v", v, before)
	}
	for _, c := range append(p.senders, p.receivers...) {
		select {
		case <-c.Done():
		case <-time.After(guard):
			t.Fatal("a handed-over connection is still open on the old process")
		}
	}
	dial := func(i int) *client.Client {
		c, err := client.Dial(ctx, client.Config{Addr: s.native, ServerKey: s.serverKey, Phone: p.phones[i], Key: p.keys[i]})
		if err != nil {
			t.Fatalf("log in again after the take-back: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	for i := range n {
		snd, rcv := dial(i), dial(n+i)
		if _, err := snd.Send(ctx, p.phones[n+i], []byte("after")); err != nil {
			t.Fatalf("send after the take-back: %v", err)
		}
		want := []string{"before 0", "before 1", "before 2", "before 3", "before 4", "after"}
		for _, w := range want {
			var in client.Incoming
			for in.Message == nil { // receipts of the sender's are not for this test
				var err error
				if in, err = rcv.Recv(ctx); err != nil {
					t.Fatalf("receiver %d: %v", i, err)
				}
				rcv.Ack(in.Seq)
			}
			if got := string(in.Message.Body); got != w {
				t.Fatalf("receiver %d got %q, want %q", i, got, w)
			}
		}
	}
	// The old process can still hand over, to a good build.
	rep, r := s.upgrade(t, v1)
	r.must(t)
	if rep.Connections != 2*n {
		t.Errorf("the next upgrade handed over %d connections, want %d", rep.Connections, 2*n)
	}
}

// pairs is n senders each sending numbered messages to its own receiver
// through the SDK, without reconnecting: any lost connection ends a client.
type pairs struct {
	senders, receivers []*client.Client
	phones             []string // senders' then receivers'
	keys               []noise.Keypair
	acked              []atomic.Int64
	got                [][]int // per receiver, the numbers received in order (its goroutine's)
	gotN               []atomic.Int64
	stop               chan struct{}
	sending, receiving sync.WaitGroup
	errs               chan error
}

func connectPairs(t *testing.T, s *server, n int) *pairs {
	t.Helper()
	p := &pairs{acked: make([]atomic.Int64, n), got: make([][]int, n), gotN: make([]atomic.Int64, n), stop: make(chan struct{}), errs: make(chan error, 4*n)}
	keys := make([]noise.Keypair, 2*n)
	p.keys = keys
	var accts []node.BulkAccount
	for i := range keys {
		kp, err := noise.GenerateKeypair(nil)
		if err != nil {
			t.Fatal(err)
		}
		keys[i] = kp
		p.phones = append(p.phones, fmt.Sprintf("+1555%07d", i))
		accts = append(accts, node.BulkAccount{Phone: p.phones[i], Key: base64.StdEncoding.EncodeToString(kp.Public)})
	}
	body, _ := json.Marshal(map[string]any{"accounts": accts})
	resp, err := (&http.Client{Timeout: guard}).Post("http://"+s.admin+"/admin/accounts/bulk", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("provision accounts: %s", resp.Status)
	}
	for i := range keys {
		c, err := client.Dial(t.Context(), client.Config{Addr: s.native, ServerKey: s.serverKey, Phone: p.phones[i], Key: keys[i]})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if i < n {
			p.senders = append(p.senders, c)
		} else {
			p.receivers = append(p.receivers, c)
		}
	}
	return p
}

// run starts the senders and receivers.
func (p *pairs) run(ctx context.Context) {
	for i := range p.senders {
		p.sending.Add(1)
		p.receiving.Add(1)
		go func() {
			defer p.sending.Done()
			to := p.phones[len(p.senders)+i]
			for k := 0; k < 1_000_000; k++ {
				select {
				case <-p.stop:
					return
				default:
				}
				if _, err := p.senders[i].Send(ctx, to, []byte(strconv.Itoa(k))); err != nil {
					p.errs <- fmt.Errorf("sender %d, message %d: %w", i, k, err)
					return
				}
				p.acked[i].Store(int64(k + 1))
			}
		}()
		go func() {
			defer p.receiving.Done()
			r := p.receivers[i]
			for {
				in, err := r.Recv(ctx)
				if err != nil {
					if ctx.Err() == nil {
						p.errs <- fmt.Errorf("receiver %d: %w", i, err)
					}
					return
				}
				if in.Message != nil {
					k, _ := strconv.Atoi(string(in.Message.Body))
					p.got[i] = append(p.got[i], k)
					p.gotN[i].Add(1)
				}
				if err := r.Ack(in.Seq); err != nil {
					p.errs <- fmt.Errorf("receiver %d ack: %w", i, err)
					return
				}
			}
		}()
	}
}

// sessions is the server's view of who is connected from where.
func (s *server) sessions(t *testing.T, want int) map[string]string {
	t.Helper()
	deadline := time.Now().Add(guard)
	for {
		var r monitor.SessionsResponse
		err := s.getAdmin("/admin/sessions?limit=1000", &r)
		if err == nil && r.Total == want && len(r.Sessions) == want {
			m := make(map[string]string, want)
			for _, se := range r.Sessions {
				m[se.User] = se.Conn
			}
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server does not show %d sessions: %+v, %v", want, r, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Established connections survive two live upgrades while messages flow:
// every client keeps its TCP connection (the server sees the same client
// ports, and no client, which would end on a lost connection, ends), the
// version changes, and every acked message arrives exactly once, in order.
func TestUpgradeKeepsConnections(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs parley binaries")
	}
	const n = 10
	v1, v2 := buildParley(t, "v1-test"), buildParley(t, "v2-test")
	s := startServer(t, v1)
	p := connectPairs(t, s, n)
	before := s.sessions(t, 2*n)
	ctx, cancel := context.WithTimeout(t.Context(), 2*guard)
	defer cancel()
	p.run(ctx)
	waitAcked := func(min int64) {
		deadline := time.Now().Add(guard)
		for i := range p.acked {
			for p.acked[i].Load() < min && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
		}
	}
	waitAcked(20)
	for _, bin := range []string{v2, v1} {
		rep, r := s.upgrade(t, bin)
		r.must(t)
		if rep.Connections != 2*n {
			t.Errorf("upgrade handed over %d connections, want %d", rep.Connections, 2*n)
		}
		t.Logf("upgrade to %s: %+v", rep.NewVersion, rep)
		mark := int64(0)
		for i := range p.acked {
			mark = max(mark, p.acked[i].Load())
		}
		waitAcked(mark + 20) // every pair sends on the new process
	}
	if v := s.mustVersion(t); v.Version != "v1-test" {
		t.Errorf("version after two upgrades: %q", v.Version)
	}
	close(p.stop)
	p.sending.Wait() // each sender's last message is acked (or it failed)
	// Wait for every acked message to arrive, then stop the receivers.
	deadline := time.Now().Add(guard)
	for i := range p.receivers {
		for time.Now().Before(deadline) {
			if p.gotN[i].Load() >= p.acked[i].Load() {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	after := s.sessions(t, 2*n)
	cancel()
	p.receiving.Wait()
	for len(p.errs) > 0 {
		t.Errorf("a client failed: %v", <-p.errs)
	}
	for i := range p.receivers {
		t.Logf("pair %d: %d acked, %d received", i, p.acked[i].Load(), len(p.got[i]))
	}
	for _, c := range append(p.senders, p.receivers...) {
		select {
		case <-c.Done():
			t.Errorf("a client lost its connection: %v", c.Err())
		default:
		}
	}
	for user, addr := range before {
		if after[user] != addr {
			t.Errorf("%s was connected from %s, now from %q: the connection did not survive", user, addr, after[user])
		}
	}
	for i := range p.receivers {
		acked := int(p.acked[i].Load())
		got := p.got[i]
		if len(got) < acked {
			t.Errorf("receiver %d got %d messages, %d were acked", i, len(got), acked)
		}
		for k, v := range got {
			if v != k {
				t.Errorf("receiver %d: message %d is %d: lost, repeated or out of order", i, k, v)
				break
			}
		}
	}
}
