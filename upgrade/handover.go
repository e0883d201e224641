package upgrade

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/parleyhq/parley/buildinfo"
	"github.com/parleyhq/parley/upgrade/upgradepb"
)

// Server is what the old process's server does during a handover, called
// in this order: Listeners; then, once the new process is ready, Quiesce,
// Export and Release; then Retire once the new process serves. Resume
// undoes Quiesce when the handover fails before Release.
type Server interface {
	// Listeners returns the listening sockets by name; the descriptors
	// stay the server's (they are sent as copies).
	Listeners() (names []string, fds []int, err error)
	// Quiesce stops taking new work, lets what is in progress finish
	// (in-flight commits and their acks), and stops every connection at a
	// frame boundary; ctx bounds the wait.
	Quiesce(ctx context.Context) error
	// Export calls send with the connections, in batches of at most MaxFDs;
	// after it the server never reads, seals or writes on them again.
	Export(send func(*upgradepb.Conns, []int) error) error
	// Release closes the store, so the new process can open it.
	Release() error
	// Resume goes back to serving after a failed Quiesce or Export.
	Resume()
	// TakeBack goes back to serving after a handover failed past Release
	// (the new process died with the store, say): it opens the store
	// again and closes the connections it exported, whose state the new
	// process may have moved on (their clients reconnect). It returns
	// how many it closed; an error leaves the server unable to serve.
	TakeBack() (closed int, err error)
	// Retire stops accepting: the new process has the listeners.
	Retire()
}

// Options are a handover's settings.
type Options struct {
	// Binary is the new executable; default this process's own, as it is
	// on disk now.
	Binary string
	// Args and Env are the new process's (default: this process's).
	Args, Env []string
	// Dir is where the handover socket goes: the data directory.
	Dir string
	// Timeout bounds the wait for the new process to be ready, and then
	// to serve. Default 30 s.
	Timeout time.Duration
	// Stdout and Stderr are this process's own, handed to the new one.
	// Default os.Stdout and os.Stderr.
	Stdout, Stderr *os.File
	Log            *slog.Logger
}

// Report says how a handover went.
type Report struct {
	OldPID     int    `json:"old_pid"`
	NewPID     int    `json:"new_pid"`
	OldVersion string `json:"old_version"`
	NewVersion string `json:"new_version"`
	// Duration is from the start of the new process to its word that it
	// serves.
	Duration time.Duration `json:"duration_ns"`
	// NoCommits is how long no commit could happen: from the old process
	// quiescing to the new one's store being open.
	NoCommits time.Duration `json:"no_commits_ns"`
	// Connections is how many established connections were handed over.
	Connections int `json:"connections"`
	// Phases break Duration down.
	Phases Phases `json:"phases"`
}

// Phases are the parts of a handover, in order.
type Phases struct {
	Start   time.Duration `json:"start_ns"`   // spawn to Ready: the new process starting up
	Quiesce time.Duration `json:"quiesce_ns"` // in-flight work finishing, connections stopped
	Export  time.Duration `json:"export_ns"`  // connections sent
	Release time.Duration `json:"release_ns"` // the store closed
	Adopt   time.Duration `json:"adopt_ns"`   // Released to Serving: the new process opening the store, adopting
}

// Failed is a handover that did not happen: the old process goes on
// serving. LastLines are the new process's last lines of output.
type Failed struct {
	Reason    string
	NewPID    int
	LastLines []string
	// Released is set when the failure came after the old process let go
	// of the store; TookBack then says whether it took it back and goes
	// on serving (Closed: the connections it closed doing so), or cannot
	// serve and must exit.
	Released bool
	TookBack bool
	Closed   int
}

func (f *Failed) Error() string {
	s := "upgrade failed: " + f.Reason
	switch {
	case f.TookBack:
		s += fmt.Sprintf("; the old process took the store back and serves on (%d handed-over connections closed: their clients reconnect)", f.Closed)
	case f.Released:
		s += "; the old process could not take the store back"
	}
	if len(f.LastLines) > 0 {
		s += "\nthe new process's last lines:\n  " + strings.Join(f.LastLines, "\n  ")
	}
	return s
}

