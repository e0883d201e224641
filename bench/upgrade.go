package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/parleyhq/parley/upgrade"
)

// UpgradeOutcome is what a live upgrade triggered in the middle of a pairs
// run (--upgrade-at) reported, beside the run's own figures: a connection
// the upgrade dropped shows as an error of the run and in Dropped, a lost
// message in lost, and the longest stall a client saw as the latency max.
type UpgradeOutcome struct {
	AtSeconds float64 `json:"at_s"` // into the run, when it was asked for
	// Report is the old process's answer to POST /admin/upgrade.
	Report *upgrade.Report `json:"report,omitempty"`
	Error  string          `json:"error,omitempty"`
}

// upgradeAfter asks the node to upgrade itself to binary (its own
// executable if empty) once at has passed since t0, unless stop closes
// first; the answer comes back on the channel.
func (a *admin) upgradeAfter(ctx context.Context, t0 time.Time, at time.Duration, binary string, stop <-chan struct{}) <-chan UpgradeOutcome {
	out := make(chan UpgradeOutcome, 1)
	go func() {
		t := time.NewTimer(time.Until(t0.Add(at)))
		defer t.Stop()
		select {
		case <-t.C:
		case <-stop:
			out <- UpgradeOutcome{Error: "the run ended before --upgrade-at"}
			return
		case <-ctx.Done():
			out <- UpgradeOutcome{Error: ctx.Err().Error()}
			return
		}
		o := UpgradeOutcome{AtSeconds: time.Since(t0).Seconds()}
		rep, err := a.upgrade(ctx, binary)
		if err != nil {
			o.Error = err.Error()
		}
		o.Report = rep
		out <- o
	}()
	return out
}

// upgrade asks the node for a live upgrade (POST /admin/upgrade) and
// waits for its report.
func (a *admin) upgrade(ctx context.Context, binary string) (*upgrade.Report, error) {
	body, _ := json.Marshal(map[string]string{"binary": binary})
	if binary == "" {
		body = nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.url+"/admin/upgrade", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	// A handover of many connections takes longer than a plain request.
	hc := *a.hc
	hc.Timeout = 5 * time.Minute
	resp, err := hc.Do(req)
	if err != nil {
		return nil, unreachable("admin listener", a.url, err)
	}
	defer resp.Body.Close()
	var rep upgrade.Report
	if err := decodeResponse(resp, &rep); err != nil {
		return nil, fmt.Errorf("POST /admin/upgrade: %w", err)
	}
	return &rep, nil
}

// upgradeRows shows an upgrade's outcome in the pairs table.
func upgradeRows(o *UpgradeOutcome, dropped int64) []Row {
	if o == nil {
		return nil
	}
	rows := []Row{{Name: "upgrade_dropped_conns", Value: fmtInt(dropped), Note: "connections that failed during the run (EOF, reset, closed by the server); the goal is 0"}}
	if o.Error != "" {
		return append(rows, Row{Name: "upgrade", Value: "FAILED", Note: o.Error})
	}
	r := o.Report
	ms := func(d time.Duration) string { return fmtF(float64(d)/1e6, 1) }
	return append(rows,
		Row{Name: "upgrade", Value: fmt.Sprintf("pid %d -> %d", r.OldPID, r.NewPID), Note: fmt.Sprintf("%s -> %s, asked %.1f s into the run; %s connections handed over", r.OldVersion, r.NewVersion, o.AtSeconds, fmtInt(int64(r.Connections)))},
		Row{Name: "upgrade_handover_ms", Value: ms(r.Duration), Note: fmt.Sprintf("start %s + quiesce %s + export %s + release %s + adopt %s ms", ms(r.Phases.Start), ms(r.Phases.Quiesce), ms(r.Phases.Export), ms(r.Phases.Release), ms(r.Phases.Adopt))},
		Row{Name: "upgrade_no_commits_ms", Value: ms(r.NoCommits), Note: "no store commit could happen: old process quiescing to the new one's store open"},
	)
}
