package node

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/parleyhq/parley/account"
	"github.com/parleyhq/parley/apierror"
	"github.com/parleyhq/parley/noise"
)

// adminHandler serves the admin listener: health, process figures, and the
// trusted bulk provisioning that load tests use. It is bound to loopback by
// default; every endpoint but the health probe goes through the monitor's
// Guard (no cross-site requests; the admin token when one is set).
func (n *Node) adminHandler() http.Handler {
	mux := http.NewServeMux()
	// Health stays open: load balancers and supervisors probe it.
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{
			"status":      "ok",
			"sessions":    n.router.len(),
			"connections": n.counts.open.Load(),
			"logins":      n.counts.logins.Load(),
			"commits":     n.counts.commits.Load(),
			"backlog":     n.pool.backlog(),
		})
	})
	guard := func(h http.HandlerFunc) http.Handler { return n.monitor.Guard(h) }
	mux.Handle("GET /admin/process", guard(n.handleProcess))
	mux.Handle("GET /admin/limits", guard(n.handleLimits))
	mux.Handle("GET /admin/version", guard(n.handleVersion))
	mux.Handle("GET /admin/cluster", guard(n.handleCluster))
	mux.Handle("POST /admin/upgrade", guard(n.handleUpgrade))
	mux.Handle("POST /admin/accounts/bulk", guard(n.handleBulkAccounts))
	// Profiles of the running server (go tool pprof URL/debug/pprof/profile).
	mux.Handle("/debug/pprof/", guard(pprof.Index))
	mux.Handle("/debug/pprof/profile", guard(pprof.Profile))
	mux.Handle("/debug/pprof/symbol", guard(pprof.Symbol))
	mux.Handle("/debug/pprof/trace", guard(pprof.Trace))
	// Metrics, sessions, alerts, stats and the dashboard (at "/"); the
	// monitor guards its own endpoints with the same Guard, letting the
	// static page load.
	mux.Handle("/", n.monitor.Handler())
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) { apierror.WriteJSON(w, status, v) }

func writeError(w http.ResponseWriter, status int, code, msg string) {
	apierror.Write(w, status, code, msg, 0)
}

// ProcessStats is what GET /admin/process answers: the server's own CPU time
// and memory, so a load generator on the same machine can report cost per
// message and per connection without reading another process's /proc.
type ProcessStats struct {
	CPUSeconds float64 `json:"cpu_seconds"` // user + system since start
	// SysCPUSeconds is the part of CPUSeconds spent in the kernel (system
	// time): the sockets' TCP work (on loopback, the peer's receive path
	// too), fsyncs, polling and thread switches. The rest is Parley's,
	// Pebble's and the Go runtime's own.
	SysCPUSeconds float64 `json:"sys_cpu_seconds"`
	// RunqueueWaitSeconds is how long the process's threads have waited,
	// runnable, for a CPU (the kernel's /proc/self/task/*/schedstat; threads
	// that have exited are not counted): what a busy machine adds to each
	// hand-off between goroutines, the fsync's return included. Only with
	// ?sched=1 (it reads a file per thread), and absent where the kernel
	// keeps no schedstat.
	RunqueueWaitSeconds *float64 `json:"runqueue_wait_seconds,omitempty"`
	RSSBytes            int64    `json:"rss_bytes"`
	HeapInuse           uint64   `json:"heap_inuse_bytes"`
	// GoBytes is the memory the Go runtime holds: everything it mapped
	// (heap, stacks, its own metadata) less what it returned to the OS.
	// Of RSS, what it does not cover is the binary and C allocations,
	// which in Parley are Pebble's memtables and block cache
	// (StoreMemtableBytes and StoreCacheBytes, their sizes).
	GoBytes            uint64 `json:"go_bytes"`
	StoreMemtableBytes int64  `json:"store_memtable_bytes"`
	StoreCacheBytes    int64  `json:"store_cache_bytes"`
	Goroutines         int    `json:"goroutines"`
	Sessions           int    `json:"sessions"`
	Connections        int64  `json:"connections"`
	Logins             int64  `json:"logins"`
	Commits            int64  `json:"commits"`
	Backlog            int    `json:"backlog"`
	// The node's idle collections (Config.IdleCollect): how many periods
	// it has checked, how many times it returned its garbage to the OS,
	// and whether it has since the last period that was not quiet. An RSS
	// read when Settled is true, two checks after the last activity, is
	// what the idle process keeps. All zero with IdleCollect off.
	IdleChecks      int64 `json:"idle_checks"`
	IdleCollections int64 `json:"idle_collections"`
	Settled         bool  `json:"settled"`
	// The scheduler: the event loop's pollers and the Ps the Go runtime
	// runs on (parley serve gives the pollers Ps of their own beyond the
	// CPUs), and the session workers.
	Pollers    int   `json:"pollers"`
	GoMaxProcs int   `json:"gomaxprocs"`
	Workers    int   `json:"workers"`
	Time       int64 `json:"time_unix_nano"`
}