// Run hands srv over to a new process. On success the caller exits once
// it has finished what it still serves (HTTP requests in flight); on a
// *Failed the new process is gone, and srv serves on (after a Resume, or
// after a TakeBack past Release), unless Failed.Released is set without
// Failed.TookBack.
func Run(ctx context.Context, srv Server, o Options) (Report, error) {
	rep := Report{OldPID: os.Getpid(), OldVersion: buildinfo.Get().Version}
	if o.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return rep, &Failed{Reason: "find this process's executable: " + err.Error()}
		}
		o.Binary = exe
	}
	if o.Args == nil {
		o.Args = os.Args[1:]
	}
	if o.Env == nil {
		o.Env = os.Environ()
	}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	if o.Stdout == nil {
		o.Stdout = os.Stdout
	}
	if o.Stderr == nil {
		o.Stderr = os.Stderr
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	ln, err := Listen(o.Dir)
	if err != nil {
		return rep, &Failed{Reason: err.Error()}
	}
	defer ln.Close()
	start := time.Now()
	proc, err := Spawn(o.Binary, o.Args, o.Env, ln.Path(), o.Stdout, o.Stderr)
	if err != nil {
		return rep, &Failed{Reason: err.Error()}
	}
	rep.NewPID = proc.PID()
	o.Log.Info("upgrade: new process started", "pid", rep.NewPID, "binary", o.Binary)
	h := &handing{srv: srv, ln: ln, proc: proc, o: o, rep: &rep}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	// The new process's exit ends every wait on it.
	ctx, cancelExit := context.WithCancelCause(ctx)
	defer cancelExit(nil)
	go func() {
		select {
		case <-proc.Exited():
			cancelExit(fmt.Errorf("the new process exited (%v)", proc.Err()))
		case <-ctx.Done():
		}
	}()
	err = h.run(ctx, start)
	if err != nil {
		// Whatever it was doing, the new process is not taking over.
		killCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		proc.Kill(killCtx)
		cancel()
		f := &Failed{Reason: err.Error(), NewPID: rep.NewPID, LastLines: proc.LastLines(), Released: h.released}
		if c := context.Cause(ctx); c != nil && !errors.Is(c, context.Canceled) && !strings.Contains(f.Reason, c.Error()) {
			f.Reason = fmt.Sprintf("%v (%v)", err, c)
		}
		switch {
		case h.released:
			closed, err := srv.TakeBack()
			if err != nil {
				o.Log.Error("upgrade failed after the store was released, and it cannot be taken back", "new_pid", rep.NewPID, "err", f.Reason, "take_back", err)
				return rep, f
			}
			f.TookBack, f.Closed = true, closed
		case h.quiesced:
			srv.Resume()
		}
		o.Log.Error("upgrade failed: going on serving", "new_pid", rep.NewPID, "err", f.Reason, "released", f.Released, "closed", f.Closed)
		return rep, f
	}
	rep.Duration = time.Since(start)
	o.Log.Info("upgrade: the new process serves", "new_pid", rep.NewPID, "new_version", rep.NewVersion,
		"took", rep.Duration, "no_commits", rep.NoCommits, "connections", rep.Connections)
	return rep, nil
}

type handing struct {
	srv                Server
	ln                 *Listener
	proc               *Process
	o                  Options
	rep                *Report
	quiesced, released bool
}

