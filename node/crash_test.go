package node_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
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

	"google.golang.org/protobuf/proto"

	"github.com/parleyhq/parley/noise"
	"github.com/parleyhq/parley/wire"
)

// Bounds of the crash test. Every duration is a failure guard or a cap on
// the work, never an assertion.
const (
	crashSenders   = 4
	crashPerSender = 1200 // 4,800 messages in all
	crashInFlight  = 32   // Sends a sender keeps unacknowledged
	// crashSendFor caps the time spent sending new messages; after it
	// senders only finish (resend) what they already sent.
	crashSendFor = 25 * time.Second
	// crashGuard bounds each wait for the server or the clients.
	crashGuard = 45 * time.Second
	// The load the test must have exercised, or it fails: kills, and
	// messages sent (each acked by the end).
	crashKills       = 2
	crashMinMessages = 1000
)

// buildParley builds cmd/parley into a temporary directory.
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
	// Build the way this test binary was built (-race or not): the other
	// way would compile every dependency a second time, which on a small
	// machine under load can take minutes.
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

// serverProc is a `parley serve` subprocess.
type serverProc struct {
	cmd     *exec.Cmd
	native  string
	httpURL string
	key     []byte
	logPath string
	exited  chan struct{}
}

var servingLine = regexp.MustCompile(`^parley serving: native (\S+), http (\S+), admin (\S+)$`)

// startServer runs `parley serve` on dataDir with fresh ports and waits
// until it says where it listens.
func startServer(t *testing.T, bin, dataDir, codes, logPath string) *serverProc {
	t.Helper()
	cmd := exec.Command(bin, "serve",
		"--data", dataDir,
		"--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--admin", "127.0.0.1:0",
		"--sms", "file:"+codes)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PARLEY_") { // the test sets every flag it cares about
			cmd.Env = append(cmd.Env, kv)
		}
	}
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stderr = logf
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	p := &serverProc{cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			cmd.Process.Kill()
			<-p.exited
		}
	})

	type hello struct {
		native, httpURL string
		key             []byte
		err             error
	}
	hc := make(chan hello, 1)
	go func() {
		defer pr.Close()
		var h hello
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			if m := servingLine.FindStringSubmatch(line); m != nil {
				h.native, h.httpURL = m[1], m[2]
			} else if k, ok := strings.CutPrefix(line, "server key: "); ok {
				h.key, h.err = hex.DecodeString(k)
			}
			if h.err != nil || (h.native != "" && h.key != nil) {
				hc <- h
				drain(sc)
				return
			}
		}
		h.err = fmt.Errorf("server stdout ended before it said where it listens (%v)", sc.Err())
		hc <- h
	}()
	select {
	case h := <-hc:
		if h.err != nil {
			t.Fatalf("parley serve: %v\n%s", h.err, logTail(logPath))
		}
		p.native, p.httpURL, p.key = h.native, h.httpURL, h.key
	case <-time.After(crashGuard):
		t.Fatalf("parley serve did not start within %v\n%s", crashGuard, logTail(logPath))
	}
	return p
}

// drain reads the rest of the server's stdout so it never blocks on it.
func drain(sc *bufio.Scanner) {
	for sc.Scan() {
	}
}

// kill SIGKILLs the server and waits for it to be gone.
func (p *serverProc) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL the server: %v", err)
	}
	select {
	case <-p.exited:
	case <-time.After(crashGuard):
		t.Fatal("the server survived SIGKILL")
	}
}

// stop shuts the server down gracefully and checks that it exits cleanly.
func (p *serverProc) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatalf("interrupt the server: %v", err)
	}
	select {
	case <-p.exited:
		if !p.cmd.ProcessState.Success() {
			t.Errorf("the server exited with %v after SIGINT\n%s", p.cmd.ProcessState, logTail(p.logPath))
		}
	case <-time.After(crashGuard):
		t.Errorf("the server did not exit within %v of SIGINT", crashGuard)
	}
}

// logTail is the end of the server's log, for failure messages.
func logTail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return "server log (last lines):\n" + strings.Join(lines, "\n")
}

