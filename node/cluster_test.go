package node_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/parleyhq/parley/client"
	"github.com/parleyhq/parley/internal/nodetest"
	"github.com/parleyhq/parley/monitor"
	"github.com/parleyhq/parley/node"
	"github.com/parleyhq/parley/noise"
	"github.com/parleyhq/parley/wire"
)

// clGuard bounds every wait of the cluster tests; never an assertion.
const clGuard = 30 * time.Second

// startClusterNodes starts n nodes of one cluster on one JetStream server
// (one replica: what is tested here is the nodes' routing between each
// other, not JetStream's replication, which store/jetstream and the
// cluster package test).
func startClusterNodes(t *testing.T, n int, edit ...func(i int, c *node.Config)) []*nodetest.Node {
	t.Helper()
	ns := node.StartJetStream(t)
	var out []*nodetest.Node
	for i := range n {
		nc, err := nats.Connect("", nats.InProcessServer(ns))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close) // after the node's Close (cleanups run last first)
		out = append(out, nodetest.Start(t, func(c *node.Config) {
			c.Cluster = &node.ClusterConfig{Conn: nc, Node: fmt.Sprintf("n%d", i+1), Partitions: 2}
			for _, f := range edit {
				f(i, c)
			}
		}))
	}
	return out
}

// clRegister registers phone on n with a new device key.
func clRegister(t *testing.T, n *nodetest.Node, phone string) (noise.Keypair, client.Registration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clGuard)
	defer cancel()
	kp := newKeypair(t)
	if _, err := client.RequestCode(ctx, nil, n.HTTPURL(), phone); err != nil {
		t.Fatalf("request code: %v", err)
	}
	reg, err := client.Verify(ctx, nil, n.HTTPURL(), phone, n.Codes.Code(t, phone), kp.Public)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	return kp, reg
}

