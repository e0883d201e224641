package bench

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// Method notes, repeated in the output so a figure never travels without
// how it was taken.
const (
	userMethod   = "server RSS delta / N, from GET /admin/process?gc=1 before the logins and after the hold; N = the change in the server's session count"
	goMethod     = "delta of the memory the server's Go runtime holds (mapped less returned to the OS: heap, stacks, runtime metadata) / N, same readings; RSS less this is C memory, which in Parley is Pebble's memtables and block cache"
	steadyMethod = "server RSS delta / N, from GET /admin/process without a forced collection, before the logins and at the end of the hold (each before the forced-GC reading, and once the server has settled by itself: its idle collection, --idle-collect, after the activity before; server_settled_before/after say whether it had): the growth an operator sees"
	kernelMethod = "(delta of /proc/meminfo Slab - /proc inodes + /proc/net/sockstat TCP mem pages * page size) / 2 / N: loopback holds both ends, the server's share is half; /proc inodes (inode, dentry, security blob, from /proc/slabinfo) are left out: whoever lists /proc/PID/fd makes one per open file"
)

// IdleResult is what Idle reports.
type IdleResult struct {
	Mode      string `json:"mode"`
	Conns     int    `json:"conns"`
	Connected int    `json:"connected"`
	Exchanged int    `json:"exchanged"` // connections that sent and received a message

	LoginSeconds        float64 `json:"login_seconds"`
	LoginsPerS          float64 `json:"logins_per_s"`
	LoginServerCPUS     float64 `json:"login_server_cpu_s"`
	LoginsPerServerCPUS float64 `json:"logins_per_server_cpu_s"`
	LoginRetries        int64   `json:"login_retries"`
	LoginsShed          int64   `json:"logins_shed"`       // tries the server reset unread (its accept rate) and the bench made again
	LoginsResumed       int64   `json:"logins_resumed"`    // with a resumption ticket (from --warm), not a full handshake
	LoginBenchCPUS      float64 `json:"login_bench_cpu_s"` // this process's CPU during the logins
	ExchangeSeconds     float64 `json:"exchange_seconds"`
	HoldSeconds         float64 `json:"hold_seconds"`

	UserBytesPerConn float64 `json:"user_bytes_per_conn"`
	// SteadyBytesPerConn is the RSS growth per connection without a forced
	// collection (steadyMethod): what the process's resident set shows.
	SteadyBytesPerConn  float64 `json:"steady_rss_bytes_per_conn"`
	GoBytesPerConn      float64 `json:"go_bytes_per_conn"`
	HeapBytesPerConn    float64 `json:"heap_bytes_per_conn"`
	OutsideGoPerConn    float64 `json:"outside_go_bytes_per_conn"` // user less Go: Pebble's C memory
	KernelBytesPerConn  float64 `json:"kernel_bytes_per_conn"`
	TotalBytesPerConn   float64 `json:"total_bytes_per_conn"`    // user + kernel
	TotalGoBytesPerConn float64 `json:"total_go_bytes_per_conn"` // Go + kernel
	// StoreMemtableGrowth is how much Pebble's memtables (C memory) grew
	// between the readings: the exchanged messages fill them. They are
	// bounded by configuration, not by the number of connections.
	StoreMemtableGrowth int64  `json:"store_memtable_growth_bytes"`
	ServerRSSBytes      int64  `json:"server_rss_bytes"`
	ServerGoroutines    int    `json:"server_goroutines"`
	ServerSessions      int    `json:"server_sessions"`
	MeasuredConns       int    `json:"measured_conns"` // N in the per-connection figures
	UserMethod          string `json:"user_method"`
	SteadyMethod        string `json:"steady_method"`
	GoMethod            string `json:"go_method"`
	KernelMethod        string `json:"kernel_method"`

	Warm bool `json:"warm"` // every user logged in and out once before the readings
	// The server had settled (returned its garbage to the OS after the
	// activity before, by itself: --idle-collect) at the readings without
	// a collection.
	SettledBefore bool     `json:"server_settled_before"`
	SettledAfter  bool     `json:"server_settled_after"`
	Errors        int64    `json:"errors"`
	ErrorSamples  []string `json:"error_samples,omitempty"`
}

