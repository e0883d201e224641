package monitor_test

import (
	"bytes"
	"flag"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/parleyhq/parley/monitor"
)

var update = flag.Bool("update", false, "rewrite deploy/prometheus/parley-alerts.yml from monitor.AlertRules")

const rulesDir = "../deploy/prometheus"

// The shipped rules are AlertRules of the defaults, so they cannot drift
// from the built-in queue watch.
func TestAlertRulesFile(t *testing.T) {
	want, err := monitor.AlertRules(monitor.DefaultThresholds())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(rulesDir, "parley-alerts.yml")
	if *update {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run: go test ./monitor -run TestAlertRulesFile -update)", err)
	}
	if string(got) != want {
		t.Errorf("%s differs from monitor.AlertRules(DefaultThresholds()): run go test ./monitor -run TestAlertRulesFile -update", path)
	}
	for _, name := range monitor.AlertNames() {
		if !strings.Contains(want, "parley_alert: "+name) {
			t.Errorf("no rule for the built-in alert %s", name)
		}
	}
}

func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not found: install it (Debian: apt-get install prometheus) to check the alert rules and the metrics format")
	}
	return p
}

func TestPromtoolCheckRules(t *testing.T) {
	pt := promtool(t)
	for _, args := range [][]string{
		{"check", "rules", filepath.Join(rulesDir, "parley-alerts.yml")},
		// The unit tests pin the hysteresis: fire at the threshold, hold
		// above the clear level, clear below it.
		{"test", "rules", filepath.Join(rulesDir, "parley-alerts.test.yml")},
		// The cluster's rules (hand-written: they watch the node's
		// parley_cluster_* metrics and Prometheus's own up).
		{"check", "rules", filepath.Join(rulesDir, "parley-cluster-alerts.yml")},
		{"test", "rules", filepath.Join(rulesDir, "parley-cluster-alerts.test.yml")},
	} {
		out, err := exec.Command(pt, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

func TestPromtoolCheckMetrics(t *testing.T) {
	pt := promtool(t)
	h := newHarness(t)
	m := h.mon.Metrics()
	m.Accepted.Inc()
	m.DeliverToAck.Observe(0.01)
	h.node.session("+1555a", func(s *monitor.SessionStat) { s.Mailbox = 2000 })
	h.sample() // one alert firing, so every kind of series is present

	resp, err := http.Get(h.srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(pt, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}
