package node_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/vfs"
	"google.golang.org/protobuf/proto"

	"github.com/parleyhq/parley/account"
	"github.com/parleyhq/parley/client"
	"github.com/parleyhq/parley/node"
	"github.com/parleyhq/parley/noise"
	"github.com/parleyhq/parley/wire"
)

// Bounds of the power-loss test. The counts are the load it must exercise
// (it fails if it did less); every duration is a failure guard.
const (
	plSenders = 3
	plLanes   = 6 // concurrent Sends per sender, pipelined on its connection
	plLosses  = 10
	// Between two power losses at least plMinBetween more messages are
	// acked, plus up to plRandBetween at random: the moment of the loss.
	plMinBetween  = 250
	plRandBetween = 400
	plGuard       = 30 * time.Second
)

// TestPowerLoss runs the node in process on a file system that forgets
// every write not synced when the power goes (vfs.NewStrictMem), with SDK
// clients sending and receiving over loopback TCP, and at random moments
// cuts the power: the network first (nothing the node says after that
// instant reaches a client), then the disk (syncs ignored, node closed,
// unsynced state discarded). A new node starts on what the disk kept. A
// SIGKILL cannot test this: the kernel's page cache survives it, so a node
// that acked before its fsync passes the crash test; here it loses acked
// messages and fails.
//
// At the end every acked message must have arrived exactly once, with its
// body and the server id its SendAck gave, in its sender's order; nothing
// unacked may arrive, nor anything twice; every message has exactly one
// delivered receipt and every receipt names a delivered message; and the
// queues are then empty.
func TestPowerLoss(t *testing.T) {
	dataDir := t.TempDir()
	fs := vfs.NewStrictMem()
	gw := &codeGateway{}
	start := func() *node.Node {
		t.Helper()
		n, err := node.Start(context.Background(), node.Config{
			DataDir: dataDir,
			Listen:  "127.0.0.1:0", HTTP: "127.0.0.1:0", Admin: "127.0.0.1:0",
			SMS:       gw,
			PerNumber: account.RateLimit{Max: 100, Window: time.Minute},
			Log:       testLogger(t),
			StoreFS:   fs,
		})
		if err != nil {
			t.Fatalf("start the node: %v", err)
		}
		return n
	}
	n := start()
	defer func() { n.Close() }()
	// Pebble syncs its own directory but not the ones above it, which
	// the first start created in the empty file system: make those
	// durable, as a data directory on a real disk would be by then.
	for dir := filepath.Join(dataDir, "store"); ; dir = filepath.Dir(dir) {
		if err := syncDir(fs, dir); err != nil {
			t.Fatal(err)
		}
		if dir == filepath.Dir(dir) {
			break
		}
	}
	link := newCutProxy(t, n.NativeAddr())
	serverKey := n.PublicKey()

	const receiverPhone, probePhone = "+14155550130", "+14155550139"
	keys := map[string]noise.Keypair{}
	enroll := func(phone string) {
		t.Helper()
		keys[phone], _ = register(t, n.HTTPURL(), phone, gw.code)
	}
	dial := func(phone string, reconnect bool) *client.Client {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), plGuard)
		defer cancel()
		c, err := client.Dial(ctx, client.Config{
			Addr: link.addr(), ServerKey: serverKey, Phone: phone, Key: keys[phone],
			Reconnect: reconnect, MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
		})
		if err != nil {
			t.Fatalf("dial as %s: %v", phone, err)
		}
		return c
	}
	enroll(receiverPhone)
	enroll(probePhone)
	fails := &failures{t: t}
	recv := &plReceiver{fails: fails, got: map[msgKey]plGot{}, sids: map[uint64]msgKey{}, lastSID: map[string]uint64{}}
	var senders []*plSender
	for i := range plSenders {
		s := &plSender{phone: fmt.Sprintf("+1415555013%d", i+1), to: receiverPhone, fails: fails,
			acked: map[uint64]plSent{}, receipts: map[uint64]int{}, receiptSIDs: map[uint64]uint64{}, seqs: map[uint64]*wire.Receipt{}}
		enroll(s.phone)
		senders = append(senders, s)
	}

	// The receiver acks what it gets; each sender sends in lanes and
	// takes its receipts; until stop.
	var totalAcked, losses atomic.Int64
	stop := make(chan struct{})
	var lanes, readers sync.WaitGroup
	rc := dial(receiverPhone, true)
	readers.Add(1)
	go func() { defer readers.Done(); recv.run(rc) }()
	for _, s := range senders {
		s.c = dial(s.phone, true)
		readers.Add(1)
		go func() { defer readers.Done(); s.takeReceipts() }()
		for lane := range plLanes {
			lanes.Add(1)
			go func() { defer lanes.Done(); s.send(lane, stop, &totalAcked, &losses) }()
		}
	}
	closeAll := func() {
		rc.Close()
		for _, s := range senders {
			s.c.Close()
		}
	}
	defer func() {
		closeAll() // what is blocked in the SDK returns ErrClosed
		lanes.Wait()
		readers.Wait()
	}()

	began := time.Now()
	for loss := 1; loss <= plLosses; loss++ {
		want := totalAcked.Load() + plMinBetween + rand.Int64N(plRandBetween+1)
		if !await(plGuard, func() bool { return totalAcked.Load() >= want || fails.n.Load() > 0 }) {
			t.Fatalf("before power loss %d: %d messages acked within %v, the test needs %d", loss, totalAcked.Load(), plGuard, want)
		}
		if fails.n.Load() > 0 {
			t.FailNow()
		}
		// The power goes: the network with it, so that nothing the node
		// sends from now on counts; then the disk keeps only what was
		// synced.
		link.powerOff()
		losses.Add(1)
		fs.SetIgnoreSyncs(true)
		if err := n.Close(); err != nil {
			t.Logf("close at power loss %d: %v", loss, err)
		}
		fs.ResetToSyncedState()
		fs.SetIgnoreSyncs(false)
		n = start()
		if string(n.PublicKey()) != string(serverKey) {
			t.Fatalf("the server key changed across power loss %d", loss)
		}
		link.powerOn(n.NativeAddr())
	}

	// Stop sending; every Send in flight finishes (resent after the last
	// reconnect); then everything acked must arrive, and its receipt.
	close(stop)
	lanesDone := make(chan struct{})
	go func() { lanes.Wait(); close(lanesDone) }()
	select {
	case <-lanesDone:
	case <-time.After(plGuard):
		t.Fatalf("senders still waiting for SendAcks %v after the last power loss", plGuard)
	}
	acked := int(totalAcked.Load())
	arrived := func() bool {
		if recv.count() < acked {
			return false
		}
		for _, s := range senders {
			if s.receipted() < s.ackedCount() {
				return false
			}
		}
		return true
	}
	if !await(plGuard, arrived) {
		t.Errorf("within %v the receiver got %d of the %d acked messages", plGuard, recv.count(), acked)
		for _, s := range senders {
			t.Errorf("%s got delivered receipts for %d of its %d messages", s.phone, s.receipted(), s.ackedCount())
		}
	}
	closeAll()
	readers.Wait()

	// The queues must now be empty: the receipts say every message was
	// erased. Only a receipt whose ack was in flight may come again.
	probe := dial(probePhone, false)
	defer probe.Close()
	proveEmpty(t, fails, probe, probePhone, dial(receiverPhone, false), receiverPhone, nil)
	for _, s := range senders {
		proveEmpty(t, fails, probe, probePhone, dial(s.phone, false), s.phone, s.seqs)
	}

	// Every acked message arrived once (duplicates and order were
	// checked as they came), with its body, under its server id; it has
	// one receipt; nothing else arrived or was receipted.
	for _, s := range senders {
		for id, sent := range s.acked {
			got, ok := recv.got[msgKey{s.phone, id}]
			switch {
			case !ok:
				fails.errorf("%s: message %d (%q) acked as server id %d but never delivered", s.phone, id, sent.body, sent.serverID)
			case got.serverID != sent.serverID:
				fails.errorf("%s: message %d acked as server id %d, delivered as %d", s.phone, id, sent.serverID, got.serverID)
			case got.body != sent.body:
				fails.errorf("%s: message %d sent as %q, delivered as %q", s.phone, id, sent.body, got.body)
			}
			if n := s.receipts[id]; n != 1 {
				fails.errorf("%s: message %d has %d delivered receipts, want 1", s.phone, id, n)
			}
		}
		for id, sid := range s.receiptSIDs {
			if got, ok := recv.got[msgKey{s.phone, id}]; !ok || got.serverID != sid {
				fails.errorf("%s: delivered receipt for message %d (server id %d), which was not delivered", s.phone, id, sid)
			}
		}
	}
	for k := range recv.got {
		acked := false
		for _, s := range senders {
			if s.phone == k.from {
				_, acked = s.acked[k.id]
			}
		}
		if !acked {
			fails.errorf("delivered message %d from %s, which was never acked", k.id, k.from)
		}
	}
	if acked < plLosses*plMinBetween {
		t.Errorf("only %d messages acked; the test needs at least %d", acked, plLosses*plMinBetween)
	}
	spanned := 0
	for _, s := range senders {
		spanned += s.spanned
	}
	if n := losses.Load(); n != plLosses {
		t.Errorf("%d power losses, want %d", n, plLosses)
	}
	if spanned == 0 {
		t.Errorf("no Send spanned any of the %d power losses: resending what was unacked was not exercised", plLosses)
	}
	t.Logf("%d power losses, %d Sends spanning one; %d messages acked, %d delivered, in %v",
		losses.Load(), spanned, acked, recv.count(), time.Since(began).Round(time.Millisecond))
}

