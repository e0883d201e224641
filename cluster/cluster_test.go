package cluster_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	njs "github.com/nats-io/nats.go/jetstream"

	"github.com/parleyhq/parley/cluster"
	"github.com/parleyhq/parley/internal/natstest"
)

func TestNodesAndDefaultReplicas(t *testing.T) {
	for _, tc := range []struct {
		name     string
		cfg      cluster.Config
		nodes, r int
	}{
		{"alone", cluster.Config{}, 1, 1},
		{"list includes self", cluster.Config{Listen: "127.0.0.1:1", Peers: []string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"}}, 3, 3},
		{"list without self", cluster.Config{Listen: "127.0.0.1:1", Peers: []string{"127.0.0.1:2", "127.0.0.1:3"}}, 3, 3},
		{"two", cluster.Config{Listen: "127.0.0.1:1", Peers: []string{"127.0.0.1:1", "127.0.0.1:2"}}, 2, 1},
		{"any address, list names self elsewhere", cluster.Config{Listen: "0.0.0.0:6222", Peers: []string{"a:6222", "b:6222", "c:6222"}}, 3, 3},
		{"duplicates", cluster.Config{Listen: "127.0.0.1:1", Peers: []string{"127.0.0.1:1", "127.0.0.1:1"}}, 1, 1},
		{"replicas given", cluster.Config{Listen: "127.0.0.1:1", Peers: []string{"127.0.0.1:2", "127.0.0.1:3"}, Replicas: 1}, 3, 1},
		{"external", cluster.Config{NATS: []string{"nats://a", "nats://b", "nats://c"}}, 3, 3},
	} {
		if n, r := tc.cfg.Nodes(), tc.cfg.ReplicasOrDefault(); n != tc.nodes || r != tc.r {
			t.Errorf("%s: %d nodes, %d replicas; want %d, %d", tc.name, n, r, tc.nodes, tc.r)
		}
	}
}

func TestConfigErrorsSayWhatToDo(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		cfg  cluster.Config
		want string
	}{
		{cluster.Config{Name: "c", Dir: dir}, "--node"},
		{cluster.Config{Node: "n", Dir: dir}, "--cluster"},
		{cluster.Config{Name: "c", Node: "n", Dir: dir, Peers: []string{"127.0.0.1:7"}}, "--cluster-listen"},
		{cluster.Config{Name: "c", Node: "n", Dir: dir, Listen: "127.0.0.1", Peers: []string{"127.0.0.1:7"}}, "HOST:PORT"},
		{cluster.Config{Name: "c", Node: "n", Dir: dir, Listen: "127.0.0.1:1", Peers: []string{"127.0.0.1:2"}, Replicas: 3}, "3 replicas"},
		{cluster.Config{Name: "c", Node: "n", Dir: dir, Listen: "127.0.0.1:1", RouteTLS: cluster.RouteTLS{Cert: "c.pem", Key: "k.pem"}}, "--cluster-tls-ca"},
	} {
		_, err := cluster.Join(context.Background(), tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Join(%+v) = %v, want an error naming %q", tc.cfg, err, tc.want)
		}
	}
}

// joinThree joins three embedded servers on free loopback ports, each
// given the same peer list (itself included), closed when t ends.
func joinThree(t *testing.T) []*cluster.Cluster {
	t.Helper()
	return joinThreeWith(t, natstest.FreeAddrs(t, 3), func(*cluster.Config) {})
}

// joinThreeWith is joinThree on the route addresses routes, each node's
// Config passed through set first.
func joinThreeWith(t *testing.T, routes []string, set func(*cluster.Config)) []*cluster.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cs := make([]*cluster.Cluster, 3)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cfg := cluster.Config{
				Name: "test", Node: fmt.Sprintf("n%d", i+1),
				Listen: routes[i], Peers: routes,
				Dir: t.TempDir(),
			}
			set(&cfg)
			cs[i], errs[i] = cluster.Join(ctx, cfg)
		}()
	}
	wg.Wait()
	for i, c := range cs {
		if errs[i] != nil {
			t.Fatalf("node %d: %v", i+1, errs[i])
		}
		t.Cleanup(func() { c.Close() })
	}
	return cs
}

