package monitor_test

import (
	"testing"
	"time"

	"github.com/parleyhq/parley/monitor"
)

func TestMailboxBreachFires(t *testing.T) {
	h := newHarness(t, withWebhook(), withThresholds(monitor.Thresholds{Mailbox: 100}))
	h.node.session("+15550001", func(s *monitor.SessionStat) { s.Mailbox = 3 })
	h.node.session("+15550002", func(s *monitor.SessionStat) { s.Mailbox = 99 })
	h.sample()
	if v, _ := h.gauge("parley_alerts_firing", "alert", "mailbox_high"); v != 0 {
		t.Fatalf("below the threshold: parley_alerts_firing{alert=mailbox_high} = %v, want 0", v)
	}

	h.node.session("+15550002", func(s *monitor.SessionStat) { s.Mailbox = 150 })
	st := h.sample()

	if st.AlertsFiring != 1 {
		t.Errorf("Stats.AlertsFiring = %d, want 1", st.AlertsFiring)
	}
	if v, ok := h.gauge("parley_alerts_firing", "alert", "mailbox_high"); !ok || v != 1 {
		t.Errorf("parley_alerts_firing{alert=mailbox_high} = %v (present %v), want 1", v, ok)
	}
	if v, _ := h.gauge("parley_alerts_firing", "alert", "backlog_high"); v != 0 {
		t.Errorf("parley_alerts_firing{alert=backlog_high} = %v, want 0", v)
	}

	var logged bool
	for _, l := range h.logs.lines(t) {
		if l["msg"] == "alert firing" && l["alert"] == "mailbox_high" && l["subject"] == "+15550002" &&
			l["value"] == 150.0 && l["threshold"] == 100.0 && l["level"] == "WARN" {
			logged = true
		}
	}
	if !logged {
		t.Errorf("no WARN log line \"alert firing\" alert=mailbox_high subject=+15550002 value=150 threshold=100; log:\n%s", h.logs.b.String())
	}

	a := h.webhook()
	want := monitor.Alert{Name: "mailbox_high", Subject: "+15550002", Value: 150, Peak: 150, Threshold: 100, State: monitor.Firing, Since: h.now}
	if !a.Since.Equal(want.Since) || a.Name != want.Name || a.Subject != want.Subject || a.Value != want.Value ||
		a.Threshold != want.Threshold || a.State != want.State || !a.Until.IsZero() {
		t.Errorf("webhook got %+v, want %+v", a, want)
	}

	var alerts monitor.AlertsResponse
	if code := h.get("/admin/alerts", &alerts); code != 200 {
		t.Fatalf("GET /admin/alerts: %d", code)
	}
	if len(alerts.Firing) != 1 || alerts.Firing[0].Name != "mailbox_high" || alerts.Firing[0].Subject != "+15550002" {
		t.Errorf("/admin/alerts firing = %+v, want mailbox_high for +15550002", alerts.Firing)
	}
	if len(alerts.Recent) != 0 {
		t.Errorf("/admin/alerts recent = %+v, want none", alerts.Recent)
	}
}

func TestHysteresis(t *testing.T) {
	h := newHarness(t, withWebhook(), withThresholds(monitor.Thresholds{Mailbox: 100, ClearRatio: 0.5}))
	mailbox := func(n int) {
		h.node.session("+15550002", func(s *monitor.SessionStat) { s.Mailbox = n })
		h.sample()
	}
	firing := func() bool {
		v, _ := h.gauge("parley_alerts_firing", "alert", "mailbox_high")
		return v == 1
	}

	mailbox(100) // at the threshold: fires
	if !firing() {
		t.Fatal("mailbox at the threshold (100) did not fire")
	}
	if a := h.webhook(); a.State != monitor.Firing {
		t.Fatalf("first webhook state = %q, want firing", a.State)
	}
	since := h.now

	for _, n := range []int{99, 70, 50, 120, 50} {
		mailbox(n)
		if !firing() {
			t.Fatalf("mailbox %d (not below threshold × ClearRatio = 50) cleared the alert", n)
		}
	}

	mailbox(49)
	if firing() {
		t.Fatal("mailbox 49, below threshold × ClearRatio, did not clear the alert")
	}
	a := h.webhook()
	if a.State != monitor.Resolved || a.Name != "mailbox_high" || a.Value != 49 || a.Peak != 120 ||
		!a.Since.Equal(since) || !a.Until.Equal(h.now) {
		t.Errorf("resolve webhook = %+v, want resolved mailbox_high value 49 peak 120 since %v until %v", a, since, h.now)
	}
	var alerts monitor.AlertsResponse
	h.get("/admin/alerts", &alerts)
	if len(alerts.Firing) != 0 || len(alerts.Recent) != 1 || alerts.Recent[0].State != monitor.Resolved {
		t.Errorf("/admin/alerts = %+v, want nothing firing and one resolved", alerts)
	}
	var resolvedLogged bool
	for _, l := range h.logs.lines(t) {
		if l["msg"] == "alert resolved" && l["alert"] == "mailbox_high" {
			resolvedLogged = true
		}
	}
	if !resolvedLogged {
		t.Error("no log line \"alert resolved\" for mailbox_high")
	}

	// Recovered: the next breach fires again.
	mailbox(200)
	if !firing() {
		t.Fatal("a new breach after recovery did not fire")
	}
	if a := h.webhook(); a.State != monitor.Firing || a.Value != 200 {
		t.Errorf("second firing webhook = %+v", a)
	}
}