// plSent is what a sender knows of an acked message.
type plSent struct {
	body     string
	serverID uint64 // from its SendAck
}

// plSender sends from one account in lanes, and takes its receipts.
type plSender struct {
	phone, to string
	c         *client.Client
	fails     *failures

	mu          sync.Mutex
	spanned     int                      // Sends acked after a power loss that came after they began
	acked       map[uint64]plSent        // by message id
	receipts    map[uint64]int           // delivered receipts naming each id
	receiptSIDs map[uint64]uint64        // the server id a receipt gave each id
	seqs        map[uint64]*wire.Receipt // receipts by queue seq
}

// send sends until stop, one message at a time; the lanes of a sender
// share its connection.
func (s *plSender) send(lane int, stop <-chan struct{}, total, losses *atomic.Int64) {
	for i := 1; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		body := fmt.Sprintf("%s lane %d #%d", s.phone, lane, i)
		before := losses.Load()
		ctx, cancel := context.WithTimeout(context.Background(), plGuard)
		a, err := s.c.Send(ctx, s.to, []byte(body))
		cancel()
		s.mu.Lock()
		if err != nil {
			s.mu.Unlock()
			if !errors.Is(err, client.ErrClosed) {
				s.fails.errorf("%s: %q: %v", s.phone, body, err)
			}
			return
		}
		if prev, dup := s.acked[a.ID]; dup {
			s.fails.errorf("%s: id %d acked for %q and again for %q", s.phone, a.ID, prev.body, body)
		}
		s.acked[a.ID] = plSent{body: body, serverID: a.ServerID}
		if losses.Load() != before {
			s.spanned++
		}
		s.mu.Unlock()
		total.Add(1)
	}
}

