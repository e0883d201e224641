package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/parleyhq/parley/bench"
)

// benchFlags are the flags every bench mode shares.
type benchFlags struct {
	cfg        bench.Config
	src        string
	asJSON     bool
	quiet      bool
	cpuprofile string
}

func newBenchCmd() *cobra.Command {
	var bf benchFlags
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Load-test a running Parley node and measure what it costs",
		Long: `Drive a running node over the native protocol and measure it. Start with
setup (once per server), then run any mode; each shows a progress line on
stderr and ends with a summary table (--json: one JSON object).

  setup   provision test accounts through the admin listener
  idle    hold N logged-in connections: login rate and cost, memory per connection
  pairs   sender->receiver pairs: throughput, send->delivered latency, CPU per message
  failover  pairs across a cluster while one node is killed or stopped: gap, reconnects, loss
  storm   drop N connections at once: time until all are logged in again
  drain   queue M messages for an offline user: how fast they drain at login

The server's CPU and memory come from its admin listener (GET /admin/process),
so the bench can share the machine with it. Methods: go doc ./bench.

A cluster: give every node's native listener in --addr and admin listener in
--admin, comma-separated, in the same order. User i connects to the
(i mod n)th node, so every pair crosses nodes; the CPU figures are each
node's and their sum (an embedded NATS server's CPU is its node's).`,
		Example: `  parley bench setup --users 20000
  parley bench idle --conns 19000 --hold 10s
  parley bench pairs --pairs 200 --window 1 --size 64
  parley bench pairs --pairs 200 --window 16 --rate 50000 --json
  parley bench storm --conns 19000
  parley bench drain --msgs 50000
  parley bench --addr 127.0.0.1:5301,127.0.0.1:5302,127.0.0.1:5303 --admin 127.0.0.1:9301,127.0.0.1:9302,127.0.0.1:9303 pairs --pairs 200`,
		Args: cobra.NoArgs,
	}
	f := cmd.PersistentFlags()
	f.StringVar(&bf.cfg.Addr, "addr", "", "the node's native listener, HOST:PORT, or a cluster's, comma-separated (default: those the node advertised at setup, else 127.0.0.1:5222)")
	f.StringVar(&bf.cfg.Admin, "admin", "http://127.0.0.1:9090", "the node's admin listener: URL, or HOST:PORT as 'parley serve --admin' takes it; a cluster: every node's, comma-separated, in the order of --addr")
	f.StringVar(&bf.cfg.State, "state", "", "bench state file (default: "+bench.DefaultStatePath("http://127.0.0.1:9090")+", named after --admin)")
	f.IntVar(&bf.cfg.Offset, "offset", 0, "first test user to use: give bench processes sharing a node disjoint ranges")
	f.StringVar(&bf.src, "src", "auto", "source addresses to spread connections over, e.g. 127.0.0.2-127.0.0.20; auto: on loopback, 127.0.0.2 and up, one per 2,000 connections; none: the kernel's choice")
	f.IntVar(&bf.cfg.Concurrency, "concurrency", 0, "most logins in flight (0: 256, storm 1000)")
	f.DurationVar(&bf.cfg.DialTimeout, "dial-timeout", 10*time.Second, "bound on one connect and handshake")
	f.BoolVar(&bf.cfg.FullHandshake, "full-handshake", false, "log in with a full handshake every time, as a device's first login does, instead of resuming with the ticket of the user's last login in this run")
	f.BoolVar(&bf.asJSON, "json", false, "print the result as one JSON object")
	f.BoolVarP(&bf.quiet, "quiet", "q", false, "no progress line on stderr")
	f.StringVar(&bf.cpuprofile, "cpuprofile", "", "write the bench's own CPU profile to this file (go tool pprof)")
	cmd.AddCommand(newBenchSetupCmd(&bf), newBenchIdleCmd(&bf), newBenchPairsCmd(&bf), newBenchFailoverCmd(&bf), newBenchStormCmd(&bf), newBenchDrainCmd(&bf))
	return cmd
}

