package monitor

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Stats are the node's figures at one sample: what /admin/stats serves and
// what `parley top` and the dashboard show at the top.
type Stats struct {
	Time time.Time `json:"time"`
	// IntervalSeconds is the time since the previous sample, over which
	// the rates were computed.
	IntervalSeconds float64 `json:"interval_seconds"`
	Connections     int     `json:"connections"`
	Sessions        int     `json:"sessions"`
	// MsgsIn and MsgsOut are messages accepted and delivered since start;
	// InRate and OutRate the same per second over the last interval.
	MsgsIn  uint64  `json:"msgs_in"`
	MsgsOut uint64  `json:"msgs_out"`
	InRate  float64 `json:"in_rate"`
	OutRate float64 `json:"out_rate"`
	Backlog int     `json:"backlog"`
	// Offline queues: all items, and the largest single user's.
	QueueDepthTotal   int64  `json:"queue_depth_total"`
	QueueDepthMax     int    `json:"queue_depth_max"`
	QueueDepthMaxUser string `json:"queue_depth_max_user"`
	// Session mailboxes: all events waiting, and the longest mailbox.
	MailboxTotal   int     `json:"mailbox_total"`
	MailboxMax     int     `json:"mailbox_max"`
	MailboxMaxUser string  `json:"mailbox_max_user"`
	InflightTotal  int     `json:"inflight_total"`
	LoopLagSeconds float64 `json:"loop_lag_seconds"`
	// Delivery latency quantiles over the last 10 samples.
	SendToDeliver Latency `json:"send_to_deliver"`
	DeliverToAck  Latency `json:"deliver_to_ack"`
	AlertsFiring  int     `json:"alerts_firing"`
	// Firing are the alerts firing at this sample, in AlertNames order.
	Firing []Alert `json:"firing"`
}

// Latency is a latency histogram's quantiles over a window, in seconds.
// With Count zero there were no observations and the quantiles mean nothing.
type Latency struct {
	Count uint64  `json:"count"`
	P50   float64 `json:"p50"`
	P99   float64 `json:"p99"`
}

// Session is one session's figures with the rates the monitor computed: the
// figures as they were when asked for, the rates over the last sample's
// interval.
type Session struct {
	User string `json:"user"`
	Conn string `json:"conn"`
	// Node is the name of the node the session is on, in a cluster (see
	// Config.Node); empty on a node alone.
	Node     string  `json:"node,omitempty"`
	MsgsIn   uint64  `json:"msgs_in"`
	MsgsOut  uint64  `json:"msgs_out"`
	InRate   float64 `json:"in_rate"`
	OutRate  float64 `json:"out_rate"`
	Mailbox  int     `json:"mailbox"`
	Inflight int     `json:"inflight"`
	Queued   int     `json:"queued"`
}

// Sample takes one sample of the Source at now, computes rates from the
// counters' change since the previous sample, evaluates the queue watch and
// publishes the result. Run calls it every interval; tests call it directly
// with a clock of their own.
func (m *Monitor) Sample(now time.Time) Stats {
	m.sampleMu.Lock()
	defer m.sampleMu.Unlock()
	tot := m.src.Totals()

	dt := 0.0
	if !m.last.IsZero() {
		dt = now.Sub(m.last).Seconds()
	}
	rate := func(cur, prev uint64) float64 {
		if dt <= 0 || cur < prev {
			return 0
		}
		return float64(cur-prev) / dt
	}

	st := Stats{
		Time:              now,
		IntervalSeconds:   dt,
		Connections:       tot.Connections,
		Sessions:          tot.Sessions,
		Backlog:           tot.Backlog,
		QueueDepthTotal:   tot.QueueDepthTotal,
		QueueDepthMax:     tot.QueueDepthMax,
		QueueDepthMaxUser: tot.QueueDepthMaxUser,
		LoopLagSeconds:    tot.LoopLag.Seconds(),
	}
	// One pass over the sessions: move each one's rates on, and keep only
	// the sums and the maximum the queue watch needs. Nothing per session
	// is copied; /admin/sessions walks the sessions again when asked.
	m.src.EachSession(func(s SessionStat, r *Rates) {
		r.advance(s.MsgsIn, s.MsgsOut)
		st.MailboxTotal += s.Mailbox
		st.InflightTotal += s.Inflight
		if s.Mailbox > st.MailboxMax {
			st.MailboxMax, st.MailboxMaxUser = s.Mailbox, s.User
		}
	})
	m.rateDT = dt

	st.MsgsIn = counterValue(m.metrics.MessagesIn)
	st.MsgsOut = counterValue(m.metrics.MessagesOut)
	st.InRate = rate(st.MsgsIn, m.lastIn)
	st.OutRate = rate(st.MsgsOut, m.lastOut)
	m.lastIn, m.lastOut = st.MsgsIn, st.MsgsOut
	m.last = now
	st.SendToDeliver = m.sendLat.sample()
	st.DeliverToAck = m.ackLat.sample()

	events := m.evaluate(now, st)
	firing := nonNil(m.firing())
	st.AlertsFiring = len(firing)
	st.Firing = firing

	m.viewMu.Lock()
	m.view = &snapshot{stats: st, firing: firing}
	m.history[m.histN%historyLen] = st
	m.histN++
	for _, a := range events {
		if a.State == Resolved {
			if len(m.recent) == recentLen {
				m.recent = append(m.recent[:0], m.recent[1:]...)
			}
			m.recent = append(m.recent, a)
		}
	}
	m.viewMu.Unlock()

	// Logged and posted after publishing, so that whoever the webhook
	// wakes finds the alert already listed in /admin/alerts.
	for _, a := range events {
		m.announce(a)
	}
	return st
}