// fileCodes finds codes in the file gateway's output.
func fileCodes(path string) func(string) (string, error) {
	return func(phone string) (string, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", err
		}
		code := ""
		for _, line := range bytes.Split(b, []byte("\n")) {
			var l struct{ Phone, Code string }
			if json.Unmarshal(line, &l) == nil && l.Phone == phone {
				code = l.Code
			}
		}
		if code == "" {
			return "", fmt.Errorf("no code for %s in %s", phone, path)
		}
		return code, nil
	}
}

// connSet tracks the connections of one round so they can all be closed.
type connSet struct {
	mu sync.Mutex
	cs []*rawConn
}

func (s *connSet) add(c *rawConn) {
	s.mu.Lock()
	s.cs = append(s.cs, c)
	s.mu.Unlock()
}

func (s *connSet) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.cs {
		c.Close()
	}
}

func crashBody(from string, id uint64) []byte {
	return []byte(fmt.Sprintf("%s says %d", from, id))
}

// crashSender sends ids 1..limit to the receiver, pipelined, resending
// after a crash whatever was not acknowledged, with the same ids.
type crashSender struct {
	phone string
	kp    noise.Keypair
	fails *failures

	mu        sync.Mutex
	limit     uint64            // ids 1..limit are to be sent and acknowledged
	attempted uint64            // highest id written at least once
	acked     map[uint64]uint64 // id -> server id from its SendAck
	writes    int               // Send frames written, resends included
	done      chan struct{}     // closed once ids 1..limit are all acked
	doneOnce  sync.Once

	receiver   string
	receipts   map[uint64]*wire.Receipt // delivered receipts by queue seq
	receiptSID map[uint64]uint64        // message id -> server id its receipt gave
	receiptSeq map[uint64]uint64        // message id -> seq of its receipt
}

// checkDone closes done once everything up to limit is acked; s.mu held.
func (s *crashSender) checkDone() {
	if uint64(len(s.acked)) == s.limit {
		s.doneOnce.Do(func() { close(s.done) })
	}
}

func (s *crashSender) isDone() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// runRound connects to the server and sends until every id is acked or
// the connection ends (the server was killed, or the round is over).
func (s *crashSender) runRound(addr string, key []byte, to string, conns *connSet, sendUntil time.Time, totalAcked *atomic.Int64) error {
	if s.isDone() {
		return nil
	}
	c, err := dialLogin(addr, key, s.phone, s.kp)
	if err != nil {
		return err
	}
	conns.add(c)
	defer c.Close()

	s.mu.Lock()
	var resend []uint64
	for id := uint64(1); id <= s.attempted; id++ {
		if _, ok := s.acked[id]; !ok {
			resend = append(resend, id)
		}
	}
	s.mu.Unlock()

	sem := make(chan struct{}, crashInFlight)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // writer
		defer wg.Done()
		write := func(id uint64, again bool) bool {
			select {
			case sem <- struct{}{}:
			case <-stop:
				return false
			}
			s.mu.Lock()
			s.writes++
			s.mu.Unlock()
			if again {
				return c.resend(id, to, crashBody(s.phone, id)) == nil
			}
			return c.send(id, to, crashBody(s.phone, id)) == nil
		}
		for _, id := range resend {
			if !write(id, true) {
				return
			}
		}
		for {
			s.mu.Lock()
			id := s.attempted + 1
			if id <= s.limit && time.Now().After(sendUntil) {
				s.limit = s.attempted // send nothing new; finish what was sent
				s.checkDone()
			}
			if id > s.limit {
				s.mu.Unlock()
				return
			}
			s.attempted = id
			s.mu.Unlock()
			if !write(id, false) {
				return
			}
		}
	}()
	defer func() {
		close(stop)
		wg.Wait()
	}()

	for {
		f, err := c.readFrame(crashGuard)
		if err != nil {
			return err
		}
		switch k := f.Kind.(type) {
		case *wire.Frame_SendAck:
			a := k.SendAck
			s.mu.Lock()
			switch prev, seen := s.acked[a.Id]; {
			case a.Id == 0 || a.Id > s.attempted:
				s.fails.errorf("%s: SendAck for id %d, which was never sent", s.phone, a.Id)
			case seen && prev != a.ServerId:
				s.fails.errorf("%s: id %d acked twice, as server ids %d and %d", s.phone, a.Id, prev, a.ServerId)
			case !seen:
				s.acked[a.Id] = a.ServerId
				totalAcked.Add(1)
				s.checkDone()
			}
			s.mu.Unlock()
			select {
			case <-sem:
			default:
			}
		case *wire.Frame_Error:
			s.fails.errorf("%s: error %v", s.phone, k.Error)
			select {
			case <-sem:
			default:
			}
		case *wire.Frame_Deliver:
			s.receipt(k.Deliver.Seq, k.Deliver.Item)
			c.ack(k.Deliver.Seq)
		case *wire.Frame_Close:
			s.fails.errorf("%s: unexpected Close %v", s.phone, k.Close)
			return errors.New("closed by the server")
		}
	}
}

