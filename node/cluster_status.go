package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	njs "github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/parleyhq/parley/buildinfo"
	"github.com/parleyhq/parley/monitor"
	"github.com/parleyhq/parley/store/jetstream"
)

// statusSubject reaches every node: a status request, answered by each
// with its ClusterMember.
const statusSubject = "parley.status"

// statusWait is how long a status request gathers the members' answers.
const statusWait = 500 * time.Millisecond

// quorumWait is how long the status waits for JetStream's meta leader.
const quorumWait = 2 * time.Second

// onStatus answers a status request with this node's member entry.
func (r *clusterRouter) onStatus(m *nats.Msg) {
	b, err := json.Marshal(r.member())
	if err == nil {
		_ = m.Respond(b)
	}
}

func (r *clusterRouter) member() monitor.ClusterMember {
	queued, _, _ := r.n.store.QueueDepths()
	return monitor.ClusterMember{
		Node: r.node, Epoch: r.epoch, Version: buildinfo.Get().Version,
		Sessions: r.router.len(), Conns: r.n.counts.open.Load(), QueueDepthTotal: queued,
		Uptime: time.Since(r.n.started).Seconds(),
	}
}

// status gathers the cluster's status (see monitor.ClusterStatus), each part
// bounded by ctx.
func (r *clusterRouter) status(ctx context.Context) (*monitor.ClusterStatus, error) {
	st := &monitor.ClusterStatus{Node: r.node, Members: []monitor.ClusterMember{}, Streams: []monitor.StreamStatus{}, Problems: []string{}}
	members, err := r.members(ctx)
	if err != nil {
		return nil, err
	}
	st.Members = members
	st.Problems = append(st.Problems, r.beats.silent(time.Now())...)
	js, err := njs.New(r.nc)
	if err != nil {
		return nil, err
	}
	// The account info is answered by the meta leader, or, by a node that
	// has known for a while that there is none, with an error.
	qctx, cancel := context.WithTimeout(ctx, quorumWait)
	_, err = js.AccountInfo(qctx)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		st.Problems = append(st.Problems, fmt.Sprintf("no quorum: this node does not reach a majority of the cluster's nodes (%d answered; JetStream: %v): "+
			"it refuses sends (UNAVAILABLE, retryable) until it does; check that the other nodes run and that this one reaches their route ports", len(members), err))
		return st, nil
	}
	st.Quorum = true
	names := js.StreamNames(ctx)
	var streams []string
	for name := range names.Name() {
		if strings.HasPrefix(name, "PARLEY") || strings.HasPrefix(name, "KV_parley") {
			streams = append(streams, name)
		}
	}
	if err := names.Err(); err != nil && !errors.Is(err, njs.ErrEndOfData) {
		return nil, err
	}
	slices.Sort(streams)
	for _, name := range streams {
		s, err := js.Stream(ctx, name)
		if err != nil {
			st.Problems = append(st.Problems, "stream "+name+": "+err.Error())
			continue
		}
		info := s.CachedInfo()
		ss := monitor.StreamStatus{Name: name, Messages: info.State.Msgs, Replicas: []monitor.ReplicaStatus{}}
		if c := info.Cluster; c != nil {
			ss.Leader = c.Leader
			for _, p := range c.Replicas {
				ss.Replicas = append(ss.Replicas, monitor.ReplicaStatus{Node: p.Name, Current: p.Current, Offline: p.Offline, Lag: p.Lag})
				if p.Offline || !p.Current {
					st.Problems = append(st.Problems, "stream "+name+": replica on "+p.Name+" is behind or offline")
				}
			}
		}
		if ss.Leader == "" {
			st.Problems = append(st.Problems, "stream "+name+" has no leader")
		}
		st.Streams = append(st.Streams, ss)
	}
	if kst, err := r.kv.Status(ctx); err == nil {
		st.Hints = kst.Values()
	} else {
		st.Problems = append(st.Problems, "registry: "+err.Error())
	}
	return st, nil
}

// members asks every node for its entry and gathers the answers for
// statusWait (the cluster's size is not known here).
func (r *clusterRouter) members(ctx context.Context) ([]monitor.ClusterMember, error) {
	inbox := r.nc.NewRespInbox()
	sub, err := r.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer sub.Unsubscribe()
	if err := r.nc.PublishRequest(statusSubject, inbox, nil); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, statusWait)
	defer cancel()
	var out []monitor.ClusterMember
	for {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			break // the wait is over
		}
		var cm monitor.ClusterMember
		if json.Unmarshal(m.Data, &cm) == nil {
			out = append(out, cm)
		}
	}
	slices.SortFunc(out, func(a, b monitor.ClusterMember) int { return strings.Compare(a.Node, b.Node) })
	return out, nil
}

