package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/parleyhq/parley/noise"
	"github.com/parleyhq/parley/session"
	"github.com/parleyhq/parley/upgrade"
	"github.com/parleyhq/parley/upgrade/upgradepb"
	"github.com/parleyhq/parley/wire"
)

// This file is the node's side of a live upgrade (package upgrade has the
// mechanism): what a node hands over to a new process, and how a node
// started by one takes it. The sequence (see upgrade.Server):
//
//	Listeners  copies of the native, HTTP and admin listening sockets
//	Quiesce    stop accepting native connections (the kernel queues new
//	           ones for the new process), park the event loop's pollers so
//	           every connection stops at a frame boundary, let in-flight
//	           commits finish and their acks reach their clients
//	Export     every logged-in connection's descriptor and state
//	Release    close the store
//	Retire     stop accepting HTTP and admin requests; those in flight
//	           finish here (FinishHTTP) before the process exits
//
// Until Release, a failed handover gives everything back (Resume).

// Inherited is what a node started by a handover takes over from the old
// process.
type Inherited struct {
	// Native, HTTP and Admin replace the listeners the node would open.
	Native, HTTP, Admin net.Listener
	// Conns are the established native connections.
	Conns []InheritedConn
}

// InheritedConn is one established connection handed over: its
// descriptor (the node's from then on) and its state.
type InheritedConn struct {
	FD    int
	State *upgradepb.Conn
}

// adoptInherited takes over the connections handed over, once the event
// loop runs. A connection that cannot be adopted is closed (its client
// reconnects); the rest go on as they were.
func (n *Node) adoptInherited() (adopted int) {
	if n.cfg.Inherit == nil {
		return 0
	}
	// In parallel: each connection's adoption is a few system calls, and
	// the connections adopted first are served (by the pollers and the
	// workers) while the rest wait; one goroutine among them all got a
	// small share of the CPU. Connections are independent here.
	conns := n.cfg.Inherit.Conns
	workers := min(2*runtime.GOMAXPROCS(0), 16, len(conns))
	checks := make([][]*conn, workers)
	counts := make([]int, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(conns); i += workers {
				ic := conns[i]
				c, err := n.adoptConn(ic)
				if err != nil {
					n.log.Warn("live upgrade: connection not taken over", "conn", ic.State.GetRemote(), "user", ic.State.GetUser(), "err", err)
					continue
				}
				if c.gen16 != 0 {
					checks[w] = append(checks[w], c)
				}
				counts[w]++
			}
		}()
	}
	wg.Wait()
	var check []*conn
	for w := range workers {
		check = append(check, checks[w]...)
		adopted += counts[w]
	}
	n.cfg.Inherit.Conns = nil
	n.handover.adopted = adopted
	n.background(func() { n.checkAdoptedAccounts(check) })
	return adopted
}

// checkAdoptedAccounts closes the adopted connections whose account was
// registered again since their login: a re-registration while the old
// process exported them kicked nobody (its kick found them gone). It runs
// beside the serving, not before it: a handful of such connections must
// not delay every other's adoption.
func (n *Node) checkAdoptedAccounts(conns []*conn) {
	kicked := 0
	for _, c := range conns {
		a, err := n.store.Account(c.core.User())
		if err != nil || fold16(a.Generation) == c.gen16 {
			continue // an error here is the next login's to find
		}
		c.post(n.pool, event{kind: evKick, code: wire.Error_REGISTERED_ELSEWHERE, text: "this number was registered on another device"})
		kicked++
	}
	if kicked > 0 {
		n.log.Info("live upgrade: closed connections of accounts registered again during the handover", "count", kicked)
	}
}

// Adopted is the number of connections this node took over when it
// started from a live upgrade.
func (n *Node) Adopted() int { return n.handover.adopted }

