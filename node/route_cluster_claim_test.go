package node

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	njs "github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/parleyhq/parley/internal/natstest"
	"github.com/parleyhq/parley/monitor"
	"github.com/parleyhq/parley/session"
	"github.com/parleyhq/parley/wire"
)

// claimRig is two nodes' routers on one JetStream server, with nodes that
// run no sessions: a connection's events stay in its mailbox, to be read.
type claimRig struct {
	kv njs.KeyValue
	rs [2]*clusterRouter
}

// StartJetStream runs an embedded NATS server with JetStream until the
// test ends (exported for the node_test package's cluster tests too).
func StartJetStream(t *testing.T) *server.Server {
	t.Helper()
	return natstest.StartServer(t, "")
}

// newClaimRig starts the rig. wrap, if given, is the bucket as router i
// sees it (a bucket that fails some writes, say).
func newClaimRig(t *testing.T, wrap ...func(i int, kv njs.KeyValue) njs.KeyValue) *claimRig {
	t.Helper()
	nc, err := nats.Connect("", nats.InProcessServer(StartJetStream(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := njs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := openBucket(ctx, js, sessionsBucket, 1)
	if err != nil {
		t.Fatal(err)
	}
	rig := &claimRig{kv: kv}
	for i, name := range []string{"n1", "n2"} {
		n := &Node{log: slog.New(slog.DiscardHandler), mx: monitor.NewMetrics(prometheus.NewRegistry())}
		n.cfg.Limits = Limits{}.withDefaults()
		n.pool = &pool{n: n}
		seen := kv
		for _, w := range wrap {
			seen = w(i, seen)
		}
		r, err := newClusterRouter(n, newRouter(), &ClusterConfig{Conn: nc, Node: name, Timeout: 5 * time.Second}, seen)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(r.close)
		rig.rs[i] = r
	}
	return rig
}

// onNode1 is a newClaimRig wrapper that puts wrap between node 1's router
// and the bucket, and leaves node 2's alone.
func onNode1(wrap func(njs.KeyValue) njs.KeyValue) func(int, njs.KeyValue) njs.KeyValue {
	return func(i int, kv njs.KeyValue) njs.KeyValue {
		if i == 0 {
			return wrap(kv)
		}
		return kv
	}
}

// login registers a connection of user on router r, as a proven login
// does, without queueing its claim: the test writes it when it chooses.
func (rig *claimRig) login(r *clusterRouter, user string) *conn {
	c := &conn{}
	c.scheduled = true // no worker runs it: its events stay in the mailbox
	c.core.Init(user, &session.Config{})
	r.router.register(user, c)
	return c
}

func kicked(c *conn) (wire.Error_Code, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mbox == nil {
		return 0, false
	}
	for _, ev := range c.mbox.evs {
		if ev.kind == evKick {
			return ev.code, true
		}
	}
	return 0, false
}

// A login's claim may reach the bucket after the claim of a newer login
// on another node (its node was slow). The newer login must stay: the
// late claim writes nothing and closes its own, older login with
// REPLACED. Before claims were ordered by their stamps, the late claim
// overwrote the entry and threw the newer login out.
func TestLateClaimOfAnOlderLoginYields(t *testing.T) {
	rig := newClaimRig(t)
	r1, r2 := rig.rs[0], rig.rs[1]
	const user = "+15550001111"
	older := rig.login(r1, user)
	newer := rig.login(r2, user)
	t0 := time.Now().UnixNano()

	r2.claim(map[string]heldHint{}, hintJob{kind: jobClaim, user: user, c: newer, token: 1, stamp: t0 + 1000})
	r1.claim(map[string]heldHint{}, hintJob{kind: jobClaim, user: user, c: older, token: 1, stamp: t0})

	e, err := rig.kv.Get(context.Background(), hintKey(user))
	if err != nil {
		t.Fatal(err)
	}
	if h, _ := decodeHint(e.Value()); h.node != "n2" {
		t.Fatalf("the hint names %q, want the newer login's node n2", h.node)
	}
	if code, ok := kicked(older); !ok || code != wire.Error_REPLACED {
		t.Fatalf("the older login: kicked %v (%s), want REPLACED", ok, code)
	}
	if r1.router.lookup(user) != nil {
		t.Fatal("node 1 still routes to the older login")
	}
	if code, ok := kicked(newer); ok {
		t.Fatalf("the newer login was kicked with %s", code)
	}
}

// In the usual order, the newer login's claim replaces the older's entry
// and node 1 closes the older login when node 2's kick arrives.
func TestNewerClaimReplacesAnOlderLogin(t *testing.T) {
	rig := newClaimRig(t)
	r1, r2 := rig.rs[0], rig.rs[1]
	const user = "+15550002222"
	older := rig.login(r1, user)
	t0 := time.Now().UnixNano()
	// Through the router's own worker, which keeps what it claimed, so
	// that node 2's kick finds the login.
	r1.enqueue(hintJob{kind: jobClaim, user: user, c: older, token: 7, stamp: t0}, true)
	waitFor(t, "node 1's claim", func() bool {
		e, err := rig.kv.Get(context.Background(), hintKey(user))
		return err == nil && string(e.Value()[24:]) == "n1"
	})
	newer := rig.login(r2, user)
	r2.claim(map[string]heldHint{}, hintJob{kind: jobClaim, user: user, c: newer, token: 1, stamp: t0 + 1000})
	waitFor(t, "the older login's kick", func() bool { _, ok := kicked(older); return ok })
	if code, _ := kicked(older); code != wire.Error_REPLACED {
		t.Fatalf("the older login was kicked with %s, want REPLACED", code)
	}
	if code, ok := kicked(newer); ok {
		t.Fatalf("the newer login was kicked with %s", code)
	}
}

// waitFor polls cond until it holds, for 10 s at most (a bound, not an
// assertion of speed).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("waited 10 s for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