func (s *plSender) takeReceipts() {
	for {
		in, err := s.c.Recv(context.Background())
		if err != nil {
			if !errors.Is(err, client.ErrClosed) {
				s.fails.errorf("%s: %v", s.phone, err)
			}
			return
		}
		r := in.Receipt
		switch {
		case r == nil:
			s.fails.errorf("%s: got %+v, not a receipt", s.phone, in)
		case r.Kind != wire.Receipt_DELIVERED || r.By != s.to || len(r.Ids) != len(r.ServerIds):
			s.fails.errorf("%s: unexpected receipt %v", s.phone, r)
		default:
			s.mu.Lock()
			s.seqs[in.Seq] = r
			for i, id := range r.Ids {
				s.receipts[id]++
				if s.receipts[id] > 1 {
					s.fails.errorf("%s: a second delivered receipt for message %d (seq %d)", s.phone, id, in.Seq)
				}
				s.receiptSIDs[id] = r.ServerIds[i]
			}
			s.mu.Unlock()
		}
		s.c.Ack(in.Seq)
	}
}

func (s *plSender) ackedCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.acked)
}

func (s *plSender) receipted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.receiptSIDs)
}

// plGot is a message as the receiver got it.
type plGot struct {
	serverID, seq uint64
	body          string
}

// plReceiver takes and acks its messages, checking each as it comes.
type plReceiver struct {
	fails *failures

	mu      sync.Mutex
	got     map[msgKey]plGot
	sids    map[uint64]msgKey // server id -> message
	lastSID map[string]uint64 // each sender's latest server id
}

func (r *plReceiver) run(c *client.Client) {
	for {
		in, err := c.Recv(context.Background())
		if err != nil {
			if !errors.Is(err, client.ErrClosed) {
				r.fails.errorf("receiver: %v", err)
			}
			return
		}
		r.record(in)
		c.Ack(in.Seq)
	}
}

// record checks an arrival. The SDK drops redeliveries (same seq) and
// copies under a server id it has seen, so anything seen twice here is
// a message the server stored twice. A sender's messages are queued in
// the order the server accepted them, which is their server ids' order.
func (r *plReceiver) record(in client.Incoming) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := in.Message
	if m == nil {
		r.fails.errorf("receiver: got %+v, not a message", in)
		return
	}
	k := msgKey{m.From, m.Id}
	if prev, seen := r.got[k]; seen {
		r.fails.errorf("message %d from %s shown twice: server ids %d and %d, seqs %d and %d", m.Id, m.From, prev.serverID, m.ServerId, prev.seq, in.Seq)
		return
	}
	if prev, seen := r.sids[m.ServerId]; seen {
		r.fails.errorf("server id %d shown twice: message %d from %s, then %d from %s", m.ServerId, prev.id, prev.from, m.Id, m.From)
		return
	}
	if m.ServerId <= r.lastSID[m.From] {
		r.fails.errorf("message %d from %s (server id %d) arrived after its server id %d", m.Id, m.From, m.ServerId, r.lastSID[m.From])
	}
	r.lastSID[m.From] = m.ServerId
	r.got[k] = plGot{serverID: m.ServerId, seq: in.Seq, body: string(m.Body)}
	r.sids[m.ServerId] = k
}