func (n *Node) adoptConn(ic InheritedConn) (*conn, error) {
	st := ic.State
	if len(st.GetTx().GetKey()) != noise.KeyLen || len(st.GetRx().GetKey()) != noise.KeyLen || st.GetUser() == "" {
		unix.Close(ic.FD)
		return nil, errors.New("incomplete state")
	}
	nc, err := connFromFD(ic.FD, n.connType)
	if err != nil {
		return nil, err
	}
	c := &conn{nc: nc}
	if ap, err := netip.ParseAddrPort(st.Remote); err == nil {
		c.peer = makePeerAddr(net.TCPAddrFromAddrPort(ap))
	}
	c.tx = *noise.NewCipher(noise.CipherState{Key: [32]byte(st.Tx.Key), Nonce: st.Tx.Nonce})
	c.rx = *noise.NewCipher(noise.CipherState{Key: [32]byte(st.Rx.Key), Nonce: st.Rx.Nonce})
	if len(st.Partial) > 0 {
		p := append(make([]byte, 0, len(st.Partial)+512), st.Partial...)
		c.partial = &p
	}
	ss := session.State{Next: st.GetSession().GetNext()}
	for _, d := range st.GetSession().GetInflight() {
		ss.Inflight = append(ss.Inflight, session.Delivery{Seq: d.Seq, At: d.At, ID: d.Id, ServerID: d.ServerId, From: d.From})
	}
	// No actor or poller has c yet: set up its session as running, so that
	// frames read as soon as the loop has it are served.
	c.core.Restore(st.User, &n.sessionCfg, ss)
	c.gen16 = uint16(st.Generation16)
	c.live = true
	c.stage.Store(stageLoggedIn)
	nc.SetSession(c)
	n.addrs.trim(nc, n.nativeLn.Addr(), &c.peer)
	if prev := n.router.register(st.User, c); prev != nil {
		prev.post(n.pool, event{kind: evKick, code: wire.Error_REPLACED, text: "this account logged in on a newer connection"})
	}
	if _, err := n.engine.AddConn(nc); err != nil {
		n.router.unregister(st.User, c)
		return nil, err
	}
	// What the old process had sealed and not written goes first; the
	// actor writes nothing before its first event, posted below.
	if len(st.Unwritten) > 0 {
		if _, err := nc.Write(st.Unwritten); err != nil {
			nc.Close()
			return nil, fmt.Errorf("write what the old process left: %w", err)
		}
	}
	c.post(n.pool, event{kind: evStart})
	// Every session reads its queue: a commit the old process finished
	// while quiescing may have pushed its item to the session after it was
	// exported, and a commit here may push to a user whose connection is
	// not adopted yet (which finds no session, and drops the push).
	c.post(n.pool, event{kind: evPush, seq: wakeSeq})
	return c, nil
}

// inheritedListener returns the listener of that name handed over, if any.
func (n *Node) inheritedListener(name string) net.Listener {
	in := n.cfg.Inherit
	if in == nil {
		return nil
	}
	switch name {
	case "native":
		return in.Native
	case "http":
		return in.HTTP
	case "admin":
		return in.Admin
	}
	return nil
}

// listen opens a TCP listener on addr, or takes the one of that name
// handed over.
func (n *Node) listen(name, addr string) (net.Listener, error) {
	if ln := n.inheritedListener(name); ln != nil {
		return ln, nil
	}
	return net.Listen("tcp", addr)
}

// handover is a node's state as the old process of an upgrade.
type handover struct {
	mu      sync.Mutex    // one handover at a time
	resumed chan struct{} // closed by Resume; the paused accept loop goes on
	held    []int         // listener copies sent (closed by Retire or Resume)
	gates   []*pollerGate // parking the event loop
	// exported are the connections marked dead by Export, revived by
	// Resume.
	exported []*conn
	adopted  int // connections taken over at start
}

// AsUpgradeServer is the node as the old process of a live upgrade sees it.
// One upgrade runs at a time: a second gets an error.
func (n *Node) AsUpgradeServer() (upgrade.Server, func(), error) {
	if !n.handover.mu.TryLock() {
		return nil, nil, errors.New("an upgrade is already under way")
	}
	return (*upgradeServer)(n), n.handover.mu.Unlock, nil
}

