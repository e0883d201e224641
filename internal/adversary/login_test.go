package adversary

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parleyhq/parley/node"
	"github.com/parleyhq/parley/noise"
)

// lineCounter is a log handler that counts the records whose message is
// one of msgs, and drops every record.
type lineCounter struct {
	msgs map[string]bool
	n    *atomic.Int64
}

func (h lineCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h lineCounter) Handle(_ context.Context, r slog.Record) error {
	if h.msgs[r.Message] {
		h.n.Add(1)
	}
	return nil
}
func (h lineCounter) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h lineCounter) WithGroup(string) slog.Handler      { return h }

// A login flood: one address tries random keys claiming one registered
// number. After the address's failed-login budget its handshakes are
// closed unanswered, before any cryptography, and counted
// (parley_limit_hits_total{limit="failed_logins_per_addr"}); the refusals'
// log lines are bounded; the number's real device, which has no limit of
// its own to be locked out by, stays logged in and logs in again, and
// other users are served meanwhile.
func TestLoginFlood(t *testing.T) {
	const (
		budget   = 5
		attempts = 300
		perSec   = 2
	)
	var lines atomic.Int64
	e := start(t, node.Limits{FailedLoginsPerAddr: budget, LoginLogsPerSecond: perSec}, func(c *node.Config) {
		c.Log = slog.New(lineCounter{msgs: map[string]bool{"login refused": true, "connection refused": true}, n: &lines})
	})
	victim := e.newUser(t)
	hitsBefore := e.metric(t, limitHits("failed_logins_per_addr"))
	began := time.Now()

	var answered, unanswered atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range attempts / 4 {
				kp, err := noise.GenerateKeypair(nil)
				if err != nil {
					t.Error(err)
					return
				}
				nc, err := from("127.0.0.2").Dial("tcp", e.NativeAddr())
				if err != nil {
					t.Error(err)
					return
				}
				_, err = rawLogin(nc, kp, e.PublicKey(), victim.phone)
				nc.Close()
				switch {
				case err == nil:
					t.Errorf("a random key logged in as %s", victim.phone)
				case errors.Is(err, errNoReply):
					unanswered.Add(1)
				default:
					answered.Add(1)
				}
			}
		})
	}
	e.checkServes(t) // meanwhile
	wg.Wait()
	elapsed := time.Since(began)

	// A minute's window may end during the test: at most two budgets.
	if got := answered.Load(); got > 2*budget {
		t.Errorf("%d failed logins from one address were answered, budget %d", got, budget)
	}
	if got := e.metric(t, limitHits("failed_logins_per_addr")) - hitsBefore; got != float64(unanswered.Load()) || got < attempts-2*budget {
		t.Errorf("failed_logins_per_addr hits: %v, for %d logins closed unanswered of %d", got, unanswered.Load(), attempts)
	}
	if got, most := lines.Load(), int64(perSec*(elapsed/time.Second+2)); got > most {
		t.Errorf("%d log lines of refused logins in %s, want at most %d", got, elapsed, most)
	}
	// The number's real device is still in, and logs in afresh.
	if err := roundTrip(t.Context(), e.newUser(t).Client, victim.Client, victim.phone); err != nil {
		t.Errorf("the claimed number's device during the flood: %v", err)
	}
	victim.Close()
	ctx, cancel := context.WithTimeout(t.Context(), liveness)
	defer cancel()
	c, err := e.login(ctx, victim.phone, victim.kp)
	if err != nil {
		t.Fatalf("the claimed number's device logging in again: %v", err)
	}
	c.Close()
}

// Connections past MaxConnsPerAddr from one address are closed at accept,
// before any handshake, and counted; other addresses are served.
func TestConnectionsPerAddr(t *testing.T) {
	const perAddr = 4
	e := start(t, node.Limits{MaxConnsPerAddr: perAddr})
	before := e.metric(t, limitHits("max_conns_per_addr"))
	var extra []net.Conn
	for i := range 3 * perAddr {
		c := dialRefusable(t, "127.0.0.2", e.NativeAddr())
		if i >= perAddr {
			extra = append(extra, c)
		}
	}
	e.checkServes(t) // meanwhile
	for i, ok := range allClosedSoon(extra) {
		if !ok {
			t.Errorf("connection %d from one address was not closed", perAddr+i+1)
		}
	}
	if got := e.metric(t, limitHits("max_conns_per_addr")) - before; got != float64(len(extra)) {
		t.Errorf("max_conns_per_addr hits: %v, want %d", got, len(extra))
	}
}

// Handshakes in flight past MaxHandshakes: silent connections from
// several addresses fill every handshake slot; a new connection is closed
// at accept and counted, sessions already logged in go on, and the slots
// come back at the handshake timeout, after which users log in again.
func TestHandshakesInFlight(t *testing.T) {
	const slots = 6
	e := start(t, node.Limits{MaxHandshakes: slots, HandshakeTimeout: 2 * time.Second})
	a, b := e.newUser(t), e.newUser(t)
	hitsBefore := e.metric(t, limitHits("max_handshakes"))
	timeoutsBefore := e.metric(t, handshakeFailures("timeout"))
	var silent []net.Conn
	for i := range slots {
		ip := []string{"127.0.0.2", "127.0.0.3"}[i%2]
		c, err := from(ip).Dial("tcp", e.NativeAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		silent = append(silent, c)
	}
	over := dialRefusable(t, "127.0.0.4", e.NativeAddr())
	// Logged-in sessions do not hold handshake slots: they go on.
	if err := roundTrip(t.Context(), a.Client, b.Client, b.phone); err != nil {
		t.Errorf("a logged-in user while the handshakes are full: %v", err)
	}
	if !closedSoon(over) {
		t.Errorf("a connection past MaxHandshakes was not closed")
	}
	if got := e.metric(t, limitHits("max_handshakes")) - hitsBefore; got < 1 {
		t.Errorf("max_handshakes hits: %v, want at least 1", got)
	}
	for i, ok := range allClosedSoon(silent) {
		if !ok {
			t.Errorf("silent connection %d was not closed at the handshake timeout", i+1)
		}
	}
	if got := e.metric(t, handshakeFailures("timeout")) - timeoutsBefore; got != slots {
		t.Errorf("handshake timeouts: %v, want %d", got, slots)
	}
	e.checkServes(t)
}
