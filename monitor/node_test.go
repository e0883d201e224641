package monitor_test

// The other tests here run the monitor on fake nodes, which lets them set
// every figure; these run it as a node serves it, with Pebble and real
// clients, so what top and the dashboard show is what a node reports.

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/parleyhq/parley/client"
	"github.com/parleyhq/parley/cluster"
	"github.com/parleyhq/parley/internal/nodetest"
	"github.com/parleyhq/parley/monitor/top"
	"github.com/parleyhq/parley/node"
	"github.com/parleyhq/parley/noise"
)

const (
	alicePhone = "+14155550101"
	bobPhone   = "+14155550102"
	sentToBob  = 20 // messages alice sends bob in startBusyNode
)

// startBusyNode starts a node (loopback, a Pebble directory) where alice
// has sent bob sentToBob messages, which he received and acked; both stay
// logged in until the test ends.
func startBusyNode(t *testing.T) *nodetest.Node {
	t.Helper()
	tn := nodetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	alice, bob := login(ctx, t, tn, tn, alicePhone), login(ctx, t, tn, tn, bobPhone)
	for i := range sentToBob {
		if _, err := alice.Send(ctx, bobPhone, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	for got := 0; got < sentToBob; {
		in, err := bob.Recv(ctx)
		if err != nil {
			t.Fatalf("bob after %d of %d messages: %v", got, sentToBob, err)
		}
		if in.Message == nil || in.Message.From != alicePhone {
			t.Fatalf("bob got %+v, want a message from alice", in)
		}
		got++
		if err := bob.Ack(in.Seq); err != nil {
			t.Fatal(err)
		}
	}
	return tn
}

// login registers phone on reg and logs it in on at (the same node, or
// another of its cluster) until the test ends.
func login(ctx context.Context, t *testing.T, reg, at *nodetest.Node, phone string) *client.Client {
	t.Helper()
	kp, err := noise.GenerateKeypair(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.RequestCode(ctx, nil, reg.HTTPURL(), phone); err != nil {
		t.Fatal(err)
	}
	r, err := client.Verify(ctx, nil, reg.HTTPURL(), phone, reg.Codes.Code(t, phone), kp.Public)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.Dial(ctx, client.Config{Addr: at.NativeAddr(), ServerKey: r.ServerKey, Phone: phone, Key: kp})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// startCluster starts two nodes, n1 and n2, of a cluster on one embedded
// JetStream server (as `parley serve --cluster` embeds it), with alice
// logged in on n2 and bob on n1.
func startCluster(t *testing.T) (n1, n2 *nodetest.Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cl, err := cluster.Join(ctx, cluster.Config{Name: "watch", Node: "n1", Dir: t.TempDir(), Log: nodetest.Log(t, slog.LevelWarn)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() }) // after the nodes' Close (cleanups run last first)
	var ns []*nodetest.Node
	for _, name := range []string{"n1", "n2"} {
		nc := cl.Conn()
		if name != "n1" {
			if nc, err = nats.Connect(cl.ClientURL()); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(nc.Close)
		}
		ns = append(ns, nodetest.Start(t, func(c *node.Config) {
			c.Cluster = &node.ClusterConfig{Conn: nc, Node: name, Partitions: 2}
		}))
	}
	login(ctx, t, ns[0], ns[1], alicePhone)
	login(ctx, t, ns[1], ns[0], bobPhone)
	return ns[0], ns[1]
}

// TestTopOnCluster: `parley top --admin N1,N2` shows both nodes' sessions,
// each with its node, and the cluster's members in the header.
func TestTopOnCluster(t *testing.T) {
	n1, n2 := startCluster(t)
	c, err := top.NewClient(n1.AdminURL()+","+n2.AdminURL(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	eventually(t, "top to show alice on n2 and bob on n1, and both members", func() (bool, string) {
		out.Reset()
		if err := top.Run(context.Background(), c, top.Options{Once: true}, nil, &out); err != nil {
			t.Fatalf("top --once: %v", err)
		}
		var alice, bob bool
		for l := range strings.Lines(out.String()) {
			f := strings.Fields(l)
			alice = alice || len(f) > 2 && f[0] == alicePhone && f[1] == "n2"
			bob = bob || len(f) > 2 && f[0] == bobPhone && f[1] == "n1"
		}
		return alice && bob && strings.Contains(out.String(), "\ncluster: n1 1 conn, n2 1 conn; no problems\n") &&
			strings.Contains(out.String(), "USER             NODE CONN"), out.String()
	})

	out.Reset()
	if err := top.Run(context.Background(), c, top.Options{Once: true, JSON: true}, nil, &out); err != nil {
		t.Fatalf("top --once --json: %v", err)
	}
	var got top.Snapshot
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, out.String())
	}
	if got.Total != 2 || got.Cluster == nil || got.Cluster.Node != "n1" || len(got.Cluster.Members) != 2 {
		t.Errorf("top --once --json = %s, want 2 sessions and n1's view of the cluster", out.String())
	}
}

// TestDashboardOnCluster opens n1's dashboard in headless Chromium: the
// cluster panel shows both members with their connections, every stream
// with its leader, and no problem.
func TestDashboardOnCluster(t *testing.T) {
	bin := chromiumBinary(t)
	if testing.Short() {
		t.Skip("starts a browser; skipped with -short")
	}
	n1, _ := startCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const width, height = 1440, 900
	b := startBrowser(ctx, t, bin, width, height)
	page := b.open(ctx, t, n1.AdminURL()+"/", width, height)
	s := poll(ctx, t, b, page, readDashboard, func(s dashboardState) bool {
		// The members' connections are as they were at the last read
		// (every 5 s): wait for one that shows both logins.
		m := s.Cluster.Members
		return s.Status == "live" && len(m) == 2 && strings.HasPrefix(m[0], "n1 (this node)|") && strings.HasPrefix(m[1], "n2|") &&
			strings.Split(m[0], "|")[2] == "1" && strings.Split(m[1], "|")[2] == "1"
	})
	c := s.Cluster
	if c.Hidden || c.Alerting || len(c.Problems) != 0 || len(c.Bad) != 0 || c.Seen != "as n1 sees it" {
		t.Errorf("cluster panel hidden %v, alerting %v, problems %q, highlighted %q, %q: want it shown, as n1 sees it, with no problem",
			c.Hidden, c.Alerting, c.Problems, c.Bad, c.Seen)
	}
	if len(c.Streams) == 0 {
		t.Error("no streams in the cluster panel")
	}
	for _, st := range c.Streams {
		if f := strings.Split(st, "|"); len(f) != 4 || f[2] != "n1" {
			t.Errorf("stream row %q, want its leader n1 (the one server)", st)
		}
	}
}

// eventually polls cond until it holds, failing after a generous bound
// (the monitor samples once a second) with what cond last saw.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ok, saw := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s; last saw:\n%s", what, saw)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestTopOnNode: `parley top --once --json` against a node's admin
// listener shows its two sessions and the messages between them.
func TestTopOnNode(t *testing.T) {
	tn := startBusyNode(t)
	c, err := top.NewClient(tn.AdminURL(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	type session struct {
		User    string  `json:"user"`
		MsgsIn  float64 `json:"msgs_in"`
		MsgsOut float64 `json:"msgs_out"`
	}
	var got struct {
		Totals   map[string]any `json:"totals"`
		Sessions []session      `json:"sessions"`
		Total    int            `json:"total"`
	}
	var out bytes.Buffer
	eventually(t, "top to show alice's and bob's traffic", func() (bool, string) {
		out.Reset()
		if err := top.Run(context.Background(), c, top.Options{Once: true, JSON: true}, nil, &out); err != nil {
			t.Fatalf("top --once --json: %v", err)
		}
		got.Sessions = nil
		if err := json.Unmarshal(out.Bytes(), &got); err != nil {
			t.Fatalf("output is not JSON: %v\n%s", err, out.String())
		}
		by := map[string]session{}
		for _, s := range got.Sessions {
			by[s.User] = s
		}
		return got.Total == 2 && got.Totals["sessions"] == 2.0 &&
			by[alicePhone].MsgsIn >= sentToBob && by[bobPhone].MsgsOut >= sentToBob, out.String()
	})
}

// TestDashboardOnNode opens a node's dashboard (its admin listener's "/")
// in headless Chromium: it goes live and shows the node's two sessions.
func TestDashboardOnNode(t *testing.T) {
	bin := chromiumBinary(t)
	if testing.Short() {
		t.Skip("starts a browser; skipped with -short")
	}
	tn := startBusyNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const width, height = 1440, 900
	b := startBrowser(ctx, t, bin, width, height)
	page := b.open(ctx, t, tn.AdminURL()+"/", width, height)
	s := poll(ctx, t, b, page, readDashboard, func(s dashboardState) bool {
		return s.Updates >= 2 && s.Status == "live" && s.Tiles["sessions"] == "2" && s.SessionRows == 2
	})
	if s.Errors != 0 || s.Tiles["connections"] != "2" {
		t.Errorf("dashboard shows %d errors and tiles %v, want no errors and 2 connections", s.Errors, s.Tiles)
	}
}
