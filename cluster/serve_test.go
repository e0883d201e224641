package cluster_test

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/parleyhq/parley/client"
	"github.com/parleyhq/parley/internal/natstest"
	"github.com/parleyhq/parley/noise"
)

// Bounds of the three-process test. Every duration is a failure guard,
// never an assertion.
const (
	startGuard = 2 * time.Minute // three nodes up (a -race build is slow)
	flowGuard  = 2 * time.Minute // every message delivered
	messages   = 150
	killAfter  = 50 // bob has received this many, live, when his node is killed
)

const (
	alicePhone = "+14155550101"
	bobPhone   = "+14155550102"
)

// buildParley builds cmd/parley into a temporary directory, the way this
// test binary was built (-race or not), so that the packages it has
// compiled already are reused.
func buildParley(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go") // go test puts its own go first in PATH
	if err != nil {
		t.Fatalf("no go command to build cmd/parley with: %v", err)
	}
	out, err := exec.Command(goBin, "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		t.Fatal("not inside the parley module")
	}
	bin := filepath.Join(t.TempDir(), "parley")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.CommandContext(ctx, goBin, append(args, "./cmd/parley")...)
	cmd.Dir = filepath.Dir(gomod)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/parley: %v\n%s", err, out)
	}
	return bin
}

// proc is one `parley serve` process of the cluster.
type proc struct {
	name    string
	cmd     *exec.Cmd
	pid     atomic.Int64 // the serving process: another after a live upgrade
	native  string
	httpURL string
	admin   string
	token   string // the admin listener's, when it needs one
	codes   string // the file its SMS gateway writes codes to
	log     string
	exited  chan struct{}
}

var servingLine = regexp.MustCompile(`^parley serving: native (\S+), http (\S+), admin (\S+)$`)

// startCluster starts three `parley serve` processes on loopback, each
// with its own ports and data directory, given the same peer list.
func startCluster(t *testing.T, bin string) []*proc {
	t.Helper()
	routes := natstest.FreeAddrs(t, 3)
	return startClusterOn(t, bin, clusterPlaces{hosts: []string{"127.0.0.1", "127.0.0.1", "127.0.0.1"}, routes: routes})
}

// clusterPlaces says where startClusterOn's nodes listen and how each is
// run.
type clusterPlaces struct {
	hosts  []string // each node's address, for all its listeners (free ports)
	routes []string // each node's route address, HOST:PORT
	// wrap, if set, is the command line that runs node i's argv (in a
	// network namespace, say); it must exec argv in the same process.
	wrap func(i int, argv []string) []string
	// adminToken, if set, is required by the admin listeners (which need
	// one when they do not listen on loopback).
	adminToken string
	// logLevel is the nodes' --log-level; default warn.
	logLevel string
	// natsListen, if set, is each node's embedded NATS client address
	// (--nats-listen), for a test that reads the streams itself.
	natsListen []string
}

