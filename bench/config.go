package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"
)

// Config configures every mode; each mode reads the fields it documents and
// applies its own defaults to zero values.
type Config struct {
	// Addr is the node's native listener, or a cluster's, comma-separated:
	// user i connects to the (i mod n)th, so with two or more every pair
	// of users i, i+1 crosses nodes. Default: the addresses the node
	// advertised at setup (kept in the state), else "127.0.0.1:5222".
	Addr string
	// Admin is the node's admin listener URL, or a cluster's,
	// comma-separated: setup provisions through the first; the CPU figures
	// are read from every one. Default "http://127.0.0.1:9090".
	Admin string
	// Server is the node's public HTTP API URL, where setup fetches the
	// server key. Default "http://127.0.0.1:8080".
	Server string
	// State is the state file setup writes and the other modes read.
	// Default DefaultStatePath(Admin).
	State string
	// Offset is the first user a mode uses, so that several bench
	// processes can share one node with disjoint users.
	Offset int
	// Src are source addresses to spread connections over (round robin);
	// empty lets the kernel choose, unless AutoSrc.
	Src []netip.Addr
	// AutoSrc, with no Src, spreads connections to a loopback Addr over
	// 127.0.0.2 and up, one address per 2,000 connections (Linux routes all
	// of 127/8 to lo): connect gets slow searching for a free local port
	// once most of one address's ephemeral range is in use.
	AutoSrc bool
	// Concurrency bounds logins in flight. Default 256 (storm: 1000).
	Concurrency int
	// DialTimeout bounds one connect and handshake. Default 10s.
	DialTimeout time.Duration
	// FullHandshake makes every login a full handshake (Noise IK), as a
	// device's first login is, instead of resuming with the ticket of the
	// user's last login in this process.
	FullHandshake bool

	// Users (setup) is how many accounts to provision.
	Users int
	// Chunk (setup) is how many accounts go in one bulk request. Default
	// 5000.
	Chunk int
	// Fresh (setup) makes new keys even if a state file exists.
	Fresh bool

	// Conns (idle, storm) is how many users connect.
	Conns int
	// Hold (idle) is how long the connections are held before the memory
	// is read. Default 5s.
	Hold time.Duration
	// Total (idle) is the number of connections all the bench processes
	// running at once hold together: the hold starts once the server has
	// that many sessions, and the connections linger a few seconds after
	// the reading so that the other processes' readings see them. 0: this
	// process alone.
	Total int
	// Warm (idle) logs every user in and out once before the memory
	// readings, so that the store's caches are not counted per connection.
	Warm bool
	// HeapProfile (idle), if set, is where the server's heap profiles are
	// written at the two memory readings: HeapProfile+".before.pprof" and
	// HeapProfile+".after.pprof" (go tool pprof -base before after).
	HeapProfile string

	// Pairs (pairs) is the number of sender->receiver pairs.
	Pairs int
	// Window (pairs) is the most messages a sender keeps outstanding until
	// their delivered receipts arrive. Default 1.
	Window int
	// Msgs is the number of messages per pair (pairs; 0: until Duration)
	// or the number queued for the offline user (drain; default 50,000).
	Msgs int
	// Size is the message body size in bytes. Default 64.
	Size int
	// Rate (pairs) paces the senders to this many messages per second in
	// all; 0 sends as fast as the windows allow.
	Rate float64
	// Tick (pairs, with Rate) is how often the pacer sends what has
	// fallen due: one write per sender per tick at most. Default 1ms.
	Tick time.Duration
	// Duration caps the measured phase: pairs default 10s, drain 60s.
	Duration time.Duration
	// UpgradeAt (pairs), if set, asks the node for a live upgrade
	// (POST /admin/upgrade) this long into the run; it must come before
	// Duration.
	UpgradeAt time.Duration
	// UpgradeBinary (pairs, with UpgradeAt) is the binary to upgrade to;
	// empty: the server's own executable as it is on disk.
	UpgradeBinary string

	// FailoverAt (pairs, failover), if set, signals one node of the cluster
	// this long into the run, and every connection lost logs in again on
	// another node, resending what had no SendAck (same id, marked as a
	// resend). Needs Rate, and Admin and Addr listing the same nodes in
	// the same order.
	FailoverAt time.Duration
	// FailoverNode is the node to signal: 1-based, in the order of Admin
	// and Addr. Default 1.
	FailoverNode int
	// FailoverSignal is KILL (a crash) or TERM (a planned stop: the node
	// drains). Default KILL.
	FailoverSignal string
	// Grace (pairs, failover) is how long the senders get, after the
	// sending stopped, for their last receipts; what has not come by then
	// counts as lost. Default 10s.
	Grace time.Duration
}

