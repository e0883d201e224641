package cluster_test

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/parleyhq/parley/client"
	"github.com/parleyhq/parley/wire"
)

// partitionGuard bounds the partition test from the first registration to
// the last check.
const partitionGuard = 90 * time.Second

const (
	carolPhone = "+14155550103"
	davePhone  = "+14155550104"
)

// netns is three network namespaces, one per node, each joined by a veth
// pair to a bridge in the root namespace, where the test and its clients
// stay: every node reaches the others and the clients over the bridge.
// Names are unique per run; everything is removed in t.Cleanup.
type netns struct {
	ip     string   // the ip command
	names  []string // the namespaces, by node
	hosts  []string // each namespace's address on the bridge
	mu     sync.Mutex
	routes [][2]string // blackhole routes in force: namespace, address
}

// newNetns makes the namespaces, or skips t when it cannot: not root, or
// no `ip netns`.
func newNetns(t *testing.T) *netns {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("partition test skipped: it makes network namespaces (ip netns), which needs root")
	}
	ip, err := exec.LookPath("ip")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/ip"); serr != nil {
			t.Skipf("partition test skipped: no ip command (iproute2): %v", err)
		}
		ip = "/usr/sbin/ip"
	}
	var r [3]byte
	if _, err := rand.Read(r[:]); err != nil {
		t.Fatal(err)
	}
	id := "pq" + hex.EncodeToString(r[:]) // 8 characters: link names stay under 16
	n := &netns{ip: ip}
	// A /24 of 10/8 that no route of this machine covers yet.
	routes, err := exec.Command(ip, "-4", "route", "show", "table", "all").Output()
	if err != nil {
		t.Skipf("partition test skipped: ip route: %v", err)
	}
	subnet := ""
	for k := 0; k < 50; k++ {
		s := fmt.Sprintf("10.%d.%d.", 200+(int(r[0])+k)%50, r[1])
		if !strings.Contains(string(routes), s) && !strings.Contains(string(routes), "10.0.0.0/8") {
			subnet = s
			break
		}
	}
	if subnet == "" {
		t.Skip("partition test skipped: no free 10.x.y.0/24 for the namespaces")
	}
	bridge := id + "br"
	// Removed in reverse: namespaces (which takes their veth ends along),
	// the root's veth ends, the bridge. Each is registered once made.
	var made []func() error
	t.Cleanup(func() {
		for k := len(made) - 1; k >= 0; k-- {
			if err := made[k](); err != nil {
				t.Errorf("partition test cleanup: %v", err)
			}
		}
		out, _ := exec.Command(ip, "-o", "link", "show").Output()
		nss, _ := exec.Command(ip, "netns", "list").Output()
		if strings.Contains(string(out), id) || strings.Contains(string(nss), id) {
			t.Errorf("partition test cleanup left links or namespaces named %s*:\n%s\n%s", id, out, nss)
		}
	})
	run := func(args ...string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, ip, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	must := func(args ...string) {
		t.Helper()
		if err := run(args...); err != nil {
			t.Fatal(err)
		}
	}
	if err := run("link", "add", bridge, "type", "bridge"); err != nil {
		t.Skipf("partition test skipped: cannot make a bridge: %v", err)
	}
	made = append(made, func() error { return run("link", "del", bridge) })
	must("addr", "add", subnet+"254/24", "dev", bridge)
	must("link", "set", bridge, "up")
	for i := range 3 {
		ns := fmt.Sprintf("%s-n%d", id, i+1)
		if err := run("netns", "add", ns); err != nil {
			t.Skipf("partition test skipped: ip netns add: %v", err)
		}
		made = append(made, func() error { return run("netns", "del", ns) })
		host, peer := fmt.Sprintf("%sh%d", id, i+1), fmt.Sprintf("%sn%d", id, i+1)
		must("link", "add", host, "type", "veth", "peer", "name", peer, "netns", ns)
		made = append(made, func() error {
			if run("link", "show", host) != nil {
				return nil // gone with its namespace
			}
			return run("link", "del", host)
		})
		must("link", "set", host, "master", bridge, "up")
		addr := fmt.Sprintf("%s%d", subnet, i+1)
		must("-n", ns, "addr", "add", addr+"/24", "dev", peer)
		must("-n", ns, "link", "set", peer, "up")
		must("-n", ns, "link", "set", "lo", "up") // the embedded NATS client port is on loopback
		n.names = append(n.names, ns)
		n.hosts = append(n.hosts, addr)
	}
	t.Cleanup(func() { n.heal(t) }) // runs before the nodes stop
	return n
}