// Rows implements Result.
func (r *IdleResult) Rows() []Row {
	rows := []Row{
		{Name: "conns", Value: fmtInt(int64(r.Conns)), Note: fmt.Sprintf("%s connected, %s exchanged a message", fmtInt(int64(r.Connected)), fmtInt(int64(r.Exchanged)))},
		{Name: "logins_per_s", Value: fmtF(r.LoginsPerS, 0), Note: fmt.Sprintf("%.2f s for all, %d retries, %d shed by the server's accept rate and tried again", r.LoginSeconds, r.LoginRetries, r.LoginsShed)},
		{Name: "logins_per_server_cpu_s", Value: fmtF(r.LoginsPerServerCPUS, 0), Note: fmt.Sprintf("%.2f server CPU-seconds (the bench used %.2f); %s of the logins resumed with a ticket, the rest full handshakes", r.LoginServerCPUS, r.LoginBenchCPUS, fmtInt(r.LoginsResumed))},
		{Name: "measured_conns", Value: fmtInt(int64(r.MeasuredConns)), Note: "N below: sessions the server gained between the two readings"},
		{Name: "warm", Value: fmt.Sprint(r.Warm), Note: "true: every user logged in and out once first, so store caches do not count as connection memory"},
		{Name: "user_bytes_per_conn", Value: fmtF(r.UserBytesPerConn, 0), Note: userMethod},
		{Name: "steady_rss_bytes_per_conn", Value: fmtF(r.SteadyBytesPerConn, 0), Note: fmt.Sprintf("no forced collection, after a %.0f s hold, the server settled by itself before/after: %v/%v: %s", r.HoldSeconds, r.SettledBefore, r.SettledAfter, steadyMethod)},
		{Name: "go_bytes_per_conn", Value: fmtF(r.GoBytesPerConn, 0), Note: goMethod},
		{Name: "heap_bytes_per_conn", Value: fmtF(r.HeapBytesPerConn, 0), Note: "Go heap in use, same readings"},
		{Name: "outside_go_bytes_per_conn", Value: fmtF(r.OutsideGoPerConn, 0), Note: fmt.Sprintf("user less Go: C memory; Pebble's memtables grew %.1f MiB with the exchanged messages", float64(r.StoreMemtableGrowth)/(1<<20))},
		{Name: "kernel_bytes_per_conn", Value: fmtF(r.KernelBytesPerConn, 0), Note: kernelMethod},
		{Name: "total_bytes_per_conn", Value: fmtF(r.TotalBytesPerConn, 0), Note: "user + kernel"},
		{Name: "total_go_bytes_per_conn", Value: fmtF(r.TotalGoBytesPerConn, 0), Note: "go + kernel"},
		{Name: "server_rss_bytes", Value: fmtInt(r.ServerRSSBytes), Note: fmt.Sprintf("%d goroutines, %s sessions after the hold", r.ServerGoroutines, fmtInt(int64(r.ServerSessions)))},
	}
	return append(rows, errorRows(r.Errors, r.ErrorSamples)...)
}

