package monitor_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/parleyhq/parley/monitor"
	"github.com/parleyhq/parley/monitor/top"
)

// `parley top --once --json` against a live handler: the JSON a script
// gets.
func TestTopOnceJSON(t *testing.T) {
	h := newHarness(t, withThresholds(monitor.Thresholds{Mailbox: 40}))
	h.node.setTotals(func(t *monitor.Totals) { t.Connections, t.QueueDepthTotal = 3, 12 })
	h.node.session("+1555a", func(s *monitor.SessionStat) { s.Mailbox, s.MsgsIn = 2, 5 })
	h.node.session("+1555b", func(s *monitor.SessionStat) { s.Mailbox, s.Queued = 41, 12 })
	h.node.session("+1555c", func(s *monitor.SessionStat) { s.Mailbox = 7 })
	h.sample()

	c, err := top.NewClient(h.srv.URL, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := top.Run(context.Background(), c, top.Options{Once: true, JSON: true, Limit: 2}, nil, &out); err != nil {
		t.Fatalf("top --once --json: %v", err)
	}
	if n := strings.Count(strings.TrimSpace(out.String()), "\n"); n != 0 {
		t.Errorf("top --once --json printed %d lines, want one JSON object:\n%s", n+1, out.String())
	}
	var got struct {
		Totals   map[string]any   `json:"totals"`
		Sessions []map[string]any `json:"sessions"`
		Total    int              `json:"total"`
	}
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, out.String())
	}
	if got.Totals["connections"] != 3.0 || got.Totals["sessions"] != 3.0 || got.Totals["queue_depth_total"] != 12.0 ||
		got.Totals["alerts_firing"] != 1.0 {
		t.Errorf("totals = %v", got.Totals)
	}
	if len(got.Sessions) != 2 || got.Sessions[0]["user"] != "+1555b" || got.Sessions[1]["user"] != "+1555c" || got.Total != 3 {
		t.Errorf("sessions = %v (total %d), want +1555b then +1555c of 3", got.Sessions, got.Total)
	}
	for _, k := range []string{"user", "conn", "msgs_in", "msgs_out", "in_rate", "out_rate", "mailbox", "inflight", "queued"} {
		if _, ok := got.Sessions[0][k]; !ok {
			t.Errorf("session lacks %q: %v", k, got.Sessions[0])
		}
	}
}

func TestTopOnceText(t *testing.T) {
	h := newHarness(t)
	h.node.session("+1555a", func(s *monitor.SessionStat) { s.Mailbox = 9 })
	h.sample()
	c, _ := top.NewClient(h.srv.URL, "", nil)
	var out bytes.Buffer
	if err := top.Run(context.Background(), c, top.Options{Once: true, Sort: monitor.SortQueued}, nil, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"parley top", "sorted by offline queue", "sessions 1", "QUEUED▼", "+1555a"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("top --once lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "\x1b") {
		t.Error("top --once wrote terminal escapes to a non-terminal")
	}
}

func TestTopErrorsSayWhatToDo(t *testing.T) {
	h := newHarness(t, withToken("tok"))
	h.sample()
	dead := httptest.NewServer(nil)
	dead.Close()
	tests := []struct {
		url, token, want string
	}{
		{dead.URL, "", "is `parley serve` running? check --admin"},
		{h.srv.URL, "", "pass --token"},
		{h.srv.URL, "wrong", "check --token"},
	}
	for _, tc := range tests {
		c, err := top.NewClient(tc.url, tc.token, nil)
		if err != nil {
			t.Fatal(err)
		}
		err = top.Run(context.Background(), c, top.Options{Once: true, JSON: true}, nil, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("top --admin %s --token %q: error %v, want one saying %q", tc.url, tc.token, err, tc.want)
		}
	}
	c, _ := top.NewClient(h.srv.URL, "tok", nil)
	if err := top.Run(context.Background(), c, top.Options{Once: true, JSON: true}, nil, &bytes.Buffer{}); err != nil {
		t.Errorf("with the right token: %v", err)
	}
}