// exec is argv run in node i's namespace (ip netns exec execs it in the
// same process).
func (n *netns) exec(i int, argv []string) []string {
	return append([]string{n.ip, "netns", "exec", n.names[i]}, argv...)
}

// cut drops every packet between node i and the other nodes, both ways;
// node i still reaches the root namespace (its clients), and so do they.
func (n *netns) cut(t *testing.T, i int) {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	for j := range n.names {
		if j == i {
			continue
		}
		for _, r := range [][2]string{{n.names[i], n.hosts[j]}, {n.names[j], n.hosts[i]}} {
			out, err := exec.Command(n.ip, "-n", r[0], "route", "add", "blackhole", r[1]+"/32").CombinedOutput()
			if err != nil {
				t.Fatalf("cut: ip -n %s route add blackhole %s: %v: %s", r[0], r[1], err, out)
			}
			n.routes = append(n.routes, r)
		}
	}
}

// heal removes the routes cut added.
func (n *netns) heal(t *testing.T) {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, r := range n.routes {
		if out, err := exec.Command(n.ip, "-n", r[0], "route", "del", "blackhole", r[1]+"/32").CombinedOutput(); err != nil {
			t.Errorf("heal: ip -n %s route del blackhole %s: %v: %s", r[0], r[1], err, out)
		}
	}
	n.routes = nil
}

// sent is one message a sender had acked: when it was first tried and
// when its ack came.
type sent struct {
	first, acked time.Time
}

// refusal is one refused try.
type refusal struct {
	at   time.Time
	code wire.Error_Code
	text string
}

// sender sends prefix0000, prefix0001... to Bob, one at a time, each
// until it is acked: a retryable refusal is retried with the same id
// after a short wait; anything else (a refusal that is not retryable, a
// try that gets no answer in tryGuard) ends it with an error.
type sender struct {
	name, prefix string
	c            *client.Client
	mu           sync.Mutex
	acks         []sent
	refused      []refusal
	slowest      time.Duration // the longest wait for an answer, ack or refusal
	stop         chan struct{}
	done         chan error
}

const tryGuard = 30 * time.Second

func startSender(ctx context.Context, name, prefix string, c *client.Client) *sender {
	s := &sender{name: name, prefix: prefix, c: c, stop: make(chan struct{}), done: make(chan error, 1)}
	go func() { s.done <- s.run(ctx) }()
	return s
}

