package top

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parleyhq/parley/monitor"
)

// fakeAdmin answers /admin/stats and /admin/sessions, recording the sorts
// asked for.
type fakeAdmin struct {
	mu    sync.Mutex
	sorts []string
}

func (f *fakeAdmin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	switch r.URL.Path {
	case "/admin/stats":
		io.WriteString(w, `{"connections":2,"sessions":2,"in_rate":12.5}`)
	case "/admin/sessions":
		f.mu.Lock()
		f.sorts = append(f.sorts, r.URL.Query().Get("sort"))
		f.mu.Unlock()
		io.WriteString(w, `{"sort":"mailbox","total":2,"sessions":[{"user":"+1555a","conn":"c1","mailbox":4},{"user":"+1555b","conn":"c2","mailbox":1}]}`)
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeAdmin) asked() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string{}, f.sorts...)
}

// syncWriter lets the test read what live draws while it draws.
type syncWriter struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// bound is how long a step of a live test may take before it fails: a
// failure guard, far beyond what a step needs, so that a live view that
// does not quit fails its test instead of hanging go test for ten minutes.
const bound = 10 * time.Second

// within runs step and returns its error, failing the test if it is not
// done within bound. (A step that never ends is left running: the test's
// context, which live is given, ends it at cleanup.)
func within(t *testing.T, what string, step func() error) error {
	t.Helper()
	res := make(chan error, 1)
	go func() { res <- step() }()
	select {
	case err := <-res:
		return err
	case <-time.After(bound):
		t.Fatalf("%s: not done within %v", what, bound)
		return nil
	}
}

