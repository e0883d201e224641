package upgrade

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// SocketName is the handover socket's file in the data directory. It exists
// only while a handover is under way.
const SocketName = "upgrade.sock"

// Environment variables the old process sets for the new one.
const (
	// EnvSocket is the handover socket's path: a process started with it
	// is the new one of a handover, and asks the old one for everything
	// before it opens anything itself.
	EnvSocket = "PARLEY_UPGRADE_SOCKET"
	// EnvStdio names the descriptors of the old process's own stdout and
	// stderr ("3,4"): until it takes over, the new process writes to pipes
	// the old one reads (so that a failed start can be reported with its
	// last lines), and then it switches to these (see TakeStdio).
	EnvStdio = "PARLEY_UPGRADE_STDIO"
)

// Listener is the old process's end of the handover socket.
type Listener struct {
	ln   *net.UnixListener
	path string
}

// Listen opens the handover socket in dir, replacing a stale one left by a
// crash. Only the owner may connect (mode 0600), and Accept takes only the
// process it expects.
func Listen(dir string) (*Listener, error) {
	path := filepath.Join(dir, SocketName)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale handover socket: %w", err)
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("handover socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("handover socket: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	return &Listener{ln: ln, path: path}, nil
}

// Path is the socket's path, for EnvSocket.
func (l *Listener) Path() string { return l.path }

// Close removes the socket.
func (l *Listener) Close() error { return l.ln.Close() }

// Accept waits for process pid to connect, until ctx ends. A connection
// from any other process (checked with SO_PEERCRED) is refused.
func (l *Listener) Accept(ctx context.Context, pid int) (*Conn, error) {
	l.ln.SetDeadline(time.Time{}) // an earlier Accept's context may have set one
	stop := context.AfterFunc(ctx, func() { l.ln.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	for {
		uc, err := l.ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil, context.Cause(ctx)
			}
			return nil, fmt.Errorf("handover socket: %w", err)
		}
		got, err := peerPID(uc)
		if errors.Is(err, errors.ErrUnsupported) || err == nil && got == pid {
			return NewConn(uc), nil
		}
		uc.Close()
	}
}

// Dial connects the new process to the old one's handover socket.
func Dial(path string) (*Conn, error) {
	uc, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("handover socket: %w", err)
	}
	return NewConn(uc), nil
}

// Process is the new process, as the old one started it.
type Process struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once it has exited and its output is read
	err    error         // its exit status, once exited is closed
	tail   *tail
}

// Spawn starts binary with args and env (EnvSocket and EnvStdio are
// added), its output copied to stdout and stderr and its last lines kept
// for a report. stdout and stderr must be the old process's own files,
// which the new one takes over (see TakeStdio).
func Spawn(binary string, args, env []string, socket string, stdout, stderr *os.File) (*Process, error) {
	cmd := exec.Command(binary, args...)
	cmd.Env = append(env, EnvSocket+"="+socket, EnvStdio+"=3,4")
	cmd.ExtraFiles = []*os.File{stdout, stderr}
	p := &Process{cmd: cmd, exited: make(chan struct{}), tail: &tail{max: tailLines}}
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	err = cmd.Start()
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return nil, fmt.Errorf("start %s: %w", binary, err)
	}
	var copiers sync.WaitGroup
	copiers.Add(2)
	go p.copy(&copiers, outR, stdout)
	go p.copy(&copiers, errR, stderr)
	go func() {
		copiers.Wait() // the pipes close when it exits or takes its stdio over
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

const tailLines = 20

func (p *Process) copy(wg *sync.WaitGroup, r *os.File, w io.Writer) {
	defer wg.Done()
	defer r.Close()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), 64<<10)
	for sc.Scan() {
		line := sc.Text()
		p.tail.add(line)
		fmt.Fprintln(w, line)
	}
}

// PID is the new process's id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Exited is closed once the process has exited (or has taken over its
// stdio and exited later); Err then says how.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// Err is the process's exit status, once Exited is closed.
func (p *Process) Err() error { return p.err }

// Kill ends the process and waits for it, until ctx ends.
func (p *Process) Kill(ctx context.Context) {
	p.cmd.Process.Kill()
	select {
	case <-p.exited:
	case <-ctx.Done():
	}
}

// LastLines is the last lines the process wrote before it took over its
// stdio (or exited).
func (p *Process) LastLines() []string { return p.tail.lines() }

// tail keeps the last max lines.
type tail struct {
	mu   sync.Mutex
	max  int
	keep []string
}

func (t *tail) add(s string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.keep) == t.max {
		t.keep = append(t.keep[:0], t.keep[1:]...)
	}
	t.keep = append(t.keep, s)
}

func (t *tail) lines() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.keep...)
}

// TakeStdio makes the new process write to the old one's stdout and
// stderr, which it inherited (EnvStdio), instead of the pipes the old one
// reads: called once it has taken over, so that its output outlives the old
// process (a write to a pipe nobody reads would kill it with SIGPIPE).
func TakeStdio() error {
	v := os.Getenv(EnvStdio)
	if v == "" {
		return nil
	}
	os.Unsetenv(EnvStdio)
	outS, errS, ok := strings.Cut(v, ",")
	out, err1 := strconv.Atoi(outS)
	errFD, err2 := strconv.Atoi(errS)
	if !ok || err1 != nil || err2 != nil {
		return fmt.Errorf("%s=%q: want two descriptors, e.g. 3,4", EnvStdio, v)
	}
	for _, d := range [][2]int{{out, 1}, {errFD, 2}} {
		if err := dupTo(d[0], d[1]); err != nil {
			return fmt.Errorf("take over stdio: %w", err)
		}
		unix.Close(d[0])
	}
	return nil
}

// Inherited reports whether this process was started by a handover, and
// the socket to ask for it.
// The variable is removed, so that a later upgrade's process does not
// see it.
func Inherited() (socket string, ok bool) {
	socket, ok = os.LookupEnv(EnvSocket)
	os.Unsetenv(EnvSocket)
	return socket, ok
}