// clDial logs phone in on n, pinning serverKey (learnt from any node).
func clDial(t *testing.T, n *nodetest.Node, phone string, kp noise.Keypair, serverKey []byte) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clGuard)
	defer cancel()
	c, err := client.Dial(ctx, client.Config{Addr: n.NativeAddr(), ServerKey: serverKey, Phone: phone, Key: kp})
	if err != nil {
		t.Fatalf("log %s in on %s: %v", phone, n.NativeAddr(), err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func clRecv(t *testing.T, c *client.Client) client.Incoming {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clGuard)
	defer cancel()
	in, err := c.Recv(ctx)
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	if err := c.Ack(in.Seq); err != nil {
		t.Fatalf("ack: %v", err)
	}
	return in
}

// clClosedWith waits for c to be closed by the server with code.
func clClosedWith(t *testing.T, c *client.Client, code wire.Error_Code) {
	t.Helper()
	select {
	case <-c.Done():
	case <-time.After(clGuard):
		t.Fatalf("still connected, want closed with %s", code)
	}
	var ce *client.CloseError
	if err := c.Err(); !errors.As(err, &ce) || ce.Code != code {
		t.Fatalf("closed with %v, want %s", err, code)
	}
}

// Registered on node 1, Alice on node 2 and Bob on node 3 talk live:
// every message and receipt crosses nodes, and nobody reconnects.
func TestClusterDeliversLiveAcrossNodes(t *testing.T) {
	ns := startClusterNodes(t, 3)
	akp, reg := clRegister(t, ns[0], alicePhone)
	bkp, _ := clRegister(t, ns[0], bobPhone)
	for i, n := range ns[1:] {
		if got := n.PublicKey(); string(got) != string(reg.ServerKey) {
			t.Fatalf("node %d's server key %x, want the cluster's %x", i+2, got, reg.ServerKey)
		}
	}
	alice := clDial(t, ns[1], alicePhone, akp, reg.ServerKey)
	bob := clDial(t, ns[2], bobPhone, bkp, reg.ServerKey)
	ctx, cancel := context.WithTimeout(context.Background(), clGuard)
	defer cancel()
	for i := range 5 {
		body := fmt.Sprintf("hello %d", i)
		ack, err := alice.Send(ctx, bobPhone, []byte(body))
		if err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		in := clRecv(t, bob)
		if in.Message == nil || string(in.Message.Body) != body || in.Message.ServerId != ack.ServerID {
			t.Fatalf("bob got %+v, want %q (server id %d)", in, body, ack.ServerID)
		}
		// The delivered receipt goes back across too.
		if r := clRecv(t, alice); r.Receipt == nil {
			t.Fatalf("alice got %+v, want a delivered receipt", r)
		}
		if _, err := bob.Send(ctx, alicePhone, []byte("re: "+body)); err != nil {
			t.Fatalf("reply %d: %v", i, err)
		}
		if in := clRecv(t, alice); in.Message == nil || string(in.Message.Body) != "re: "+body {
			t.Fatalf("alice got %+v, want the reply", in)
		}
		if r := clRecv(t, bob); r.Receipt == nil {
			t.Fatalf("bob got %+v, want a delivered receipt", r)
		}
	}
}

// A login on node 2 replaces the same account's session on node 1.
func TestClusterLoginOnAnotherNodeReplaces(t *testing.T) {
	ns := startClusterNodes(t, 2)
	kp, reg := clRegister(t, ns[0], alicePhone)
	first := clDial(t, ns[0], alicePhone, kp, reg.ServerKey)
	second := clDial(t, ns[1], alicePhone, kp, reg.ServerKey)
	clClosedWith(t, first, wire.Error_REPLACED)
	ctx, cancel := context.WithTimeout(context.Background(), clGuard)
	defer cancel()
	if err := second.Ping(ctx); err != nil {
		t.Fatalf("the newer session: %v", err)
	}
}

// Logins of one account racing on two nodes: exactly one survives.
func TestClusterRacingLoginsLeaveOne(t *testing.T) {
	ns := startClusterNodes(t, 2)
	kp, reg := clRegister(t, ns[0], alicePhone)
	for round := range 5 {
		cs := make([]*client.Client, 2)
		done := make(chan struct{})
		for i := range cs {
			go func() {
				defer func() { done <- struct{}{} }()
				ctx, cancel := context.WithTimeout(context.Background(), clGuard)
				defer cancel()
				c, err := client.Dial(ctx, client.Config{Addr: ns[i].NativeAddr(), ServerKey: reg.ServerKey, Phone: alicePhone, Key: kp})
				if err == nil {
					cs[i] = c
				}
			}()
		}
		<-done
		<-done
		live := nodetest.LiveClients(cs)
		for deadline := time.Now().Add(clGuard); live > 1 && time.Now().Before(deadline); live = nodetest.LiveClients(cs) {
			time.Sleep(20 * time.Millisecond)
		}
		if live != 1 {
			t.Fatalf("round %d: %d sessions live, want exactly 1", round, live)
		}
		for _, c := range cs {
			if c != nil {
				c.Close()
			}
		}
	}
}

// A re-registration on node 3 cuts off the old device on node 2 at once,
// and its key stops working on every node.
func TestClusterReRegistrationCutsOffOtherNode(t *testing.T) {
	ns := startClusterNodes(t, 3)
	oldKP, reg := clRegister(t, ns[0], alicePhone)
	old := clDial(t, ns[1], alicePhone, oldKP, reg.ServerKey)
	clRegister(t, ns[2], alicePhone)
	clClosedWith(t, old, wire.Error_REGISTERED_ELSEWHERE)
	for i, n := range ns {
		ctx, cancel := context.WithTimeout(context.Background(), clGuard)
		_, err := client.Dial(ctx, client.Config{Addr: n.NativeAddr(), ServerKey: reg.ServerKey, Phone: alicePhone, Key: oldKP})
		cancel()
		var le *client.LoginError
		if !errors.As(err, &le) {
			t.Fatalf("old key on node %d: %v, want a refused login", i+1, err)
		}
	}
}

// A message sent while its recipient is offline waits in the queue and
// comes at its login on another node; a resumption ticket issued by one
// node is taken by another.
func TestClusterQueuedAndResumedOnAnotherNode(t *testing.T) {
	ns := startClusterNodes(t, 3)
	akp, reg := clRegister(t, ns[0], alicePhone)
	bkp, _ := clRegister(t, ns[0], bobPhone)
	alice := clDial(t, ns[0], alicePhone, akp, reg.ServerKey)
	ctx, cancel := context.WithTimeout(context.Background(), clGuard)
	defer cancel()
	if _, err := alice.Send(ctx, bobPhone, []byte("while you were away")); err != nil {
		t.Fatal(err)
	}
	bob := clDial(t, ns[1], bobPhone, bkp, reg.ServerKey)
	if in := clRecv(t, bob); in.Message == nil || string(in.Message.Body) != "while you were away" {
		t.Fatalf("bob got %+v", in)
	}
}

// Every node tells clients every node's native address, so a client
// that learnt them from any one can move to another.
func TestClusterServerInfoListsEveryNode(t *testing.T) {
	nodes := startClusterNodes(t, 2)
	checkServerInfo(t, nodes, []string{nodes[0].NativeAddr(), nodes[1].NativeAddr()})
}

// checkServerInfo checks that GET /v1/server of node i names own[i] as
// its native address, and every one of own as the cluster's.
func checkServerInfo(t *testing.T, nodes []*nodetest.Node, own []string) {
	t.Helper()
	want := slices.Sorted(slices.Values(own))
	ctx, cancel := context.WithTimeout(context.Background(), clGuard)
	defer cancel()
	for i, n := range nodes {
		si, err := client.ServerInfo(ctx, nil, n.HTTPURL())
		if err != nil {
			t.Fatal(err)
		}
		if si.NativeAddr != own[i] || !slices.Equal(si.NativeAddrs, want) {
			t.Errorf("GET /v1/server of %s: native_addr %s, native_addrs %v; want %s and %v", n.NativeAddr(), si.NativeAddr, si.NativeAddrs, own[i], want)
		}
	}
}

// A node behind a wildcard listener, NAT or load balancer is listed by
// the address it advertises; a cluster node listening on every interface
// without one, or advertising something no client can dial, does not start.
func TestClusterAdvertisedAddresses(t *testing.T) {
	const far = "chat2.example.net:5222"
	nodes := startClusterNodes(t, 2, func(i int, c *node.Config) {
		if i == 1 {
			c.Advertise = far
		}
	})
	checkServerInfo(t, nodes, []string{nodes[0].NativeAddr(), far})
	ctx, cancel := context.WithTimeout(context.Background(), clGuard)
	defer cancel()
	for _, c := range []struct{ listen, advertise, want string }{
		{"0.0.0.0:0", "", "--advertise HOST:PORT"},
		{"[::]:0", "", "--advertise HOST:PORT"},
		{"127.0.0.1:0", "chat3.example.net", "give HOST:PORT"},
		{"127.0.0.1:0", "chat3.example.net:0", "port 1-65535"},
	} {
		_, err := node.Start(ctx, node.Config{DataDir: t.TempDir(), Listen: c.listen, Advertise: c.advertise,
			HTTP: "127.0.0.1:0", Admin: "127.0.0.1:0", Cluster: &node.ClusterConfig{Node: "n9"}})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("listen %s, advertise %q: Start said %v; want an error saying %q", c.listen, c.advertise, err, c.want)
		}
	}
}

