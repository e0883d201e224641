package monitor_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/parleyhq/parley/monitor"
)

// fakeNode is a Source whose figures the test sets by hand: the node is
// wired to the monitor elsewhere; here the monitor is the subject.
type fakeNode struct {
	mu       sync.Mutex
	totals   monitor.Totals
	sessions map[string]*fakeSession
}

// fakeSession is one session, with the Rates a node keeps per session.
type fakeSession struct {
	stat  monitor.SessionStat
	rates monitor.Rates
}

// connAddr names a fake session's connection, as a net.Addr names a real
// one.
type connAddr string

func (a connAddr) String() string { return string(a) }

func newFakeNode() *fakeNode {
	return &fakeNode{sessions: make(map[string]*fakeSession)}
}

func (f *fakeNode) Totals() monitor.Totals {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.totals
	t.Sessions = len(f.sessions)
	return t
}

// EachSession visits the sessions in user order, so that ties (the first
// of equal mailboxes) come out the same on every run.
func (f *fakeNode) EachSession(fn func(monitor.SessionStat, *monitor.Rates)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	users := slices.Sorted(maps.Keys(f.sessions))
	for _, u := range users {
		s := f.sessions[u]
		fn(s.stat, &s.rates)
	}
}

// session changes (creating if needed) one user's session.
func (f *fakeNode) session(user string, change func(*monitor.SessionStat)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.sessions[user]
	if s == nil {
		s = &fakeSession{stat: monitor.SessionStat{User: user, Conn: connAddr("10.0.0.1:" + user)}}
		f.sessions[user] = s
	}
	change(&s.stat)
}

func (f *fakeNode) drop(user string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.sessions, user)
}

func (f *fakeNode) setTotals(change func(*monitor.Totals)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	change(&f.totals)
}

// syncBuffer collects log output written from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// lines are the JSON log records written so far.
func (s *syncBuffer) lines(t *testing.T) []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(s.b.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q is not JSON: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

// harness is a monitor over a fakeNode, driven by Sample with a clock the
// test advances, and served by an httptest server.
type harness struct {
	t     *testing.T
	node  *fakeNode
	mon   *monitor.Monitor
	reg   *prometheus.Registry
	logs  *syncBuffer
	now   time.Time
	srv   *httptest.Server
	hooks chan monitor.Alert // webhook bodies received, when a webhook is configured
}

type option func(*monitor.Config, *harness)

// withWebhook points the monitor at a webhook receiver of the test's and
// runs the monitor so that webhooks are posted. Run's own sampling never
// happens during the test (its interval is an hour): the test samples.
func withWebhook() option {
	return func(c *monitor.Config, h *harness) {
		h.hooks = make(chan monitor.Alert, 16)
		recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			var a monitor.Alert
			if ct := r.Header.Get("Content-Type"); ct != "application/json" {
				h.t.Errorf("webhook Content-Type = %q, want application/json", ct)
			}
			if err := json.NewDecoder(r.Body).Decode(&a); err != nil {
				h.t.Errorf("webhook body: %v", err)
			}
			h.hooks <- a
		}))
		h.t.Cleanup(recv.Close)
		c.Webhook = recv.URL
		c.Interval = time.Hour
	}
}

func withThresholds(th monitor.Thresholds) option {
	return func(c *monitor.Config, _ *harness) { c.Thresholds = th }
}

func withNode(name string) option {
	return func(c *monitor.Config, _ *harness) { c.Node = name }
}

func withToken(tok string) option {
	return func(c *monitor.Config, _ *harness) { c.AdminToken, c.RequireToken = tok, true }
}

func newHarness(t *testing.T, opts ...option) *harness {
	t.Helper()
	h := &harness{
		t:    t,
		node: newFakeNode(),
		reg:  prometheus.NewRegistry(),
		logs: &syncBuffer{},
		now:  time.Date(2025, 11, 25, 12, 0, 0, 0, time.UTC),
	}
	cfg := monitor.Config{
		Source:   h.node,
		Registry: h.reg,
		Log:      slog.New(slog.NewJSONHandler(h.logs, nil)),
		Now:      func() time.Time { return h.now },
	}
	for _, o := range opts {
		o(&cfg, h)
	}
	m, err := monitor.New(cfg)
	if err != nil {
		t.Fatalf("monitor.New: %v", err)
	}
	h.mon = m
	if h.hooks != nil {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { m.Run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	h.srv = httptest.NewServer(m.Handler())
	t.Cleanup(h.srv.Close)
	return h
}

// sample advances the clock by one second and samples.
func (h *harness) sample() monitor.Stats {
	h.t.Helper()
	h.now = h.now.Add(time.Second)
	return h.mon.Sample(h.now)
}

// get fetches path from the handler and decodes its JSON body into v (if
// not nil), returning the status code.
func (h *harness) get(path string, v any, header ...string) int {
	h.t.Helper()
	req, err := http.NewRequest("GET", h.srv.URL+path, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		if header[i] == "Host" {
			req.Host = header[i+1] // Go sends req.Host, not a Host header
			continue
		}
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatal(err)
	}
	if v != nil {
		if err := json.Unmarshal(body, v); err != nil {
			h.t.Fatalf("GET %s: body %q is not JSON: %v", path, body, err)
		}
	}
	return resp.StatusCode
}

// webhook waits for the next webhook post.
func (h *harness) webhook() monitor.Alert {
	h.t.Helper()
	select {
	case a := <-h.hooks:
		return a
	case <-time.After(10 * time.Second):
		h.t.Fatal("no webhook post arrived")
		return monitor.Alert{}
	}
}

// gauge reads one sample of a gathered metric family, by label value.
func (h *harness) gauge(name string, labels ...string) (float64, bool) {
	h.t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		h.t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue metric
				}
			}
			switch {
			case m.Gauge != nil:
				return m.GetGauge().GetValue(), true
			case m.Counter != nil:
				return m.GetCounter().GetValue(), true
			}
		}
	}
	return 0, false
}
