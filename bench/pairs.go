package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
)

// Latency is a latency distribution in milliseconds.
type Latency struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
}

// PairsResult is what Pairs reports.
type PairsResult struct {
	Mode        string  `json:"mode"`
	Pairs       int     `json:"pairs"`
	Window      int     `json:"window"`
	Size        int     `json:"size"`
	Rate        float64 `json:"rate"` // asked pace, msgs/s; 0: as fast as the windows allow
	MsgsPerPair int     `json:"msgs_per_pair"`
	Seconds     float64 `json:"seconds"`

	Sent      int64   `json:"sent"`
	Delivered int64   `json:"delivered"` // delivered receipts read by the senders
	Received  int64   `json:"received"`  // messages read by the receivers
	MsgsPerS  float64 `json:"msgs_per_s"`
	Latency   Latency `json:"latency_ms"`

	ServerCPUUsPerMsg float64 `json:"server_cpu_us_per_msg"`
	ServerCPUS        float64 `json:"server_cpu_s"`
	// ServerSysUsPerMsg is the kernel's part of ServerCPUUsPerMsg (system
	// time): on loopback the sockets' TCP work, the bench's receive path
	// included, with the fsyncs, polling and thread switches.
	ServerSysUsPerMsg float64 `json:"server_sys_us_per_msg"`
	// ServerRunqueueWaitUsPerMsg is how long the server's threads waited,
	// runnable, for a CPU, per message: above a few us per message the
	// machine is short of CPUs, and the latencies queue for them. Absent
	// where a node's kernel keeps no schedstat, or a thread exited.
	ServerRunqueueWaitUsPerMsg *float64 `json:"server_runqueue_wait_us_per_msg,omitempty"`
	BenchCPUUsPerMsg           float64  `json:"bench_cpu_us_per_msg"`

	Errors       int64    `json:"errors"`
	ErrorSamples []string `json:"error_samples,omitempty"`
	Lost         int64    `json:"lost"`
	Stale        int64    `json:"stale"` // items left by earlier runs, acked and ignored

	// Upgrade is the live upgrade asked for during the run (--upgrade-at).
	Upgrade *UpgradeOutcome `json:"upgrade,omitempty"`
	// Dropped is how many of the run's connections failed during it (EOF,
	// reset, closed by the server): with an upgrade, the goal is 0. In a
	// failover run a lost connection logs in again elsewhere and counts
	// in Failover.Moved instead; Dropped counts those that could not.
	Dropped int64 `json:"dropped_conns"`
	// Failover is the node lost during the run (bench failover).
	Failover *FailoverOutcome `json:"failover,omitempty"`
	// Nodes are the CPU figures of each node given (--admin with several):
	// ServerCPUS is their sum.
	Nodes []NodeCPU `json:"nodes,omitempty"`
}

// NodeCPU is one node's share of a run's CPU.
type NodeCPU struct {
	Admin    string  `json:"admin"`
	CPUS     float64 `json:"cpu_s"`
	UsPerMsg float64 `json:"cpu_us_per_msg"` // its CPU over every message of the run
	Note     string  `json:"note,omitempty"` // why a figure is missing
}

// Rows implements Result.
func (r *PairsResult) Rows() []Row {
	pace := "as fast as the windows allow"
	if r.Rate > 0 {
		pace = fmt.Sprintf("paced at %.0f msgs/s", r.Rate)
	}
	rows := []Row{
		{Name: "pairs x window x size", Value: fmt.Sprintf("%d x %d x %d B", r.Pairs, r.Window, r.Size), Note: pace},
		{Name: "msgs_per_s", Value: fmtF(r.MsgsPerS, 0), Note: fmt.Sprintf("%s delivered receipts in %.2f s (%s sent, %s received)", fmtInt(r.Delivered), r.Seconds, fmtInt(r.Sent), fmtInt(r.Received))},
		{Name: "latency_ms p50", Value: fmtF(r.Latency.P50, 3), Note: "send -> delivered receipt"},
		{Name: "latency_ms p90", Value: fmtF(r.Latency.P90, 3)},
		{Name: "latency_ms p99", Value: fmtF(r.Latency.P99, 3)},
		{Name: "latency_ms p999", Value: fmtF(r.Latency.P999, 3)},
		{Name: "latency_ms max", Value: fmtF(r.Latency.Max, 3)},
		r.serverCPURow(),
	}
	if r.ServerCPUS > 0 {
		rows = append(rows, Row{Name: "server_sys_us_per_msg", Value: fmtF(r.ServerSysUsPerMsg, 2), Note: "of it in the kernel (system time): TCP (on loopback the bench's receive path too), fsync, polling, switches"})
	}
	if w := r.ServerRunqueueWaitUsPerMsg; w != nil {
		rows = append(rows, Row{Name: "server_runqueue_wait_us_per_msg", Value: fmtF(*w, 2), Note: "the server's threads waiting for a CPU: a busy machine's queueing"})
	}
	rows = append(rows, []Row{
		{Name: "bench_cpu_us_per_msg", Value: fmtF(r.BenchCPUUsPerMsg, 2), Note: "this load generator's own CPU"},
		{Name: "lost", Value: fmtInt(r.Lost), Note: "missing + duplicated + out of order + late + wrong body; anything but 0 is a bug"},
		{Name: "stale", Value: fmtInt(r.Stale), Note: "items from earlier runs, acked and ignored"},
	}...)
	for i, n := range r.Nodes {
		row := Row{Name: fmt.Sprintf("node %d cpu_us_per_msg", i+1), Value: fmtF(n.UsPerMsg, 2), Note: fmt.Sprintf("%.2f CPU-seconds, %s", n.CPUS, n.Admin)}
		if n.Note != "" {
			row.Value, row.Note = "-", n.Admin+": "+n.Note
		}
		rows = append(rows, row)
	}
	rows = append(rows, upgradeRows(r.Upgrade, r.Dropped)...)
	rows = append(rows, failoverRows(r.Failover)...)
	return append(rows, errorRows(r.Errors, r.ErrorSamples)...)
}