// Idle logs cfg.Conns users in, makes each send one message to a neighbour
// and receive one (and the delivered receipt), holds the connections for
// cfg.Hold, and reports login rate and cost and the server's memory per
// connection (see the package doc for the methods).
func Idle(ctx context.Context, cfg Config, progress io.Writer) (*IdleResult, error) {
	cfg.setDefaults()
	if cfg.Hold <= 0 {
		cfg.Hold = 5 * time.Second
	}
	n := cfg.Conns
	if n <= 0 {
		return nil, fmt.Errorf("--conns %d: give 1 or more", n)
	}
	e, err := open(ctx, cfg, "idle", n)
	if err != nil {
		return nil, err
	}
	res := &IdleResult{Mode: "idle", Conns: n, UserMethod: userMethod, SteadyMethod: steadyMethod, GoMethod: goMethod, KernelMethod: kernelMethod, Warm: cfg.Warm}
	if cfg.Warm {
		if err := e.warm(ctx, progress); err != nil {
			return nil, err
		}
	}
	hellos, err := e.prepareAll(e.users)
	if err != nil {
		return nil, err
	}

	if cfg.HeapProfile != "" {
		if err := e.admin.heapProfile(ctx, cfg.HeapProfile+".before.pprof"); err != nil {
			return nil, err
		}
	}
	// The reading without a collection comes first each time: a forced
	// one returns memory to the OS and would hide what it shows. It waits
	// for the server's own idle collection, as an operator reading an
	// idle server's RSS would find it.
	if res.SettledBefore, err = waitSettled(ctx, e.admin); err != nil {
		return nil, err
	}
	steadyBefore, err := e.admin.process(ctx, false)
	if err != nil {
		return nil, err
	}
	before, err := e.admin.process(ctx, true)
	if err != nil {
		return nil, err
	}
	kBefore, kOK := readKernelMem()

	// Logins.
	var ls loginStats
	var exchanged atomic.Int64
	phase := "login"
	var phaseMu sync.Mutex
	start := time.Now()
	var loginTime time.Duration
	pr := startProgress(progress, func() string {
		phaseMu.Lock()
		ph, d := phase, loginTime
		phaseMu.Unlock()
		if d == 0 {
			d = time.Since(start)
		}
		p, _ := e.admin.process(ctx, false)
		return fmt.Sprintf("idle: %s  logged in %s/%s (%.0f/s)  exchanged %s  server: %s sessions, rss %d MiB, cpu %.1fs",
			ph, fmtInt(ls.done.Load()), fmtInt(int64(n)), rate(ls.done.Load(), d), fmtInt(exchanged.Load()),
			fmtInt(int64(p.Sessions)), p.RSSBytes>>20, p.CPUSeconds)
	})
	defer pr.end()
	cpu0, err := e.admin.process(ctx, false)
	if err != nil {
		return nil, err
	}
	bcpu0 := cpuSelf()
	t0 := time.Now()
	conns := e.loginAll(ctx, e.users, hellos, 512, &ls)
	res.LoginBenchCPUS = (cpuSelf() - bcpu0).Seconds()
	phaseMu.Lock()
	loginTime = time.Since(t0)
	phaseMu.Unlock()
	cpu1, err := e.admin.process(ctx, false)
	defer closeAll(conns)
	if err != nil {
		return nil, err
	}
	res.Connected = int(ls.done.Load())
	res.LoginRetries, res.LoginsShed = ls.retries.Load(), ls.shed.Load()
	res.LoginsResumed = ls.resumed.Load()
	res.LoginSeconds = loginTime.Seconds()
	res.LoginsPerS = rate(ls.done.Load(), loginTime)
	res.LoginServerCPUS = cpu1.CPUSeconds - cpu0.CPUSeconds
	res.LoginsPerServerCPUS = loginsPerCPU(cpu0, cpu1, res.Connected)
	if err := fatalIfAll(&ls.errs, n, "idle: log in"); err != nil {
		return nil, err
	}

	// Exchange: user i sends to its neighbour i^1 (itself if it has none).
	phaseMu.Lock()
	phase = "exchange"
	phaseMu.Unlock()
	base := runBase()
	body := make([]byte, 16)
	t1 := time.Now()
	deadline := t1.Add(60 * time.Second)
	stopWatch := interruptOnDone(ctx, conns...)
	var wg sync.WaitGroup
	for i, c := range conns {
		if c == nil {
			continue
		}
		j := i ^ 1
		if j >= n {
			j = i
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := exchange(c, base+uint64(i), e.users[j].phone, base+uint64(j), body, deadline)
			c.releaseBuffers()
			if err != nil {
				ls.errs.add(fmt.Errorf("exchange of %s: %w", e.users[i].phone, err))
				return
			}
			exchanged.Add(1)
		}()
	}
	wg.Wait()
	stopWatch()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	res.Exchanged = int(exchanged.Load())
	res.ExchangeSeconds = time.Since(t1).Seconds()

	// With other bench processes connecting at once (cfg.Total), wait
	// until the server holds everyone's sessions before the hold.
	if cfg.Total > n {
		phaseMu.Lock()
		phase = fmt.Sprintf("waiting for %s sessions in all", fmtInt(int64(cfg.Total)))
		phaseMu.Unlock()
		if err := waitSessions(ctx, e.admin, cfg.Total, totalWait); err != nil {
			ls.errs.add(err)
		}
	}

	// Hold, then read the memory.
	phaseMu.Lock()
	phase = "hold"
	phaseMu.Unlock()
	t2 := time.Now()
	if err := sleepCtx(ctx, cfg.Hold); err != nil {
		return nil, err
	}
	if res.SettledAfter, err = waitSettled(ctx, e.admin); err != nil {
		return nil, err
	}
	res.HoldSeconds = time.Since(t2).Seconds()
	steadyAfter, err := e.admin.process(ctx, false)
	if err != nil {
		return nil, err
	}
	after, err := e.admin.process(ctx, true)
	if err != nil {
		return nil, err
	}
	kAfter, kOK2 := readKernelMem()
	if cfg.HeapProfile != "" {
		if err := e.admin.heapProfile(ctx, cfg.HeapProfile+".after.pprof"); err != nil {
			return nil, err
		}
	}
	if cfg.Total > n {
		// Keep these connections a little longer, so that the other
		// processes' readings, taken at about the same time, see them.
		phaseMu.Lock()
		phase = "lingering for the other processes"
		phaseMu.Unlock()
		if err := sleepCtx(ctx, linger); err != nil {
			return nil, err
		}
	}
	// Divide by the change in the server's sessions rather than by this
	// process's connections: with several bench processes holding
	// connections at once, each then reports the figure for all of them.
	perConn := after.Sessions - before.Sessions
	if perConn <= 0 {
		perConn = res.Connected
	}
	res.MeasuredConns = perConn
	if perConn > 0 {
		c := float64(perConn)
		res.UserBytesPerConn = float64(after.RSSBytes-before.RSSBytes) / c
		res.SteadyBytesPerConn = float64(steadyAfter.RSSBytes-steadyBefore.RSSBytes) / c
		res.GoBytesPerConn = float64(int64(after.GoBytes)-int64(before.GoBytes)) / c
		res.HeapBytesPerConn = float64(int64(after.HeapInuse)-int64(before.HeapInuse)) / c
		res.OutsideGoPerConn = res.UserBytesPerConn - res.GoBytesPerConn
		res.StoreMemtableGrowth = after.StoreMemtableBytes - before.StoreMemtableBytes
		if kOK && kOK2 {
			d := (kAfter.SlabBytes - kBefore.SlabBytes) - (kAfter.ProcBytes - kBefore.ProcBytes) +
				(kAfter.TCPMemBytes - kBefore.TCPMemBytes)
			res.KernelBytesPerConn = float64(d) / 2 / c
		}
		res.TotalBytesPerConn = res.UserBytesPerConn + res.KernelBytesPerConn
		res.TotalGoBytesPerConn = res.GoBytesPerConn + res.KernelBytesPerConn
	}
	res.ServerRSSBytes, res.ServerGoroutines, res.ServerSessions = after.RSSBytes, after.Goroutines, after.Sessions
	res.Errors, res.ErrorSamples = ls.errs.count(), ls.errs.list()
	pr.end()
	return res, nil
}