func (n *Node) handleProcess(w http.ResponseWriter, r *http.Request) {
	st := ProcessStats{
		Goroutines:  runtime.NumGoroutine(),
		Sessions:    n.router.len(),
		Connections: n.counts.open.Load(),
		Logins:      n.counts.logins.Load(),
		Commits:     n.counts.commits.Load(),
		Backlog:     n.pool.backlog(),
		Pollers:     n.cfg.Pollers,
		GoMaxProcs:  runtime.GOMAXPROCS(0),
		Workers:     n.cfg.Workers,
		Time:        time.Now().UnixNano(),
	}
	if s := n.settler; s != nil {
		st.IdleChecks, st.IdleCollections, st.Settled = s.checks.Load(), s.collections.Load(), s.settled.Load()
	}
	if r.URL.Query().Get("gc") == "1" {
		// A settled heap, returned to the OS, makes RSS deltas comparable
		// between runs (freed-but-kept memory would count otherwise).
		debug.FreeOSMemory()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	st.HeapInuse = ms.HeapInuse
	st.GoBytes = ms.Sys - ms.HeapReleased
	st.StoreMemtableBytes, st.StoreCacheBytes = n.store.MemoryStats()
	ps, err := readProcSelf()
	if err != nil {
		writeError(w, http.StatusInternalServerError, "internal", "read /proc/self: "+err.Error())
		return
	}
	st.CPUSeconds, st.SysCPUSeconds, st.RSSBytes = ps.cpu, ps.sys, ps.rss
	if r.URL.Query().Get("sched") == "1" {
		if wait, ok := readRunqueueWait(); ok {
			st.RunqueueWaitSeconds = &wait
		}
	}
	writeJSON(w, http.StatusOK, st)
}

// procSelf is what readProcSelf reads.
type procSelf struct {
	cpu, sys float64 // CPU seconds: user + system, and system alone
	rss      int64   // bytes
}

// readProcSelf reads CPU seconds and resident memory from /proc (Linux).
func readProcSelf() (procSelf, error) {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return procSelf{}, err
	}
	// Fields after the command name, which is in parentheses and may hold
	// spaces: state is field 3, utime 14, stime 15, rss 24 (in pages).
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procSelf{}, errors.New("unexpected /proc/self/stat format")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 22 {
		return procSelf{}, errors.New("short /proc/self/stat")
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	stt, _ := strconv.ParseFloat(f[12], 64)
	pages, _ := strconv.ParseInt(f[21], 10, 64)
	const clkTck = 100 // USER_HZ on Linux
	return procSelf{cpu: (ut + stt) / clkTck, sys: stt / clkTck, rss: pages * int64(os.Getpagesize())}, nil
}

// readRunqueueWait sums, over the process's threads, the nanoseconds each
// has waited on a run queue (the second field of its schedstat). ok is
// false where the kernel keeps no schedstat.
func readRunqueueWait() (seconds float64, ok bool) {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return 0, false
	}
	var total int64
	for _, t := range tasks {
		b, err := os.ReadFile("/proc/self/task/" + t.Name() + "/schedstat")
		if err != nil {
			continue // the thread has exited since the listing
		}
		f := strings.Fields(string(b))
		if len(f) < 2 {
			return 0, false
		}
		ns, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return 0, false
		}
		total += ns
		ok = true
	}
	return float64(total) / 1e9, ok
}

// BulkAccount is one account of a POST /admin/accounts/bulk request.
type BulkAccount struct {
	Phone string `json:"phone"`
	Key   string `json:"key"` // base64 (std) of the 32-byte device public key
}

// handleBulkAccounts creates many accounts at once, with no SMS round: for
// load tests and migrations, on the trusted listener only. It never
// replaces an account (see account.Service.Provision): a number registered
// to another key gets 409 and nothing of the request is written.
func (n *Node) handleBulkAccounts(w http.ResponseWriter, r *http.Request) {
	// A JSON body cannot be sent cross-site without a CORS preflight,
	// which this listener never grants; a text/plain or form body can.
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		writeError(w, http.StatusUnsupportedMediaType, "unsupported_media_type", "send the body as Content-Type: application/json")
		return
	}
	var req struct {
		Accounts []BulkAccount `json:"accounts"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<20))
	dec.DisallowUnknownFields()
	err := dec.Decode(&req)
	if err == nil && dec.More() {
		// Whatever follows the object would be silently ignored: a
		// truncated or concatenated upload must not half succeed.
		err = errors.New("data after the JSON object")
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", "body must be {\"accounts\":[{\"phone\":\"+E164\",\"key\":\"<base64>\"}]}: "+err.Error())
		return
	}
	accts := make([]account.Provisioned, len(req.Accounts))
	for i, a := range req.Accounts {
		key, err := base64.StdEncoding.DecodeString(a.Key)
		if err != nil {
			writeError(w, http.StatusBadRequest, "invalid_key", fmt.Sprintf("accounts[%d]: key must be base64 of %d bytes", i, noise.KeyLen))
			return
		}
		accts[i] = account.Provisioned{Phone: a.Phone, Key: key}
	}
	res, err := n.accounts.Provision(r.Context(), accts)
	if err != nil {
		var ae *account.Error
		if errors.As(err, &ae) {
			if ae.Status >= 500 {
				n.log.Error("bulk accounts", "err", err)
			}
			writeError(w, ae.Status, ae.Code, ae.Message)
			return
		}
		writeError(w, http.StatusInternalServerError, "internal", "provision accounts: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"created": res.Created, "existing": res.Existing})
}