func (r *PairsResult) serverCPURow() Row {
	if r.Upgrade != nil && r.Upgrade.Report != nil {
		return Row{Name: "server_cpu_us_per_msg", Value: "-", Note: "not measured: the readings before and after are of two processes (the upgrade)"}
	}
	note := fmt.Sprintf("%.2f server CPU-seconds, from /admin/process", r.ServerCPUS)
	switch {
	case r.Failover != nil:
		note = fmt.Sprintf("%.2f CPU-seconds of the nodes still up at the end (the lost node's is not counted)", r.ServerCPUS)
	case len(r.Nodes) > 1:
		note = fmt.Sprintf("%.2f CPU-seconds of the %d nodes together, each node's below", r.ServerCPUS, len(r.Nodes))
	}
	return Row{Name: "server_cpu_us_per_msg", Value: fmtF(r.ServerCPUUsPerMsg, 2), Note: note}
}

// histShards spread latency recording over a few locks.
type histShards [16]struct {
	mu sync.Mutex
	h  *hdrhistogram.Histogram
	_  [40]byte // keep the locks on separate cache lines
}

func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(1, 60_000_000, 3) }

func (hs *histShards) init() {
	for i := range hs {
		hs[i].h = newHist()
	}
}

func (hs *histShards) merged() *hdrhistogram.Histogram {
	all := newHist()
	for i := range hs {
		all.Merge(hs[i].h)
	}
	return all
}

func latencyOf(h *hdrhistogram.Histogram) Latency {
	ms := func(us int64) float64 { return float64(us) / 1000 }
	return Latency{
		P50: ms(h.ValueAtQuantile(50)), P90: ms(h.ValueAtQuantile(90)), P99: ms(h.ValueAtQuantile(99)),
		P999: ms(h.ValueAtQuantile(99.9)), Max: ms(h.Max()),
	}
}

// pairsRun is what the pairs of one run share.
type pairsRun struct {
	t0       time.Time
	stopping atomic.Bool  // no new sends
	ending   atomic.Bool  // the grace is over: a failed read ends its pair
	fo       *failoverRun // nil unless a failover run
	limit    int64        // sends per pair; 0: until stopping
	body     []byte
	hist     histShards
	errs     tally
}

func (r *pairsRun) now() int64 { return int64(time.Since(r.t0)) }

// sender is one pair's sending side. Its fields belong to its goroutine
// (paced: to whoever holds mu), except the atomics read by the progress line.
type sender struct {
	r     *pairsRun
	c     *conn
	u     *user
	addr  string // the node c is connected to
	to    string
	base  uint64
	shard int
	// untouched: neither side of the pair is on the failover's victim.
	untouched bool

	mu     sync.Mutex // paced mode: pacer and reader share the conn
	sendAt []int64    // ring by message number: when it was written
	ackSID []uint64   // ring by message number: the server id its SendAck gave
	// early holds the messages whose delivered receipt came before their
	// SendAck (a cluster may answer in that order: the receipt comes from
	// another node), until the SendAck comes.
	early map[int64]earlyRcpt

	sent, failed, acked int64
	rcptHigh            uint64          // highest message number with a receipt
	seqHigh             uint64          // highest delivery seq seen
	connHigh, ackSent   uint64          // highest delivery seq seen on c, and acked
	maxAckWait          int64           // longest first write -> SendAck, ns
	maxAckWaitBefore    int64           // of those acked before a failover's signal
	maxAckWaitAfter     int64           // of those acked after it
	maxAckWaitAfterAt   int64           // r.now() when that SendAck came
	down                bool            // failover: c is lost, the reader logs in again
	refused             int             // sends the server refused
	refusedIDs          map[uint64]bool // message numbers refused for good (failed), not sent again
	lastRefusal         string
	retryAt             int64 // failover: r.now() when a refused send goes again; 0: none
	stale               int64
	lastRcpt            int64 // r.now() at the last receipt
	sendingDone         bool
	err                 error

	delivered atomic.Int64
}