// receipt checks and records a delivered item: a delivered receipt from
// the receiver, new or the redelivery of one already seen at its seq (its
// ack lost in a crash), never a second receipt for a message.
func (s *crashSender) receipt(seq uint64, it *wire.Item) {
	r := it.GetReceipt()
	if r == nil || r.Kind != wire.Receipt_DELIVERED || r.By != s.receiver || len(r.Ids) != len(r.ServerIds) {
		s.fails.errorf("%s: got %v at seq %d, want a delivered receipt from %s", s.phone, it, seq, s.receiver)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if prev, seen := s.receipts[seq]; seen {
		if !proto.Equal(prev, r) {
			s.fails.errorf("%s: seq %d delivered as %v, then as %v", s.phone, seq, prev, r)
		}
		return
	}
	s.receipts[seq] = r
	for i, id := range r.Ids {
		if prev, seen := s.receiptSeq[id]; seen {
			s.fails.errorf("%s: a second delivered receipt for message %d: seqs %d and %d", s.phone, id, prev, seq)
			continue
		}
		s.receiptSeq[id] = seq
		s.receiptSID[id] = r.ServerIds[i]
	}
}

func (s *crashSender) receipted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.receiptSID)
}

// failures reports per-message problems, at most maxReported of them, so
// that a systematic bug does not bury the summary under thousands of lines.
type failures struct {
	t *testing.T
	n atomic.Int64
}

const maxReported = 25

func (f *failures) errorf(format string, args ...any) {
	f.t.Helper()
	switch n := f.n.Add(1); {
	case n <= maxReported:
		f.t.Errorf(format, args...)
	case n == maxReported+1:
		f.t.Errorf("more failures not shown")
	}
}

type msgKey struct {
	from string
	id   uint64
}

// crashReceiver drains its queue, acking as it goes, and checks each
// arrival against what the senders sent.
type crashReceiver struct {
	phone   string
	kp      noise.Keypair
	senders map[string]bool
	fails   *failures

	mu         sync.Mutex
	got        map[msgKey]uint64 // first arrival's server id
	seqOf      map[msgKey]uint64 // first arrival's queue seq
	last       map[string]uint64 // id of each sender's latest first arrival
	deliveries int               // every Deliver of a message, redeliveries included
}

func (r *crashReceiver) record(seq uint64, m *wire.Message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.deliveries++
	if !r.senders[m.From] {
		r.fails.errorf("message %d from %q, who sent nothing", m.Id, m.From)
		return
	}
	if want := crashBody(m.From, m.Id); !bytes.Equal(m.Body, want) {
		r.fails.errorf("message %d from %s has body %q, want %q", m.Id, m.From, m.Body, want)
	}
	k := msgKey{m.From, m.Id}
	if sid, seen := r.got[k]; seen {
		// A redelivery from the same seq (an ack lost in the crash) is
		// fine; a second copy, in the queue at another seq, is not.
		switch {
		case sid != m.ServerId:
			r.fails.errorf("message %d from %s stored twice: server ids %d and %d", m.Id, m.From, sid, m.ServerId)
		case r.seqOf[k] != seq:
			r.fails.errorf("message %d from %s (server id %d) delivered twice: seqs %d and %d", m.Id, m.From, sid, r.seqOf[k], seq)
		}
		return
	}
	if m.Id <= r.last[m.From] {
		r.fails.errorf("message %d from %s arrived after its message %d", m.Id, m.From, r.last[m.From])
	}
	r.last[m.From] = m.Id
	r.got[k] = m.ServerId
	r.seqOf[k] = seq
}

func (r *crashReceiver) distinct() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