func TestSessionGoneClears(t *testing.T) {
	h := newHarness(t, withThresholds(monitor.Thresholds{Mailbox: 10}))
	h.node.session("+15550003", func(s *monitor.SessionStat) { s.Mailbox = 10 })
	if h.sample().AlertsFiring != 1 {
		t.Fatal("mailbox_high did not fire")
	}
	h.node.drop("+15550003")
	if n := h.sample().AlertsFiring; n != 0 {
		t.Errorf("the flooded session disconnected but %d alerts still fire", n)
	}
}

func TestForDelaysFiring(t *testing.T) {
	h := newHarness(t, withThresholds(monitor.Thresholds{Backlog: 50, For: 3 * time.Second}))
	backlog := func(n int) int {
		h.node.setTotals(func(t *monitor.Totals) { t.Backlog = n })
		return h.sample().AlertsFiring
	}
	if backlog(60) != 0 || backlog(60) != 0 {
		t.Fatal("fired before the breach held for 3s")
	}
	if backlog(40) != 0 {
		t.Fatal("fired on a dip below the threshold")
	}
	// The dip restarted the clock: three more seconds are needed.
	if backlog(60) != 0 || backlog(60) != 0 || backlog(60) != 0 {
		t.Fatal("fired before the renewed breach held for 3s")
	}
	if backlog(60) != 1 {
		t.Fatal("a breach held for 3s did not fire")
	}
}

func TestEveryWatch(t *testing.T) {
	th := monitor.Thresholds{Mailbox: 10, Backlog: 20, QueueUser: 30, QueueTotal: 40, LoopLag: 50 * time.Millisecond}
	tests := []struct {
		alert   string
		subject string
		breach  func(*fakeNode)
		value   float64
	}{
		{"mailbox_high", "+1555a", func(n *fakeNode) { n.session("+1555a", func(s *monitor.SessionStat) { s.Mailbox = 11 }) }, 11},
		{"backlog_high", "", func(n *fakeNode) { n.setTotals(func(t *monitor.Totals) { t.Backlog = 21 }) }, 21},
		{"queue_user_high", "+1555q", func(n *fakeNode) {
			n.setTotals(func(t *monitor.Totals) { t.QueueDepthMax, t.QueueDepthMaxUser = 31, "+1555q" })
		}, 31},
		{"queue_total_high", "", func(n *fakeNode) { n.setTotals(func(t *monitor.Totals) { t.QueueDepthTotal = 41 }) }, 41},
		{"loop_lag_high", "", func(n *fakeNode) { n.setTotals(func(t *monitor.Totals) { t.LoopLag = 60 * time.Millisecond }) }, 0.06},
	}
	for _, tc := range tests {
		t.Run(tc.alert, func(t *testing.T) {
			h := newHarness(t, withThresholds(th))
			tc.breach(h.node)
			st := h.sample()
			if len(st.Firing) != 1 {
				t.Fatalf("firing = %+v, want only %s", st.Firing, tc.alert)
			}
			a := st.Firing[0]
			if a.Name != tc.alert || a.Subject != tc.subject || a.Value != tc.value {
				t.Errorf("firing %+v, want %s subject %q value %v", a, tc.alert, tc.subject, tc.value)
			}
			for _, name := range monitor.AlertNames() {
				want := 0.0
				if name == tc.alert {
					want = 1
				}
				if v, ok := h.gauge("parley_alerts_firing", "alert", name); !ok || v != want {
					t.Errorf("parley_alerts_firing{alert=%s} = %v (present %v), want %v", name, v, ok, want)
				}
			}
		})
	}
}

func TestDisabledWatch(t *testing.T) {
	h := newHarness(t, withThresholds(monitor.Thresholds{Backlog: -1}))
	h.node.setTotals(func(t *monitor.Totals) { t.Backlog = 1 << 30 })
	if n := h.sample().AlertsFiring; n != 0 {
		t.Errorf("a disabled check fired %d alerts", n)
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  monitor.Config
	}{
		{"no source", monitor.Config{}},
		{"token required but unset", monitor.Config{Source: newFakeNode(), RequireToken: true}},
		{"clear ratio above 1", monitor.Config{Source: newFakeNode(), Thresholds: monitor.Thresholds{ClearRatio: 1.5}}},
		{"webhook not a URL", monitor.Config{Source: newFakeNode(), Webhook: "hooks.example.com"}},
	}
	for _, tc := range tests {
		if _, err := monitor.New(tc.cfg); err == nil {
			t.Errorf("%s: New succeeded, want an error", tc.name)
		}
	}
}
