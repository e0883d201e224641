package cluster_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/parleyhq/parley/apierror"
	"github.com/parleyhq/parley/client"
)

// Bounds of the quorum tests: failure guards, never assertions.
const (
	refuseGuard  = time.Minute // a send without quorum is answered (refused)
	recoverGuard = time.Minute // after the heal, a resend is acked
	statusGuard  = 30 * time.Second
)

// A node that cannot reach a JetStream quorum: two of the three processes
// are stopped (SIGSTOP: their sockets stay open, nothing answers, as when
// a network drops packets). A client on the third sends: the send is
// refused with a retryable error, never acked; the node's /admin/cluster
// says it has no quorum. The two resume (SIGCONT) and, with nothing
// restarted, the node recovers by itself: the same message resent with
// the same id is acked and delivered once to its recipient on another
// node, and a new send works.
func TestClusterNodeWithoutQuorumRefusesAndRecovers(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: builds the server and runs three of it")
	}
	bin := buildParley(t)
	ps := startCluster(t, bin)
	akp, reg := register(t, ps[0], alicePhone)
	bkp, _ := register(t, ps[0], bobPhone)
	alice := dialClient(t, ps[2].native, alicePhone, akp, reg.ServerKey)
	bob := dialClient(t, ps[0].native, bobPhone, bkp, reg.ServerKey)
	received := receiveAll(t, bob)

	ctx, cancel := context.WithTimeout(context.Background(), refuseGuard+recoverGuard+time.Minute)
	defer cancel()
	// With every node up, a first message goes through.
	sendUntilAcked(ctx, t, alice, alice.NewID(), "m0000")
	waitFor(t, received, "m0000")

	// n1 and n2 stop answering: n3 is alone.
	for _, p := range ps[:2] {
		p.signal(t, syscall.SIGSTOP)
		t.Cleanup(func() { p.signal(t, syscall.SIGCONT) }) // before the cluster's stop
	}
	cut := time.Now()
	id := alice.NewID()
	sctx, scancel := context.WithTimeout(ctx, refuseGuard)
	ack, err := alice.SendWithID(sctx, id, bobPhone, []byte("m0001"))
	timedOut := sctx.Err() != nil
	scancel()
	switch {
	case err == nil:
		t.Fatalf("n3 acked a send without a quorum: %+v", ack)
	case timedOut:
		t.Fatalf("n3 did not answer a send without a quorum within %s: %v\nn3:\n%s", refuseGuard, err, tail(ps[2].log))
	case !client.Retryable(err):
		t.Fatalf("n3 refused a send without a quorum with %v, want an error client.Retryable says is retryable", err)
	}
	t.Logf("send without a quorum refused after %s: %v", time.Since(cut).Round(time.Millisecond), err)
	st := waitStatus(t, ps[2], func(st clusterStatus) bool { return !st.Quorum })
	if !hasProblem(st, "no quorum") {
		t.Fatalf("n3's /admin/cluster without a quorum names no such problem: %+v", st)
	}
	t.Logf("n3's /admin/cluster says no quorum %s after the cut: %q", time.Since(cut).Round(time.Millisecond), st.Problems)

	// The heal: both resume, nothing is restarted.
	for _, p := range ps[:2] {
		p.signal(t, syscall.SIGCONT)
	}
	healed := time.Now()
	tries := sendUntilAcked(ctx, t, alice, id, "m0001")
	t.Logf("the resend with the same id acked %s after the heal (%d tries)", time.Since(healed).Round(time.Millisecond), tries)
	sendUntilAcked(ctx, t, alice, alice.NewID(), "m0002")
	waitFor(t, received, "m0001", "m0002")
	waitStatus(t, ps[2], func(st clusterStatus) bool { return st.Quorum })
	t.Logf("recovered in %s after the heal", time.Since(healed).Round(time.Millisecond))
}

// signal sends sig to p's serving process.
func (p *proc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	select {
	case <-p.exited:
		return
	default:
	}
	if err := syscall.Kill(int(p.pid.Load()), sig); err != nil {
		t.Errorf("%s to %s: %v", sig, p.name, err)
	}
}

// receiveAll acks everything c receives and hands the messages' bodies
// out, in the order received.
func receiveAll(t *testing.T, c *client.Client) chan string {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	out := make(chan string, 10000)
	go ackAll(ctx, c, out)
	return out
}

// waitFor fails t unless exactly want, in order, come out of received
// next (within flowGuard).
func waitFor(t *testing.T, received chan string, want ...string) {
	t.Helper()
	deadline := time.After(flowGuard)
	for _, w := range want {
		select {
		case got := <-received:
			if got != w {
				t.Fatalf("received %q, want %q (each message once, in order)", got, w)
			}
		case <-deadline:
			t.Fatalf("%q not received within %s", w, flowGuard)
		}
	}
}

// sendUntilAcked sends body with id until it is acked, each try bounded,
// retrying only what client.Retryable allows, and returns the tries.
func sendUntilAcked(ctx context.Context, t *testing.T, c *client.Client, id uint64, body string) int {
	t.Helper()
	for try := 1; ; try++ {
		tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := c.SendWithID(tctx, id, bobPhone, []byte(body))
		cancel()
		switch {
		case err == nil:
			return try
		case ctx.Err() != nil:
			t.Fatalf("%s not acked in time, %d tries: %v", body, try, err)
		case !client.Retryable(err) && !errors.Is(err, context.DeadlineExceeded):
			t.Fatalf("send %s: %v (not retryable)", body, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// clusterStatus is the part of GET /admin/cluster the tests read.
type clusterStatus struct {
	Node     string   `json:"node"`
	Quorum   bool     `json:"quorum"`
	Problems []string `json:"problems"`
}

func hasProblem(st clusterStatus, s string) bool {
	for _, p := range st.Problems {
		if strings.Contains(p, s) {
			return true
		}
	}
	return false
}

// waitStatus polls p's /admin/cluster until ok says yes, and returns that
// answer; it fails t after statusGuard.
func waitStatus(t *testing.T, p *proc, ok func(clusterStatus) bool) clusterStatus {
	t.Helper()
	deadline := time.Now().Add(statusGuard)
	var last string
	for time.Now().Before(deadline) {
		st, err := readStatus(p)
		if err == nil && ok(st) {
			return st
		}
		last = fmt.Sprintf("%+v, %v", st, err)
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s's /admin/cluster not as expected within %s; last: %s", p.name, statusGuard, last)
	return clusterStatus{}
}

func readStatus(p *proc) (clusterStatus, error) {
	var st clusterStatus
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.admin+"/admin/cluster", nil)
	if p.token != "" {
		req.Header.Set("Authorization", "Bearer "+p.token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e apierror.Body
		_ = json.NewDecoder(resp.Body).Decode(&e)
		return st, fmt.Errorf("%s: %s: %s", resp.Status, e.Error.Code, e.Error.Message)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}
