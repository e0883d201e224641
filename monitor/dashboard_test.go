package monitor_test

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/parleyhq/parley/monitor"
)

// busyNode is a fakeNode under load: every time the monitor samples it,
// its sessions have sent and received more, deliveries were observed, and
// one session's mailbox stays past the alert threshold. Advancing on each
// sample rather than on a timer of its own keeps every sample's rates above
// zero however slowly a loaded CI machine schedules the test. It advances
// in Totals, which the monitor calls once per sample (EachSession is also
// called for each /admin/sessions request).
type busyNode struct {
	*fakeNode
	m *monitor.Metrics
	i int // samples so far; only the monitor's one sampling goroutine calls Totals
}

var busyUsers = []string{"+15550000001", "+15550000002", "+15550000003", "+15550000004"}

func newBusyNode() *busyNode {
	n := &busyNode{fakeNode: newFakeNode()}
	n.setTotals(func(t *monitor.Totals) {
		t.Connections, t.Backlog, t.LoopLag = len(busyUsers)+1, 2, 800*time.Microsecond
	})
	return n
}

func (n *busyNode) Totals() monitor.Totals {
	n.i++
	i := n.i
	for j, u := range busyUsers {
		n.session(u, func(s *monitor.SessionStat) {
			s.MsgsIn += uint64(50 * (j + 1))
			s.MsgsOut += uint64(100 * (j + 1))
			s.Inflight = j * 3
			s.Mailbox = (i + j) % 7
			if j == 0 {
				s.Mailbox = 150 // past the test's threshold of 100
			}
			s.Queued = j * 10
		})
		n.m.MessagesIn.Add(float64(50 * (j + 1)))
		n.m.MessagesOut.Add(float64(100 * (j + 1)))
		for k := 0; k <= j; k++ {
			n.m.SendToDeliver.Observe(0.0005 + 0.0002*float64(k+i%5))
			n.m.DeliverToAck.Observe(0.01 + 0.001*float64(k))
		}
	}
	n.setTotals(func(t *monitor.Totals) {
		t.QueueDepthTotal = int64(1000 + 10*(i%50))
		t.QueueDepthMax, t.QueueDepthMaxUser = 400+i%30, "+15550000009"
	})
	return n.fakeNode.Totals()
}

// dashboardState is what the test reads from the page.
type dashboardState struct {
	Updates     int               `json:"updates"`
	Errors      int               `json:"errors"`
	Status      string            `json:"status"`
	MsgsIn      float64           `json:"msgs_in"`
	Tiles       map[string]string `json:"tiles"`
	Points      map[string]int    `json:"points"`
	Legend      map[string]string `json:"legend"`
	InkPixels   map[string]int    `json:"ink"`
	AlertRows   int               `json:"alert_rows"`
	SessionRows int               `json:"session_rows"`
	Width       int               `json:"width"`
	ScrollWidth int               `json:"scroll_width"`
}

const readDashboard = `(() => {
  const d = window.parleyDashboard || {};
  const q = s => Array.from(document.querySelectorAll(s));
  const tiles = {}, points = {}, legend = {}, ink = {};
  for (const el of q("[data-stat]")) tiles[el.dataset.stat] = el.textContent;
  for (const fig of q("[data-chart]")) {
    const cv = fig.querySelector("canvas");
    points[fig.dataset.chart] = Number(cv.dataset.points || 0);
    // Pixels drawn in a series colour (not grid grey): proof the lines are
    // on the canvas, not just in the data.
    const g = cv.getContext("2d"), px = g.getImageData(0, 0, cv.width, cv.height).data;
    let n = 0;
    for (let i = 0; i < px.length; i += 4) {
      const [r, gg, b, a] = [px[i], px[i+1], px[i+2], px[i+3]];
      if (a > 128 && Math.max(r, gg, b) - Math.min(r, gg, b) > 60) n++;
    }
    ink[fig.dataset.chart] = n;
  }
  for (const el of q("[data-series]")) legend[el.dataset.series] = el.dataset.value || "";
  return {
    updates: d.updates || 0, errors: d.errors || 0,
    status: document.getElementById("status").textContent,
    msgs_in: d.last ? d.last.msgs_in : 0,
    tiles, points, legend, ink,
    alert_rows: q('#alerts tr[data-alert="mailbox_high"].firing').length,
    session_rows: q("#sessions tbody tr:not(.empty)").length,
    width: window.innerWidth, scroll_width: document.documentElement.scrollWidth,
  };
})()`