func TestLiveKeysChangeSortAndQuit(t *testing.T) {
	fa := &fakeAdmin{}
	srv := httptest.NewServer(fa)
	defer srv.Close()
	c, err := NewClient(srv.URL, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	keysR, keysW := io.Pipe()
	t.Cleanup(func() { keysR.Close() })
	out := &syncWriter{}
	done := make(chan error, 1)
	go func() {
		// An hour between refreshes: every fetch after the first is a key's.
		done <- live(t.Context(), c, Options{Sort: monitor.SortMailbox, Interval: time.Hour}, keysR, out,
			func() (int, int, bool) { return 100, 30, true })
	}()
	for _, k := range []string{"i", "o", "q", "m", "z", "x"} {
		// Each write returns once live has taken the key.
		within(t, "live taking key "+k, func() error { _, err := keysW.Write([]byte(k)); return err })
	}
	if err := within(t, "live quitting on x", func() error { return <-done }); err != nil {
		t.Fatalf("live: %v", err)
	}
	want := []string{"mailbox", "in_rate", "out_rate", "queued", "mailbox"}
	if got := fa.asked(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("sorts fetched = %v, want %v (z ignored)", got, want)
	}
	s := out.String()
	if !strings.HasPrefix(s, "\x1b[?1049h") || !strings.HasSuffix(s, "\x1b[?1049l") {
		t.Error("live view did not enter and leave the alternate screen")
	}
	if n := strings.Count(s, "\x1b[H\x1b[2J"); n != 5 {
		t.Errorf("%d redraws (clear + home), want 5: the first and one per sort key", n)
	}
	for _, want := range []string{"sorted by msgs/s in", "sorted by msgs/s out", "sorted by offline queue", "+1555a", "keys: m mailbox"} {
		if !strings.Contains(s, want) {
			t.Errorf("live output lacks %q", want)
		}
	}
}

func TestLiveCtrlCQuits(t *testing.T) {
	srv := httptest.NewServer(&fakeAdmin{})
	defer srv.Close()
	c, _ := NewClient(srv.URL, "", nil)
	err := within(t, "live quitting on Ctrl-C", func() error {
		return live(t.Context(), c, Options{Sort: monitor.SortMailbox, Interval: time.Hour},
			strings.NewReader("\x03"), io.Discard, func() (int, int, bool) { return 0, 0, false })
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestRenderFitsWidth(t *testing.T) {
	s := Snapshot{
		Totals: monitor.Stats{
			Connections: 1, Sessions: 1, InRate: 1500, OutRate: 2.25, LoopLagSeconds: 0.0012,
			QueueDepthTotal: 99, QueueDepthMax: 90, QueueDepthMaxUser: "+15550000001",
			SendToDeliver: monitor.Latency{Count: 3, P50: 0.001, P99: 0.02},
			Firing:        []monitor.Alert{{Name: monitor.AlertLoopLag, Value: 0.2, Threshold: 0.1}},
			AlertsFiring:  1,
		},
		Sessions: []monitor.Session{{User: "+15550000001", Conn: "[2001:db8::1234:5678]:65000", Mailbox: 3}},
		Total:    1,
	}
	var b bytes.Buffer
	Render(&b, s, View{Admin: "http://127.0.0.1:9090", Sort: monitor.SortMailbox, Width: 60})
	for i, l := range strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n") {
		if n := len([]rune(l)); n > 60 {
			t.Errorf("line %d is %d columns wide, want at most 60: %q", i, n, l)
		}
	}
	b.Reset()
	Render(&b, s, View{Sort: monitor.SortMailbox})
	for _, want := range []string{"msgs/s in 1500", "out 2.2", "loop lag 1.2ms", "largest +15550000001: 90",
		"p50 1ms p99 20ms", "1 FIRING: loop_lag_high (200ms ≥ 100ms)", "MAILBOX▼", "[2001:db8::1234:5678…"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("render lacks %q:\n%s", want, b.String())
		}
	}
}

func TestNewClientAddress(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:9090":          "http://127.0.0.1:9090",
		"http://10.0.0.5:9090/":   "http://10.0.0.5:9090",
		"https://admin.example:1": "https://admin.example:1",
	} {
		c, err := NewClient(in, "", nil)
		if err != nil || c.URL() != want {
			t.Errorf("NewClient(%q) = %v, %v; want %s", in, c, err, want)
		}
	}
	for _, bad := range []string{"", "ftp://x", "http://", "127.0.0.1:9091,,127.0.0.1:9092"} {
		if _, err := NewClient(bad, "", nil); err == nil {
			t.Errorf("NewClient(%q) succeeded", bad)
		}
	}
}

// clusterNode answers as one node of a cluster: its totals, its sessions
// (each naming it) and, when cluster is set, the cluster's status.
func clusterNode(t *testing.T, stats, sessions, cluster string) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/admin/stats":
			io.WriteString(w, stats)
		case r.URL.Path == "/admin/sessions":
			io.WriteString(w, sessions)
		case r.URL.Path == "/admin/cluster" && cluster != "":
			io.WriteString(w, cluster)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestFetchMergesNodes: with several admin listeners top shows the first
// rows of all the nodes' by the sort, the nodes' totals summed (maxima and
// latencies the worst node's), and the cluster as the first node sees it.
func TestFetchMergesNodes(t *testing.T) {
	n1 := clusterNode(t,
		`{"connections":2,"sessions":2,"in_rate":10,"mailbox_max":4,"mailbox_max_user":"+1555a","loop_lag_seconds":0.001,"send_to_deliver":{"count":5,"p50":0.001,"p99":0.002}}`,
		`{"sort":"mailbox","total":2,"sessions":[{"user":"+1555a","node":"n1","conn":"c1","mailbox":4},{"user":"+1555b","node":"n1","conn":"c2","mailbox":1}]}`,
		`{"node":"n1","members":[{"node":"n1","connections":2},{"node":"n2","connections":1}],"streams":[],"hints":3,"problems":[]}`)
	n2 := clusterNode(t,
		`{"connections":1,"sessions":1,"in_rate":5,"mailbox_max":7,"mailbox_max_user":"+1555c","loop_lag_seconds":0.004,"send_to_deliver":{"count":1,"p50":0.003,"p99":0.003}}`,
		`{"sort":"mailbox","total":1,"sessions":[{"user":"+1555c","node":"n2","conn":"c3","mailbox":7}]}`,
		"")
	c, err := NewClient(n1+", "+n2, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.URL() != n1+","+n2 {
		t.Errorf("URL() = %q, want both listeners", c.URL())
	}
	s, err := c.Fetch(t.Context(), monitor.SortMailbox, 2)
	if err != nil {
		t.Fatal(err)
	}
	var rows []string
	for _, r := range s.Sessions {
		rows = append(rows, r.User+"@"+r.Node)
	}
	if strings.Join(rows, " ") != "+1555c@n2 +1555a@n1" || s.Total != 3 {
		t.Errorf("rows %v of %d, want +1555c@n2 +1555a@n1 of 3", rows, s.Total)
	}
	tt := s.Totals
	if tt.Connections != 3 || tt.Sessions != 3 || tt.InRate != 15 || tt.MailboxMax != 7 || tt.MailboxMaxUser != "+1555c" ||
		tt.LoopLagSeconds != 0.004 || tt.SendToDeliver != (monitor.Latency{Count: 6, P50: 0.003, P99: 0.003}) {
		t.Errorf("totals = %+v, want the two nodes' summed, maxima and latencies n2's", tt)
	}
	if s.Cluster == nil || len(s.Cluster.Members) != 2 || s.ClusterError != "" {
		t.Errorf("cluster = %+v (error %q), want n1's view of two members", s.Cluster, s.ClusterError)
	}

	// A node alone (its /admin/cluster is 404) has no cluster.
	c, _ = NewClient(n2, "", nil)
	if s, err := c.Fetch(t.Context(), monitor.SortMailbox, 2); err != nil || s.Cluster != nil || s.ClusterError != "" {
		t.Errorf("a node alone: cluster %+v, error %q, fetch error %v; want none", s.Cluster, s.ClusterError, err)
	}
}
