package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/lesismal/nbio/logging"
	"github.com/spf13/cobra"

	"github.com/parleyhq/parley/account"
	"github.com/parleyhq/parley/cluster"
	"github.com/parleyhq/parley/node"
)

func newServeCmd() *cobra.Command {
	var (
		cfg       node.Config
		sms       string
		smsHTTP   account.HTTPGatewayConfig
		logLevel  string
		logFormat string
		gcPercent int
		// The store's memtable, in MiB: bytes are no way to type 16 MiB.
		memTableMiB int
		// The admin token comes from a file or the environment only.
		adminTokenFile, adminTokenFlag string
		clusterFl                      clusterFlags
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run a Parley server on this machine",
		Long: `Run a Parley node. It needs nothing else on the machine: the store
(Pebble) and the server's Noise key live under --data, created on first start.

Listeners:
  --listen  the native protocol (Noise over TCP) that clients connect to
  --http    the public HTTP API (registration, server key)
  --admin   the admin listener: metrics, dashboard, limits, accounts,
            pprof; loopback unless a token is set (--admin-token-file)

Disk: the store takes about 1.1x --store-memtable-mib (16 MiB by default)
when idle and about 3x it under load, plus what is queued and about 60
bytes per message sent in the last 7 days (duplicate detection).

SMS gateways (--sms):
  log        codes appear in the server log (development default)
  file:PATH  one JSON line {"phone":...,"code":...} per code appended to PATH
  http       POST {"to":...,"message":...} to --sms-http-url
` + clusterHelp,
		Example: `  parley serve
  parley serve --data /var/lib/parley --sms file:/tmp/codes.jsonl
  PARLEY_LISTEN=0.0.0.0:5222 parley serve
  parley serve --cluster demo --node n1 --cluster-listen 127.0.0.1:6222 --peers 127.0.0.1:6222,127.0.0.1:6223,127.0.0.1:6224`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(logLevel, logFormat)
			if err != nil {
				return err
			}
			cfg.Log = log
			if memTableMiB <= 0 || memTableMiB > 4096 {
				return fmt.Errorf("--store-memtable-mib %d: give a size between 1 and 4096 MiB", memTableMiB)
			}
			cfg.StoreMemTableSize = memTableMiB << 20
			if _, set := os.LookupEnv("GOGC"); !set && gcPercent != 0 {
				// A process-wide setting, so it belongs to the process's
				// command, not to the node.
				debug.SetGCPercent(gcPercent)
			}
			// Also process-wide: the pollers' own Ps (see pollerProcs),
			// taken once the node has started (runServer), so that what
			// the node sizes on GOMAXPROCS (workers, accept rate) stays
			// sized on the CPUs. GOMAXPROCS in the environment wins.
			var procs int
			cfg.Pollers, procs = pollerProcs(runtime.GOMAXPROCS(0), cfg.Pollers)
			if _, set := os.LookupEnv("GOMAXPROCS"); set {
				procs = 0
			}
			// nbio logs through a process-wide logger of its own; the process
			// is ours here, so send it through slog with everything else.
			logging.SetLogger(nbioLog{log.With("component", "eventloop")})
			if adminTokenFlag != "" && adminTokenFlag != os.Getenv("PARLEY_ADMIN_TOKEN") {
				return errors.New("--admin-token would show the token to every user of the machine (ps): put it in a file given as --admin-token-file, or in PARLEY_ADMIN_TOKEN")
			}
			if cfg.AdminToken, err = readAdminToken(adminTokenFile); err != nil {
				return err
			}
			if cfg.Admin, err = listenAddr("--admin", cfg.Admin); err != nil {
				return err
			}
			if cfg.SMS, err = account.ParseGateway(sms, smsHTTP, log); err != nil {
				return fmt.Errorf("--sms: %w", err)
			}
			if err := clusterFl.check(); err != nil {
				return err
			}
			if err := node.CheckAdvertise(cfg.Listen, cfg.Advertise, clusterFl.enabled()); err != nil {
				return err
			}
			return runServer(cmd, cfg, procs, func(ctx context.Context) (*cluster.Cluster, *node.ClusterConfig, error) {
				return clusterFl.join(ctx, cfg.DataDir, log, cmd.OutOrStdout())
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DataDir, "data", "./parley-data", "data directory (store and server key)")
	// The heap of a busy node is mostly short-lived per-message garbage
	// over a small live set (sessions, queue states). Go's default of 100
	// cost ~15% more CPU per message at saturation (9.6 - 9.9 us against
	// 8.2 - 9.2). 400 let an idle server's resident set stay at 5x its live
	// heap (2.0 - 2.5 KB per idle connection without a forced collection);
	// 200 holds it at ~1.4 KB with no measurable cost at saturation (issue
	// 11, BENCHMARKS.md). GOGC in the environment wins over the flag.
	f.IntVar(&gcPercent, "gc-percent", 200, "Go GC target percentage (GOGC); lower saves memory, higher saves CPU; -1 turns the collector off")
	f.DurationVar(&cfg.IdleCollect, "idle-collect", 5*time.Second, "once the process has been quiet this long, return its garbage to the OS (once per quiet period; never under load); a negative duration (-1s): never")
	f.StringVar(&cfg.Listen, "listen", "127.0.0.1:5222", "native protocol listen address")
	f.StringVar(&cfg.Advertise, "advertise", "", "native address clients are told to dial, HOST:PORT, when --listen is not it (a wildcard, NAT or load balancer); a cluster node listening on every interface must set it (default: the --listen address)")
	f.StringVar(&cfg.HTTP, "http", "127.0.0.1:8080", "public HTTP API listen address")
	f.StringVar(&cfg.Admin, "admin", "127.0.0.1:9090", "admin listen address, HOST:PORT or http://HOST:PORT: metrics, dashboard, pprof, limits, account provisioning (keep on loopback)")
	f.StringVar(&sms, "sms", "log", "SMS gateway: log, file:PATH or http")
	f.StringVar(&smsHTTP.URL, "sms-http-url", "", "SMS provider URL for --sms http")
	f.StringVar(&smsHTTP.Token, "sms-http-token", "", "bearer token for the SMS provider")
	f.StringVar(&smsHTTP.User, "sms-http-user", "", "basic-auth user for the SMS provider")
	f.StringVar(&smsHTTP.Password, "sms-http-password", "", "basic-auth password for the SMS provider")
	f.StringVar(&cfg.SMSDefaultRegion, "region", "", "region for numbers without a country code, e.g. US (empty: require +CC)")
	cfg.PerNumber, cfg.PerAddr = account.DefaultPerNumber(), account.DefaultPerAddr()
	f.IntVar(&cfg.PerNumber.Max, "reg-per-number", cfg.PerNumber.Max, "code requests allowed per number per "+cfg.PerNumber.Window.String())
	f.DurationVar(&cfg.PerNumber.MinGap, "reg-min-gap", cfg.PerNumber.MinGap, "least time between two code requests for one number")
	f.IntVar(&cfg.PerAddr.Max, "reg-per-addr", cfg.PerAddr.Max, "code requests allowed per client address per "+cfg.PerAddr.Window.String())
	lim := node.DefaultLimits()
	cfg.Limits = lim
	f.IntVar(&cfg.Limits.Window, "window", lim.Window, "most unacknowledged deliveries per session")
	f.IntVar(&cfg.Workers, "workers", 0, "session worker goroutines (0: 4 x CPUs)")
	f.IntVar(&cfg.Pollers, "pollers", 0, "event-loop goroutines (0: half the CPUs, at least one); each gets a scheduler P of its own beyond the CPUs: GOMAXPROCS becomes CPUs + pollers, unless GOMAXPROCS is set in the environment (then that many Ps in all, pollers included)")
	f.IntVar(&cfg.Limits.MaxQueueLen, "max-queue-len", lim.MaxQueueLen, "most items waiting for one user")
	f.DurationVar(&cfg.Limits.MaxQueueAge, "max-queue-age", lim.MaxQueueAge, "how long an undelivered item waits before it expires")
	f.DurationVar(&cfg.Limits.HandshakeTimeout, "handshake-timeout", lim.HandshakeTimeout, "close connections that have not logged in by then")
	f.IntVar(&cfg.Limits.MaxConnections, "max-connections", lim.MaxConnections, "most native connections in all (also raise ulimit -n)")
	f.IntVar(&cfg.Limits.MaxConnsPerAddr, "max-conns-per-addr", lim.MaxConnsPerAddr, "most native connections from one IP address")
	f.IntVar(&cfg.Limits.MaxHandshakes, "max-handshakes", lim.MaxHandshakes, "most connections accepted and not yet logged in")
	f.IntVar(&cfg.Limits.AcceptRate, "accept-rate", lim.AcceptRate, "new native connections admitted per second, past --accept-burst (paces reconnect storms; negative: off)")
	f.IntVar(&cfg.Limits.AcceptBurst, "accept-burst", lim.AcceptBurst, "new native connections admitted at once before --accept-rate paces them")
	f.DurationVar(&cfg.Limits.KeepAlive, "keep-alive", lim.KeepAlive, "TCP keep-alive idle time that finds peers gone without a FIN (negative: off)")
	f.IntVar(&cfg.Limits.MaxWriteBuffer, "max-write-buffer", lim.MaxWriteBuffer, "bytes held for a client that does not read before it is cut off")
	f.IntVar(&cfg.Limits.MaxMailbox, "max-mailbox", lim.MaxMailbox, "events waiting for one session before its client is cut off")
	f.IntVar(&cfg.Limits.MaxMailboxBytes, "max-mailbox-bytes", lim.MaxMailboxBytes, "bytes of frames waiting for one session before its client is cut off")
	f.IntVar(&cfg.Limits.FailedLoginsPerAddr, "failed-logins-per-addr", lim.FailedLoginsPerAddr, "refused logins per client address per minute before it is throttled")
	f.IntVar(&cfg.Limits.MaxReadIDs, "max-read-ids", lim.MaxReadIDs, "most message ids in one read receipt")
	f.IntVar(&cfg.Limits.HTTPConnsPerAddr, "http-conns-per-addr", lim.HTTPConnsPerAddr, "most HTTP connections from one client address")
	f.DurationVar(&cfg.Limits.HTTPReadTimeout, "http-read-timeout", lim.HTTPReadTimeout, "longest an HTTP request (a media upload included) may take to arrive")
	f.DurationVar(&cfg.Limits.HTTPWriteTimeout, "http-write-timeout", lim.HTTPWriteTimeout, "longest an HTTP response (a media download included) may take to send")
	f.DurationVar(&cfg.Limits.HTTPIdleTimeout, "http-idle-timeout", lim.HTTPIdleTimeout, "how long an idle HTTP keep-alive connection is kept")
	f.DurationVar(&cfg.TicketTTL, "ticket-ttl", 7*24*time.Hour, "how long a resumption ticket lets a device log in again with a cheaper handshake (negative: no tickets)")
	f.DurationVar(&cfg.Limits.FrameTimeout, "frame-timeout", lim.FrameTimeout, "close logged-in connections that stall mid-message this long")
	f.IntVar(&cfg.Limits.QueueStates, "queue-states", lim.QueueStates, "most queues whose bounds the store keeps in memory (~100 B each)")
	f.IntVar(&cfg.Limits.AccountCache, "account-cache", lim.AccountCache, "most phones the store remembers as registered (~80 B each)")
	f.IntVar(&memTableMiB, "store-memtable-mib", 16, "store memtable size in MiB: the store's disk is ~1.1x it idle, ~3x under load, plus what is queued (64 saves CPU at 100,000+ msgs/s)")
	f.StringVar(&adminTokenFile, "admin-token-file", "", "file holding the token the admin listener requires (Authorization: Bearer); or set PARLEY_ADMIN_TOKEN. Required when --admin is not loopback")
	f.StringVar(&adminTokenFlag, "admin-token", "", "refused: use --admin-token-file or PARLEY_ADMIN_TOKEN")
	_ = f.MarkHidden("admin-token")
	f.StringVar(&cfg.AlertWebhook, "alert-webhook", "", "URL that receives a JSON POST when an alert fires or clears")
	f.IntVar(&cfg.Alerts.Mailbox, "alert-mailbox", 0, "alert when a session's mailbox holds more events (0: 1000)")
	f.IntVar(&cfg.Alerts.Backlog, "alert-backlog", 0, "alert when more sessions wait for a worker (0: 1000)")
	f.IntVar(&cfg.Alerts.QueueUser, "alert-queue-user", 0, "alert when one user's offline queue is longer (0: 10000)")
	f.Int64Var(&cfg.Alerts.QueueTotal, "alert-queue-total", 0, "alert when all offline queues together are longer (0: 1000000)")
	f.DurationVar(&cfg.Alerts.LoopLag, "alert-loop-lag", 0, "alert when a session waits longer for a worker (0: 100ms)")
	f.StringVar(&cfg.PublicURL, "public-url", "", "HTTP API base URL as clients reach it, for media links (default http://<--http>)")
	f.Int64Var(&cfg.MediaMaxSize, "media-max-size", 64<<20, "largest media upload in bytes")
	f.DurationVar(&cfg.MediaTTL, "media-ttl", 30*24*time.Hour, "how long uploaded media are kept")
	clusterFl.register(f)
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	f.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	return cmd
}

// nbioLog adapts slog to nbio's printf-style logger.
type nbioLog struct{ l *slog.Logger }

func (n nbioLog) Debug(f string, v ...any) { n.l.Debug(fmt.Sprintf(f, v...)) }
func (n nbioLog) Info(f string, v ...any)  { n.l.Debug(fmt.Sprintf(f, v...)) }
func (n nbioLog) Warn(f string, v ...any)  { n.l.Warn(fmt.Sprintf(f, v...)) }
func (n nbioLog) Error(f string, v ...any) { n.l.Error(fmt.Sprintf(f, v...)) }

func newLogger(level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// readAdminToken reads the admin token from file (its first line), or from
// PARLEY_ADMIN_TOKEN when no file is given: never from the command line,
// where every user of the machine can read it.
func readAdminToken(file string) (string, error) {
	if file == "" {
		return strings.TrimSpace(os.Getenv("PARLEY_ADMIN_TOKEN")), nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("--admin-token-file: %w", err)
	}
	tok, _, _ := strings.Cut(string(b), "\n")
	if tok = strings.TrimSpace(tok); tok == "" {
		return "", fmt.Errorf("--admin-token-file %s is empty: write the token on its first line", file)
	}
	return tok, nil
}

// listenAddr takes a listen address as HOST:PORT or as the URL the other
// commands take (http://HOST:PORT), so that one PARLEY_ADMIN works for
// serve, top and bench.
func listenAddr(flag, raw string) (string, error) {
	s := strings.TrimSpace(raw)
	rest, ok := strings.CutPrefix(s, "http://")
	if !ok {
		if strings.Contains(s, "://") {
			return "", fmt.Errorf("%s %q: the listener serves plain HTTP: give HOST:PORT or http://HOST:PORT", flag, raw)
		}
		return s, nil
	}
	rest = strings.TrimRight(rest, "/")
	if strings.Contains(rest, "/") {
		return "", fmt.Errorf("%s %q: give HOST:PORT or http://HOST:PORT, without a path", flag, raw)
	}
	return rest, nil
}