// TestDashboardInChromium opens the dashboard in a real headless Chromium
// on a busy node and checks that the charts show live values.
func TestDashboardInChromium(t *testing.T) {
	bin := chromiumBinary(t)
	if testing.Short() {
		t.Skip("starts a browser; skipped with -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	node := newBusyNode()
	reg := prometheus.NewRegistry()
	node.m = monitor.NewMetrics(reg)
	mon, err := monitor.New(monitor.Config{
		Source:       node,
		Metrics:      node.m,
		Registry:     reg,
		Log:          slog.New(slog.DiscardHandler),
		Interval:     250 * time.Millisecond,
		Thresholds:   monitor.Thresholds{Mailbox: 100},
		AdminToken:   "dash-token",
		RequireToken: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	wg.Go(func() { mon.Run(runCtx) })
	srv := httptest.NewServer(mon.Handler())
	defer srv.Close()

	const width, height = 1440, 900 // a laptop screen
	b := startBrowser(ctx, t, bin, width, height)
	page := b.open(ctx, t, srv.URL+"/#token=dash-token", width, height)

	live := func(s dashboardState) bool {
		return s.Updates >= 3 && s.Points["messages"] >= 3 && s.Points["connections"] >= 3 &&
			s.Points["send_to_deliver"] >= 3 && s.Legend["messages.in"] != "" && s.AlertRows == 1
	}
	first := poll(ctx, t, b, page, readDashboard, live)
	// Two more polls later the figures have moved on: the page is live,
	// not a picture of the first reading.
	second := poll(ctx, t, b, page, readDashboard, func(s dashboardState) bool { return s.Updates >= first.Updates+2 })

	if second.Errors != 0 || second.Status != "live" {
		t.Errorf("dashboard reports %d errors, status %q", second.Errors, second.Status)
	}
	if !(second.MsgsIn > first.MsgsIn) {
		t.Errorf("messages in did not grow between readings: %v then %v", first.MsgsIn, second.MsgsIn)
	}
	if second.Points["messages"] <= first.Points["messages"] {
		t.Errorf("the messages chart did not gain points: %d then %d", first.Points["messages"], second.Points["messages"])
	}
	if second.Tiles["connections"] != "5" || second.Tiles["sessions"] != "4" || second.Tiles["alerts_firing"] != "1" {
		t.Errorf("tiles = %v, want 5 connections, 4 sessions, 1 alert firing", second.Tiles)
	}
	for _, k := range []string{"messages.in", "messages.out", "send_to_deliver.p50", "send_to_deliver.p99",
		"connections.connections", "offline_queues.total", "mailboxes.longest", "alerts.firing"} {
		var v float64
		if _, err := fmt.Sscan(second.Legend[k], &v); err != nil || v <= 0 {
			t.Errorf("chart legend %s = %q, want a live value above zero", k, second.Legend[k])
		}
	}
	for chart, n := range second.InkPixels {
		if n < 50 {
			t.Errorf("chart %s has %d coloured pixels: its lines are not drawn", chart, n)
		}
	}
	if second.SessionRows != 4 {
		t.Errorf("sessions table has %d rows, want 4", second.SessionRows)
	}
	if second.ScrollWidth > second.Width {
		t.Errorf("page is %dpx wide in a %dpx window: it does not fit a laptop screen", second.ScrollWidth, second.Width)
	}

	shot := b.screenshot(ctx, t, page)
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil {
		t.Fatalf("screenshot is not a PNG: %v", err)
	}
	if got := img.Bounds().Size(); got.X != width || got.Y != height {
		t.Errorf("screenshot is %v, want %dx%d", got, width, height)
	}
	path := filepath.Join(t.ArtifactDir(), "dashboard.png")
	if dir := os.Getenv("PARLEY_SCREENSHOT_DIR"); dir != "" {
		path = filepath.Join(dir, "dashboard.png")
	}
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("dashboard screenshot: %s", path)
}