// startClusterOn starts three `parley serve` processes placed as pl says,
// each with its own data directory, given the same peer list.
func startClusterOn(t *testing.T, bin string, pl clusterPlaces) []*proc {
	t.Helper()
	routes := pl.routes
	ps := make([]*proc, 3)
	lines := make([]chan string, 3)
	for i := range ps {
		dir := t.TempDir()
		p := &proc{
			name:   fmt.Sprintf("n%d", i+1),
			token:  pl.adminToken,
			codes:  filepath.Join(dir, "codes.jsonl"),
			log:    filepath.Join(dir, "log.txt"),
			exited: make(chan struct{}),
		}
		anyPort := net.JoinHostPort(pl.hosts[i], "0")
		argv := []string{bin, "serve",
			"--data", filepath.Join(dir, "data"),
			"--listen", anyPort, "--http", anyPort, "--admin", anyPort,
			"--sms", "file:" + p.codes, "--log-level", cmp.Or(pl.logLevel, "warn"),
			"--cluster", "test", "--node", p.name,
			"--cluster-listen", routes[i], "--peers", strings.Join(routes, ","),
			"--partitions", "4"}
		if pl.natsListen != nil {
			argv = append(argv, "--nats-listen", pl.natsListen[i])
		}
		if pl.adminToken != "" {
			tf := filepath.Join(dir, "admin.token")
			if err := os.WriteFile(tf, []byte(pl.adminToken), 0o600); err != nil {
				t.Fatal(err)
			}
			argv = append(argv, "--admin-token-file", tf)
		}
		if pl.wrap != nil {
			argv = pl.wrap(i, argv)
		}
		p.cmd = exec.Command(argv[0], argv[1:]...)
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "PARLEY_") { // the test sets every flag it cares about
				p.cmd.Env = append(p.cmd.Env, kv)
			}
		}
		logf, err := os.Create(p.log)
		if err != nil {
			t.Fatal(err)
		}
		p.cmd.Stderr = logf
		stdout, err := p.cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		p.pid.Store(int64(p.cmd.Process.Pid))
		logf.Close()
		lines[i] = make(chan string, 1)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				if servingLine.MatchString(sc.Text()) {
					select { // the first; a process that took over prints it again
					case lines[i] <- sc.Text():
					default:
					}
				}
			}
			// Read to the end, then reap: Wait must not race the pipe.
			_ = p.cmd.Wait()
			close(p.exited)
		}()
		ps[i] = p
	}
	// Stopped together, as a cluster is: the last node of a cluster
	// stopped one by one has no quorum left and stops slowly (its store
	// waits out its requests).
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, p := range ps {
			if p != nil {
				wg.Add(1)
				go func() { defer wg.Done(); p.stop(t) }()
			}
		}
		wg.Wait()
	})
	deadline := time.After(startGuard)
	for i, p := range ps {
		select {
		case l := <-lines[i]:
			m := servingLine.FindStringSubmatch(l)
			p.native, p.httpURL, p.admin = m[1], m[2], m[3]
		case <-p.exited:
			t.Fatalf("%s exited before serving:\n%s", p.name, tail(p.log))
		case <-deadline:
			t.Fatalf("%s not serving after %s:\n%s", p.name, startGuard, tail(p.log))
		}
	}
	return ps
}

// stop ends p with SIGTERM (SIGKILL if it does not go), if it still runs.
func (p *proc) stop(t *testing.T) {
	select {
	case <-p.exited:
		return
	default:
	}
	pid := int(p.pid.Load())
	_ = syscall.Kill(pid, syscall.SIGTERM)
	start := time.Now()
	select {
	case <-p.exited:
		t.Logf("%s stopped in %s", p.name, time.Since(start).Round(time.Millisecond))
	case <-time.After(40 * time.Second):
		// Where it hangs: the Go runtime writes every goroutine's stack
		// to the log on SIGQUIT.
		_ = syscall.Kill(pid, syscall.SIGQUIT)
		select {
		case <-p.exited:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(pid, syscall.SIGKILL)
			<-p.exited
		}
		t.Errorf("%s did not stop on SIGTERM (log: %s):\n%s", p.name, p.log, tail(p.log))
	}
}

func (p *proc) kill(t *testing.T) {
	t.Helper()
	if err := syscall.Kill(int(p.pid.Load()), syscall.SIGKILL); err != nil {
		t.Fatalf("kill %s: %v", p.name, err)
	}
	<-p.exited
}

// code is the last code p sent to phone.
func (p *proc) code(t *testing.T, phone string) string {
	t.Helper()
	b, err := os.ReadFile(p.codes)
	if err != nil {
		t.Fatal(err)
	}
	code := ""
	for _, line := range bytes.Split(b, []byte("\n")) {
		var l struct{ Phone, Code string }
		if json.Unmarshal(line, &l) == nil && l.Phone == phone {
			code = l.Code
		}
	}
	if code == "" {
		t.Fatalf("%s sent no code to %s", p.name, phone)
	}
	return code
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 8000 {
		b = b[len(b)-8000:]
	}
	return string(b)
}

// failover forwards connections to a target it can be told to change: a
// stand-in for the load balancer (or the SDK's list of addresses) that
// moves a device to a surviving node.
type failover struct {
	ln     net.Listener
	target atomic.Pointer[string]
	mu     sync.Mutex
	conns  []net.Conn
}

func newFailover(t *testing.T, target string) *failover {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &failover{ln: ln}
	f.target.Store(&target)
	go f.serve()
	t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, c := range f.conns {
			c.Close()
		}
	})
	return f
}

func (f *failover) addr() string         { return f.ln.Addr().String() }
func (f *failover) moveTo(target string) { f.target.Store(&target) }

