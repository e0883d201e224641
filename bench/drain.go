package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// DrainResult is what Drain reports.
type DrainResult struct {
	Mode string `json:"mode"`
	Msgs int    `json:"msgs"`
	Size int    `json:"size"`

	Queued        int64   `json:"queued"` // accepted by the server (SendAck)
	QueueSeconds  float64 `json:"queue_seconds"`
	QueueMsgsPerS float64 `json:"queue_msgs_per_s"`

	Received          int64   `json:"received"`
	Seconds           float64 `json:"seconds"` // from the login until the last message arrived
	MsgsPerS          float64 `json:"msgs_per_s"`
	ServerCPUS        float64 `json:"server_cpu_s"`
	ServerCPUUsPerMsg float64 `json:"server_cpu_us_per_msg"`

	Lost         int64    `json:"lost"`
	Stale        int64    `json:"stale"`
	Errors       int64    `json:"errors"`
	ErrorSamples []string `json:"error_samples,omitempty"`
}

// Rows implements Result.
func (r *DrainResult) Rows() []Row {
	rows := []Row{
		{Name: "msgs x size", Value: fmt.Sprintf("%s x %d B", fmtInt(int64(r.Msgs)), r.Size)},
		{Name: "queue_msgs_per_s", Value: fmtF(r.QueueMsgsPerS, 0), Note: fmt.Sprintf("%s queued for the offline user in %.2f s", fmtInt(r.Queued), r.QueueSeconds)},
		{Name: "msgs_per_s", Value: fmtF(r.MsgsPerS, 0), Note: fmt.Sprintf("%s drained in %.3f s from the login", fmtInt(r.Received), r.Seconds)},
		{Name: "server_cpu_us_per_msg", Value: fmtF(r.ServerCPUUsPerMsg, 2), Note: fmt.Sprintf("%.2f server CPU-seconds while draining", r.ServerCPUS)},
		{Name: "lost", Value: fmtInt(r.Lost), Note: "missing + duplicated + out of order + late + wrong body; anything but 0 is a bug"},
		{Name: "stale", Value: fmtInt(r.Stale), Note: "items from earlier runs, acked and ignored"},
	}
	return append(rows, errorRows(r.Errors, r.ErrorSamples)...)
}

// queueWindow is how many Sends the drain's sender keeps unanswered.
const queueWindow = 1024

// Drain queues cfg.Msgs messages (default 50,000) of cfg.Size bytes from
// user offset to user offset+1 while it is offline, then logs it in and
// measures how fast its queue drains to it. cfg.Duration (default 60s)
// bounds each phase. The server's queue limit (--max-queue-len) bounds
// cfg.Msgs.
func Drain(ctx context.Context, cfg Config, progress io.Writer) (*DrainResult, error) {
	cfg.setDefaults()
	if cfg.Msgs <= 0 {
		cfg.Msgs = 50_000
	}
	if cfg.Duration <= 0 {
		cfg.Duration = 60 * time.Second
	}
	e, err := open(ctx, cfg, "drain", 2)
	if err != nil {
		return nil, err
	}
	from, to := e.users[0], e.users[1]
	res := &DrainResult{Mode: "drain", Msgs: cfg.Msgs, Size: cfg.Size}
	var errs tally
	var queued, received atomic.Int64
	var phase atomic.Value
	phase.Store("clearing")
	start := time.Now()
	pr := startProgress(progress, func() string {
		return fmt.Sprintf("drain: %s  queued %s/%s  drained %s  %.1fs", phase.Load(),
			fmtInt(queued.Load()), fmtInt(int64(cfg.Msgs)), fmtInt(received.Load()), time.Since(start).Seconds())
	})
	defer pr.end()

	// Empty the receiver's queue of anything an earlier run left.
	stale, err := e.clearQueue(ctx, to, cfg.Duration)
	if err != nil {
		return nil, err
	}
	res.Stale += stale

	// Queue the messages while the receiver is offline.
	phase.Store("queueing")
	sc, err := e.d.dial(ctx, from, hello{}, 64<<10)
	if err != nil {
		return nil, err
	}
	defer sc.close()
	stopWatch := interruptOnDone(ctx, sc)
	base := runBase()
	t0 := time.Now()
	q, err := queueMessages(sc, base, to.phone, cfg.Msgs, make([]byte, cfg.Size), t0.Add(cfg.Duration), &queued, &errs)
	res.QueueSeconds = time.Since(t0).Seconds()
	res.Queued = q.acked
	res.QueueMsgsPerS = rate(q.acked, time.Since(t0))
	res.Stale += q.stale
	stopWatch()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if err != nil {
		return nil, fmt.Errorf("queue messages: %w", err)
	}
	if q.acked == 0 {
		return nil, fmt.Errorf("drain: the server accepted none of the messages, e.g. %v", errs.list())
	}

	// The sender stays online and acks the delivered receipts the drain
	// produces, as a real sender would.
	var closing atomic.Bool
	var swg sync.WaitGroup
	sink := &receiver{c: sc, from: "-", base: ^uint64(0)}
	swg.Add(1)
	go func() {
		defer swg.Done()
		sink.run(&closing)
	}()
	var stopSink sync.Once
	stopSinking := func() {
		stopSink.Do(func() {
			closing.Store(true)
			sc.nc.SetReadDeadline(time.Now())
			swg.Wait()
		})
	}
	defer stopSinking()

	// Drain.
	phase.Store("draining")
	h, err := e.d.prepare(to)
	if err != nil {
		return nil, err
	}
	p0, err := e.admin.process(ctx, false)
	if err != nil {
		return nil, err
	}
	t1 := time.Now()
	rc, err := e.d.dial(ctx, to, h, 256<<10)
	if err != nil {
		return nil, err
	}
	defer rc.close()
	defer interruptOnDone(ctx, sc, rc)()
	rc.nc.SetReadDeadline(t1.Add(cfg.Duration))
	v := &receiver{c: rc, from: from.phone, base: base, body: make([]byte, cfg.Size)}
	var f frame
	var last time.Time
	for v.unique < q.acked {
		if err := v.batch(&f); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if isTimeout(err) {
				errs.add(fmt.Errorf("drain stopped after --duration %s with %d of %d messages", cfg.Duration, v.unique, q.acked))
			} else {
				errs.add(err)
			}
			break
		}
		last = time.Now()
		received.Store(v.received.Load())
	}
	p1, err := e.admin.process(ctx, false)
	if err != nil {
		return nil, err
	}
	// Anything still queued for the receiver is late: a duplicate or a
	// stray, and a loss-check failure, not a leftover of an earlier run.
	stopSinking()
	late, err := proveDrained(sc, rc, from.phone, to.phone, base+uint64(cfg.Msgs)+1, time.Now().Add(10*time.Second))
	if err != nil {
		errs.add(fmt.Errorf("prove the drained queue empty: %w", err))
	}
	elapsed := last.Sub(t1)
	res.Received = v.received.Load()
	res.Seconds = max(elapsed, 0).Seconds()
	res.MsgsPerS = rate(v.unique, elapsed)
	res.ServerCPUS = p1.CPUSeconds - p0.CPUSeconds
	if v.unique > 0 {
		res.ServerCPUUsPerMsg = res.ServerCPUS * 1e6 / float64(v.unique)
	}
	missing := q.acked - v.unique
	if missing < 0 {
		missing = -missing
	}
	res.Lost = missing + v.dups + v.jumpsOverAccepted(nil) + v.corrupt + late
	res.Stale += v.stale
	res.Errors, res.ErrorSamples = errs.count(), errs.list()
	pr.end()
	return res, nil
}