func (s *sender) run(ctx context.Context) error {
	for i := 0; ; i++ {
		select {
		case <-s.stop:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond): // a pace a person might keep up
		}
		id, body := s.c.NewID(), fmt.Sprintf("%s%04d", s.prefix, i)
		first := time.Now()
		for {
			tctx, cancel := context.WithTimeout(ctx, tryGuard)
			start := time.Now()
			_, err := s.c.SendWithID(tctx, id, bobPhone, []byte(body))
			timedOut := tctx.Err() != nil
			cancel()
			s.mu.Lock()
			s.slowest = max(s.slowest, time.Since(start))
			if err == nil {
				s.acks = append(s.acks, sent{first: first, acked: time.Now()})
				s.mu.Unlock()
				break
			}
			var se *client.ServerError
			if errors.As(err, &se) {
				s.refused = append(s.refused, refusal{at: time.Now(), code: se.Code, text: se.Text})
			}
			s.mu.Unlock()
			switch {
			case ctx.Err() != nil:
				return fmt.Errorf("%s: %s not acked: %w", s.name, body, ctx.Err())
			case timedOut:
				return fmt.Errorf("%s: %s: no answer in %s: %v", s.name, body, tryGuard, err)
			case !client.Retryable(err):
				return fmt.Errorf("%s: %s: %w (not retryable)", s.name, body, err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
}

// since counts s's acks and refusals that came after since.
func (s *sender) since(since time.Time) (acks, refusals int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range s.acks {
		if a.acked.After(since) {
			acks++
		}
	}
	for _, r := range s.refused {
		if r.at.After(since) {
			refusals++
		}
	}
	return acks, refusals
}

// await polls cond every 100 ms until it holds, failing t at ctx's end or
// when a sender ends early.
func await(ctx context.Context, t *testing.T, what string, cond func() bool, senders ...*sender) {
	t.Helper()
	for !cond() {
		for _, s := range senders {
			select {
			case err := <-s.done:
				t.Fatalf("waiting for %s: sender %s ended: %v", what, s.name, err)
			default:
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// A network partition: the three nodes run in their own network
// namespaces, and node 3 is cut off from the other two (not from its
// clients) while Alice, on node 3, and Carol, on node 1, both send to Bob
// on node 2. While cut, the majority keeps acking Carol; node 3 refuses
// Alice's sends with UNAVAILABLE (retryable) and acks none that it could
// not replicate, and its /admin/cluster says it has no quorum. After the
// heal Alice's resends (same ids) are acked, and Bob gets everything
// either of them had acked, exactly once and in order, and his acks erase
// his queue. A failing run prints the nodes'
// logs, and Bob's session when he stalls.
func TestClusterPartitionMinorityRefusesAndHeals(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: builds the server and runs three of it")
	}
	nn := newNetns(t) // skips unless root with ip netns
	bin := buildParley(t)
	began := time.Now()
	var routes []string
	for _, h := range nn.hosts {
		routes = append(routes, net.JoinHostPort(h, "6222"))
	}
	token := rand.Text()
	// For a look inside: PARLEY_PARTITION_LOG_LEVEL sets the nodes'
	// --log-level (warn); PARLEY_PARTITION_KEEP names a directory where
	// the run leaves each node's whole log, sessions, cluster status and
	// goroutines, and Bob's queue (in end/, and in stall/ if Bob stalls).
	// The nodes' NATS client ports are on their bridge addresses, so that
	// the test reads Bob's queue itself.
	var natsAddrs []string
	for _, h := range nn.hosts {
		natsAddrs = append(natsAddrs, net.JoinHostPort(h, "4222"))
	}
	ps := startClusterOn(t, bin, clusterPlaces{hosts: nn.hosts, routes: routes, wrap: nn.exec, adminToken: token,
		logLevel: os.Getenv("PARLEY_PARTITION_LOG_LEVEL"), natsListen: natsAddrs})
	t.Logf("three nodes serving in namespaces %s in %s", strings.Join(nn.names, ", "), time.Since(began).Round(time.Millisecond))
	t.Cleanup(func() {
		if dir := os.Getenv("PARLEY_PARTITION_KEEP"); dir != "" {
			dir = filepath.Join(dir, "end")
			keepEvidence(t, dir, ps)
			_ = os.WriteFile(filepath.Join(dir, "queue.txt"), []byte(dumpQueue("nats://"+natsAddrs[1], bobPhone)), 0o644)
		}
		if t.Failed() {
			for _, p := range ps {
				t.Logf("%s's log:\n%s", p.name, tail(p.log))
			}
		}
	})

	began = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), partitionGuard)
	defer cancel()
	akp, reg := register(t, ps[0], alicePhone)
	bkp, _ := register(t, ps[0], bobPhone)
	ckp, _ := register(t, ps[0], carolPhone)
	dkp, _ := register(t, ps[0], davePhone)
	alice := dialClient(t, ps[2].native, alicePhone, akp, reg.ServerKey) // the minority's
	carol := dialClient(t, ps[0].native, carolPhone, ckp, reg.ServerKey)
	bob := dialClient(t, ps[1].native, bobPhone, bkp, reg.ServerKey)
	received := receiveAll(t, bob)
	for _, c := range []*client.Client{alice, carol} {
		go func() { // their receipts, read so their queues stay short
			for {
				in, err := c.Recv(ctx)
				if err != nil {
					return
				}
				_ = c.Ack(in.Seq)
			}
		}()
	}
	a := startSender(ctx, "alice (node 3)", "a", alice)
	c := startSender(ctx, "carol (node 1)", "c", carol)
	await(ctx, t, "the first acks", func() bool {
		na, _ := a.since(began)
		nc, _ := c.since(began)
		return na >= 3 && nc >= 3
	}, a, c)

	nn.cut(t, 2)
	cut := time.Now()
	t.Logf("node 3 cut off from nodes 1 and 2 after %s", cut.Sub(began).Round(time.Millisecond))
	login := make(chan error, 1)
	go func() {
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		d, err := client.Dial(lctx, client.Config{Addr: ps[2].native, ServerKey: reg.ServerKey, Phone: davePhone, Key: dkp, DialTimeout: 5 * time.Second})
		if err == nil {
			d.Close()
		}
		login <- err
	}()
	var firstRefusal, noQuorum time.Duration
	await(ctx, t, "the minority's refusals and the majority's acks", func() bool {
		_, ar := a.since(cut)
		cn, _ := c.since(cut)
		if ar > 0 && firstRefusal == 0 {
			firstRefusal = time.Since(cut)
		}
		return ar >= 2 && cn >= 5
	}, a, c)
	st := waitStatus(t, ps[2], func(st clusterStatus) bool { return !st.Quorum })
	noQuorum = time.Since(cut)
	if !hasProblem(st, "no quorum") {
		t.Errorf("node 3's /admin/cluster while cut off names no such problem: %+v", st)
	}
	st = waitStatus(t, ps[0], func(st clusterStatus) bool { return st.Quorum })
	t.Logf("node 1's /admin/cluster while node 3 is cut off: quorum, problems %q", st.Problems)
	acksCut, _ := c.since(cut)
	// Reported, not asserted: what a device logging in at the minority
	// meanwhile gets.
	if err := <-login; err != nil {
		t.Logf("Dave logging in at node 3 while it is cut off: %v", err)
	} else {
		t.Logf("Dave logging in at node 3 while it is cut off: logged in")
	}

	nn.heal(t)
	healed := time.Now()
	t.Logf("healed after %s of partition: Alice refused after %s, node 3 said no quorum after %s; Carol had %d acks meanwhile",
		healed.Sub(cut).Round(time.Millisecond), firstRefusal.Round(time.Millisecond), noQuorum.Round(time.Millisecond), acksCut)
	var aliceBack time.Duration
	await(ctx, t, "acks on both sides after the heal", func() bool {
		an, _ := a.since(healed)
		cn, _ := c.since(healed)
		if an > 0 && aliceBack == 0 {
			aliceBack = time.Since(healed)
		}
		return an >= 3 && cn >= 3
	}, a, c)
	t.Logf("Alice acked again %s after the heal", aliceBack.Round(time.Millisecond))
	for _, s := range []*sender{a, c} {
		close(s.stop)
		select {
		case err := <-s.done:
			if err != nil {
				t.Fatal(err)
			}
		case <-ctx.Done():
			t.Fatalf("%s did not finish: %v", s.name, ctx.Err())
		}
	}
	// The last message: Bob's queue is in order, so once it is in, every
	// message stored before it (a copy of one too) has come out.
	sendUntilAcked(ctx, t, carol, carol.NewID(), "end")

	var got []string
	for len(got) == 0 || got[len(got)-1] != "end" {
		select {
		case b := <-received:
			got = append(got, b)
		case <-ctx.Done():
			queue := dumpQueue("nats://"+natsAddrs[1], bobPhone)
			if dir := os.Getenv("PARLEY_PARTITION_KEEP"); dir != "" {
				dir = filepath.Join(dir, "stall")
				keepEvidence(t, dir, ps)
				_ = os.WriteFile(filepath.Join(dir, "bob.txt"), []byte(fmt.Sprintf("got %d: %q\n\nqueue:\n%s", len(got), got, queue)), 0o644)
			}
			st, err := readStatus(ps[1])
			t.Fatalf("Bob has %d messages, not the last, after %s (his client's end: %v; the last he has: %q; acked: %d of Alice's, %d of Carol's); node 2's /admin/cluster: %+v %v; sessions: %s; his queue:\n%s",
				len(got), partitionGuard, bob.Err(), got[max(0, len(got)-6):], len(a.acks), len(c.acks), st, err, adminGet(ps[1], "/admin/sessions?limit=10"), queue)
		}
	}
	t.Logf("all delivered %s after the heal; %s in all", time.Since(healed).Round(time.Millisecond), time.Since(began).Round(time.Millisecond))

	// The minority acked nothing it could not replicate: no message first
	// tried after the cut was acked before the heal.
	var codes = map[wire.Error_Code]int{}
	texts := map[string]bool{}
	for _, r := range a.refused {
		if r.at.After(cut) && r.at.Before(healed) {
			codes[r.code]++
			texts[r.text] = true
			if r.code != wire.Error_UNAVAILABLE {
				t.Errorf("Alice refused with %s (%q) while cut off, want UNAVAILABLE", r.code, r.text)
			}
		}
	}
	for i, s := range a.acks {
		if s.first.After(cut) && s.acked.Before(healed) {
			t.Errorf("node 3 acked Alice's a%04d while cut off from the others (first tried %s after the cut)", i, s.first.Sub(cut))
		}
	}
	t.Logf("Alice while cut off: refusals %v %q", codes, keys(texts))
	for _, s := range []*sender{a, c} {
		var during, after int
		for _, r := range s.refused {
			if r.at.After(healed) {
				after++
			} else if r.at.After(cut) {
				during++
			}
		}
		t.Logf("%s: %d acked, %d refusals while cut off, %d after the heal; slowest answer %s", s.name, len(s.acks), during, after, s.slowest.Round(time.Millisecond))
	}
	// Everything acked on either side, exactly once, in order.
	for _, s := range []*sender{a, c} {
		var mine []string
		for _, b := range got {
			if strings.HasPrefix(b, s.prefix) && b != "end" {
				mine = append(mine, b)
			}
		}
		if len(mine) != len(s.acks) {
			t.Errorf("Bob has %d of %s's messages, %d acked: %v", len(mine), s.name, len(s.acks), mine)
		}
		for i, b := range mine {
			if want := fmt.Sprintf("%s%04d", s.prefix, i); b != want {
				t.Fatalf("Bob's %d-th message from %s is %q, want %q (exactly once, in order); all: %v", i, s.name, b, want, mine)
			}
		}
	}
	checkUnbroken(t, nil, alice, bob, carol)
	// Bob acked everything: his node erases it, though the messages were
	// appended on the others. (Acks on a node that never appended to
	// the queue used to erase nothing, and every read walked the whole
	// queue, one request per message: see README.)
	var left int
	var dump string
	for deadline := time.Now().Add(15 * time.Second); ; {
		left, dump = queueItems("nats://"+natsAddrs[1], bobPhone)
		if left == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if left != 0 {
		t.Errorf("Bob's queue holds %d items after he acked everything, want 0:\n%s", left, dump)
	}
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// adminGet is the body of p's admin answer to path, or why there is none.
func adminGet(p *proc, path string) string {
	req, _ := http.NewRequest(http.MethodGet, p.admin+path, nil)
	if p.token != "" {
		req.Header.Set("Authorization", "Bearer "+p.token)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// keepEvidence writes, for each node still running, its log, its admin
// answers (sessions, cluster) and its goroutines into dir.
func keepEvidence(t *testing.T, dir string, ps []*proc) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Logf("keep evidence: %v", err)
		return
	}
	for _, p := range ps {
		for name, path := range map[string]string{
			"sessions.json":  "/admin/sessions?limit=100",
			"cluster.json":   "/admin/cluster",
			"goroutines.txt": "/debug/pprof/goroutine?debug=2",
		} {
			_ = os.WriteFile(filepath.Join(dir, p.name+"."+name), []byte(adminGet(p, path)), 0o644)
		}
		if b, err := os.ReadFile(p.log); err == nil {
			_ = os.WriteFile(filepath.Join(dir, p.name+".log"), b, 0o644)
		}
	}
	t.Logf("evidence kept in %s", dir)
}

// dumpQueue lists what user's queue holds, read through the NATS server
// at url: every message of its subject, with its record's kind, seq and
// item.
func dumpQueue(url, user string) string {
	_, dump := queueItems(url, user)
	return dump
}

// queueItems counts the items (not markers) of user's queue, read through
// the NATS server at url from its stream's leader, one MSG.GET a message,
// and lists them; -1 if it could not read them all. It knows the store's
// layout: queue streams PARLEY_Q_<p> (startClusterOn's four), subjects
// parley.q.<p>.<user>, p = fnv32a(user) mod 4, records of a kind byte (0
// an item, 1 an empty-marker), the seq and a timestamp, then the item.
func queueItems(url, user string) (int, string) {
	nc, err := nats.Connect(url, nats.Timeout(5*time.Second))
	if err != nil {
		return -1, err.Error()
	}
	defer nc.Close()
	h := fnv.New32a()
	h.Write([]byte(user))
	p := h.Sum32() % 4
	stream, subj := fmt.Sprintf("PARLEY_Q_%d", p), fmt.Sprintf("parley.q.%d.%s", p, user)
	var b strings.Builder
	n := 0
	for cur := uint64(1); ; {
		req, _ := json.Marshal(map[string]any{"seq": cur, "next_by_subj": subj})
		resp, err := nc.Request("$JS.API.STREAM.MSG.GET."+stream, req, 5*time.Second)
		if err != nil {
			fmt.Fprintf(&b, "%s from %d: %v\n", stream, cur, err)
			return -1, b.String()
		}
		var r struct {
			Message *struct {
				Seq  uint64 `json:"seq"`
				Data []byte `json:"data"`
			} `json:"message"`
			Error *struct {
				Code        int    `json:"code"`
				Description string `json:"description"`
			} `json:"error"`
		}
		if err := json.Unmarshal(resp.Data, &r); err != nil {
			fmt.Fprintf(&b, "%s from %d: %v\n", stream, cur, err)
			return -1, b.String()
		}
		if r.Error != nil {
			if r.Error.Code == 404 { // no more
				return n, b.String()
			}
			fmt.Fprintf(&b, "%s from %d: %d %s\n", stream, cur, r.Error.Code, r.Error.Description)
			return -1, b.String()
		}
		if r.Message == nil {
			fmt.Fprintf(&b, "%s from %d: no message in %s\n", stream, cur, resp.Data)
			return -1, b.String()
		}
		cur = r.Message.Seq + 1
		d := r.Message.Data
		if len(d) < 17 {
			fmt.Fprintf(&b, "  stream seq %d: short record %x\n", r.Message.Seq, d)
			continue
		}
		kind, seq := d[0], binary.BigEndian.Uint64(d[1:])
		fmt.Fprintf(&b, "  stream seq %d: kind %d seq %d", r.Message.Seq, kind, seq)
		if kind == 0 {
			n++
			if it, err := wire.DecodeItem(d[17:]); err == nil && it.GetMessage() != nil {
				m := it.GetMessage()
				fmt.Fprintf(&b, " from %s id %d server id %d: %q", m.From, m.Id, m.ServerId, m.Body)
			}
		}
		b.WriteString("\n")
	}
}