func (f *failover) serve() {
	for {
		src, err := f.ln.Accept()
		if err != nil {
			return
		}
		dst, err := net.DialTimeout("tcp", *f.target.Load(), 5*time.Second)
		if err != nil {
			src.Close()
			continue
		}
		f.mu.Lock()
		f.conns = append(f.conns, src, dst)
		f.mu.Unlock()
		pipe := func(a, b net.Conn) {
			_, _ = io.Copy(a, b)
			a.Close()
			b.Close()
		}
		go pipe(src, dst)
		go pipe(dst, src)
	}
}

func register(t *testing.T, p *proc, phone string) (noise.Keypair, client.Registration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kp, err := noise.GenerateKeypair(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.RequestCode(ctx, nil, p.httpURL, phone); err != nil {
		t.Fatalf("request a code from %s: %v", p.name, err)
	}
	reg, err := client.Verify(ctx, nil, p.httpURL, phone, p.code(t, phone), kp.Public)
	if err != nil {
		t.Fatalf("verify on %s: %v", p.name, err)
	}
	return kp, reg
}

func dialClient(t *testing.T, addr, phone string, kp noise.Keypair, serverKey []byte) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := client.Dial(ctx, client.Config{
		Addr: addr, ServerKey: serverKey, Phone: phone, Key: kp,
		Reconnect: true, MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second,
		DialTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatalf("log %s in at %s: %v", phone, addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// ackAll acks everything c receives until ctx ends, handing the
// messages' bodies to out (if not nil) in the order received.
func ackAll(ctx context.Context, c *client.Client, out chan<- string) {
	for {
		in, err := c.Recv(ctx)
		if err != nil {
			return
		}
		if in.Message != nil && out != nil {
			out <- string(in.Message.Body)
		}
		_ = c.Ack(in.Seq)
	}
}

// flow has Alice send messages numbered m0000 and up to Bob, one at a
// time, each until it is acked: a send refused while a stream elects a new
// leader is sent again with the same id, which stores it once. Alice reads
// her receipts so that her queue stays short; Bob's messages come out of
// received; sent says how Alice's sending ended; acked counts her acks,
// and maxGap is the longest time between two of them (nanoseconds).
func flow(ctx context.Context, alice, bob *client.Client) (received chan string, sent chan error, acked, maxGap *atomic.Int64) {
	go ackAll(ctx, alice, nil)
	received = make(chan string, messages)
	go ackAll(ctx, bob, received)
	sent = make(chan error, 1)
	acked, maxGap = new(atomic.Int64), new(atomic.Int64)
	go func() {
		last := time.Now()
		for i := range messages {
			id, body := alice.NewID(), fmt.Sprintf("m%04d", i)
			for {
				_, err := alice.SendWithID(ctx, id, bobPhone, []byte(body))
				if err == nil {
					break
				}
				var se *client.ServerError
				if ctx.Err() != nil || !errors.As(err, &se) {
					sent <- fmt.Errorf("send %s: %w", body, err)
					return
				}
				select {
				case <-ctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
			}
			acked.Add(1)
			if gap := int64(time.Since(last)); gap > maxGap.Load() {
				maxGap.Store(gap)
			}
			last = time.Now()
		}
		sent <- nil
	}()
	return received, sent, acked, maxGap
}

// TestThreeProcessCluster is the cluster's story end to end, with three
// `parley serve` processes on loopback: register on node 1; Alice on node
// 2 sends to Bob on node 3, live; node 3 is killed (SIGKILL) mid-flow,
// Bob moves to node 1 and gets every message Alice had acked, exactly
// once and in order, while Alice keeps sending through node 2.
func TestThreeProcessCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: builds the server and runs three of it")
	}
	start := time.Now()
	bin := buildParley(t)
	t.Logf("built in %s", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	ps := startCluster(t, bin)
	t.Logf("three nodes serving in %s", time.Since(start).Round(time.Millisecond))
	start = time.Now()

	akp, reg := register(t, ps[0], alicePhone)
	bkp, _ := register(t, ps[0], bobPhone)
	alice := dialClient(t, ps[1].native, alicePhone, akp, reg.ServerKey)
	bobRoute := newFailover(t, ps[2].native)
	bob := dialClient(t, bobRoute.addr(), bobPhone, bkp, reg.ServerKey)

	ctx, cancel := context.WithTimeout(context.Background(), flowGuard)
	defer cancel()
	received, sent, acked, _ := flow(ctx, alice, bob)
	var got []string
	killed := false
	for len(got) < messages {
		select {
		case b := <-received:
			got = append(got, b)
		case err := <-sent:
			if err != nil {
				t.Fatalf("alice: %v (node logs:\n%s\n%s)", err, tail(ps[1].log), tail(ps[2].log))
			}
			sent = nil
		case <-ctx.Done():
			t.Fatalf("bob has %d of %d messages after %s (alice has %d acked; killed: %v)\nnode 1:\n%s", len(got), messages, flowGuard, acked.Load(), killed, tail(ps[0].log))
		}
		if len(got) == killAfter && !killed {
			// Bob has had these live from node 3: now it dies, and his
			// device is sent to node 1 instead.
			bobRoute.moveTo(ps[0].native)
			ps[2].kill(t)
			killed = true
			t.Logf("node 3 killed after %d messages received live, %d acked, in %s", len(got), acked.Load(), time.Since(start).Round(time.Millisecond))
			start = time.Now()
		}
	}
	if sent != nil {
		if err := <-sent; err != nil {
			t.Fatalf("alice: %v", err)
		}
	}
	t.Logf("the other %d messages delivered in %s after the kill", messages-killAfter, time.Since(start).Round(time.Millisecond))
	for i, b := range got {
		if want := fmt.Sprintf("m%04d", i); b != want {
			t.Fatalf("bob's message %d is %q, want %q (exactly once, in order); all: %v", i, b, want, got)
		}
	}
}

// A rolling upgrade: each node of the cluster in turn is upgraded live
// (POST /admin/upgrade) while Alice on node 2 sends to Bob on node 3. Each
// new process takes over its node's connections and leaves and rejoins
// the cluster in the old one's place (its embedded NATS server's ports and
// directory). Bob's and Alice's connections are never dropped (their
// clients do not reconnect: a drop would end them), and Bob gets every
// message Alice had acked, exactly once and in order.
func TestClusterRollingUpgradeLive(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: builds the server and runs three of it")
	}
	bin := buildParley(t)
	ps := startCluster(t, bin)
	akp, reg := register(t, ps[0], alicePhone)
	bkp, _ := register(t, ps[0], bobPhone)
	dial := func(addr, phone string, kp noise.Keypair) *client.Client {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c, err := client.Dial(ctx, client.Config{Addr: addr, ServerKey: reg.ServerKey, Phone: phone, Key: kp})
		if err != nil {
			t.Fatalf("log %s in at %s: %v", phone, addr, err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	alice := dial(ps[1].native, alicePhone, akp)
	bob := dial(ps[2].native, bobPhone, bkp)

	ctx, cancel := context.WithTimeout(context.Background(), flowGuard)
	defer cancel()
	received, sent, _, _ := flow(ctx, alice, bob)
	// Bob's node, then Alice's, then the one neither uses, each once Bob
	// has this many messages and the upgrade before has ended.
	steps := []struct{ at, node, conns int }{{30, 2, 1}, {70, 1, 1}, {110, 0, 0}}
	var got []string
	var upgraded chan error
	step := 0
	for len(got) < messages || upgraded != nil {
		select {
		case b := <-received:
			got = append(got, b)
		case err := <-sent:
			if err != nil {
				t.Fatalf("alice: %v", err)
			}
			sent = nil
		case err := <-upgraded:
			if p := ps[steps[step].node]; err != nil {
				t.Fatalf("upgrade of %s: %v\n%s:\n%s", p.name, err, p.name, tail(p.log))
			}
			upgraded = nil
			step++
		case <-ctx.Done():
			t.Fatalf("bob has %d of %d messages after %s, %d of 3 nodes upgraded", len(got), messages, flowGuard, step)
		}
		if upgraded == nil && step < len(steps) && len(got) >= steps[step].at {
			upgraded = make(chan error, 1)
			st := steps[step]
			go func() { upgraded <- upgradeNode(ctx, t, ps[st.node], bin, st.conns) }()
		}
	}
	if step != len(steps) {
		t.Fatalf("%d of %d upgrades done", step, len(steps))
	}
	checkUnbroken(t, got, alice, bob)
}

// upgradeNode asks p for a live upgrade to bin and checks that another
// process took over at least conns connections; p's pid follows it.
func upgradeNode(ctx context.Context, t *testing.T, p *proc, bin string, conns int) error {
	body, _ := json.Marshal(map[string]string{"binary": bin})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.admin+"/admin/upgrade", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, raw)
	}
	var rep struct {
		OldPID      int `json:"old_pid"`
		NewPID      int `json:"new_pid"`
		Connections int `json:"connections"`
	}
	if err := json.Unmarshal(raw, &rep); err != nil {
		return err
	}
	p.pid.Store(int64(rep.NewPID))
	t.Logf("node %s upgraded: %s", p.name, raw)
	if rep.NewPID == rep.OldPID || rep.Connections < conns {
		return fmt.Errorf("report %s: want another process, with %d connections or more", raw, conns)
	}
	return nil
}

// A planned stop drains: SIGTERM to the node that Alice sends through,
// to Bob on another node. The node closes her session with SHUTTING_DOWN;
// her client (given every node's address, reconnecting) moves to another
// node after a jittered wait and resends what was not acked, with its ids;
// Bob gets every message she had acked, exactly once and in order, and
// neither client ever ends. The longest wait between two of Alice's acks
// (the failover gap a sender sees) is reported.
func TestClusterNodeDrainsOnSIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: builds the server and runs three of it")
	}
	bin := buildParley(t)
	ps := startCluster(t, bin)
	akp, reg := register(t, ps[0], alicePhone)
	bkp, _ := register(t, ps[0], bobPhone)
	var addrs []string
	for _, p := range ps {
		addrs = append(addrs, p.native)
	}
	ctx, cancel := context.WithTimeout(context.Background(), flowGuard)
	defer cancel()
	alice, err := client.Dial(ctx, client.Config{
		Addr: addrs[0], Addrs: addrs[1:], ServerKey: reg.ServerKey, Phone: alicePhone, Key: akp,
		Reconnect: true, MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second, DialTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	on := nodeOf(t, ps, alicePhone)
	bob, err := client.Dial(ctx, client.Config{Addr: ps[(on+1)%3].native, ServerKey: reg.ServerKey, Phone: bobPhone, Key: bkp})
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Close()

	received, sent, _, maxGap := flow(ctx, alice, bob)
	var got []string
	stopped := false
	for len(got) < messages {
		select {
		case b := <-received:
			got = append(got, b)
		case err := <-sent:
			if err != nil {
				t.Fatalf("alice: %v", err)
			}
			sent = nil
		case <-ctx.Done():
			t.Fatalf("bob has %d of %d messages after %s (stopped %s: %v)", len(got), messages, flowGuard, ps[on].name, stopped)
		}
		if len(got) == killAfter && !stopped {
			start := time.Now()
			ps[on].stop(t) // SIGTERM, and wait for it to end
			stopped = true
			t.Logf("%s, Alice's node, stopped in %s", ps[on].name, time.Since(start).Round(time.Millisecond))
		}
	}
	// Reported, not asserted: what a sender on a stopped node waits.
	t.Logf("longest wait between two of Alice's acks: %s", time.Duration(maxGap.Load()).Round(time.Millisecond))
	checkUnbroken(t, got, alice, bob)
}

// checkUnbroken fails t if a client ended (lost its connection without
// reconnecting, or gave up) or if Bob's messages are not m0000... exactly
// once and in order.
func checkUnbroken(t *testing.T, got []string, clients ...*client.Client) {
	t.Helper()
	for _, c := range clients {
		select {
		case <-c.Done():
			t.Fatalf("a client ended: %v", c.Err())
		default:
		}
	}
	for i, b := range got {
		if want := fmt.Sprintf("m%04d", i); b != want {
			t.Fatalf("bob's message %d is %q, want %q (exactly once, in order); all: %v", i, b, want, got)
		}
	}
}

// nodeOf is the index of the node where phone has a session.
func nodeOf(t *testing.T, ps []*proc, phone string) int {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		for i, p := range ps {
			var r struct {
				Sessions []struct{ User string }
			}
			resp, err := http.Get(p.admin + "/admin/sessions?limit=100")
			if err != nil {
				continue
			}
			err = json.NewDecoder(resp.Body).Decode(&r)
			resp.Body.Close()
			for _, s := range r.Sessions {
				if err == nil && s.User == phone {
					return i
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no node has a session of %s", phone)
	return -1
}