// upgradeServer implements upgrade.Server.
type upgradeServer Node

var _ upgrade.Server = (*upgradeServer)(nil)

func (s *upgradeServer) Listeners() ([]string, []int, error) {
	n := (*Node)(s)
	names := []string{"native", "http", "admin"}
	lns := []net.Listener{n.nativeLn, n.httpLn, n.adminLn}
	fds := make([]int, 0, len(lns))
	for i, ln := range lns {
		fd, err := dupListener(ln)
		if err != nil {
			closeAll(fds)
			return nil, nil, fmt.Errorf("%s listener: %w", names[i], err)
		}
		fds = append(fds, fd)
	}
	n.handover.held = fds
	return names, fds, nil
}

// dupListener returns a close-on-exec copy of ln's descriptor (not
// File(), which would make the socket blocking).
func dupListener(ln net.Listener) (int, error) {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("a %T has no descriptor", ln)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd, derr := -1, error(nil)
	if err := rc.Control(func(f uintptr) { fd, derr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	return fd, derr
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

func (s *upgradeServer) Quiesce(ctx context.Context) error {
	n := (*Node)(s)
	h := &n.handover
	if !n.writeQueue.ok {
		return errors.New("this build's nbio hides its write queue (see nbioWriteQueue): connections cannot move")
	}
	n.pauseAccepts()
	// Park every poller: nothing more is read, so every connection stops
	// at a frame boundary (a message half read stays in its partial
	// buffer, the rest in the kernel).
	all, byPoller, err := n.newGates(n.cfg.Pollers)
	h.gates = all
	if err != nil {
		return fmt.Errorf("park the event loop: %w", err)
	}
	for _, g := range byPoller {
		if _, err := unix.Write(g.peer, []byte{1}); err != nil {
			return fmt.Errorf("park the event loop: %w", err)
		}
	}
	for _, g := range byPoller {
		select {
		case <-g.parked:
		case <-ctx.Done():
			return fmt.Errorf("park the event loop: %w", context.Cause(ctx))
		}
	}
	// Let the actors finish what was read: in-flight commits, their acks
	// and the deliveries they cause. Nothing new comes in, so this ends.
	for !n.quiescent() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d commits in flight: %w", n.commitsInFlight(), context.Cause(ctx))
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}

// quiescent reports whether no commit is in flight and no session has
// work, with the pollers parked. A session is scheduled only by a post,
// and with the pollers parked posts come only from commit callbacks: so
// no commit in flight before and after a scan that finds every session
// idle means none was busy during it.
func (n *Node) quiescent() bool {
	started := n.counts.commitsStarted.Load()
	if started != n.counts.commitsDone.Load() {
		return false
	}
	idle := true
	n.router.each(func(c *conn) {
		c.mu.Lock()
		if c.scheduled || c.mbox != nil {
			idle = false
		}
		c.mu.Unlock()
	})
	return idle && n.counts.commitsStarted.Load() == started
}

// Export sends every logged-in connection, with its state, in batches.
// Each is marked dead first (nothing is posted to it again), so the old
// process never seals or writes on it after its state left.
func (s *upgradeServer) Export(send func(*upgradepb.Conns, []int) error) error {
	n := (*Node)(s)
	var conns []*conn
	n.router.each(func(c *conn) { conns = append(conns, c) })
	batch := &upgradepb.Conns{}
	var fds []int
	flush := func() error {
		if len(fds) == 0 {
			return nil
		}
		err := send(batch, fds)
		batch, fds = &upgradepb.Conns{}, nil
		return err
	}
	for _, c := range conns {
		st, err := n.exportConn(c)
		if err != nil {
			return fmt.Errorf("connection %s: %w", c.id(), err)
		}
		if st == nil {
			continue // closing: it stays here, and closes when this process exits
		}
		batch.Conns = append(batch.Conns, st)
		fds = append(fds, c.nc.Hash())
		if len(fds) == upgrade.MaxFDs {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// exportConn writes c's state out and marks it dead; nil for a
// connection that is closing.
func (n *Node) exportConn(c *conn) (*upgradepb.Conn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead || !c.live || c.stage.Load() != stageLoggedIn {
		return nil, nil
	}
	if closed, _ := c.nc.IsClosed(); closed || c.core.Closed() {
		// A closed session lingers until its client has read the Close
		// frame (see flush): it stays here, like any closing connection.
		return nil, nil
	}
	ss, ok := c.core.State()
	if !ok {
		return nil, errors.New("its session is not between events")
	}
	unwritten, err := n.writeQueue.pending(c.nc)
	if err != nil {
		return nil, err
	}
	tx, rx := c.tx.State(), c.rx.State()
	st := &upgradepb.Conn{
		Remote:       c.peer.String(),
		User:         c.core.User(),
		Tx:           &upgradepb.Cipher{Key: tx.Key[:], Nonce: tx.Nonce},
		Rx:           &upgradepb.Cipher{Key: rx.Key[:], Nonce: rx.Nonce},
		Unwritten:    unwritten,
		Session:      &upgradepb.Session{Next: ss.Next},
		Generation16: uint32(c.gen16),
	}
	if c.partial != nil {
		st.Partial = *c.partial
	}
	for _, d := range ss.Inflight {
		st.Session.Inflight = append(st.Session.Inflight, &upgradepb.Delivery{Seq: d.Seq, At: d.At, Id: d.ID, ServerId: d.ServerID, From: d.From})
	}
	c.dead = true
	n.handover.exported = append(n.handover.exported, c)
	return st, nil
}

func (s *upgradeServer) Release() error {
	n := (*Node)(s)
	n.stopBackground() // the monitor and sweepers read the store
	return n.store.Close()
}

func (s *upgradeServer) Resume() {
	n := (*Node)(s)
	h := &n.handover
	for _, c := range h.exported {
		c.mu.Lock()
		c.dead = false
		c.mu.Unlock()
		// A push that found it exported (a doorbell from another node of
		// a cluster) was dropped: read the queue.
		c.post(n.pool, event{kind: evPush, seq: wakeSeq})
	}
	h.exported = nil
	if len(h.gates) > 0 {
		close(h.gates[0].release) // one channel for all
		for _, g := range h.gates {
			g.nc.Close()
			unix.Close(g.peer)
		}
		h.gates = nil
	}
	closeAll(h.held)
	h.held = nil
	n.resumeAccepts()
}

// TakeBack serves on after a handover that failed once the store was
// released: see upgrade.Server.
func (s *upgradeServer) TakeBack() (int, error) {
	n := (*Node)(s)
	h := &n.handover
	r, ok := n.store.(interface{ Reopen() error })
	if !ok {
		return 0, errors.New("this node's store cannot be opened again")
	}
	if err := r.Reopen(); err != nil {
		return 0, err
	}
	n.startBackground()
	// Their state left with the new process, which may have read from
	// them, sealed and written: what this process holds of them is stale.
	// Closed before the pollers go on, so that none is read again here.
	closed := len(h.exported)
	for _, c := range h.exported {
		n.router.unregister(c.core.User(), c)
		c.nc.Close()
	}
	h.exported = nil
	s.Resume()
	return closed, nil
}

func (s *upgradeServer) Retire() {
	n := (*Node)(s)
	closeAll(n.handover.held)
	n.handover.held = nil
	// The new process has its own copies: closing these stops this
	// process accepting, not the sockets.
	n.nativeLn.Close()
	n.httpLn.Close()
	n.adminLn.Close()
	// Idle keep-alive connections would let a client's next request reach
	// this process, which no longer serves: close them (a client retries
	// an idle connection's failure on a new one, which reaches the new
	// process), and close the busy ones after their request.
	n.httpSrv.SetKeepAlivesEnabled(false)
	n.adminSrv.SetKeepAlivesEnabled(false)
}

// FinishHTTP waits, until ctx ends, for the HTTP and admin requests in
// flight after a handover (a media upload, the upgrade request itself).
func (n *Node) FinishHTTP(ctx context.Context) error {
	return errors.Join(n.httpSrv.Shutdown(ctx), n.adminSrv.Shutdown(ctx))
}

// pauseAccepts stops the event loop taking native connections without
// closing the listener: pending ones wait in the kernel's queue, for the
// new process or for this one's resumeAccepts.
func (n *Node) pauseAccepts() {
	n.handover.resumed = make(chan struct{})
	n.acceptGate.Store(&n.handover)
	if d, ok := n.nativeLn.(interface{ SetDeadline(time.Time) error }); ok {
		d.SetDeadline(time.Unix(1, 0)) // wakes the accept loop to see the gate
	}
}

func (n *Node) resumeAccepts() {
	if d, ok := n.nativeLn.(interface{ SetDeadline(time.Time) error }); ok {
		d.SetDeadline(time.Time{})
	}
	n.acceptGate.Store(nil)
	if n.handover.resumed != nil {
		close(n.handover.resumed)
	}
}

// acceptPaused blocks the accept loop while a handover holds it, and
// reports whether it did; after a successful handover it never returns
// (the process is about to exit, and the listener is the new one's).
func (n *Node) acceptPaused() bool {
	h := n.acceptGate.Load()
	if h == nil {
		return false
	}
	<-h.resumed
	return true
}

// commitsInFlight is the number of batches handed to the store and not
// yet answered.
func (n *Node) commitsInFlight() int64 { return n.counts.commits.Load() - n.counts.commitsDone.Load() }

// UpgradeFunc starts a live upgrade to binary (empty: the running
// executable) and returns its report; the process that serves it exits
// once it succeeds (the caller's business, see cmd/parley serve).
type UpgradeFunc func(ctx context.Context, binary string) (upgrade.Report, error)

// UpgradeError is the JSON of a failed POST /admin/upgrade: the error
// (the node's one JSON error shape) and the new process's last lines.
type UpgradeError struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	NewPID    int      `json:"new_pid,omitempty"`
	LastLines []string `json:"last_lines,omitempty"`
	// Released: the failure came after the old process let go of the
	// store. TookBack: it took the store back and serves on, having
	// closed Closed handed-over connections; without it, it exits.
	Released bool `json:"released,omitempty"`
	TookBack bool `json:"took_back,omitempty"`
	Closed   int  `json:"closed,omitempty"`
}

// handleUpgrade serves POST /admin/upgrade {"binary": PATH}.
func (n *Node) handleUpgrade(w http.ResponseWriter, r *http.Request) {
	if n.cfg.Upgrade == nil {
		writeError(w, http.StatusNotImplemented, "not_supported", "this server was not started by parley serve, which alone can hand itself over")
		return
	}
	var req struct {
		Binary string `json:"binary"`
	}
	if r.ContentLength != 0 {
		// JSON only: a cross-site form cannot send it without a preflight.
		if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
			writeError(w, http.StatusUnsupportedMediaType, "unsupported_media_type", "send the body as Content-Type: application/json")
			return
		}
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeError(w, http.StatusBadRequest, "bad_request", `body must be {"binary": "/path/to/parley"} or empty: `+err.Error())
			return
		}
	}
	rep, err := n.cfg.Upgrade(r.Context(), req.Binary)
	if err != nil {
		var ue UpgradeError
		ue.Error.Code, ue.Error.Message = "upgrade_failed", err.Error()
		var f *upgrade.Failed
		if errors.As(err, &f) {
			ue.Error.Message, ue.NewPID, ue.LastLines = f.Reason, f.NewPID, f.LastLines
			ue.Released, ue.TookBack, ue.Closed = f.Released, f.TookBack, f.Closed
		}
		writeJSON(w, http.StatusInternalServerError, ue)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}