func (r *plReceiver) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

// proveEmpty shows that c's queue holds nothing it should not: the probe
// sends it a marker, and since a queue is FIFO whatever was queued before
// the marker arrives first. known are the receipts phone already got, by
// seq: one of them may come again (its ack was in flight when its client
// closed); anything else is a late duplicate or a stray.
func proveEmpty(t *testing.T, fails *failures, probe *client.Client, probePhone string, c *client.Client, phone string, known map[uint64]*wire.Receipt) {
	t.Helper()
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), plGuard)
	defer cancel()
	marker := "marker for " + phone
	a, err := probe.Send(ctx, phone, []byte(marker))
	if err != nil {
		t.Fatalf("send the marker to %s: %v", phone, err)
	}
	for i := 0; i < 1_000_000; i++ {
		in, err := c.Recv(ctx)
		if err != nil {
			t.Fatalf("%s: waiting for the probe's marker: %v", phone, err)
		}
		if m := in.Message; m != nil && m.From == probePhone {
			if m.ServerId != a.ServerID || string(m.Body) != marker {
				fails.errorf("%s: the marker came as %v, want server id %d", phone, m, a.ServerID)
			}
			c.Ack(in.Seq)
			return
		}
		c.Ack(in.Seq) // so the window never stops the marker
		if r := in.Receipt; r != nil && known[in.Seq] != nil && proto.Equal(r, known[in.Seq]) {
			continue // a redelivery: its ack was lost with the connection
		}
		fails.errorf("%s: still queued after everything had arrived: seq %d %v %v", phone, in.Seq, in.Message, in.Receipt)
	}
	t.Fatalf("%s: a million items and no marker", phone)
}

func syncDir(fs vfs.FS, dir string) error {
	f, err := fs.OpenDir(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// await polls cond until it holds or d has passed, and says whether it
// held.
func await(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
	return true
}

// cutProxy stands for the network between the clients and the node, and
// goes down with the power: once powerOff returns, no byte the node writes
// reaches a client, so an ack sent after the power loss (for a write the
// disk then forgets) cannot be counted. While it is off, connections are
// refused.
type cutProxy struct {
	ln   net.Listener
	done chan struct{} // closed when serve returns
	wg   sync.WaitGroup

	// mu is held for reading while bytes go from the node to a client,
	// and for writing to cut the power.
	mu     sync.RWMutex
	target string // the node's address; "" while the power is off
	gen    int    // the power cycle: bumped at each cut
	conns  []net.Conn
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target, done: make(chan struct{})}
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		<-p.done
		p.powerOff()
		p.wg.Wait()
	})
	return p
}

func (p *cutProxy) addr() string { return p.ln.Addr().String() }

func (p *cutProxy) serve() {
	defer close(p.done)
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.RLock()
		target, gen := p.target, p.gen
		p.mu.RUnlock()
		if target == "" {
			c.Close()
			continue
		}
		s, err := net.DialTimeout("tcp", target, ioGuard)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.gen != gen { // the power went meanwhile
			p.mu.Unlock()
			c.Close()
			s.Close()
			continue
		}
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			io.Copy(s, c)
			s.Close()
			c.Close()
		}()
		go func() {
			defer p.wg.Done()
			p.toClient(c, s, gen)
			s.Close()
			c.Close()
		}()
	}
}

// toClient copies what the node writes to the client while the power of
// cycle gen is on.
func (p *cutProxy) toClient(c, s net.Conn, gen int) {
	buf := make([]byte, 32<<10)
	for {
		n, err := s.Read(buf)
		if n > 0 {
			p.mu.RLock()
			ok := p.gen == gen
			if ok {
				c.SetWriteDeadline(time.Now().Add(ioGuard))
				_, werr := c.Write(buf[:n])
				ok = werr == nil
			}
			p.mu.RUnlock()
			if !ok {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// powerOff cuts every connection, both sides, and refuses new ones.
func (p *cutProxy) powerOff() {
	p.mu.Lock()
	p.gen++
	p.target = ""
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// powerOn forwards new connections to target.
func (p *cutProxy) powerOn(target string) {
	p.mu.Lock()
	p.target = target
	p.mu.Unlock()
}