// GET /admin/cluster on any node shows that it has a quorum, every node
// with its sessions, Parley's streams with their leaders, and the
// registry's size; a lone node says it is not in a cluster.
func TestClusterStatus(t *testing.T) {
	ns := startClusterNodes(t, 2)
	kp, reg := clRegister(t, ns[0], alicePhone)
	clDial(t, ns[1], alicePhone, kp, reg.ServerKey)
	var st monitor.ClusterStatus
	deadline := time.Now().Add(clGuard)
	for {
		st = monitor.ClusterStatus{}
		code := getJSON(t, ns[0].AdminURL()+"/admin/cluster", &st)
		if code != http.StatusOK {
			t.Fatalf("GET /admin/cluster: %d", code)
		}
		// Alice's claim is written off the login's path, and the members
		// answer before the registry is read: wait for both to show her.
		if len(st.Members) == 2 && st.Members[1].Sessions == 1 && st.Hints >= 1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st.Node != "n1" || len(st.Members) != 2 || st.Members[0].Node != "n1" || st.Members[1].Node != "n2" {
		t.Fatalf("answered by %q, members %+v: want n1 answering, n1 and n2", st.Node, st.Members)
	}
	if !st.Quorum {
		t.Errorf("quorum false with every node up (problems %q)", st.Problems)
	}
	if st.Members[0].Sessions != 0 || st.Members[1].Sessions != 1 {
		t.Errorf("sessions %d and %d, want Alice's one on n2", st.Members[0].Sessions, st.Members[1].Sessions)
	}
	if len(st.Streams) == 0 || st.Hints != 1 || len(st.Problems) != 0 {
		t.Errorf("streams %+v, hints %d, problems %q: want the store's streams, Alice's hint, no problem", st.Streams, st.Hints, st.Problems)
	}
	for _, s := range st.Streams {
		if s.Leader == "" {
			t.Errorf("stream %s shown without its leader", s.Name)
		}
	}
	// Each node's sessions name it, so that rows merged from several
	// nodes (parley top --admin A,B) say where each session is.
	var sessions monitor.SessionsResponse
	getJSON(t, ns[1].AdminURL()+"/admin/sessions", &sessions)
	if len(sessions.Sessions) != 1 || sessions.Sessions[0].Node != "n2" {
		t.Errorf("n2's /admin/sessions = %+v, want Alice's session on n2", sessions.Sessions)
	}
	// The metrics: the second node read the status at its start, when
	// both nodes were up.
	for deadline := time.Now().Add(clGuard); ; {
		body := getText(t, ns[1].AdminURL()+"/metrics")
		if strings.Contains(body, "\nparley_cluster_quorum 1\n") && strings.Contains(body, "\nparley_cluster_members 2\n") && strings.Contains(body, "\nparley_cluster_streams_leaderless 0\n") &&
			strings.Contains(body, "\nparley_cluster_publish_errors_total 0\n") && strings.Contains(body, "\nparley_cluster_store_requests_total{kind=\"write\"} ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node 2's metrics do not show the cluster:\n%s", body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	alone := nodetest.Start(t)
	var e struct{ Error struct{ Code string } }
	if code := getJSON(t, alone.AdminURL()+"/admin/cluster", &e); code != http.StatusNotFound || e.Error.Code != "not_a_cluster" {
		t.Errorf("a lone node answered %d %q, want 404 not_a_cluster", code, e.Error.Code)
	}
}

// getJSON GETs url and decodes the answer into v; it returns the status.
func getJSON(t *testing.T, url string, v any) int {
	t.Helper()
	resp, err := (&http.Client{Timeout: clGuard}).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode
}

// Media uploaded on node 1 are served by node 2 (whole, and a range),
// with node 1's link; an upload token node 1 issued is good on node 2
// too (the cluster signs them with one key), and node 2's link may be
// sent through node 1; and node 2 deletes what
// node 1 stored. Nothing lands in either node's data directory but the
// spool.
func TestClusterMediaServedByEveryNode(t *testing.T) {
	ns := startClusterNodes(t, 2)
	akp, reg := clRegister(t, ns[0], alicePhone)
	alice := clDial(t, ns[0], alicePhone, akp, reg.ServerKey)
	ctx, cancel := context.WithTimeout(context.Background(), clGuard)
	defer cancel()
	tok, err := alice.UploadToken(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := ns[0].HTTPURL() + "/v1/media"; tok.URL != want {
		t.Errorf("upload URL %s, want node 1's own %s", tok.URL, want)
	}
	content := []byte(strings.Repeat("parley media on every node\n", 10000))
	m, err := client.Upload(ctx, nil, tok, bytes.NewReader(content), int64(len(content)))
	if err != nil {
		t.Fatalf("upload on node 1: %v", err)
	}
	if want := ns[0].HTTPURL() + "/v1/media/" + m.Id; m.Url != want {
		t.Errorf("link %s, want node 1's %s", m.Url, want)
	}

	onNode2 := ns[1].HTTPURL() + "/v1/media/" + m.Id
	var got bytes.Buffer
	if _, err := client.DownloadVerified(ctx, nil, onNode2, m.Sha256, &got); err != nil || !bytes.Equal(got.Bytes(), content) {
		t.Fatalf("download from node 2: %v (%d bytes)", err, got.Len())
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", onNode2, nil)
	req.Header.Set("Range", "bytes=200000-200009")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	part, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || string(part) != string(content[200000:200010]) {
		t.Errorf("range from node 2: %s %q, want 206 %q", resp.Status, part, content[200000:200010])
	}

	tok2 := tok
	tok2.URL = ns[1].HTTPURL() + "/v1/media"
	m2, err := client.Upload(ctx, nil, tok2, strings.NewReader("second"), 6)
	if err != nil {
		t.Fatalf("node 1's token on node 2: %v", err)
	}
	if want := ns[1].HTTPURL() + "/v1/media/" + m2.Id; m2.Url != want {
		t.Errorf("link %s, want node 2's %s", m2.Url, want)
	}
	// Node 2's link, sent through node 1: accepted once node 1 has seen
	// node 2's public URL (the nodes publish them at start).
	clRegister(t, ns[1], bobPhone)
	for deadline := time.Now().Add(clGuard); ; {
		sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := alice.SendMedia(sctx, bobPhone, m2)
		scancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node 2's link sent through node 1: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	del, _ := http.NewRequestWithContext(ctx, "DELETE", ns[1].HTTPURL()+"/v1/media/"+m.Id, nil)
	del.Header.Set("Authorization", "Bearer "+tok.Token)
	resp, err = http.DefaultClient.Do(del)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Errorf("delete on node 2: %s", resp.Status)
	}
	resp, err = http.Get(m.Url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("node 1 after node 2's delete: %s, want 404", resp.Status)
	}
	for _, n := range ns {
		if _, err := os.Stat(filepath.Join(n.DataDir, "media")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s has a media directory (%v): media belong in the bucket", n.DataDir, err)
		}
	}
}
