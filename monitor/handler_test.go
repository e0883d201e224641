package monitor_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/parleyhq/parley/apierror"
	"github.com/parleyhq/parley/monitor"
)

func TestSessionsEndpoint(t *testing.T) {
	h := newHarness(t)
	for _, s := range []monitor.SessionStat{
		{User: "+1555a", Mailbox: 5, Queued: 0, MsgsIn: 10, MsgsOut: 300},
		{User: "+1555b", Mailbox: 50, Queued: 7, MsgsIn: 20, MsgsOut: 100},
		{User: "+1555c", Mailbox: 1, Queued: 90, MsgsIn: 90, MsgsOut: 200},
		{User: "+1555d", Mailbox: 0, Queued: 3, MsgsIn: 0, MsgsOut: 0},
	} {
		h.node.session(s.User, func(x *monitor.SessionStat) { *x = s; x.Conn = connAddr("c-" + s.User) })
	}
	h.sample()
	h.node.session("+1555d", func(x *monitor.SessionStat) {}) // unchanged
	for _, u := range []string{"+1555a", "+1555b", "+1555c"} {
		h.node.session(u, func(x *monitor.SessionStat) { x.MsgsIn *= 2; x.MsgsOut *= 2 })
	}
	h.sample()

	tests := []struct {
		query string
		want  []string
	}{
		{"", []string{"+1555b", "+1555a", "+1555c", "+1555d"}},
		{"?sort=mailbox", []string{"+1555b", "+1555a", "+1555c", "+1555d"}},
		{"?sort=in_rate", []string{"+1555c", "+1555b", "+1555a", "+1555d"}},
		{"?sort=out_rate", []string{"+1555a", "+1555c", "+1555b", "+1555d"}},
		{"?sort=queued", []string{"+1555c", "+1555b", "+1555d", "+1555a"}},
		{"?sort=queued&limit=2", []string{"+1555c", "+1555b"}},
		{"?limit=1", []string{"+1555b"}},
	}
	for _, tc := range tests {
		var r monitor.SessionsResponse
		if code := h.get("/admin/sessions"+tc.query, &r); code != 200 {
			t.Errorf("%s: status %d", tc.query, code)
			continue
		}
		var got []string
		for _, s := range r.Sessions {
			got = append(got, s.User)
		}
		if strings.Join(got, ",") != strings.Join(tc.want, ",") || r.Total != 4 {
			t.Errorf("/admin/sessions%s = %v (total %d), want %v (total 4)", tc.query, got, r.Total, tc.want)
		}
	}

	var first monitor.SessionsResponse
	h.get("/admin/sessions?sort=in_rate&limit=1", &first)
	if s := first.Sessions[0]; s.Conn != "c-+1555c" || s.MsgsIn != 180 || s.InRate != 90 || s.Queued != 90 {
		t.Errorf("row = %+v, want conn, counters and rate of +1555c", s)
	}

	for _, q := range []string{"?sort=bytes", "?limit=0", "?limit=-3", "?limit=ten"} {
		var e apierror.Body
		code := h.get("/admin/sessions"+q, &e)
		if code != http.StatusBadRequest || e.Error.Message == "" {
			t.Errorf("/admin/sessions%s: %d %q, want 400 with an error message", q, code, e.Error.Message)
		}
	}
	var e apierror.Body
	h.get("/admin/sessions?sort=bytes", &e)
	if !strings.Contains(e.Error.Message, "mailbox, in_rate, out_rate or queued") {
		t.Errorf("bad sort error %q does not list the valid sorts", e.Error.Message)
	}
}

// A node of a cluster names itself on every row (so rows merged from
// several nodes say where each session is); a node alone leaves the field
// out.
func TestSessionsNameTheNode(t *testing.T) {
	for _, node := range []string{"n2", ""} {
		h := newHarness(t, withNode(node))
		h.node.session("+1555a", func(*monitor.SessionStat) {})
		h.sample()
		var raw json.RawMessage
		h.get("/admin/sessions", &raw)
		var r monitor.SessionsResponse
		if err := json.Unmarshal(raw, &r); err != nil || len(r.Sessions) != 1 || r.Sessions[0].Node != node {
			t.Errorf("Config.Node %q: /admin/sessions = %s, want the row on node %q", node, raw, node)
		}
		if node == "" && strings.Contains(string(raw), `"node"`) {
			t.Errorf("a node alone: /admin/sessions = %s, want no node field", raw)
		}
	}
}

