package monitor

import (
	"time"
)

// AlertState is whether an alert is firing or has cleared.
type AlertState string

const (
	Firing   AlertState = "firing"
	Resolved AlertState = "resolved"
)

// Alert names: one per queue the watch checks.
const (
	AlertMailbox    = "mailbox_high"     // a session's mailbox (Subject: the user)
	AlertBacklog    = "backlog_high"     // sessions waiting for a worker
	AlertQueueUser  = "queue_user_high"  // one user's offline queue (Subject: the user)
	AlertQueueTotal = "queue_total_high" // all offline queues together
	AlertLoopLag    = "loop_lag_high"    // event-loop lag, in seconds
)

// AlertNames lists every alert the queue watch can raise, in a fixed order.
func AlertNames() []string {
	return []string{AlertMailbox, AlertBacklog, AlertQueueUser, AlertQueueTotal, AlertLoopLag}
}

// Alert is one breach of a threshold: what /admin/alerts lists and what the
// webhook receives, as JSON, when it fires and when it clears.
type Alert struct {
	Name string `json:"name"`
	// Subject is who breached it, for per-user alerts: the user whose
	// mailbox or offline queue was the largest when it fired.
	Subject string `json:"subject,omitempty"`
	// Value is the latest value seen (when resolved: the one that cleared
	// it); Peak the largest while firing. Loop lag is in seconds.
	Value     float64    `json:"value"`
	Peak      float64    `json:"peak"`
	Threshold float64    `json:"threshold"`
	State     AlertState `json:"state"`
	Since     time.Time  `json:"since"`
	Until     time.Time  `json:"until,omitzero"`
}

// watch is the hysteresis state of one alert. Each alert watches a
// node-wide maximum (the longest mailbox, the largest queue), so a storm of
// a thousand flooded sessions raises one alert naming the worst, not a
// thousand: the per-session detail is one /admin/sessions call away.
type watch struct {
	name      string
	threshold float64 // negative: disabled
	pending   time.Time
	firing    *Alert
}

func newWatches(th Thresholds) []*watch {
	return []*watch{
		{name: AlertMailbox, threshold: float64(th.Mailbox)},
		{name: AlertBacklog, threshold: float64(th.Backlog)},
		{name: AlertQueueUser, threshold: float64(th.QueueUser)},
		{name: AlertQueueTotal, threshold: float64(th.QueueTotal)},
		{name: AlertLoopLag, threshold: th.LoopLag.Seconds()},
	}
}

// evaluate steps every watch with this sample's values and returns the
// alerts that fired or resolved.
func (m *Monitor) evaluate(now time.Time, st Stats) []Alert {
	type reading struct {
		value   float64
		subject string
	}
	values := map[string]reading{
		AlertMailbox:    {float64(st.MailboxMax), st.MailboxMaxUser},
		AlertBacklog:    {float64(st.Backlog), ""},
		AlertQueueUser:  {float64(st.QueueDepthMax), st.QueueDepthMaxUser},
		AlertQueueTotal: {float64(st.QueueDepthTotal), ""},
		AlertLoopLag:    {st.LoopLagSeconds, ""},
	}
	var events []Alert
	for _, w := range m.watches {
		if w.threshold < 0 {
			continue
		}
		r := values[w.name]
		if a := w.step(now, r.value, r.subject, m.th); a != nil {
			events = append(events, *a)
		}
	}
	return events
}

// step advances one watch. A value at or over the threshold fires once it
// has held for th.For; a firing alert clears only below threshold ×
// th.ClearRatio, so a queue hovering at the threshold does not flap.
func (w *watch) step(now time.Time, v float64, subject string, th Thresholds) *Alert {
	if w.firing != nil {
		a := w.firing
		a.Value = v
		a.Peak = max(a.Peak, v)
		if v >= w.threshold*th.ClearRatio {
			return nil
		}
		w.firing = nil
		w.pending = time.Time{}
		r := *a
		r.State, r.Until = Resolved, now
		return &r
	}
	if v < w.threshold {
		w.pending = time.Time{}
		return nil
	}
	if w.pending.IsZero() {
		w.pending = now
	}
	if now.Sub(w.pending) < th.For {
		return nil
	}
	w.firing = &Alert{Name: w.name, Subject: subject, Value: v, Peak: v, Threshold: w.threshold, State: Firing, Since: now}
	a := *w.firing
	return &a
}

// firing copies the firing alerts, in AlertNames order.
func (m *Monitor) firing() []Alert {
	var out []Alert
	for _, w := range m.watches {
		if w.firing != nil {
			out = append(out, *w.firing)
		}
	}
	return out
}

// announce logs an alert that fired or cleared and queues its webhook.
func (m *Monitor) announce(a Alert) {
	if a.State == Firing {
		m.log.Warn("alert firing", "alert", a.Name, "subject", a.Subject, "value", a.Value, "threshold", a.Threshold)
	} else {
		m.log.Info("alert resolved", "alert", a.Name, "subject", a.Subject, "value", a.Value, "peak", a.Peak,
			"threshold", a.Threshold, "duration", a.Until.Sub(a.Since))
	}
	if m.hook != nil {
		m.hook.enqueue(a)
	}
}