// warm logs every user in once and out again, then waits for the server to
// close their sessions, so that the store's caches (accounts read at login)
// are filled before the memory readings and not counted per connection.
func (e *env) warm(ctx context.Context, progress io.Writer) error {
	p0, err := e.admin.process(ctx, false)
	if err != nil {
		return err
	}
	var ls loginStats
	pr := startProgress(progress, func() string {
		return fmt.Sprintf("idle: warming  logged in %s/%s", fmtInt(ls.done.Load()), fmtInt(int64(len(e.users))))
	})
	conns := e.loginAll(ctx, e.users, nil, 512, &ls)
	closeAll(conns)
	pr.end()
	if err := fatalIfAll(&ls.errs, len(e.users), "idle: warm-up login"); err != nil {
		return err
	}
	end := time.Now().Add(totalWait)
	for {
		p, err := e.admin.process(ctx, false)
		if err != nil {
			return err
		}
		if p.Sessions <= p0.Sessions || time.Now().After(end) {
			return nil
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// totalWait bounds the wait for other bench processes' sessions; linger is
// how long connections stay after the reading when other processes take
// theirs.
const (
	totalWait = 2 * time.Minute
	linger    = 5 * time.Second
)

// waitSessions waits until the server holds at least want sessions.
func waitSessions(ctx context.Context, a *admin, want int, limit time.Duration) error {
	end := time.Now().Add(limit)
	for {
		p, err := a.process(ctx, false)
		if err != nil {
			return err
		}
		if p.Sessions >= want {
			return nil
		}
		if time.Now().After(end) {
			return fmt.Errorf("the server held %d sessions, not the %d of --total, after %s: are the other bench processes running?", p.Sessions, want, limit)
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
}

// settleWait bounds the wait for the server's idle collection: at the
// default --idle-collect (5 s) it comes within two or three checks.
const settleWait = 30 * time.Second

// waitSettled waits until the server has returned the garbage of what came
// before to the OS by itself (node.Config.IdleCollect): two checks after
// now, and settled. It reports whether it has: a server with idle
// collections off (or from before them) never does, nor one kept busy by
// something else within settleWait.
func waitSettled(ctx context.Context, a *admin) (bool, error) {
	p, err := a.process(ctx, false)
	if err != nil || p.IdleChecks == 0 {
		return false, err
	}
	from, end := p.IdleChecks, time.Now().Add(settleWait)
	for !p.Settled || p.IdleChecks < from+2 {
		if time.Now().After(end) {
			return false, nil
		}
		if err := sleepCtx(ctx, 250*time.Millisecond); err != nil {
			return false, err
		}
		if p, err = a.process(ctx, false); err != nil {
			return false, err
		}
	}
	return true, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// loginsPerCPU is the server's logins per CPU-second between two readings,
// counted by the server (so that several bench processes logging in at
// once each get the true ratio), or own when it counts none.
func loginsPerCPU(p0, p1 process, own int) float64 {
	cpu := p1.CPUSeconds - p0.CPUSeconds
	n := p1.Logins - p0.Logins
	if n <= 0 {
		n = int64(own)
	}
	if cpu <= 0 {
		return 0
	}
	return float64(n) / cpu
}

// runBase is the first message id of a run. The server dedups sends by
// (sender, id) forever (well, for its dedup TTL), so ids must not repeat
// across runs: nanoseconds since the epoch grow faster than any run can
// send. Items left over from earlier runs have lower ids, which is how
// receivers tell them apart.
func runBase() uint64 { return uint64(time.Now().UnixNano()) }

// exchange sends one message (id) to the user `to`, and waits for its
// SendAck, for the message numbered peerID from `to` (acking it) and for the
// delivered receipt of its own message (acking it too).
func exchange(c *conn, id uint64, to string, peerID uint64, body []byte, deadline time.Time) error {
	c.nc.SetDeadline(deadline)
	defer c.nc.SetDeadline(time.Time{})
	if err := c.queueSend(id, to, body); err != nil {
		return err
	}
	if err := c.flush(); err != nil {
		return err
	}
	var gotAck, gotMsg, gotRcpt bool
	var f frame
	for !(gotAck && gotMsg && gotRcpt) {
		if err := c.wait(); err != nil {
			return fmt.Errorf("waiting for sendack=%v message=%v receipt=%v: %w", gotAck, gotMsg, gotRcpt, err)
		}
		var ack uint64
		for {
			pt, ok, err := c.next()
			if err != nil {
				return err
			}
			if !ok {
				break
			}
			if err := parseFrame(pt, &f); err != nil {
				return err
			}
			switch f.kind {
			case fSendAck:
				gotAck = gotAck || f.id == id
			case fError:
				return fmt.Errorf("server error for request %d (%d): %s", f.id, f.code, f.text)
			case fClose:
				return closeErr(&f)
			case fDeliver:
				ack = f.seq
				switch {
				case f.isMsg && string(f.from) == to && f.msgID == peerID:
					gotMsg = true
				case f.isRcpt && f.rKind == receiptDelivered:
					for _, x := range f.ids {
						gotRcpt = gotRcpt || x == id
					}
				}
			}
		}
		if ack > 0 {
			if err := c.queueAck(ack); err != nil {
				return err
			}
			if err := c.flush(); err != nil {
				return err
			}
		}
	}
	return nil
}
