package monitor_test

// The other tests here run the monitor on fake nodes, which lets them set
// every figure; these run it as a node serves it, with Pebble and real
// clients, so what top and the dashboard show is what a node reports.

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/parleyhq/parley/client"
	"github.com/parleyhq/parley/internal/nodetest"
	"github.com/parleyhq/parley/monitor/top"
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
	login := func(phone string) *client.Client {
		kp, err := noise.GenerateKeypair(nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := client.RequestCode(ctx, nil, tn.HTTPURL(), phone); err != nil {
			t.Fatal(err)
		}
		reg, err := client.Verify(ctx, nil, tn.HTTPURL(), phone, tn.Codes.Code(t, phone), kp.Public)
		if err != nil {
			t.Fatal(err)
		}
		c, err := client.Dial(ctx, client.Config{Addr: reg.NativeAddr, ServerKey: reg.ServerKey, Phone: phone, Key: kp})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	alice, bob := login(alicePhone), login(bobPhone)
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