func (r *crashReceiver) runRound(addr string, key []byte, conns *connSet) error {
	c, err := dialLogin(addr, key, r.phone, r.kp)
	if err != nil {
		return err
	}
	conns.add(c)
	defer c.Close()
	var lastSeq uint64
	for {
		f, err := c.readFrame(2 * crashGuard)
		if err != nil {
			return err
		}
		switch k := f.Kind.(type) {
		case *wire.Frame_Deliver:
			// One connection delivers each item once, in queue order.
			if seq := k.Deliver.Seq; seq <= lastSeq {
				r.fails.errorf("receiver: seq %d delivered after seq %d on one connection", seq, lastSeq)
			}
			lastSeq = k.Deliver.Seq
			if m := k.Deliver.Item.GetMessage(); m != nil {
				r.record(k.Deliver.Seq, m)
			} else {
				r.fails.errorf("receiver got a non-message item %v", k.Deliver.Item)
			}
			if err := c.ack(k.Deliver.Seq); err != nil {
				return err
			}
		case *wire.Frame_Close:
			r.fails.errorf("receiver: unexpected Close %v", k.Close)
			return errors.New("closed by the server")
		}
	}
}

// TestCrashRecovery runs the real binary, SIGKILLs it while senders
// pipeline messages and the receiver drains them, restarts it on the same
// data, lets the senders resend what was not acknowledged (same ids), and
// checks that every acknowledged message arrives exactly once, in each
// sender's order, and that nothing arrives that was never sent.
func TestCrashRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the parley binary and crashes it; skipped with -short")
	}
	// Not parallel: while the node leaks accepted sockets into child
	// processes (see TestChildProcessDoesNotHoldConnections), starting
	// `go build` and `parley serve` would disturb other tests' nodes.
	crashCycle(t, buildParley(t))
}

var soak = flag.Duration("soak", 0, "how long TestSoak repeats the crash test's cycle (e.g. -soak=2m); 0 skips it")

// TestSoak repeats TestCrashRecovery's cycle (a fresh server, kills at
// random moments under load, the full loss check) until -soak has passed,
// stopping at the first failing cycle:
//
//	go test ./node -run TestSoak -timeout 30m -args -soak=2m
//
// Without -soak it is skipped: CI runs one cycle, as TestCrashRecovery.
func TestSoak(t *testing.T) {
	if *soak <= 0 {
		t.Skip("set -soak=DURATION to run crash cycles for that long")
	}
	bin := buildParley(t)
	end := time.Now().Add(*soak)
	cycles := 0
	for cycles < 100_000 && time.Now().Before(end) {
		cycles++
		if !t.Run(fmt.Sprintf("cycle %d", cycles), func(t *testing.T) { crashCycle(t, bin) }) {
			break
		}
	}
	t.Logf("soak: %d crash cycles in %v", cycles, *soak)
}