// recv reads the next message, until ctx ends.
func recv(ctx context.Context, c *Conn) (*upgradepb.Message, []int, error) {
	c.uc.SetReadDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { c.uc.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	m, fds, err := c.Recv()
	if err != nil && ctx.Err() != nil {
		return nil, nil, fmt.Errorf("%w: %w", err, context.Cause(ctx))
	}
	if a := m.GetAbort(); a != nil {
		closeFDs(fds)
		return nil, nil, fmt.Errorf("the new process gave up: %s", a.Reason)
	}
	return m, fds, err
}

func (h *handing) run(ctx context.Context, start time.Time) error {
	c, err := h.ln.Accept(ctx, h.proc.PID())
	if err != nil {
		return fmt.Errorf("waiting for the new process to connect: %w", err)
	}
	defer c.Close()
	m, fds, err := recv(ctx, c)
	if err != nil {
		return fmt.Errorf("waiting for the new process's hello: %w", err)
	}
	closeFDs(fds)
	hello := m.GetHello()
	if hello == nil {
		return errors.New("the new process did not say hello")
	}
	h.rep.NewVersion = hello.Version
	if hello.Protocol != Protocol {
		c.Send(abort("protocol %d is not this process's %d", hello.Protocol, Protocol), nil)
		return fmt.Errorf("the new process (%s) speaks handover protocol %d, this one %d", hello.Version, hello.Protocol, Protocol)
	}
	names, lfds, err := h.srv.Listeners()
	if err != nil {
		return err
	}
	if err := c.Send(&upgradepb.Message{Kind: &upgradepb.Message_Listeners{Listeners: &upgradepb.Listeners{Protocol: Protocol, Names: names}}}, lfds); err != nil {
		return err
	}
	if m, _, err = recv(ctx, c); err != nil {
		return fmt.Errorf("waiting for the new process to be ready: %w", err)
	}
	if m.GetReady() == nil {
		return errors.New("the new process sent something other than Ready")
	}
	h.rep.Phases.Start = time.Since(start)

	// From here the old process stops serving; until Released it can
	// still take everything back.
	t := time.Now()
	h.quiesced = true
	if err := h.srv.Quiesce(ctx); err != nil {
		c.Send(abort("the old process could not quiesce: %v", err), nil)
		return fmt.Errorf("quiesce: %w", err)
	}
	quiesced := time.Now()
	h.rep.Phases.Quiesce = quiesced.Sub(t)
	t = quiesced
	err = h.srv.Export(func(b *upgradepb.Conns, fds []int) error {
		h.rep.Connections += len(b.Conns)
		return c.Send(&upgradepb.Message{Kind: &upgradepb.Message_Conns{Conns: b}}, fds)
	})
	if err != nil {
		c.Send(abort("the old process could not export its connections: %v", err), nil)
		return fmt.Errorf("export connections: %w", err)
	}
	h.rep.Phases.Export = time.Since(t)
	t = time.Now()
	h.released = true
	if err := h.srv.Release(); err != nil {
		return fmt.Errorf("close the store: %w", err)
	}
	h.rep.Phases.Release = time.Since(t)
	t = time.Now()
	rel := &upgradepb.Released{QuiescedUnixNano: quiesced.UnixNano(), Connections: int64(h.rep.Connections)}
	if err := c.Send(&upgradepb.Message{Kind: &upgradepb.Message_Released{Released: rel}}, nil); err != nil {
		return err
	}
	if m, _, err = recv(ctx, c); err != nil {
		return fmt.Errorf("waiting for the new process to serve: %w", err)
	}
	sv := m.GetServing()
	if sv == nil {
		return errors.New("the new process sent something other than Serving")
	}
	h.rep.Phases.Adopt = time.Since(t)
	h.rep.NoCommits = time.Unix(0, sv.StoreOpenUnixNano).Sub(quiesced)
	h.rep.NewVersion = sv.Version
	h.srv.Retire()
	return nil
}

func abort(format string, args ...any) *upgradepb.Message {
	return &upgradepb.Message{Kind: &upgradepb.Message_Abort{Abort: &upgradepb.Abort{Reason: fmt.Sprintf(format, args...)}}}
}

// Joined is the new process's side of a handover.
type Joined struct {
	c *Conn
	// Listeners are the old process's listening sockets, by name.
	Listeners map[string]net.Listener
}

// Join connects to the old process's handover socket, says hello and
// receives the listeners, until ctx ends.
func Join(ctx context.Context, socket string) (*Joined, error) {
	c, err := Dial(socket)
	if err != nil {
		return nil, err
	}
	bi := buildinfo.Get()
	hello := &upgradepb.Hello{Protocol: Protocol, Version: bi.Version, Go: bi.Go, Pid: int64(os.Getpid())}
	if err := c.Send(&upgradepb.Message{Kind: &upgradepb.Message_Hello{Hello: hello}}, nil); err != nil {
		c.Close()
		return nil, err
	}
	m, fds, err := recv(ctx, c)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("waiting for the listeners: %w", err)
	}
	ls := m.GetListeners()
	if ls == nil || len(ls.Names) != len(fds) {
		closeFDs(fds)
		c.Close()
		return nil, errors.New("the old process did not send its listeners")
	}
	j := &Joined{c: c, Listeners: make(map[string]net.Listener)}
	for i, name := range ls.Names {
		f := os.NewFile(uintptr(fds[i]), name)
		l, err := net.FileListener(f)
		f.Close()
		if err != nil {
			closeFDs(fds[i+1:])
			j.Close()
			return nil, fmt.Errorf("listener %s: %w", name, err)
		}
		j.Listeners[name] = l
	}
	return j, nil
}

// Ready tells the old process that this one is prepared, and receives the
// connections until the old process has released the store. Each Conns
// batch comes with its descriptors, which become the caller's.
func (j *Joined) Ready(ctx context.Context, conn func(*upgradepb.Conn, int)) (*upgradepb.Released, error) {
	if err := j.c.Send(&upgradepb.Message{Kind: &upgradepb.Message_Ready{Ready: &upgradepb.Ready{}}}, nil); err != nil {
		return nil, err
	}
	for {
		m, fds, err := recv(ctx, j.c)
		if err != nil {
			return nil, fmt.Errorf("waiting for the connections: %w", err)
		}
		switch k := m.Kind.(type) {
		case *upgradepb.Message_Conns:
			if len(k.Conns.Conns) != len(fds) {
				closeFDs(fds)
				return nil, fmt.Errorf("a batch of %d connections came with %d descriptors", len(k.Conns.Conns), len(fds))
			}
			for i, st := range k.Conns.Conns {
				conn(st, fds[i])
			}
		case *upgradepb.Message_Released:
			closeFDs(fds)
			return k.Released, nil
		default:
			closeFDs(fds)
			return nil, fmt.Errorf("unexpected %T before Released", m.Kind)
		}
	}
}

// Serving tells the old process that this one has taken over.
func (j *Joined) Serving(adopted int, storeOpen time.Time) error {
	sv := &upgradepb.Serving{Pid: int64(os.Getpid()), Version: buildinfo.Get().Version, Adopted: int64(adopted), StoreOpenUnixNano: storeOpen.UnixNano()}
	return j.c.Send(&upgradepb.Message{Kind: &upgradepb.Message_Serving{Serving: sv}}, nil)
}

// Abort tells the old process that this one gives up.
func (j *Joined) Abort(err error) {
	j.c.Send(abort("%v", err), nil)
}

// Close closes the handover socket.
func (j *Joined) Close() error { return j.c.Close() }
