package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

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
//	           ones for the new process), let in-flight commits finish and
//	           their acks reach their clients, end every session
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
	n.pauseAccepts()
	// Every session ends with a Close frame saying to reconnect; clients
	// reconnect to the same listener, which the new process serves.
	n.router.each(func(c *conn) {
		c.post(n.pool, event{kind: evKick, code: wire.Error_SHUTTING_DOWN, text: "the server is upgrading: reconnect"})
	})
	for n.router.len() > 0 || n.commitsInFlight() > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d sessions still open: %w", n.router.len(), context.Cause(ctx))
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

func (s *upgradeServer) Export(func(*upgradepb.Conns, []int) error) error { return nil }

func (s *upgradeServer) Release() error {
	n := (*Node)(s)
	n.stopBackground() // the monitor and sweepers read the store
	return n.store.Close()
}

func (s *upgradeServer) Resume() {
	n := (*Node)(s)
	closeAll(n.handover.held)
	n.handover.held = nil
	n.resumeAccepts()
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
		}
		writeJSON(w, http.StatusInternalServerError, ue)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}