// crashCycle is one run of the crash test against the parley binary bin.
func crashCycle(t *testing.T, bin string) {
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	codes := filepath.Join(dir, "codes.jsonl")
	logPath := filepath.Join(dir, "server.log")
	defer func() {
		if t.Failed() {
			t.Log(logTail(logPath))
		}
	}()

	srv := startServer(t, bin, dataDir, codes, logPath)
	serverKey := srv.key
	codeOf := fileCodes(codes)

	const receiverPhone = "+14155550110"
	recvKey, a := register(t, srv.httpURL, receiverPhone, codeOf)
	if a.ServerKey != base64.StdEncoding.EncodeToString(serverKey) {
		t.Fatalf("verify answered server key %s; the server printed %x", a.ServerKey, serverKey)
	}
	fails := &failures{t: t}
	recv := &crashReceiver{phone: receiverPhone, kp: recvKey, senders: map[string]bool{}, fails: fails,
		got: map[msgKey]uint64{}, seqOf: map[msgKey]uint64{}, last: map[string]uint64{}}
	var senders []*crashSender
	for i := range crashSenders {
		phone := fmt.Sprintf("+1415555011%d", i+1)
		kp, _ := register(t, srv.httpURL, phone, codeOf)
		senders = append(senders, &crashSender{phone: phone, kp: kp, fails: fails, limit: crashPerSender,
			acked: map[uint64]uint64{}, done: make(chan struct{}), receiver: receiverPhone,
			receipts: map[uint64]*wire.Receipt{}, receiptSID: map[uint64]uint64{}, receiptSeq: map[uint64]uint64{}})
		recv.senders[phone] = true
	}
	// The probe proves the queues empty at the end (see proveDrained).
	const probePhone = "+14155550119"
	probeKey, _ := register(t, srv.httpURL, probePhone, codeOf)

	start := time.Now()
	sendUntil := start.Add(crashSendFor)
	var totalAcked atomic.Int64
	allDone := func() bool {
		for _, s := range senders {
			if !s.isDone() {
				return false
			}
		}
		return true
	}

	// round runs the receiver and the senders against srv until stop
	// returns, then waits for them. In a crash round the clients end
	// when the server dies; otherwise stop's caller closes them.
	round := func(final bool, stop func(conns *connSet)) {
		var conns connSet
		var wg sync.WaitGroup
		run := func(who string, f func() error) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := f()
				if final && err != nil && !errors.Is(err, net.ErrClosed) { // closed by the test: fine
					t.Errorf("%s in the final round: %v", who, err)
				}
			}()
		}
		run("receiver", func() error { return recv.runRound(srv.native, serverKey, &conns) })
		for _, s := range senders {
			run(s.phone, func() error {
				return s.runRound(srv.native, serverKey, receiverPhone, &conns, sendUntil, &totalAcked)
			})
		}
		stop(&conns)
		finished := make(chan struct{})
		go func() { wg.Wait(); close(finished) }()
		select {
		case <-finished:
		case <-time.After(crashGuard):
			conns.closeAll()
			<-finished
			t.Fatalf("clients still running %v after the round ended", crashGuard)
		}
	}

	var ackedAtCrash []int64
	for crash := 1; crash <= crashKills; crash++ {
		if crash > 1 && time.Since(start) > crashSendFor/2 {
			// Checked below: too few kills fail the test.
			t.Logf("no kill %d: %v spent, past half of the %v of sending", crash, time.Since(start).Round(time.Millisecond), crashSendFor)
			break
		}
		threshold := totalAcked.Load() + 300 + rand.Int64N(400)
		round(false, func(*connSet) {
			deadline := time.Now().Add(crashGuard)
			for totalAcked.Load() < threshold && !allDone() && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			ackedAtCrash = append(ackedAtCrash, totalAcked.Load())
			srv.kill(t)
		})
		if t.Failed() {
			t.FailNow()
		}
		srv = startServer(t, bin, dataDir, codes, logPath)
		if !bytes.Equal(srv.key, serverKey) {
			t.Fatalf("the server key changed across the crash: %x, was %x", srv.key, serverKey)
		}
	}

	// The final round: senders finish, the receiver drains its queue, and
	// the senders get their receipts.
	var want int
	round(true, func(conns *connSet) {
		deadline := time.Now().Add(crashGuard)
		for !allDone() {
			if time.Now().After(deadline) {
				conns.closeAll()
				t.Errorf("senders did not finish within %v", crashGuard)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		for _, s := range senders {
			s.mu.Lock()
			want += int(s.limit)
			s.mu.Unlock()
		}
		complete := func() bool {
			if recv.distinct() < want {
				return false
			}
			for _, s := range senders {
				if s.receipted() < int(s.limit) {
					return false
				}
			}
			return true
		}
		if !await(time.Until(deadline), complete) {
			t.Errorf("within %v the receiver got %d of %d messages", crashGuard, recv.distinct(), want)
			for _, s := range senders {
				t.Errorf("%s got delivered receipts for %d of its %d messages", s.phone, s.receipted(), s.limit)
			}
		}
		conns.closeAll()
	})
	// Whatever comes late (a duplicate, a stray) is still in a queue: the
	// receipts say every message was erased, so the receiver's must be
	// empty; a sender's may hold only receipts it has seen, at their seqs
	// (their acks in flight when its connection closed).
	probe, err := dialLogin(srv.native, serverKey, probePhone, probeKey)
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	proveDrained(t, fails, srv.native, serverKey, probe, probePhone, 1, receiverPhone, recvKey, nil)
	for i, s := range senders {
		proveDrained(t, fails, srv.native, serverKey, probe, probePhone, uint64(i+2), s.phone, s.kp, func(seq uint64, it *wire.Item) bool {
			r, seen := s.receipts[seq]
			return seen && proto.Equal(r, it.GetReceipt())
		})
	}
	srv.stop(t)

	// Every message sent was acked (the senders finished), so every one
	// must have arrived, under the server id its SendAck gave.
	sent, writes := 0, 0
	for _, s := range senders {
		sent += int(s.limit)
		writes += s.writes
		if s.attempted != s.limit {
			t.Errorf("%s: sent ids up to %d, limit %d", s.phone, s.attempted, s.limit)
		}
		for id := uint64(1); id <= s.limit; id++ {
			sid, acked := s.acked[id]
			got, arrived := recv.got[msgKey{s.phone, id}]
			switch {
			case !acked:
				fails.errorf("%s: message %d never acked", s.phone, id)
			case !arrived:
				fails.errorf("%s: message %d acked as server id %d but never delivered", s.phone, id, sid)
			case got != sid:
				fails.errorf("%s: message %d acked as server id %d, delivered as %d", s.phone, id, sid, got)
			}
			if rsid, ok := s.receiptSID[id]; !ok {
				fails.errorf("%s: message %d has no delivered receipt", s.phone, id)
			} else if rsid != sid {
				fails.errorf("%s: message %d acked as server id %d, receipted as %d", s.phone, id, sid, rsid)
			}
		}
		for id, rsid := range s.receiptSID {
			if id == 0 || id > s.limit {
				fails.errorf("%s: delivered receipt for message %d (server id %d), which was never sent", s.phone, id, rsid)
			}
		}
	}
	if len(recv.got) != sent {
		t.Errorf("the receiver got %d distinct messages; %d were sent", len(recv.got), sent)
	}
	// The load the test claims to have exercised.
	if kills := len(ackedAtCrash); kills < crashKills {
		t.Errorf("only %d of %d kills were exercised: the machine was too slow for the test's bounds", kills, crashKills)
	}
	if sent < crashMinMessages {
		t.Errorf("only %d messages were sent and acked; the test needs at least %d", sent, crashMinMessages)
	}
	if writes <= sent {
		t.Errorf("%d Send frames for %d messages: no resend after a kill was exercised", writes, sent)
	}
	t.Logf("crash test: %d kills; %d senders sent %d messages (%d Send frames with resends); acked before each kill: %v; delivered %d distinct (%d deliveries with redeliveries) in %v",
		len(ackedAtCrash), len(senders), sent, writes, ackedAtCrash, len(recv.got), recv.deliveries, time.Since(start).Round(time.Millisecond))
}

// proveDrained shows that phone's queue holds nothing it should not. Its
// clients are gone; it logs in afresh, the probe sends it a marker (with
// id markerID), and, a queue being FIFO, everything queued before the
// marker arrives first: each such item must be one allowed accepts (nil:
// none).
func proveDrained(t *testing.T, fails *failures, addr string, serverKey []byte, probe *rawConn, probePhone string, markerID uint64,
	phone string, kp noise.Keypair, allowed func(seq uint64, it *wire.Item) bool) {
	t.Helper()
	c, err := dialLogin(addr, serverKey, phone, kp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	marker := []byte("marker for " + phone)
	if err := probe.send(markerID, phone, marker); err != nil {
		t.Fatal(err)
	}
	a := awaitSendAck(t, probe, markerID)
	for i := 0; i < 1_000_000; i++ {
		f, err := c.readFrame(crashGuard)
		if err != nil {
			t.Fatalf("%s: waiting for the probe's marker: %v", phone, err)
		}
		switch k := f.Kind.(type) {
		case *wire.Frame_Deliver:
			d := k.Deliver
			if err := c.ack(d.Seq); err != nil { // so the window never stops the marker
				t.Fatal(err)
			}
			if m := d.Item.GetMessage(); m != nil && m.From == probePhone {
				if m.ServerId != a.ServerId || !bytes.Equal(m.Body, marker) {
					fails.errorf("%s: the marker came as %v, want server id %d", phone, m, a.ServerId)
				}
				return
			}
			if allowed == nil || !allowed(d.Seq, d.Item) {
				fails.errorf("%s: still queued after everything had arrived: seq %d %v", phone, d.Seq, d.Item)
			}
		case *wire.Frame_Close:
			t.Fatalf("%s: waiting for the probe's marker: Close %v", phone, k.Close)
		}
	}
	t.Fatalf("%s: a million items and no marker", phone)
}