// Three embedded servers, each given the same peer list (itself
// included), form one JetStream cluster that holds a stream of 3 replicas.
func TestThreeNodesFormAJetStreamCluster(t *testing.T) {
	cs := joinThree(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	for i, c := range cs {
		if c.Replicas() != 3 {
			t.Fatalf("node %d: %d replicas, want the default 3", i+1, c.Replicas())
		}
		if !strings.HasPrefix(c.ClientURL(), "nats://127.0.0.1:") {
			t.Fatalf("node %d: client URL %s, want loopback", i+1, c.ClientURL())
		}
	}
	js, err := njs.New(cs[0].Conn())
	if err != nil {
		t.Fatal(err)
	}
	// A stream of 3 replicas needs all three servers in one cluster;
	// right after the meta leader is elected the peers may still be
	// catching up, so creation is retried.
	var st njs.Stream
	for try := 0; ; try++ {
		st, err = js.CreateStream(ctx, njs.StreamConfig{Name: "R3", Subjects: []string{"r3"}, Replicas: 3})
		if err == nil || try == 100 || ctx.Err() != nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("create an R3 stream: %v", err)
	}
	if _, err := js.Publish(ctx, "r3", []byte("x")); err != nil {
		t.Fatalf("publish: %v", err)
	}
	js3, _ := njs.New(cs[2].Conn())
	st, err = js3.Stream(ctx, "R3")
	if err != nil {
		t.Fatalf("the stream seen from node 3: %v", err)
	}
	if info := st.CachedInfo(); info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
		t.Fatalf("stream cluster info %+v, want a leader and 2 replicas", info.Cluster)
	}
}

// A route port already taken is reported by Join, not left to a server
// that quietly runs without its routes.
func TestRoutePortTakenIsAnError(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := cluster.Join(ctx, cluster.Config{Name: "test", Node: "n1", Listen: l.Addr().String(), Peers: []string{l.Addr().String()}, Dir: t.TempDir()})
	if err == nil {
		c.Close()
		t.Fatal("Join on a taken route port succeeded")
	}
	if !strings.Contains(err.Error(), "router port") {
		t.Fatalf("Join on a taken route port: %v, want it named", err)
	}
}

// StepDown returns once every stream the node led has a leader on another
// node: the clients it then sends away find no stream between leaders.
func TestStepDownReturnsOnceTheLeadersMoved(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: a three-server cluster")
	}
	cs := joinThree(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	js, err := njs.New(cs[0].Conn())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for k := range 4 {
		name := fmt.Sprintf("S%d", k)
		for try := 0; ; try++ {
			_, err = js.CreateStream(ctx, njs.StreamConfig{Name: name, Subjects: []string{name}, Replicas: 3})
			if err == nil || try == 100 || ctx.Err() != nil {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("create stream %s: %v", name, err)
		}
		names = append(names, name)
	}
	leader := func(name string) string {
		t.Helper()
		for {
			st, err := js.Stream(ctx, name)
			if err == nil && st.CachedInfo().Cluster != nil && st.CachedInfo().Cluster.Leader != "" {
				return st.CachedInfo().Cluster.Leader
			}
			if ctx.Err() != nil {
				t.Fatalf("stream %s has no leader: %v", name, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// Step down the node that leads the first stream.
	var victim *cluster.Cluster
	for _, c := range cs {
		if c.Node() == leader(names[0]) {
			victim = c
		}
	}
	if victim == nil {
		t.Fatalf("no node leads %s", names[0])
	}
	var led []string
	for _, name := range names {
		if leader(name) == victim.Node() {
			led = append(led, name)
		}
	}
	n, err := victim.StepDown(ctx)
	if err != nil || n != len(led) {
		t.Fatalf("StepDown = %d, %v; want %d streams moved", n, err, len(led))
	}
	// At once, without waiting: each has its new leader.
	for _, name := range led {
		st, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatalf("stream %s right after StepDown: %v", name, err)
		}
		if l := st.CachedInfo().Cluster.Leader; l == "" || l == victim.Node() {
			t.Fatalf("stream %s right after StepDown: leader %q, want another node", name, l)
		}
	}
}