func TestTokenRequired(t *testing.T) {
	h := newHarness(t, withToken("s3cret"))
	h.sample()
	paths := []string{"/metrics", "/admin/stats", "/admin/stats/history", "/admin/sessions", "/admin/alerts"}
	for _, p := range paths {
		var e apierror.Body
		if code := h.get(p, &e); code != http.StatusUnauthorized || !strings.Contains(e.Error.Message, "token") {
			t.Errorf("GET %s without a token: %d %q, want 401 naming the token", p, code, e.Error.Message)
		}
		if code := h.get(p, nil, "Authorization", "Bearer wrong"); code != http.StatusUnauthorized {
			t.Errorf("GET %s with a wrong token: %d, want 401", p, code)
		}
		if code := h.get(p, nil, "Authorization", "Bearer s3cret"); code != 200 {
			t.Errorf("GET %s with the bearer token: %d, want 200", p, code)
		}
		// A token in the URL ends up in logs and history: refused.
		sep := "?"
		if strings.Contains(p, "?") {
			sep = "&"
		}
		if code := h.get(p+sep+"token=s3cret", nil); code != http.StatusUnauthorized {
			t.Errorf("GET %s?token=: %d, want 401", p, code)
		}
	}
	// The dashboard's page, script and style hold no data: a browser loads
	// them without the token, which the page takes from its URL fragment.
	for _, p := range []string{"/", "/dashboard/dashboard.js"} {
		if code := h.get(p, nil); code != 200 {
			t.Errorf("GET %s: %d, want 200", p, code)
		}
	}
}

// A web page the operator visits must not reach a loopback admin listener:
// not by a cross-site request, not through DNS rebinding.
func TestCrossSiteRefused(t *testing.T) {
	for _, tc := range []struct {
		name    string
		token   string
		headers []string
		want    int
	}{
		{"script, no headers", "", nil, 200},
		{"dashboard fetch", "", []string{"Sec-Fetch-Site", "same-origin"}, 200},
		{"typed in the address bar", "", []string{"Sec-Fetch-Site", "none"}, 200},
		{"cross-site fetch", "", []string{"Sec-Fetch-Site", "cross-site"}, http.StatusForbidden},
		{"same-site subdomain", "", []string{"Sec-Fetch-Site", "same-site"}, http.StatusForbidden},
		{"foreign origin", "", []string{"Origin", "http://evil.example"}, http.StatusForbidden},
		{"rebinding host, no token", "", []string{"Host", "evil.example:9090"}, http.StatusForbidden},
		{"other host with a token", "s3cret", []string{"Host", "admin.internal:9090", "Authorization", "Bearer s3cret"}, 200},
		{"cross-site even with the token", "s3cret", []string{"Sec-Fetch-Site", "cross-site", "Authorization", "Bearer s3cret"}, http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var opts []option
			if tc.token != "" {
				opts = append(opts, withToken(tc.token))
			}
			h := newHarness(t, opts...)
			var e apierror.Body
			if code := h.get("/admin/stats", &e, tc.headers...); code != tc.want {
				t.Errorf("GET /admin/stats with %v: %d %q, want %d", tc.headers, code, e.Error.Message, tc.want)
			}
		})
	}
}

func TestNoTokenOnLoopback(t *testing.T) {
	h := newHarness(t)
	if code := h.get("/admin/stats", nil); code != 200 {
		t.Errorf("GET /admin/stats with no token configured: %d", code)
	}
}

func TestLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:9090": true, "localhost:9090": true, "[::1]:9090": true, "127.0.0.2:1": true,
		":9090": false, "0.0.0.0:9090": false, "[::]:9090": false, "10.1.2.3:9090": false, "example.com:9090": false,
	} {
		if got := monitor.Loopback(addr); got != want {
			t.Errorf("Loopback(%q) = %v, want %v", addr, got, want)
		}
	}
}

func TestMetricsScrape(t *testing.T) {
	h := newHarness(t)
	m := h.mon.Metrics()
	m.ConnectionsOpen.Inc()
	m.Accepted.Inc()
	m.HandshakeFailures.Timeout.Inc()
	m.MessagesIn.Add(3)
	m.SendToDeliver.Observe(0.002)
	m.CommitBatchSize.Observe(4)
	h.node.setTotals(func(t *monitor.Totals) { t.Backlog, t.QueueDepthTotal = 2, 77 })
	h.node.session("+1555a", func(s *monitor.SessionStat) { s.Mailbox = 6 })
	h.sample()

	resp, err := http.Get(h.srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	text := string(body)
	for _, want := range []string{
		"parley_connections_open 1",
		"parley_connections_accepted_total 1",
		`parley_handshake_failures_total{reason="timeout"} 1`,
		`parley_handshake_failures_total{reason="bad_frame"} 0`,
		"parley_messages_in_total 3",
		"parley_delivery_send_to_deliver_seconds_count 1",
		"parley_delivery_deliver_to_ack_seconds_bucket",
		"parley_store_commit_seconds_bucket",
		"parley_store_commit_batch_size_sum 4",
		"parley_sessions 1",
		"parley_worker_backlog 2",
		"parley_queue_depth 77",
		"parley_queue_depth_user_max 0",
		"parley_session_mailbox_max 6",
		"parley_event_loop_lag_seconds 0",
		`parley_alerts_firing{alert="mailbox_high"} 0`,
		"# HELP parley_worker_backlog ",
		"go_goroutines ",
		"process_cpu_seconds_total ",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// Taking the first N without sorting everything gives the same rows as
// sorting everything.
func TestSessionsLimitMatchesFullSort(t *testing.T) {
	h := newHarness(t)
	for i := range 500 {
		u := fmt.Sprintf("+1555%04d", i)
		h.node.session(u, func(s *monitor.SessionStat) {
			s.Mailbox, s.Queued, s.MsgsIn = (i*7919)%37, (i*104729)%11, uint64(i%13)
		})
	}
	h.sample()
	for _, by := range monitor.SortKeys() {
		all, _ := h.mon.Sessions(by, 0)
		for _, n := range []int{1, 10, 99} {
			got, total := h.mon.Sessions(by, n)
			if total != 500 || !slices.Equal(got, all[:n]) {
				t.Errorf("Sessions(%s, %d) differs from the first %d of the full sort", by, n, n)
			}
		}
	}
}

// countedAddr is a connection name that counts how often it is formatted.
type countedAddr struct {
	name string
	n    *int
}

func (a countedAddr) String() string { *a.n++; return a.name }

// A request for the first few sessions of many names only the rows it
// returns: walking a million sessions for `parley top` makes no strings
// for the rest.
func TestSessionsFormatOnlyTheRowsKept(t *testing.T) {
	h := newHarness(t)
	formatted := 0
	for i := range 1000 {
		u := fmt.Sprintf("+1555%04d", i)
		h.node.session(u, func(s *monitor.SessionStat) {
			s.Conn = countedAddr{"10.0.0.1:" + u, &formatted}
			s.Mailbox = i % 10
		})
	}
	h.sample()
	formatted = 0
	rows, total := h.mon.Sessions(monitor.SortMailbox, 5)
	if total != 1000 || len(rows) != 5 || rows[0].Mailbox != 9 || rows[0].Conn != "10.0.0.1:"+rows[0].User {
		t.Fatalf("Sessions(mailbox, 5) = %+v (total %d)", rows, total)
	}
	// The heap keeps 5 rows, and replaces its worst a few dozen times as
	// better rows come by; nothing like one name per session.
	if formatted > 100 {
		t.Errorf("formatted %d connection names for 5 rows of 1000 sessions", formatted)
	}
}