type earlyRcpt struct {
	serverID uint64
	sentAt   int64
}

func (s *sender) outstanding() int64 { return s.sent - s.delivered.Load() - s.failed }

func (s *sender) maySend() bool {
	return !s.r.stopping.Load() && (s.r.limit == 0 || s.sent < s.r.limit)
}

// queueOne adds the next Send to the write buffer.
func (s *sender) queueOne() error {
	k := s.sent + 1
	s.sendAt[(k-1)%int64(len(s.sendAt))] = s.r.now()
	s.ackSID[(k-1)%int64(len(s.ackSID))] = 0
	if err := s.c.queueSend(s.base+uint64(k), s.to, s.r.body); err != nil {
		return err
	}
	s.sent = k
	return nil
}

// handle applies one frame; now is r.now() at the read.
func (s *sender) handle(f *frame, now int64) error {
	switch f.kind {
	case fSendAck:
		s.acked++
		k := int64(f.id - s.base)
		if f.id <= s.base || k > s.sent {
			break
		}
		if e, ok := s.early[k]; ok {
			// Its receipt came first; its ring slots may be reused.
			delete(s.early, k)
			if e.serverID != f.serverID {
				s.r.errs.add(fmt.Errorf("%s -> %s: delivered receipt for message %d named server id %d; its SendAck gave %d", s.u.phone, s.to, f.id, e.serverID, f.serverID))
			}
			s.noteAckWait(now, now-e.sentAt)
			break
		}
		if uint64(k) > s.rcptHigh {
			s.ackSID[(k-1)%int64(len(s.ackSID))] = f.serverID
			s.noteAckWait(now, now-s.sendAt[(k-1)%int64(len(s.sendAt))])
		}
	case fError:
		if k := int64(f.id - s.base); f.id > s.base && k <= s.sent {
			s.refused++
			s.lastRefusal = string(f.text)
			if s.r.fo != nil && retryable(f.code) {
				s.retryAt = now + retryDelay()
				s.r.fo.retried.Add(1)
				return nil
			}
			s.failed++
			if s.refusedIDs == nil {
				s.refusedIDs = map[uint64]bool{}
			}
			s.refusedIDs[uint64(k)] = true
			s.r.errs.add(fmt.Errorf("send refused (%d): %s", f.code, f.text))
			return nil
		}
		return fmt.Errorf("server error for request %d (%d): %s", f.id, f.code, f.text)
	case fClose:
		return closeErr(f)
	case fDeliver:
		s.connHigh = max(s.connHigh, f.seq)
		if f.seq <= s.seqHigh && s.r.fo != nil {
			s.r.fo.redelivered.Add(1) // after a reconnect: its ack was lost
			return nil
		}
		s.seqHigh = max(s.seqHigh, f.seq)
		if !f.isRcpt || f.rKind != receiptDelivered {
			s.stale++
			return nil
		}
		sh := &s.r.hist[s.shard]
		n := 0
		if len(f.srvIDs) != len(f.ids) {
			s.r.errs.add(fmt.Errorf("delivered receipt with %d ids and %d server ids", len(f.ids), len(f.srvIDs)))
		}
		for i, id := range f.ids {
			k := int64(id - s.base)
			if id <= s.base || k > s.sent {
				s.stale++
				continue
			}
			if uint64(k) <= s.rcptHigh {
				if s.r.fo != nil {
					// An ack written in part before a node's loss (its
					// receipt, not its erase) is made again: receipts
					// are idempotent, the client drops the repeat.
					s.r.fo.receiptsAgain.Add(1)
					continue
				}
				s.r.errs.add(fmt.Errorf("duplicate delivered receipt for message %d", id))
				continue
			}
			// At most a window of messages wait for their receipts, so
			// the ring still holds k's SendAck.
			at := s.sendAt[(k-1)%int64(len(s.sendAt))]
			switch want := s.ackSID[(k-1)%int64(len(s.ackSID))]; {
			case i >= len(f.srvIDs):
			case want == 0:
				if s.early == nil {
					s.early = make(map[int64]earlyRcpt)
				}
				s.early[k] = earlyRcpt{serverID: f.srvIDs[i], sentAt: at}
			case f.srvIDs[i] != want:
				s.r.errs.add(fmt.Errorf("%s -> %s: delivered receipt for message %d names server id %d; its SendAck gave %d", s.u.phone, s.to, id, f.srvIDs[i], want))
			}
			s.rcptHigh = uint64(k)
			us := (now - at) / 1000
			if s.untouched {
				s.r.fo.record(at, now)
			}
			if n == 0 {
				sh.mu.Lock()
			}
			sh.h.RecordValue(max(us, 1))
			n++
		}
		if n > 0 {
			sh.mu.Unlock()
			s.delivered.Add(int64(n))
			s.lastRcpt = now
		}
	}
	return nil
}