// clearQueue logs u in and acks whatever its queue holds, so that a drain
// starts from an empty queue. It returns how many items it acked.
func (e *env) clearQueue(ctx context.Context, u *user, limit time.Duration) (int64, error) {
	c, err := e.d.dial(ctx, u, hello{}, 64<<10)
	if err != nil {
		return 0, err
	}
	defer c.close()
	n, err := c.settle(time.Now().Add(limit))
	if err != nil {
		return n, fmt.Errorf("empty the queue of %s: %w", u.phone, err)
	}
	return n, nil
}

type queueStats struct {
	sent, acked, failed, stale int64
}

// queueMessages sends n messages numbered base+1.. to `to`, keeping
// queueWindow unanswered, and returns once each is answered.
func queueMessages(c *conn, base uint64, to string, n int, body []byte, deadline time.Time, progress *atomic.Int64, errs *tally) (queueStats, error) {
	var q queueStats
	c.nc.SetReadDeadline(deadline)
	defer c.nc.SetReadDeadline(time.Time{})
	var f frame
	var seqHigh, ackSent uint64
	full := false
	for q.acked+q.failed < int64(n) {
		for q.sent < int64(n) && q.sent-q.acked-q.failed < queueWindow && !full {
			q.sent++
			if err := c.queueSend(base+uint64(q.sent), to, body); err != nil {
				return q, err
			}
		}
		if seqHigh > ackSent {
			if err := c.queueAck(seqHigh); err != nil {
				return q, err
			}
			ackSent = seqHigh
		}
		if err := c.flush(); err != nil {
			return q, err
		}
		if q.sent == q.acked+q.failed {
			break // the queue is full: nothing more is in flight
		}
		if err := c.wait(); err != nil {
			return q, err
		}
		for {
			pt, ok, err := c.next()
			if err == nil && ok {
				err = parseFrame(pt, &f)
			}
			if err != nil {
				return q, err
			}
			if !ok {
				break
			}
			switch f.kind {
			case fSendAck:
				q.acked++
			case fError:
				q.failed++
				if f.code == 4 { // QUEUE_FULL
					full = true
					errs.add(errors.New("the receiver's queue is full: the server's --max-queue-len bounds --msgs"))
				} else {
					errs.add(fmt.Errorf("send refused (%d): %s", f.code, f.text))
				}
			case fClose:
				return q, closeErr(&f)
			case fDeliver:
				seqHigh = max(seqHigh, f.seq)
				q.stale++
			}
		}
		progress.Store(q.acked)
	}
	return q, nil
}