// run runs one mode with the shared flags and the mode's own (mc: the
// fields its flags set; each subcommand has its own, since they share flag
// names with different defaults) and prints its result.
func (bf *benchFlags) run(cmd *cobra.Command, mc *bench.Config, mode func(context.Context, bench.Config, io.Writer) (bench.Result, error)) error {
	var src []netip.Addr
	var err error
	autoSrc := bf.src == "auto"
	if !autoSrc && bf.src != "none" {
		if src, err = bench.ParseSources(bf.src); err != nil {
			return err
		}
	}
	cfg := *mc
	cfg.Addr, cfg.Admin, cfg.State, cfg.Offset = bf.cfg.Addr, bf.cfg.Admin, bf.cfg.State, bf.cfg.Offset
	// --admin names one node, or every node of a cluster.
	var admins []string
	for _, a := range strings.Split(cfg.Admin, ",") {
		u, err := listenerURL("--admin", a, "http://127.0.0.1:9090")
		if err != nil {
			return err
		}
		admins = append(admins, u)
	}
	cfg.Admin = strings.Join(admins, ",")
	if cfg.Server != "" {
		if cfg.Server, err = listenerURL("--server", cfg.Server, "http://127.0.0.1:8080"); err != nil {
			return err
		}
	}
	cfg.Concurrency, cfg.DialTimeout, cfg.Src, cfg.AutoSrc = bf.cfg.Concurrency, bf.cfg.DialTimeout, src, autoSrc
	cfg.FullHandshake = bf.cfg.FullHandshake
	if bf.cpuprofile != "" {
		pf, err := os.Create(bf.cpuprofile)
		if err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		defer pf.Close()
		if err := pprof.StartCPUProfile(pf); err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	var progress io.Writer = cmd.ErrOrStderr()
	if bf.quiet {
		progress = nil
	}
	res, err := mode(cmd.Context(), cfg, progress)
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	if bf.asJSON {
		enc := json.NewEncoder(out)
		enc.SetEscapeHTML(false)
		err = enc.Encode(res)
	} else {
		err = bench.WriteTable(out, res)
	}
	if err != nil {
		return err
	}
	return verdict(res)
}

// benchFailed makes a run that lost messages or met errors exit 1, after
// its result was printed.
type benchFailed struct{ msg string }

func (e *benchFailed) Error() string { return e.msg }
func (e *benchFailed) ExitCode() int { return 1 }

func verdict(r bench.Result) error {
	var lost, errs int64
	switch r := r.(type) {
	case *bench.PairsResult:
		lost, errs = r.Lost, r.Errors
	case *bench.DrainResult:
		lost, errs = r.Lost, r.Errors
	case *bench.IdleResult:
		errs = r.Errors
	case *bench.StormResult:
		errs = r.Errors
	}
	switch {
	case lost != 0:
		return &benchFailed{fmt.Sprintf("bench: %d messages lost, duplicated or out of order: that is a server bug; keep this output and the server log", lost)}
	case errs != 0:
		return &benchFailed{fmt.Sprintf("bench: %d errors (see the samples above): the figures are not trustworthy", errs)}
	}
	return nil
}

func newBenchSetupCmd(bf *benchFlags) *cobra.Command {
	var mc bench.Config
	cmd := &cobra.Command{
		Use:   "setup",
		Short: "Provision test accounts and remember their keys",
		Long: `Create --users test accounts (+15550000000, +15550000001, ...) through the
admin listener's bulk endpoint, and write the bench state file: a seed from
which every user's device key is derived, and the server key from the public
HTTP API (--server). Running it again keeps the seed (the same keys) unless
--fresh.`,
		Example: `  parley bench setup --users 20000
  parley bench setup --users 1000 --admin http://127.0.0.1:39090 --server http://127.0.0.1:38080`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return bf.run(cmd, &mc, func(ctx context.Context, cfg bench.Config, w io.Writer) (bench.Result, error) {
				return bench.Setup(ctx, cfg, w)
			})
		},
	}
	f := cmd.Flags()
	f.IntVar(&mc.Users, "users", 0, "number of test accounts (required)")
	f.StringVar(&mc.Server, "server", "http://127.0.0.1:8080", "the node's public HTTP API: URL or HOST:PORT (for the server key)")
	f.IntVar(&mc.Chunk, "chunk", 5000, "accounts per bulk request")
	f.BoolVar(&mc.Fresh, "fresh", false, "make new keys even if a state file exists")
	cmd.MarkFlagRequired("users")
	return cmd
}