// readBatch reads what is available and applies every complete frame,
// queueing the ack of the deliveries among them.
func (s *sender) readBatch(f *frame, lock bool) error {
	if err := s.c.wait(); err != nil {
		return err
	}
	now := s.r.now()
	if lock {
		s.mu.Lock()
		defer s.mu.Unlock()
	}
	for {
		pt, ok, err := s.c.next()
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		if err := parseFrame(pt, f); err != nil {
			return err
		}
		if err := s.handle(f, now); err != nil {
			return err
		}
	}
	if s.connHigh > s.ackSent {
		if err := s.c.queueAck(s.connHigh); err != nil {
			return err
		}
		s.ackSent = s.connHigh
	}
	if lock {
		return s.c.flush()
	}
	return nil
}

// run is the unpaced sender: it keeps the window full, clocked by the
// receipts it reads, writing each batch's acks and new sends together.
func (s *sender) run() {
	var f frame
	for {
		for s.outstanding() < int64(len(s.sendAt)) && s.maySend() {
			if s.err = s.queueOne(); s.err != nil {
				return
			}
		}
		if s.err = s.c.flush(); s.err != nil {
			return
		}
		if s.outstanding() == 0 {
			return
		}
		if s.err = s.readBatch(&f, false); s.err != nil {
			return
		}
	}
}

// pace is the paced senders' writer: every tick it sends each sender the
// messages its share of the rate makes due (as many as its window has room
// for; the rest wait for receipts), in one write per sender. One goroutine
// and one timer for all senders: a timer per message would cost the bench
// more CPU than the server spends on the message. The senders' schedules
// are offset by a fraction of a message interval each, so that their sends
// do not all fall due on the same tick.
func pace(senders []*sender, rate float64, tick time.Duration, stop <-chan struct{}) {
	defer func() {
		for _, s := range senders {
			s.mu.Lock()
			s.sendingDone = true
			idle := s.outstanding() == 0
			s.mu.Unlock()
			if idle {
				s.c.nc.SetReadDeadline(time.Now()) // wake the reader to end
			}
		}
	}()
	perSender := rate / float64(len(senders)) // msgs/s
	start := time.Now()
	t := time.NewTicker(tick)
	defer t.Stop()
	live := len(senders)
	stopped := false
	for live > 0 {
		select {
		case <-stop:
			if senders[0].r.fo == nil {
				return
			}
			// A failover run still sends again, after the sending
			// stopped, what the nodes refused for a while, until the
			// grace is over.
			stop, stopped = nil, true
			for _, s := range senders {
				s.mu.Lock()
				s.sendingDone = true
				if s.outstanding() == 0 {
					s.c.nc.SetReadDeadline(time.Now())
				}
				s.mu.Unlock()
			}
			continue
		case <-t.C:
		}
		if stopped {
			live = 0
			for _, s := range senders {
				s.mu.Lock()
				if !s.r.ending.Load() && s.err == nil && s.outstanding() > 0 {
					live++
					if !s.down && s.retryAt != 0 && s.r.now() >= s.retryAt {
						if err := s.resend(); err == nil {
							_ = s.c.flush()
						}
					}
				}
				s.mu.Unlock()
			}
			continue
		}
		elapsed := time.Since(start).Seconds()
		live = 0
		for i, s := range senders {
			due := int64(elapsed*perSender + float64(i)/float64(len(senders)))
			s.mu.Lock()
			if s.err == nil && s.maySend() {
				live++
			}
			if s.down {
				s.mu.Unlock()
				continue // its reader is logging it in again
			}
			var err error
			if s.retryAt != 0 && s.r.now() >= s.retryAt {
				err = s.resend()
			}
			for err == nil && s.err == nil && s.sent < due && s.outstanding() < int64(len(s.sendAt)) && s.maySend() {
				err = s.queueOne()
			}
			if err == nil && s.err == nil {
				err = s.c.flush()
			}
			if err != nil && s.err == nil {
				if s.r.fo == nil {
					s.err = err
				}
				// Wake the reader: it ends the pair, or (failover) logs
				// it in again elsewhere.
				s.c.nc.SetReadDeadline(time.Now())
			}
			s.mu.Unlock()
		}
	}
}

// read is the paced sender's reader; it ends once the pacer is done and
// every send has its receipt (or failed), or the connection fails (in a
// failover run: once it cannot log in again elsewhere, or the grace is
// over).
func (s *sender) read() {
	var f frame
	for {
		err := s.readBatch(&f, true)
		s.mu.Lock()
		over := s.sendingDone && s.outstanding() == 0 || s.err != nil
		if err != nil && s.err == nil && (s.r.fo == nil || s.r.ending.Load()) {
			s.err = err
		}
		s.mu.Unlock()
		if over || s.err != nil {
			return
		}
		if err != nil {
			if err := s.moveOn(err); err != nil {
				s.mu.Lock()
				s.err = err
				s.mu.Unlock()
				return
			}
		}
	}
}

