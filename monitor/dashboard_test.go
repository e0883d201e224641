package monitor_test

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
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
	Cluster     clusterPanel      `json:"cluster"`
}

// clusterPanel is what the test reads of the dashboard's cluster panel.
type clusterPanel struct {
	Updates  int      `json:"updates"`
	Alone    bool     `json:"alone"` // the node said it runs alone
	Hidden   bool     `json:"hidden"`
	Alerting bool     `json:"alerting"`
	Seen     string   `json:"seen"`
	Members  []string `json:"members"` // each row's cells, joined by "|"
	Streams  []string `json:"streams"`
	Problems []string `json:"problems"` // the highlighted ones
	Bad      []string `json:"bad"`      // stream cells highlighted: no leader, a replica behind or offline
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
    cluster: {
      updates: d.cluster ? d.cluster.updates : 0, alone: d.cluster ? d.cluster.alone : false,
      hidden: document.getElementById("cluster").hidden,
      alerting: document.getElementById("cluster").classList.contains("alerting"),
      seen: document.getElementById("cluster-seen").textContent,
      members: q("#cluster-members tbody tr").map(tr => Array.from(tr.cells, c => c.textContent).join("|")),
      streams: q("#cluster-streams tbody tr").map(tr => Array.from(tr.cells, c => c.textContent).join("|")),
      problems: q("#cluster-problems li.problem").map(li => li.textContent),
      bad: q("#cluster-streams .bad").map(el => el.textContent),
    },
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
			s.Points["send_to_deliver"] >= 3 && s.Legend["messages.in"] != "" && s.AlertRows == 1 && s.Cluster.Alone
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
	if !second.Cluster.Hidden {
		t.Error("the cluster panel is shown on a node alone")
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

	// The same monitor on a node of a troubled cluster: the panel shows
	// and highlights what is wrong.
	mux := http.NewServeMux()
	mux.HandleFunc("GET /admin/cluster", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, troubledCluster)
	})
	mux.Handle("/", mon.Handler())
	troubled := httptest.NewServer(mux)
	defer troubled.Close()
	page = b.open(ctx, t, troubled.URL+"/#token=dash-token", width, height)
	c := poll(ctx, t, b, page, readDashboard, func(s dashboardState) bool { return s.Cluster.Updates >= 1 }).Cluster
	if c.Hidden || !c.Alerting || c.Seen != "as n1 sees it" {
		t.Errorf("cluster panel hidden %v, alerting %v, %q: want it shown and marked, as n1 sees it", c.Hidden, c.Alerting, c.Seen)
	}
	wantMembers := []string{"n1 (this node)|v1.4.0|12|11|40|2h05", "n2|v1.4.0|3|3|0|3d2h"}
	if strings.Join(c.Members, "\n") != strings.Join(wantMembers, "\n") {
		t.Errorf("member rows %q, want %q", c.Members, wantMembers)
	}
	wantStreams := []string{"KV_parley_sessions|2|none|–", "PARLEY_Q_0|1500|n1|n2 ✓, n3 offline"}
	if strings.Join(c.Streams, "\n") != strings.Join(wantStreams, "\n") {
		t.Errorf("stream rows %q, want %q", c.Streams, wantStreams)
	}
	if strings.Join(c.Bad, ",") != "none,n3 offline" || len(c.Problems) != 2 {
		t.Errorf("highlighted: cells %q, problems %q; want the missing leader, the offline replica and both problems", c.Bad, c.Problems)
	}
	shot = b.screenshot(ctx, t, page)
	if err := os.WriteFile(filepath.Join(filepath.Dir(path), "dashboard-cluster.png"), shot, 0o644); err != nil {
		t.Fatal(err)
	}
}

// troubledCluster is a cluster's status with a stream without a leader
// and a replica offline.
const troubledCluster = `{"node":"n1","hints":14,
 "members":[
  {"node":"n1","epoch":1,"version":"v1.4.0","sessions":11,"connections":12,"uptime_s":7500,"queue_depth_total":40},
  {"node":"n2","epoch":7,"version":"v1.4.0","sessions":3,"connections":3,"uptime_s":266400,"queue_depth_total":0}],
 "streams":[
  {"name":"KV_parley_sessions","messages":2,"leader":"","replicas":[]},
  {"name":"PARLEY_Q_0","messages":1500,"leader":"n1","replicas":[
   {"node":"n2","current":true,"offline":false,"lag":0},
   {"node":"n3","current":false,"offline":true,"lag":0}]}],
 "problems":["stream KV_parley_sessions has no leader","stream PARLEY_Q_0: replica on n3 is behind or offline"]}`