func (c *Config) setDefaults() {
	if c.Admin == "" {
		c.Admin = "http://127.0.0.1:9090"
	}
	if c.Server == "" {
		c.Server = "http://127.0.0.1:8080"
	}
	admins := splitList(c.Admin)
	for i, a := range admins {
		if !strings.Contains(a, "://") {
			admins[i] = "http://" + a
		}
	}
	c.Admin = strings.Join(admins, ",")
	if !strings.Contains(c.Server, "://") {
		c.Server = "http://" + c.Server
	}
	if c.State == "" {
		c.State = DefaultStatePath(admins[0])
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 256
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 10 * time.Second
	}
	if c.Size <= 0 {
		c.Size = 64
	}
	if c.Tick <= 0 {
		c.Tick = time.Millisecond
	}
}

// splitList splits a comma-separated flag value, dropping empty parts.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// env is what a mode's run needs: the state, the users, the admin clients
// and the dialer.
type env struct {
	cfg    Config
	st     *State
	users  []*user
	admin  *admin   // the first of admins
	admins []*admin // one per node given
	d      *dialer
}

// open prepares a mode that uses n users and n connections.
func open(ctx context.Context, cfg Config, what string, n int) (*env, error) {
	if err := checkFiles(n, cfg.Offset, what); err != nil {
		return nil, err
	}
	st, err := loadState(cfg.State)
	if err != nil {
		return nil, err
	}
	if err := st.needUsers(cfg.Offset, n, what); err != nil {
		return nil, err
	}
	addrs := splitList(cfg.Addr)
	if len(addrs) == 0 {
		addrs = st.NativeAddrs
	}
	if len(addrs) == 0 && st.NativeAddr != "" {
		addrs = []string{st.NativeAddr}
	}
	if len(addrs) == 0 {
		addrs = []string{"127.0.0.1:5222"}
	}
	e := &env{cfg: cfg, st: st}
	for _, a := range splitList(cfg.Admin) {
		e.admins = append(e.admins, newAdmin(a))
	}
	e.admin = e.admins[0]
	// Fail early, with the admin hint, if a node is not there.
	if _, err := e.processAll(ctx); err != nil {
		return nil, err
	}
	if e.users, err = st.users(cfg.Offset, n); err != nil {
		return nil, err
	}
	src := cfg.Src
	if len(src) == 0 && cfg.AutoSrc {
		src = autoSources(addrs[0], n)
	}
	e.d = &dialer{addrs: addrs, serverKey: st.serverKey, src: src, timeout: cfg.DialTimeout, full: cfg.FullHandshake}
	return e, nil
}

// processAll reads every node's process figures, in the order of admins.
func (e *env) processAll(ctx context.Context) ([]process, error) {
	ps := make([]process, len(e.admins))
	for i, a := range e.admins {
		p, err := a.processSched(ctx)
		if err != nil {
			return nil, err
		}
		ps[i] = p
	}
	return ps, nil
}

// cpuSelf is this process's user+system CPU time.
func cpuSelf() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// tally counts errors and keeps the first few distinct messages.
type tally struct {
	mu      sync.Mutex
	n       int64
	samples []string
}

const maxSamples = 5

func (t *tally) add(err error) {
	if err == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.n++
	s := err.Error()
	if len(t.samples) < maxSamples && !containsStr(t.samples, s) {
		t.samples = append(t.samples, s)
	}
}

func (t *tally) count() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.n
}

func (t *tally) list() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.samples...)
}

func containsStr(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// fatalIfAll turns a phase in which every attempt failed into an error: the
// figures of such a run mean nothing.
func fatalIfAll(t *tally, attempts int, what string) error {
	if attempts > 0 && t.count() >= int64(attempts) {
		return fmt.Errorf("%s: every attempt failed, e.g. %s", what, strings.Join(t.list(), "; "))
	}
	return nil
}

var errStopped = errors.New("stopped")

// Row is one line of a result's summary table.
type Row struct {
	Name, Value, Note string
}

// Result is what every mode returns.
type Result interface {
	Rows() []Row
}

// WriteTable prints r as an aligned table.
func WriteTable(w io.Writer, r Result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, row := range r.Rows() {
		if row.Note != "" {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", row.Name, row.Value, row.Note)
		} else {
			fmt.Fprintf(tw, "%s\t%s\n", row.Name, row.Value)
		}
	}
	return tw.Flush()
}

func fmtInt(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func fmtF(v float64, prec int) string { return fmt.Sprintf("%.*f", prec, v) }

func errorRows(n int64, samples []string) []Row {
	rows := []Row{{Name: "errors", Value: fmtInt(n)}}
	for _, s := range samples {
		rows = append(rows, Row{Name: "", Value: "", Note: s})
	}
	return rows
}

// sortedKeys is for stable output of maps in notes.
func sortedKeys[M ~map[string]V, V any](m M) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