// noteAckWait records a message's wait for its SendAck, answered at now.
func (s *sender) noteAckWait(now, wait int64) {
	s.maxAckWait = max(s.maxAckWait, wait)
	if s.r.fo != nil {
		if k := s.r.fo.killAt.Load(); k == 0 || now < k {
			s.maxAckWaitBefore = max(s.maxAckWaitBefore, wait)
		} else if wait > s.maxAckWaitAfter {
			s.maxAckWaitAfter, s.maxAckWaitAfterAt = wait, now
		}
	}
}

// moveOn logs the sender in on another node after its connection failed
// (failover; why is the failure, which may carry a reconnect hint) and sends again, marked as resends, the messages that had no
// SendAck; the pacer leaves it alone meanwhile.
func (s *sender) moveOn(why error) error {
	s.mu.Lock()
	s.down = true
	old := s.c
	s.mu.Unlock()
	old.close()
	c, addr, err := s.r.fo.relogin(s.u, s.addr, why)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		return err
	}
	s.c, s.addr, s.down, s.connHigh, s.ackSent = c, addr, false, 0, 0
	if err := s.resend(); err != nil {
		return err
	}
	return s.c.flush()
}

// resend queues again, marked as resends, the messages since the last
// receipt that have no SendAck.
func (s *sender) resend() error {
	s.retryAt = 0
	for k := int64(s.rcptHigh) + 1; k <= s.sent; k++ {
		if s.ackSID[(k-1)%int64(len(s.ackSID))] != 0 {
			continue
		}
		if err := s.c.queueSendAgain(s.base+uint64(k), s.to, s.r.body, true); err != nil {
			return err
		}
	}
	return nil
}

// receiver is one pair's receiving side: it checks the order and acks
// every read batch.
type receiver struct {
	mu     sync.Mutex // guards c's replacement (failover) against its readers elsewhere
	c      *conn
	u      *user
	addr   string // the node c is connected to
	fo     *failoverRun
	from   string
	base   uint64
	body   []byte // every message's body
	next   uint64 // the message number expected next
	unique int64
	dups   int64 // seen before (or late after a gap)
	// gaps are the message numbers each arrival ahead of a missing one
	// went past, first and last: a gap of sends the server refused (its
	// sender's refusedIDs) is not a loss (jumpsOverAccepted).
	gaps     [][2]uint64
	corrupt  int64 // arrived with another body
	stale    int64
	seqHigh  uint64 // highest delivery seq seen
	connHigh uint64 // highest delivery seq seen on c
	ackSent  uint64
	err      error

	received atomic.Int64
}

func (v *receiver) run(closing *atomic.Bool) {
	var f frame
	for {
		err := v.batch(&f)
		if err == nil {
			continue
		}
		if closing.Load() {
			return
		}
		if v.fo == nil {
			v.err = err
			return
		}
		// Failover: log in again elsewhere; the queue is still there.
		v.c.close()
		c, addr, err := v.fo.relogin(v.u, v.addr, err)
		if err != nil {
			v.err = err
			return
		}
		v.mu.Lock()
		v.c, v.addr, v.connHigh, v.ackSent = c, addr, 0, 0
		v.mu.Unlock()
	}
}

// jumpsOverAccepted counts v's jumps past a message the server accepted:
// one past only sends it refused for good (refused, by message number) is
// the order kept, not a loss.
func (v *receiver) jumpsOverAccepted(refused map[uint64]bool) int64 {
	var n int64
	for _, g := range v.gaps {
		for k := g[0]; k <= g[1]; k++ {
			if !refused[k] {
				n++
				break
			}
		}
	}
	return n
}

// conn is the receiver's connection, for a goroutine other than its reader.
func (v *receiver) conn() *conn {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.c
}

// batch reads what is available, checks every message and acks them all.
func (v *receiver) batch(f *frame) error {
	if v.next == 0 {
		v.next = 1
	}
	if err := v.c.wait(); err != nil {
		return err
	}
	for {
		pt, ok, err := v.c.next()
		if err == nil && ok {
			err = parseFrame(pt, f)
		}
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		switch f.kind {
		case fClose:
			return closeErr(f)
		case fDeliver:
			v.connHigh = max(v.connHigh, f.seq)
			if f.seq <= v.seqHigh && v.fo != nil {
				v.fo.redelivered.Add(1) // after a reconnect: its ack was lost
				continue
			}
			v.seqHigh = max(v.seqHigh, f.seq)
			if !f.isMsg || string(f.from) != v.from || f.msgID <= v.base {
				v.stale++
				continue
			}
			if !bytes.Equal(f.body, v.body) {
				v.corrupt++
			}
			k := f.msgID - v.base
			switch {
			case k == v.next:
				v.unique++
				v.next++
			case k > v.next:
				v.gaps = append(v.gaps, [2]uint64{v.next, k - 1})
				v.unique++
				v.next = k + 1
			default:
				v.dups++
			}
			v.received.Add(1)
		}
	}
	if v.connHigh > v.ackSent {
		if err := v.c.queueAck(v.connHigh); err != nil {
			return err
		}
		v.ackSent = v.connHigh
		return v.c.flush()
	}
	return nil
}