// handleCluster serves GET /admin/cluster.
func (n *Node) handleCluster(w http.ResponseWriter, r *http.Request) {
	cr, ok := n.router.(*clusterRouter)
	if !ok {
		writeError(w, http.StatusNotFound, "not_a_cluster", "this node runs alone (parley serve without --cluster): there is no cluster to show")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	st, err := cr.status(ctx)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "cluster_unreachable", "the cluster's JetStream did not answer: "+err.Error()+" (is a quorum of the nodes up?)")
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// clusterMetrics are the cluster's health as this node last saw it (every
// clusterSampleEvery), for Prometheus and the alert rules in
// deploy/prometheus/parley-cluster-alerts.yml.
type clusterMetrics struct {
	quorum, members, leaderless, behind, hints prometheus.Gauge
	publishErrors                              prometheus.Counter
}

// clusterSampleEvery is how often a node of a cluster reads its status.
const clusterSampleEvery = 15 * time.Second

func newClusterMetrics(reg prometheus.Registerer) (*clusterMetrics, error) {
	m := &clusterMetrics{
		quorum:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "parley_cluster_quorum", Help: "1 if this node reached a quorum of the cluster's JetStream at the last status read; 0 if not: it refuses sends (UNAVAILABLE) meanwhile."}),
		members:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "parley_cluster_members", Help: "Nodes of the cluster that answered this node's last status request."}),
		leaderless: prometheus.NewGauge(prometheus.GaugeOpts{Name: "parley_cluster_streams_leaderless", Help: "Parley's JetStream streams without a leader at the last status read: their writes fail."}),
		behind:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "parley_cluster_replicas_behind", Help: "Stream replicas behind or offline at the last status read: fewer copies than asked for."}),
		hints:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "parley_cluster_hints", Help: "Entries in the registry of where users are connected."}),
		publishErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "parley_cluster_publish_errors_total",
			Help: "Doorbells, kicks and status reads this node could not send to the cluster."}),
	}
	for _, c := range []prometheus.Collector{m.quorum, m.members, m.leaderless, m.behind, m.hints, m.publishErrors} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// registerStoreCounters exports the cluster store's JetStream requests:
// writes, the messages in them, compare-and-set conflicts, reads and
// purges. Conflicts are what two nodes writing one queue cost.
func registerStoreCounters(reg prometheus.Registerer, st *jetstream.Store) error {
	for _, c := range []struct {
		kind string
		get  func(jetstream.Counters) uint64
	}{
		{"write", func(c jetstream.Counters) uint64 { return c.Writes }},
		{"message", func(c jetstream.Counters) uint64 { return c.Msgs }},
		{"conflict", func(c jetstream.Counters) uint64 { return c.Conflicts }},
		{"read", func(c jetstream.Counters) uint64 { return c.Reads }},
		{"purge", func(c jetstream.Counters) uint64 { return c.Purges }},
	} {
		get := c.get
		f := prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "parley_cluster_store_requests_total",
			Help:        "JetStream requests of this node's store, by kind: write (a publish or an atomic batch), message (in the writes), conflict (a write refused because another node wrote one of its queues first), read, purge.",
			ConstLabels: prometheus.Labels{"kind": c.kind}},
			func() float64 { return float64(get(st.Counters())) })
		if err := reg.Register(f); err != nil {
			return err
		}
	}
	return nil
}

// sampleCluster reads the cluster's status into the metrics.
func (n *Node) sampleCluster(ctx context.Context, cr *clusterRouter) {
	m := n.clusterMx
	if m == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := cr.status(ctx)
	if err != nil {
		m.publishErrors.Inc()
		n.log.Warn("cluster: status not read", "err", err)
		return
	}
	if !st.Quorum {
		n.log.Warn("cluster: no quorum: sends are refused (UNAVAILABLE) until this node reaches a majority of the nodes", "members", len(st.Members), "problem", st.Problems[0])
	}
	leaderless, behind := 0, 0
	for _, s := range st.Streams {
		if s.Leader == "" {
			leaderless++
		}
		for _, r := range s.Replicas {
			if r.Offline || !r.Current {
				behind++
			}
		}
	}
	if st.Quorum {
		m.quorum.Set(1)
	} else {
		m.quorum.Set(0)
	}
	m.members.Set(float64(len(st.Members)))
	m.leaderless.Set(float64(leaderless))
	m.behind.Set(float64(behind))
	m.hints.Set(float64(st.Hints))
}