func newBenchIdleCmd(bf *benchFlags) *cobra.Command {
	var mc bench.Config
	cmd := &cobra.Command{
		Use:   "idle",
		Short: "Hold N logged-in connections: login rate and cost, memory per connection",
		Long: `Log --conns users in, make each send one message to a neighbour and receive
one (with its delivered receipt), hold the connections for --hold, and report
logins/s, logins per server CPU-second, and the server's memory per
connection: user space (RSS delta / N, after a GC before and after; split
into the Go runtime's memory, where connections live, and C memory, which is
Pebble's memtables filled by the exchanged messages) and the kernel's share
(Slab less /proc inodes, + TCP socket pages, delta / 2 / N: on loopback the
kernel holds both ends). The kernel counters are machine-wide: run it on a
quiet machine. Method details: go doc github.com/parleyhq/parley/bench.

More connections than one process may open: run several bench processes at
once with disjoint --offset ranges and the same --total (their sum); each
waits until the server holds them all, holds, and reports per-connection
figures for all of them (it divides by the server's session count change).`,
		Example: `  parley bench idle --conns 5000
  parley bench idle --conns 19000 --hold 30s --json
  parley bench idle --conns 9500 --total 19000 & parley bench idle --conns 9500 --offset 9500 --total 19000`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return bf.run(cmd, &mc, func(ctx context.Context, cfg bench.Config, w io.Writer) (bench.Result, error) {
				return bench.Idle(ctx, cfg, w)
			})
		},
	}
	f := cmd.Flags()
	f.IntVar(&mc.Conns, "conns", 1000, "connections to open and hold")
	f.DurationVar(&mc.Hold, "hold", 5*time.Second, "how long to hold them before reading the memory")
	f.BoolVar(&mc.Warm, "warm", false, "log every user in and out once first, so the server's store caches are not counted as connection memory (the measured logins then resume with the ticket of that login, as returning devices do; add --full-handshake for first logins)")
	f.StringVar(&mc.HeapProfile, "heap-profile", "", "write the server's heap profiles at the two readings to `PREFIX`.before.pprof and PREFIX.after.pprof (go tool pprof -base)")
	f.IntVar(&mc.Total, "total", 0, "with several bench processes at once: the connections of all of them (each waits for the server to hold them all, then holds)")
	return cmd
}

func newBenchPairsCmd(bf *benchFlags) *cobra.Command {
	var mc bench.Config
	cmd := &cobra.Command{
		Use:   "pairs",
		Short: "Sender->receiver pairs: throughput, send->delivered latency, CPU per message",
		Long: `Run --pairs pairs of users (offset+2i sends to offset+2i+1). Each sender keeps
at most --window messages outstanding until their delivered receipts arrive;
each receiver acks every delivery. Without --rate the senders go as fast as
their windows allow (find the saturation point by raising --pairs and
--window); with --rate they are paced to that many messages per second in
all (measure latency at, say, half of saturation).

Reports msgs/s counted at the delivered receipt, latency from send to
delivered receipt (p50..max), the server's CPU time per message, and a loss
check: every message the server accepted must arrive exactly once, in order.
Stops after --msgs per pair or --duration, whichever comes first.

With --upgrade-at the server (started by parley serve, with an admin
listener) is asked for a live upgrade that long into the run (POST
/admin/upgrade, to --upgrade-binary or its own executable): the run reports
the handover's report and time breakdown, the connections that dropped
(goal 0), lost messages (goal 0), and the longest stall a client saw (the
latency max). The server CPU per message is not reported then: its two
readings are of two processes.`,
		Example: `  parley bench pairs --pairs 200 --window 1 --size 64
  parley bench pairs --pairs 100 --window 64 --duration 20s
  parley bench pairs --pairs 100 --window 64 --rate 50000
  parley bench pairs --pairs 9500 --rate 2000 --tick 10ms --duration 20s --upgrade-at 8s`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return bf.run(cmd, &mc, func(ctx context.Context, cfg bench.Config, w io.Writer) (bench.Result, error) {
				return bench.Pairs(ctx, cfg, w)
			})
		},
	}
	f := cmd.Flags()
	f.IntVar(&mc.Pairs, "pairs", 200, "sender->receiver pairs")
	f.IntVar(&mc.Window, "window", 1, "most messages a sender keeps outstanding until delivered")
	f.IntVar(&mc.Msgs, "msgs", 0, "messages per pair (0: until --duration)")
	f.IntVar(&mc.Size, "size", 64, "message body size in bytes")
	f.Float64Var(&mc.Rate, "rate", 0, "pace all senders together to this many msgs/s (0: as fast as the windows allow)")
	f.DurationVar(&mc.Tick, "tick", time.Millisecond, "with --rate: how often the pacer sends what has fallen due (one write per sender per tick at most)")
	f.DurationVar(&mc.Duration, "duration", 10*time.Second, "stop sending after this long")
	f.DurationVar(&mc.UpgradeAt, "upgrade-at", 0, "ask the server for a live upgrade this long into the run (0: none)")
	f.StringVar(&mc.UpgradeBinary, "upgrade-binary", "", "with --upgrade-at: the binary to upgrade to (default: the server's own executable)")
	return cmd
}

