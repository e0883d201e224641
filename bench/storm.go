package bench

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"
	"time"
)

// StormResult is what Storm reports.
type StormResult struct {
	Mode        string `json:"mode"`
	Conns       int    `json:"conns"`
	Connected   int    `json:"connected"`   // logged in before the drop
	Reconnected int    `json:"reconnected"` // logged in again after it

	Seconds             float64 `json:"seconds"`      // from the drop until the last is logged in again
	DropSeconds         float64 `json:"drop_seconds"` // closing every connection (part of Seconds)
	LoginsPerS          float64 `json:"logins_per_s"`
	ServerCPUS          float64 `json:"server_cpu_s"`
	LoginsPerServerCPUS float64 `json:"logins_per_server_cpu_s"`
	BenchCPUS           float64 `json:"bench_cpu_s"` // this process's CPU during the storm
	Retries             int64   `json:"retries"`
	Shed                int64   `json:"shed"`    // tries the server reset unread (its accept rate) and the bench made again
	Resumed             int64   `json:"resumed"` // logins again with a resumption ticket, not a full handshake
	Concurrency         int     `json:"concurrency"`

	Errors       int64    `json:"errors"`
	ErrorSamples []string `json:"error_samples,omitempty"`
}

// Rows implements Result.
func (r *StormResult) Rows() []Row {
	rows := []Row{
		{Name: "conns", Value: fmtInt(int64(r.Conns)), Note: fmt.Sprintf("%s logged in before the drop, %s after", fmtInt(int64(r.Connected)), fmtInt(int64(r.Reconnected)))},
		{Name: "seconds", Value: fmtF(r.Seconds, 3), Note: fmt.Sprintf("from the drop until all are logged in again (closing took %.3f s)", r.DropSeconds)},
		{Name: "logins_per_s", Value: fmtF(r.LoginsPerS, 0), Note: fmt.Sprintf("%d logins in flight at most, %d retries, %d shed by the server's accept rate and tried again", r.Concurrency, r.Retries, r.Shed)},
		{Name: "logins_per_server_cpu_s", Value: fmtF(r.LoginsPerServerCPUS, 0), Note: fmt.Sprintf("%.2f server CPU-seconds; %s resumed with a ticket, the rest full handshakes", r.ServerCPUS, fmtInt(r.Resumed))},
		{Name: "bench_cpu_s", Value: fmtF(r.BenchCPUS, 2), Note: "this load generator's CPU during the storm (it shares the machine)"},
	}
	return append(rows, errorRows(r.Errors, r.ErrorSamples)...)
}

// Storm logs cfg.Conns users in, then closes every connection at once and
// logs them all in again (at most cfg.Concurrency in flight, default 1000),
// reporting the time from the drop until the last is logged in.
func Storm(ctx context.Context, cfg Config, progress io.Writer) (*StormResult, error) {
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 1000
	}
	cfg.setDefaults()
	n := cfg.Conns
	if n <= 0 {
		return nil, fmt.Errorf("--conns %d: give 1 or more", n)
	}
	e, err := open(ctx, cfg, "storm", n)
	if err != nil {
		return nil, err
	}
	res := &StormResult{Mode: "storm", Conns: n, Concurrency: cfg.Concurrency}
	var ls, ls2 loginStats
	var phase atomic.Value
	phase.Store("login")
	start := time.Now()
	pr := startProgress(progress, func() string {
		return fmt.Sprintf("storm: %s  logged in %s/%s, again %s/%s  %.1fs",
			phase.Load(), fmtInt(ls.done.Load()), fmtInt(int64(n)), fmtInt(ls2.done.Load()), fmtInt(int64(n)), time.Since(start).Seconds())
	})
	defer pr.end()

	conns := e.loginAll(ctx, e.users, nil, 512, &ls)
	res.Connected = int(ls.done.Load())
	if err := fatalIfAll(&ls.errs, n, "storm: log in"); err != nil {
		closeAll(conns)
		return nil, err
	}
	phase.Store("preparing handshakes")
	hellos, err := e.prepareAll(e.users)
	if err != nil {
		closeAll(conns)
		return nil, err
	}
	p0, err := e.admin.process(ctx, false)
	if err != nil {
		closeAll(conns)
		return nil, err
	}
	phase.Store("storm")
	cpu0 := cpuSelf()
	t0 := time.Now()
	closeAll(conns)
	res.DropSeconds = time.Since(t0).Seconds()
	conns = e.loginAll(ctx, e.users, hellos, 512, &ls2)
	elapsed := time.Since(t0)
	res.BenchCPUS = (cpuSelf() - cpu0).Seconds()
	defer closeAll(conns)
	p1, err := e.admin.process(ctx, false)
	if err != nil {
		return nil, err
	}
	res.Reconnected = int(ls2.done.Load())
	res.Seconds = elapsed.Seconds()
	res.LoginsPerS = rate(ls2.done.Load(), elapsed)
	res.ServerCPUS = p1.CPUSeconds - p0.CPUSeconds
	res.LoginsPerServerCPUS = loginsPerCPU(p0, p1, res.Reconnected)
	res.Retries = ls.retries.Load() + ls2.retries.Load()
	res.Shed = ls.shed.Load() + ls2.shed.Load()
	res.Resumed = ls2.resumed.Load()
	for _, t := range []*tally{&ls.errs, &ls2.errs} {
		res.Errors += t.count()
		for _, s := range t.list() {
			if len(res.ErrorSamples) < maxSamples {
				res.ErrorSamples = append(res.ErrorSamples, s)
			}
		}
	}
	pr.end()
	return res, nil
}
