package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/parleyhq/parley/cluster"
	"github.com/parleyhq/parley/node"
	"github.com/parleyhq/parley/upgrade"
	"github.com/parleyhq/parley/upgrade/upgradepb"
)

func newUpgradeCmd() *cobra.Command {
	var (
		admin, token, binary string
		asJSON               bool
		timeout              time.Duration
	)
	cmd := &cobra.Command{
		Use:   "upgrade",
		Short: "Hand a running server over to a new binary, with no connection dropped",
		Long: `Ask the server at --admin to start --binary (default: its own executable
as it is on disk now) and hand everything over to it: the listening sockets,
every logged-in connection with its encryption and session state, and the
store. The old process exits once the new one serves; clients notice
nothing. If the new binary fails to start, exits, or is not ready within the
server's timeout, the old process keeps everything and goes on serving, and
this command prints the failure with the new process's last lines.

kill -USR2 <pid> does the same with the default binary.`,
		Example: `  go build -o /usr/local/bin/parley.new ./cmd/parley
  mv /usr/local/bin/parley.new /usr/local/bin/parley
  parley upgrade --admin 127.0.0.1:9090
  parley upgrade --admin 127.0.0.1:9090 --binary /opt/parley/v1.5.0/parley --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			base, err := listenerURL("--admin", admin, "http://127.0.0.1:9090")
			if err != nil {
				return err
			}
			var body io.Reader
			if binary != "" {
				b, _ := json.Marshal(map[string]string{"binary": binary})
				body = bytes.NewReader(b)
			}
			req, err := http.NewRequestWithContext(cmd.Context(), "POST", base+"/admin/upgrade", body)
			if err != nil {
				return err
			}
			if body != nil {
				req.Header.Set("Content-Type", "application/json")
			}
			if token != "" {
				req.Header.Set("Authorization", "Bearer "+token)
			}
			resp, err := (&http.Client{Timeout: timeout}).Do(req)
			if err != nil {
				return fmt.Errorf("ask %s to upgrade: %w", base, err)
			}
			defer resp.Body.Close()
			raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			if err != nil {
				return fmt.Errorf("read the answer: %w", err)
			}
			if resp.StatusCode != http.StatusOK {
				var ue node.UpgradeError
				if json.Unmarshal(raw, &ue) != nil || ue.Error.Message == "" {
					return fmt.Errorf("upgrade: %s: %s", resp.Status, strings.TrimSpace(string(raw)))
				}
				if asJSON {
					cmd.OutOrStdout().Write(raw)
				}
				msg := "upgrade failed; the old process goes on serving: " + ue.Error.Message
				switch {
				case ue.TookBack:
					msg = fmt.Sprintf("upgrade failed after the old process released its store; it took the store back and goes on serving, and closed the %d connections it had handed over (their clients reconnect): %s", ue.Closed, ue.Error.Message)
				case ue.Released:
					msg = "upgrade failed after the old process released its store, which it could not take back: it exits (a service manager restarts it): " + ue.Error.Message
				}
				if len(ue.LastLines) > 0 {
					msg += fmt.Sprintf("\nthe new process (pid %d) said last:\n  %s", ue.NewPID, strings.Join(ue.LastLines, "\n  "))
				}
				return errors.New(msg)
			}
			if asJSON {
				_, err := cmd.OutOrStdout().Write(raw)
				return err
			}
			var rep upgrade.Report
			if err := json.Unmarshal(raw, &rep); err != nil {
				return fmt.Errorf("upgrade answer: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "upgraded: pid %d (%s) -> pid %d (%s) in %v\n  %d connections handed over; no commits for %v\n",
				rep.OldPID, rep.OldVersion, rep.NewPID, rep.NewVersion, rep.Duration.Round(time.Millisecond),
				rep.Connections, rep.NoCommits.Round(100*time.Microsecond))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&admin, "admin", "http://127.0.0.1:9090", "the server's admin listener: URL, or HOST:PORT as 'parley serve --admin' takes it")
	f.StringVar(&token, "token", "", "admin token, when the admin listener needs one (or PARLEY_TOKEN)")
	f.StringVar(&binary, "binary", "", "the new executable (default: the server's own, as it is on disk now)")
	f.BoolVar(&asJSON, "json", false, "print the server's JSON report")
	f.DurationVar(&timeout, "timeout", 2*time.Minute, "how long to wait for the server's answer")
	return cmd
}

// clusterJoin starts the node's place in its cluster (nil, nil for a node
// alone).
type clusterJoin func(context.Context) (*cluster.Cluster, *node.ClusterConfig, error)

// upgrader runs a serving process's live upgrades: from POST
// /admin/upgrade and from SIGUSR2, one at a time.
type upgrader struct {
	log     *slog.Logger
	dataDir string
	n       func() *node.Node
	// retired is closed once a new process serves: this one finishes
	// its HTTP requests and exits.
	retired chan struct{}
	once    sync.Once
	// lost is closed when a handover failed after this process let go of
	// the store: it cannot serve any more, and exits with an error.
	lost chan struct{}
	// cluster is the node's place in its cluster, nil for a node alone:
	// set before the first upgrade can run.
	cluster *cluster.Cluster
}

func newUpgrader(log *slog.Logger, dataDir string, n func() *node.Node) *upgrader {
	return &upgrader{log: log, dataDir: dataDir, n: n, retired: make(chan struct{}), lost: make(chan struct{})}
}

func (u *upgrader) run(ctx context.Context, binary string) (upgrade.Report, error) {
	n := u.n()
	if n == nil {
		return upgrade.Report{}, errors.New("the server is still starting: try again")
	}
	srv, done, err := n.AsUpgradeServer()
	if err != nil {
		return upgrade.Report{}, err
	}
	defer done()
	if u.cluster != nil {
		srv = clusterReleasing{srv, u.cluster}
	}
	// The request's context must not cut a handover short midway: the
	// handover has its own timeout.
	rep, err := upgrade.Run(context.WithoutCancel(ctx), srv, upgrade.Options{Binary: binary, Dir: u.dataDir, Log: u.log})
	var f *upgrade.Failed
	switch {
	case err == nil:
		u.once.Do(func() { close(u.retired) })
	case errors.As(err, &f) && f.Released && !f.TookBack:
		u.once.Do(func() { close(u.lost) })
	}
	return rep, err
}

// clusterReleasing is a node of a cluster as the old process of a live
// upgrade: at Release it also leaves the cluster, closing its NATS
// connection and shutting its embedded NATS server down (a clean
// shutdown: its stream leaderships move to the other nodes), whose ports
// and JetStream directory the new process takes next. The other nodes
// keep their quorum meanwhile; this node's commits wait for the new
// process to be back in the cluster. Past Release it cannot take its
// store back: a failure then ends this process, and the service manager
// starts the node again.
type clusterReleasing struct {
	upgrade.Server
	cl *cluster.Cluster
}

func (s clusterReleasing) Release() error {
	err := s.Server.Release()
	s.cl.Close()
	return err
}

func (s clusterReleasing) TakeBack() (int, error) {
	return 0, errors.New("a node of a cluster left the cluster at the release, and does not join it again")
}

// onSignal runs an upgrade for each SIGUSR2 until ctx ends.
func (u *upgrader) onSignal(ctx context.Context) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGUSR2)
	go func() {
		defer signal.Stop(ch)
		for {
			select {
			case <-ctx.Done():
				return
			case <-ch:
				// The report goes to the log (upgrade.Run logs it).
				u.run(ctx, "")
			}
		}
	}()
}

// crashBeforeServing, stamped with -ldflags "-X main.crashBeforeServing=1",
// makes a build that dies as the new process of a live upgrade, after it
// opened the store and adopted the connections and before it tells the
// old process it serves: the worst moment, which tests need to produce.
// Never set in a release build.
var crashBeforeServing string

// joinUpgrade is the start of a process that an old one spawned for a
// live upgrade: it takes the listeners and the connections, and starts
// the node once the old process has let go of the store.
func joinUpgrade(ctx context.Context, socket string, cfg node.Config, joinCluster func(context.Context, *node.Config) error) (*node.Node, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	j, err := upgrade.Join(ctx, socket)
	if err != nil {
		return nil, fmt.Errorf("live upgrade: %w", err)
	}
	defer j.Close()
	in := &node.Inherited{Native: j.Listeners["native"], HTTP: j.Listeners["http"], Admin: j.Listeners["admin"]}
	cfg.Inherit = in
	_, err = j.Ready(ctx, func(st *upgradepb.Conn, fd int) {
		in.Conns = append(in.Conns, node.InheritedConn{FD: fd, State: st})
	})
	if err != nil {
		for _, c := range in.Conns {
			syscall.Close(c.FD)
		}
		return nil, fmt.Errorf("live upgrade: %w", err)
	}
	// A node of a cluster joins it only now: the old process has left it,
	// and its embedded NATS server's ports and directory are free.
	if err := joinCluster(ctx, &cfg); err != nil {
		j.Abort(err)
		return nil, err
	}
	n, err := node.Start(ctx, cfg)
	if err != nil {
		j.Abort(err)
		return nil, err
	}
	if crashBeforeServing != "" {
		fmt.Fprintln(os.Stderr, "parley: this build was stamped to crash before it serves (a test build)")
		os.Exit(3)
	}
	opened := time.Now()
	if err := upgrade.TakeStdio(); err != nil {
		cfg.Log.Warn("live upgrade: keeping the old process's pipes for output", "err", err)
	}
	if err := j.Serving(n.Adopted(), opened); err != nil {
		// The old process is gone or gave up: it exits either way, and
		// this one has everything.
		cfg.Log.Warn("live upgrade: could not tell the old process", "err", err)
	}
	return n, nil
}

// notifySystemd sends state to systemd's notify socket, if there is one
// (Type=notify); with NotifyAccess=all the process that took over in a
// live upgrade says MAINPID= so that systemd follows it.
func notifySystemd(state string) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	if strings.HasPrefix(path, "@") {
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return
	}
	defer c.Close()
	c.Write([]byte(state))
}

// runServer runs the node until the command's context ends (SIGINT,
// SIGTERM) or a live upgrade hands it over to a new process. procs, if
// positive, is the GOMAXPROCS the process takes once its node has started
// (see pollerProcs).
func runServer(cmd *cobra.Command, cfg node.Config, procs int, join clusterJoin) error {
	ctx, log := cmd.Context(), cfg.Log
	var cur atomic.Pointer[node.Node]
	u := newUpgrader(log, cfg.DataDir, cur.Load)
	cfg.Upgrade = u.run
	var cl *cluster.Cluster
	defer func() {
		if cl != nil {
			cl.Close() // after the node has closed, or left it in an upgrade
		}
	}()
	joinCluster := func(ctx context.Context, cfg *node.Config) error {
		c, cc, err := join(ctx)
		if err != nil || c == nil {
			return err
		}
		cl, u.cluster, cfg.Cluster = c, c, cc
		return nil
	}
	var (
		n   *node.Node
		err error
	)
	if sock, ok := upgrade.Inherited(); ok {
		n, err = joinUpgrade(ctx, sock, cfg, joinCluster)
		if err == nil {
			notifySystemd(fmt.Sprintf("MAINPID=%d\nREADY=1", os.Getpid()))
		}
	} else if err = joinCluster(ctx, &cfg); err == nil {
		n, err = node.Start(ctx, cfg)
		notifySystemd("READY=1")
	}
	if err != nil {
		return err
	}
	if procs > 0 {
		cpus := runtime.GOMAXPROCS(procs)
		log.Debug("scheduler", "cpus", cpus, "pollers", cfg.Pollers, "gomaxprocs", procs)
	}
	cur.Store(n)
	fmt.Fprintf(cmd.OutOrStdout(), "parley serving: native %s, http %s, admin %s\nserver key: %x\n",
		n.NativeAddr(), n.HTTPURL(), n.AdminURL(), n.PublicKey())
	u.onSignal(ctx)
	select {
	case <-ctx.Done():
		if cl != nil {
			// Before the clients move: no request of theirs, or of the
			// other nodes, goes to a leader here that is about to vanish.
			log.Info("stopping: handing this node's stream leaderships to the other nodes")
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			moved, err := cl.StepDown(sctx)
			cancel()
			log.Info("stopping: stream leaderships handed to the other nodes", "streams", moved, "err", err)
		}
		log.Info("shutting down: finishing in-flight commits")
		return n.Close()
	case <-u.retired:
		log.Info("handed over to the new process: finishing HTTP requests in flight")
		fctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := n.FinishHTTP(fctx); err != nil {
			log.Warn("HTTP requests cut off at exit", "err", err)
		}
		return nil
	case <-u.lost:
		return errors.New("a live upgrade failed after this process had closed its store: it cannot serve any more; start parley serve again (a service manager restarts it)")
	}
}