func newBenchFailoverCmd(bf *benchFlags) *cobra.Command {
	var mc bench.Config
	cmd := &cobra.Command{
		Use:   "failover",
		Short: "Pairs across a cluster while one node is killed or stopped: gap, reconnects, loss",
		Long: `Run paced pairs across a cluster (--addr and --admin list every node, in the
same order; every pair crosses nodes) and, --at into the run, send one node
(--node, 1-based in that order) SIGKILL (a crash) or SIGTERM (a planned
stop: the node drains). The bench signals the node's process itself (its
pid from GET /admin/version), so it runs on the node's machine.

Every connection lost logs in again on another node at once, as the SDK
does, and sends again, with the same ids marked as resends, what had no
SendAck; a send refused with a retryable error (no quorum yet, shutting
down) is sent again after 100-200 ms. Each sender keeps one message
outstanding (--window 1), so a retried send is never overtaken and the
order check is exact.

Reports, beside the pairs figures: the gap (the longest any message waited
from its first write to its SendAck), the connections moved and their
reconnect times, sends retried, items redelivered after a reconnect (their
ack was lost with the node: dropped by seq, as a client does), the p99 of
the pairs with neither side on the lost node before and after the signal,
and the loss check: every message accepted arrives exactly once, in order
(goal 0). The lost node's CPU is not counted.`,
		Example: `  parley bench --addr 127.0.0.1:5301,127.0.0.1:5302,127.0.0.1:5303 \
      --admin 127.0.0.1:9301,127.0.0.1:9302,127.0.0.1:9303 \
      failover --pairs 200 --rate 1000 --duration 20s --at 5s --node 3 --signal KILL`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			mc.Window = 1
			return bf.run(cmd, &mc, func(ctx context.Context, cfg bench.Config, w io.Writer) (bench.Result, error) {
				return bench.Pairs(ctx, cfg, w)
			})
		},
	}
	f := cmd.Flags()
	f.IntVar(&mc.Pairs, "pairs", 200, "sender->receiver pairs")
	f.IntVar(&mc.Size, "size", 64, "message body size in bytes")
	f.Float64Var(&mc.Rate, "rate", 1000, "pace all senders together to this many msgs/s")
	f.DurationVar(&mc.Tick, "tick", time.Millisecond, "how often the pacer sends what has fallen due")
	f.DurationVar(&mc.Duration, "duration", 20*time.Second, "stop sending after this long")
	f.DurationVar(&mc.FailoverAt, "at", 5*time.Second, "signal the node this long into the run")
	f.IntVar(&mc.FailoverNode, "node", 1, "the node to signal: 1-based, in the order of --admin and --addr")
	f.StringVar(&mc.FailoverSignal, "signal", "KILL", "KILL (a crash) or TERM (a planned stop: the node drains)")
	f.DurationVar(&mc.Grace, "grace", 10*time.Second, "after the sending stops, how long the last receipts may take before they count as lost")
	return cmd
}

func newBenchStormCmd(bf *benchFlags) *cobra.Command {
	var mc bench.Config
	cmd := &cobra.Command{
		Use:   "storm",
		Short: "Drop N connections at once: time until all are logged in again",
		Long: `Log --conns users in, then close every connection at once and log them all
in again (at most --concurrency logins in flight), and report the time from
the drop until the last one is logged in. Every client's handshake is
prepared before the drop, so the clock measures the server rather than this
load generator. The bench closes connections with a reset, so they leave
nothing in TIME_WAIT, and spreads many over source addresses (--src).`,
		Example: `  parley bench storm --conns 5000
  parley bench storm --conns 19000 --src 127.0.0.2-127.0.0.20`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return bf.run(cmd, &mc, func(ctx context.Context, cfg bench.Config, w io.Writer) (bench.Result, error) {
				return bench.Storm(ctx, cfg, w)
			})
		},
	}
	cmd.Flags().IntVar(&mc.Conns, "conns", 1000, "connections to drop and reconnect")
	return cmd
}

func newBenchDrainCmd(bf *benchFlags) *cobra.Command {
	var mc bench.Config
	cmd := &cobra.Command{
		Use:   "drain",
		Short: "Queue M messages for an offline user: how fast they drain at login",
		Long: `Queue --msgs messages from user offset to user offset+1 while the latter is
offline (after clearing its queue), then log it in and report how fast the
queue drains to it (from the login to the last message, acking as it reads)
and the server's CPU time per message. The server's --max-queue-len bounds
--msgs. --duration bounds each phase.`,
		Example: `  parley bench drain --msgs 50000
  parley bench drain --msgs 100000 --size 256 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return bf.run(cmd, &mc, func(ctx context.Context, cfg bench.Config, w io.Writer) (bench.Result, error) {
				return bench.Drain(ctx, cfg, w)
			})
		},
	}
	f := cmd.Flags()
	f.IntVar(&mc.Msgs, "msgs", 50000, "messages to queue and drain")
	f.IntVar(&mc.Size, "size", 64, "message body size in bytes")
	f.DurationVar(&mc.Duration, "duration", 60*time.Second, "bound on each phase")
	return cmd
}