// counterValue reads a counter the node increments. Write is the only way
// client_golang offers to read one back; at one call per sample its cost
// does not matter.
func counterValue(c prometheus.Counter) uint64 {
	var d dto.Metric
	if err := c.Write(&d); err != nil {
		return 0
	}
	return uint64(d.GetCounter().GetValue())
}

// latencyWindow turns a cumulative histogram into quantiles over the last
// latencySamples samples, from the change in its bucket counts.
type latencyWindow struct {
	h      prometheus.Histogram
	bounds []float64  // finite upper bounds
	ring   [][]uint64 // cumulative counts per bound, then the total; oldest first
}

func newLatencyWindow(h prometheus.Histogram) *latencyWindow {
	w := &latencyWindow{h: h}
	base := w.read()
	w.ring = append(w.ring, base)
	return w
}

func (w *latencyWindow) read() []uint64 {
	var d dto.Metric
	if err := w.h.Write(&d); err != nil {
		return make([]uint64, len(w.bounds)+1)
	}
	bs := d.GetHistogram().GetBucket()
	if w.bounds == nil {
		for _, b := range bs {
			w.bounds = append(w.bounds, b.GetUpperBound())
		}
	}
	c := make([]uint64, 0, len(bs)+1)
	for _, b := range bs {
		c = append(c, b.GetCumulativeCount())
	}
	return append(c, d.GetHistogram().GetSampleCount())
}

func (w *latencyWindow) sample() Latency {
	cur := w.read()
	w.ring = append(w.ring, cur)
	if len(w.ring) > latencySamples+1 {
		w.ring = append(w.ring[:0], w.ring[1:]...)
	}
	base := w.ring[0]
	if len(base) != len(cur) {
		return Latency{}
	}
	delta := make([]uint64, len(cur))
	for i := range cur {
		delta[i] = cur[i] - base[i]
	}
	total := delta[len(delta)-1]
	if total == 0 {
		return Latency{}
	}
	return Latency{
		Count: total,
		P50:   quantile(0.5, w.bounds, delta),
		P99:   quantile(0.99, w.bounds, delta),
	}
}

// quantile estimates the q-quantile from cumulative bucket counts (the last
// entry is the total) by linear interpolation within the bucket, as
// Prometheus's histogram_quantile does. Observations above the largest
// bound are reported as that bound.
func quantile(q float64, bounds []float64, cum []uint64) float64 {
	total := cum[len(cum)-1]
	rank := q * float64(total)
	for i, ub := range bounds {
		if float64(cum[i]) < rank {
			continue
		}
		lower, below := 0.0, uint64(0)
		if i > 0 {
			lower, below = bounds[i-1], cum[i-1]
		}
		if cum[i] == below {
			return lower
		}
		return lower + (ub-lower)*(rank-float64(below))/float64(cum[i]-below)
	}
	if len(bounds) == 0 {
		return 0
	}
	return bounds[len(bounds)-1]
}