// drainGrace is Config.Grace's default: how long senders get, after the
// sending stopped, for their last receipts; what has not come by then
// counts as lost.
const drainGrace = 10 * time.Second

// Pairs runs cfg.Pairs sender->receiver pairs, each sender keeping at most
// cfg.Window messages of cfg.Size bytes outstanding until their delivered
// receipts arrive, for cfg.Msgs messages per pair or cfg.Duration, whichever
// comes first (cfg.Rate paces them). Users offset+2i send to offset+2i+1.
func Pairs(ctx context.Context, cfg Config, progress io.Writer) (*PairsResult, error) {
	cfg.setDefaults()
	if cfg.Pairs <= 0 {
		return nil, fmt.Errorf("--pairs %d: give 1 or more", cfg.Pairs)
	}
	if cfg.Window <= 0 {
		cfg.Window = 1
	}
	if cfg.Duration <= 0 {
		cfg.Duration = 10 * time.Second
	}
	if cfg.Size > 60<<10 {
		return nil, fmt.Errorf("--size %d: at most %d bytes", cfg.Size, 60<<10)
	}
	if cfg.Msgs < 0 || cfg.Rate < 0 || math.IsInf(cfg.Rate, 0) || math.IsNaN(cfg.Rate) {
		return nil, errors.New("--msgs and --rate must be 0 or more")
	}
	if cfg.UpgradeAt < 0 || cfg.UpgradeAt > 0 && cfg.UpgradeAt >= cfg.Duration {
		return nil, fmt.Errorf("--upgrade-at %s: give a time within the run's --duration %s", cfg.UpgradeAt, cfg.Duration)
	}
	if cfg.FailoverAt < 0 || cfg.FailoverAt > 0 && cfg.FailoverAt >= cfg.Duration {
		return nil, fmt.Errorf("--at %s: give a time within the run's --duration %s", cfg.FailoverAt, cfg.Duration)
	}
	if cfg.FailoverAt > 0 && cfg.Rate <= 0 {
		return nil, errors.New("failover: give --rate: the failover run is paced")
	}
	e, err := open(ctx, cfg, "pairs", 2*cfg.Pairs)
	if err != nil {
		return nil, err
	}
	var (
		fo      *failoverRun
		foOut   *FailoverOutcome
		foPID   int
		foSig   syscall.Signal
		victims = -1
	)
	if cfg.FailoverAt > 0 {
		if len(e.admins) < 2 || len(e.admins) != len(e.d.addrs) {
			return nil, fmt.Errorf("failover: give every node of the cluster, in the same order, in --admin (%d given) and --addr (%d given)", len(e.admins), len(e.d.addrs))
		}
		if cfg.FailoverNode == 0 {
			cfg.FailoverNode = 1
		}
		if cfg.FailoverNode < 1 || cfg.FailoverNode > len(e.admins) {
			return nil, fmt.Errorf("--node %d: give 1 to %d (the order of --admin)", cfg.FailoverNode, len(e.admins))
		}
		if cfg.FailoverSignal == "" {
			cfg.FailoverSignal = "KILL"
		}
		if foSig, err = signalOf(cfg.FailoverSignal); err != nil {
			return nil, err
		}
		if foPID, err = e.admins[cfg.FailoverNode-1].victimPID(ctx); err != nil {
			return nil, err
		}
		victims = cfg.FailoverNode - 1
		fo = &failoverRun{ctx: ctx, d: e.d,
			before: &survivorHist{h: newHist()}, after: &survivorHist{h: newHist()}}
		foOut = &FailoverOutcome{Node: cfg.FailoverNode, Addr: e.d.addrs[victims], Signal: strings.TrimPrefix(strings.ToUpper(cfg.FailoverSignal), "SIG"), PID: foPID}
	}
	var ls loginStats
	conns := e.loginAll(ctx, e.users, nil, 64<<10, &ls)
	defer closeAll(conns)
	if ls.errs.count() > 0 {
		return nil, fmt.Errorf("pairs: %d of %d logins failed, e.g. %s", ls.errs.count(), len(conns), ls.errs.list()[0])
	}

	r := &pairsRun{limit: int64(cfg.Msgs), body: make([]byte, cfg.Size), fo: fo}
	r.hist.init()
	base := runBase()
	senders := make([]*sender, cfg.Pairs)
	receivers := make([]*receiver, cfg.Pairs)
	for i := range cfg.Pairs {
		su, vu := e.users[2*i], e.users[2*i+1]
		s, v := conns[2*i], conns[2*i+1]
		senders[i] = &sender{r: r, c: s, u: su, addr: e.d.addrOf(su), to: vu.phone, base: base, shard: i % len(r.hist), sendAt: make([]int64, cfg.Window), ackSID: make([]uint64, cfg.Window)}
		senders[i].untouched = fo != nil && e.d.addrOf(su) != e.d.addrs[victims] && e.d.addrOf(vu) != e.d.addrs[victims]
		receivers[i] = &receiver{c: v, u: vu, addr: e.d.addrOf(vu), fo: fo, from: su.phone, base: base, body: r.body}
	}
	delivered := func() (n int64) {
		for _, s := range senders {
			n += s.delivered.Load()
		}
		return n
	}

	p0, err := e.processAll(ctx)
	if err != nil {
		return nil, err
	}
	defer interruptOnDone(ctx, conns...)()
	cpu0 := cpuSelf()
	var closing atomic.Bool
	var rwg, swg sync.WaitGroup
	for _, v := range receivers {
		rwg.Add(1)
		go func() { defer rwg.Done(); v.run(&closing) }()
	}
	stop := make(chan struct{})
	r.t0 = time.Now()
	var lastN int64
	lastT := r.t0
	pr := startProgress(progress, func() string {
		n, now := delivered(), time.Now()
		cur := rate(n-lastN, now.Sub(lastT))
		lastN, lastT = n, now
		var cpu float64
		var backlog int64
		for _, a := range e.admins {
			if p, err := a.process(ctx, false); err == nil { // a lost node is skipped
				cpu += p.CPUSeconds
				backlog += int64(p.Backlog)
			}
		}
		return fmt.Sprintf("pairs: %.0fs  delivered %s  %.0f msgs/s now  server cpu %.1fs backlog %d",
			time.Since(r.t0).Seconds(), fmtInt(n), cur, cpu, backlog)
	})
	defer pr.end()
	if cfg.Rate > 0 {
		swg.Add(1)
		go func() { defer swg.Done(); pace(senders, cfg.Rate, cfg.Tick, stop) }()
	}
	for _, s := range senders {
		swg.Add(1)
		if cfg.Rate > 0 {
			go func() { defer swg.Done(); s.read() }()
		} else {
			go func() { defer swg.Done(); s.run() }()
		}
	}
	var upgradeOutcome *UpgradeOutcome
	sendersDone := make(chan struct{})
	go func() { swg.Wait(); close(sendersDone) }()
	var upgraded <-chan UpgradeOutcome
	if cfg.UpgradeAt > 0 {
		upgraded = e.admin.upgradeAfter(ctx, r.t0, cfg.UpgradeAt, cfg.UpgradeBinary, sendersDone)
	}
	var killed <-chan struct{}
	if fo != nil {
		killed = fo.killAfter(r.t0, cfg.FailoverAt, foPID, foSig, sendersDone, foOut)
	}
	timer := time.NewTimer(cfg.Duration)
	defer timer.Stop()
	select {
	case <-sendersDone:
	case <-timer.C:
	case <-ctx.Done():
	}
	if upgraded != nil {
		// The run's end waits for the handover: what is measured after
		// it must be the new process.
		o := <-upgraded
		upgradeOutcome = &o
	}
	if killed != nil {
		<-killed
	}
	r.stopping.Store(true)
	close(stop)
	graceFor := cfg.Grace
	if graceFor <= 0 {
		graceFor = drainGrace
	}
	grace := time.NewTimer(graceFor)
	defer grace.Stop()
	select {
	case <-sendersDone:
	case <-grace.C:
		r.ending.Store(true)
		for _, s := range senders {
			s.mu.Lock()
			s.c.nc.SetReadDeadline(time.Now())
			s.mu.Unlock()
		}
		<-sendersDone
	}
	if ctx.Err() != nil {
		closing.Store(true)
		rwg.Wait()
		return nil, ctx.Err()
	}
	p1 := make([]process, len(e.admins))
	p1err := make([]error, len(e.admins))
	for i, a := range e.admins {
		p1[i], p1err[i] = a.processSched(ctx)
	}
	benchCPU := cpuSelf() - cpu0
	closing.Store(true)
	for _, v := range receivers {
		v.conn().nc.SetReadDeadline(time.Now())
	}
	rwg.Wait()
	for i, err := range p1err {
		if err != nil && i != victims {
			return nil, err
		}
	}
	// The receivers stopped at the last receipt; a late duplicate or a
	// stray is still queued, and counts as lost.
	late := make([]int64, cfg.Pairs)
	for i, s := range senders {
		n, err := proveDrained(s.c, receivers[i].c, e.users[2*i].phone, e.users[2*i+1].phone, base+uint64(s.sent)+1, time.Now().Add(graceFor))
		if err != nil {
			r.errs.add(fmt.Errorf("prove the queue of %s empty: %w", e.users[2*i+1].phone, err))
		}
		late[i] = n
	}

	res := &PairsResult{
		Mode: "pairs", Pairs: cfg.Pairs, Window: cfg.Window, Size: cfg.Size, Rate: cfg.Rate, MsgsPerPair: cfg.Msgs,
		Upgrade: upgradeOutcome, Failover: foOut,
	}
	var last int64
	for i, s := range senders {
		v := receivers[i]
		res.Sent += s.sent
		res.Delivered += s.delivered.Load()
		res.Received += v.received.Load()
		res.Stale += s.stale + v.stale
		last = max(last, s.lastRcpt)
		if s.err != nil && !isTimeout(s.err) {
			r.errs.add(fmt.Errorf("sender %s: %w", e.users[2*i].phone, s.err))
			res.Dropped++
		}
		if v.err != nil {
			r.errs.add(fmt.Errorf("receiver %s: %w", e.users[2*i+1].phone, v.err))
			res.Dropped++
		}
		if n := len(s.early); n > 0 && fo == nil {
			r.errs.add(fmt.Errorf("%d messages of %s had their delivered receipt and never a SendAck", n, e.users[2*i].phone))
		}
		if o := s.outstanding(); o > 0 {
			unacked := 0
			for k := int64(s.rcptHigh) + 1; k <= s.sent; k++ {
				if s.ackSID[(k-1)%int64(len(s.ackSID))] == 0 {
					unacked++
				}
			}
			r.errs.add(fmt.Errorf("%d messages of %s (on %s) had no delivered receipt %s after the sending stopped; %d of them no SendAck either (%d sends refused in all, the last: %q)", o, e.users[2*i].phone, s.addr, graceFor, unacked, s.refused, s.lastRefusal))
		}
		expected := s.sent - s.failed
		missing := expected - v.unique
		if missing < 0 {
			missing = -missing
		}
		jumps := v.jumpsOverAccepted(s.refusedIDs)
		if l := missing + v.dups + jumps + v.corrupt + late[i]; l > 0 {
			r.errs.add(fmt.Errorf("%s -> %s: %d accepted, %d received once; missing %d, duplicated %d, ahead of a missing one %d, wrong body %d, late %d",
				e.users[2*i].phone, e.users[2*i+1].phone, expected, v.unique, missing, v.dups, jumps, v.corrupt, late[i]))
			res.Lost += l
		}
	}
	res.Seconds = time.Duration(last).Seconds()
	res.MsgsPerS = rate(res.Delivered, time.Duration(last))
	res.Latency = latencyOf(r.hist.merged())
	var sysS, waitS float64
	waitOK := true
	for i, a := range e.admins {
		n := NodeCPU{Admin: a.url}
		switch {
		case p1err[i] != nil:
			n.Note = "lost during the run: not counted"
		case p1[i].CPUSeconds < p0[i].CPUSeconds:
			n.Note = "another process at the end (restarted or upgraded): not counted"
		default:
			n.CPUS = p1[i].CPUSeconds - p0[i].CPUSeconds
			res.ServerCPUS += n.CPUS
			sysS += p1[i].SysCPUSeconds - p0[i].SysCPUSeconds
			if w0, w1 := p0[i].RunqueueWaitSeconds, p1[i].RunqueueWaitSeconds; w0 != nil && w1 != nil && *w1 >= *w0 {
				waitS += *w1 - *w0
			} else {
				waitOK = false
			}
		}
		if res.Delivered > 0 {
			n.UsPerMsg = n.CPUS * 1e6 / float64(res.Delivered)
		}
		res.Nodes = append(res.Nodes, n)
	}
	if len(res.Nodes) == 1 {
		res.Nodes = nil
	}
	if res.Delivered > 0 {
		res.ServerCPUUsPerMsg = res.ServerCPUS * 1e6 / float64(res.Delivered)
		res.ServerSysUsPerMsg = sysS * 1e6 / float64(res.Delivered)
		if waitOK {
			w := waitS * 1e6 / float64(res.Delivered)
			res.ServerRunqueueWaitUsPerMsg = &w
		}
		res.BenchCPUUsPerMsg = float64(benchCPU.Microseconds()) / float64(res.Delivered)
	}
	if fo != nil {
		fo.outcome(foOut, senders, r.now())
		foOut.SurvivorsBefore, foOut.SurvivorsAfter = latencyOf(fo.before.h), latencyOf(fo.after.h)
	}
	if upgradeOutcome != nil && upgradeOutcome.Report != nil {
		// The readings are of two processes: no server CPU figure.
		res.ServerCPUS, res.ServerCPUUsPerMsg, res.ServerSysUsPerMsg, res.ServerRunqueueWaitUsPerMsg = 0, 0, 0, nil
	}
	res.Errors, res.ErrorSamples = r.errs.count(), r.errs.list()
	pr.end()
	return res, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
