package cluster_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parleyhq/parley/bench"
)

// `parley bench failover` against three processes, once with SIGKILL (a
// crash) and once with SIGTERM (a planned stop): pairs whose two sides are
// on different nodes send, paced, while node 3 is signalled; its clients
// log in again on the others and resend what had no SendAck. Every
// message accepted arrives exactly once and in order, every sender gets
// its delivered receipts, and nothing else goes wrong. The gap and the
// reconnect times are logged, not asserted (speed is the benchmark's).
func TestBenchFailoverLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: builds the server and runs three of it, twice")
	}
	bin := buildParley(t)
	for _, sig := range []string{"KILL", "TERM"} {
		t.Run(sig, func(t *testing.T) {
			ps := startCluster(t, bin)
			var natives, admins []string
			for _, p := range ps {
				natives = append(natives, p.native)
				admins = append(admins, p.admin)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			cfg := bench.Config{
				Addr:  strings.Join(natives, ","),
				Admin: strings.Join(admins, ","),
				// setup reads the server key from a node's HTTP API.
				Server: ps[0].httpURL,
				State:  filepath.Join(t.TempDir(), "bench-state.json"),
				Users:  60,
			}
			if _, err := bench.Setup(ctx, cfg, nil); err != nil {
				t.Fatalf("bench setup: %v", err)
			}
			cfg.Pairs, cfg.Window, cfg.Rate = 30, 1, 300
			cfg.Duration, cfg.FailoverAt, cfg.FailoverNode, cfg.FailoverSignal = 10*time.Second, 3*time.Second, 3, sig
			// The streams whose leader died refuse writes until JetStream
			// has elected another: 4-9 s, longer on a machine busy with
			// other tests (17 s seen under CI's -race). Their senders'
			// last messages get the time to go through.
			cfg.Grace = 45 * time.Second
			res, err := bench.Pairs(ctx, cfg, nil)
			if err != nil {
				t.Fatalf("bench failover: %v", err)
			}
			fo := res.Failover
			t.Logf("SIG%s: %d delivered, gap %.0f ms, %d moved (reconnect p50 %.1f ms, max %.1f ms), %d retried, %d redelivered, %d receipts again",
				sig, res.Delivered, fo.GapMs, fo.Moved, fo.ReconnectP50, fo.ReconnectMax, fo.Retried, fo.Redelivered, fo.ReceiptsAgain)
			if fo.Error != "" {
				t.Fatalf("the signal: %s", fo.Error)
			}
			if res.Lost != 0 || res.Errors != 0 || res.Dropped != 0 {
				t.Fatalf("lost %d, errors %d, dropped %d: %v\nnode 1:\n%s", res.Lost, res.Errors, res.Dropped, res.ErrorSamples, tail(ps[0].log))
			}
			// A third of the connections were on node 3: they must have
			// moved, and the run must have gone on after the signal.
			if fo.Moved < 20 || res.Seconds <= fo.AtSeconds {
				t.Fatalf("%d connections moved, last receipt at %.1f s, signal at %.1f s: the run did not go on past the loss", fo.Moved, res.Seconds, fo.AtSeconds)
			}
		})
	}
}
