package monitor_test

import (
	"math"
	"testing"
	"time"

	"github.com/parleyhq/parley/monitor"
)

func TestRatesFromCounterDeltas(t *testing.T) {
	h := newHarness(t)
	m := h.mon.Metrics()
	h.node.session("+1555a", func(s *monitor.SessionStat) { s.MsgsIn, s.MsgsOut = 100, 40 })
	h.sample() // the first sample has nothing to compare with

	h.node.session("+1555a", func(s *monitor.SessionStat) { s.MsgsIn, s.MsgsOut = 130, 50 })
	h.node.session("+1555b", func(s *monitor.SessionStat) { s.MsgsIn = 7 }) // new since the last sample
	m.MessagesIn.Add(37)
	m.MessagesOut.Add(10)
	h.now = h.now.Add(time.Second) // two seconds after the first sample
	st := h.sample()

	rows, total := h.mon.Sessions(monitor.SortInRate, 0)
	if total != 2 {
		t.Fatalf("total sessions = %d, want 2", total)
	}
	want := map[string][2]float64{"+1555a": {15, 5}, "+1555b": {3.5, 0}}
	for _, r := range rows {
		w := want[r.User]
		if r.InRate != w[0] || r.OutRate != w[1] {
			t.Errorf("%s: in %v/s out %v/s, want %v and %v", r.User, r.InRate, r.OutRate, w[0], w[1])
		}
	}
	if st.IntervalSeconds != 2 || st.InRate != 18.5 || st.OutRate != 5 || st.MsgsIn != 37 || st.MsgsOut != 10 {
		t.Errorf("node: interval %vs, in %v/s out %v/s, totals %d/%d; want 2s, 18.5/s, 5/s, 37/10",
			st.IntervalSeconds, st.InRate, st.OutRate, st.MsgsIn, st.MsgsOut)
	}

	// A reconnect restarts the session's counters: no negative or huge rate.
	h.node.drop("+1555a")
	h.node.session("+1555a", func(s *monitor.SessionStat) { s.Conn, s.MsgsIn = connAddr("10.0.0.9:1"), 2 })
	h.sample()
	rows, _ = h.mon.Sessions(monitor.SortInRate, 1)
	if rows[0].User != "+1555a" || rows[0].InRate != 2 {
		t.Errorf("after reconnect: %+v, want +1555a at 2/s", rows[0])
	}
}

func TestStatsTotals(t *testing.T) {
	h := newHarness(t)
	h.node.setTotals(func(t *monitor.Totals) {
		t.Connections, t.Backlog = 5, 3
		t.QueueDepthTotal, t.QueueDepthMax, t.QueueDepthMaxUser = 1234, 1000, "+1555z"
		t.LoopLag = 2500 * time.Microsecond
	})
	h.node.session("+1555a", func(s *monitor.SessionStat) { s.Mailbox, s.Inflight = 4, 10 })
	h.node.session("+1555b", func(s *monitor.SessionStat) { s.Mailbox, s.Inflight = 9, 1 })
	h.sample()

	var st monitor.Stats
	if code := h.get("/admin/stats", &st); code != 200 {
		t.Fatalf("GET /admin/stats: %d", code)
	}
	if st.Connections != 5 || st.Sessions != 2 || st.Backlog != 3 || st.QueueDepthTotal != 1234 ||
		st.QueueDepthMax != 1000 || st.QueueDepthMaxUser != "+1555z" || st.MailboxMax != 9 ||
		st.MailboxMaxUser != "+1555b" || st.MailboxTotal != 13 || st.InflightTotal != 11 || st.LoopLagSeconds != 0.0025 {
		t.Errorf("/admin/stats = %+v", st)
	}

	var hist monitor.HistoryResponse
	h.sample()
	if code := h.get("/admin/stats/history?n=5", &hist); code != 200 || len(hist.Stats) != 2 || !hist.Stats[1].Time.After(hist.Stats[0].Time) {
		t.Errorf("GET /admin/stats/history?n=5: %d, %d samples, want 2 oldest first", code, len(hist.Stats))
	}
}

func TestLatencyQuantiles(t *testing.T) {
	h := newHarness(t)
	if st := h.sample(); st.SendToDeliver.Count != 0 {
		t.Fatalf("no observations, but count = %d", st.SendToDeliver.Count)
	}
	// 100 deliveries: 98 fast (~1ms), 2 slow (~2s).
	m := h.mon.Metrics()
	for range 98 {
		m.SendToDeliver.Observe(0.0008)
	}
	m.SendToDeliver.Observe(2)
	m.SendToDeliver.Observe(2)
	st := h.sample()
	l := st.SendToDeliver
	if l.Count != 100 {
		t.Fatalf("count = %d, want 100", l.Count)
	}
	if l.P50 < 0.0005 || l.P50 > 0.001 {
		t.Errorf("p50 = %v, want within the (0.5ms, 1ms] bucket", l.P50)
	}
	if l.P99 < 1 || l.P99 > 2.5 {
		t.Errorf("p99 = %v, want within the (1s, 2.5s] bucket", l.P99)
	}
	if math.IsNaN(l.P50) || math.IsNaN(l.P99) {
		t.Error("NaN quantile")
	}
	// The window slides: ten quiet samples later, nothing is left in it.
	for range 10 {
		st = h.sample()
	}
	if st.SendToDeliver.Count != 0 {
		t.Errorf("after the window passed, count = %d, want 0", st.SendToDeliver.Count)
	}
}
