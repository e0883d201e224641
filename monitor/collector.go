package monitor

import "github.com/prometheus/client_golang/prometheus"

// sampledCollector exports the figures the monitor samples rather than the
// node updates: a scrape reads the latest sample instead of walking every
// session again, and sees the same values the queue watch judged.
type sampledCollector struct {
	m *Monitor
}

var (
	descSessions = prometheus.NewDesc("parley_sessions",
		"Logged-in sessions (sampled).", nil, nil)
	descBacklog = prometheus.NewDesc("parley_worker_backlog",
		"Sessions with work waiting for a worker goroutine (sampled).", nil, nil)
	descQueueTotal = prometheus.NewDesc("parley_queue_depth",
		"Items waiting in all offline queues (sampled).", nil, nil)
	descQueueUserMax = prometheus.NewDesc("parley_queue_depth_user_max",
		"Items waiting in the largest single user's offline queue (sampled).", nil, nil)
	descMailboxMax = prometheus.NewDesc("parley_session_mailbox_max",
		"Events waiting in the longest session mailbox (sampled).", nil, nil)
	descMailboxTotal = prometheus.NewDesc("parley_session_mailbox_events",
		"Events waiting in all session mailboxes together (sampled).", nil, nil)
	descInflight = prometheus.NewDesc("parley_session_inflight",
		"Deliveries sent but not yet acknowledged, all sessions together (sampled).", nil, nil)
	descLoopLag = prometheus.NewDesc("parley_event_loop_lag_seconds",
		"How late the event loop runs work scheduled on it (sampled).", nil, nil)
	descAlerts = prometheus.NewDesc("parley_alerts_firing",
		"Whether the node's built-in queue watch has this alert firing (1) or not (0).", []string{"alert"}, nil)
)

func (c *sampledCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		descSessions, descBacklog, descQueueTotal, descQueueUserMax, descMailboxMax,
		descMailboxTotal, descInflight, descLoopLag, descAlerts,
	} {
		ch <- d
	}
}

func (c *sampledCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.m.current()
	st := &s.stats
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(descSessions, float64(st.Sessions))
	gauge(descBacklog, float64(st.Backlog))
	gauge(descQueueTotal, float64(st.QueueDepthTotal))
	gauge(descQueueUserMax, float64(st.QueueDepthMax))
	gauge(descMailboxMax, float64(st.MailboxMax))
	gauge(descMailboxTotal, float64(st.MailboxTotal))
	gauge(descInflight, float64(st.InflightTotal))
	gauge(descLoopLag, st.LoopLagSeconds)
	for _, name := range AlertNames() {
		v := 0.0
		for _, a := range s.firing {
			if a.Name == name {
				v = 1
			}
		}
		gauge(descAlerts, v, name)
	}
}
