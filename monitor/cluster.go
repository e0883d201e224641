package monitor

// ClusterStatus is what GET /admin/cluster answers on a node of a
// cluster (the node serves it; `parley top` and the dashboard show it):
// the members that answered, the state of every stream the
// cluster's store and settings use, and the size of the registry of
// where users are connected.
type ClusterStatus struct {
	Node string `json:"node"` // the node answering
	// Quorum says whether this node reaches a quorum of the cluster's
	// JetStream (its meta leader answers). Without one the node refuses
	// sends with UNAVAILABLE, a retryable error, until it is back; the
	// streams and the registry are not read then (they would not answer
	// either), and Problems says so first.
	Quorum  bool            `json:"quorum"`
	Members []ClusterMember `json:"members"`
	// Streams are Parley's JetStream streams (queues, accounts, dedup,
	// received records, the buckets) with their leaders and replicas.
	Streams []StreamStatus `json:"streams"`
	// Hints is the number of entries in the registry of where users are
	// connected (one per user logged in somewhere, and stale ones a
	// killed node left).
	Hints uint64 `json:"hints"`
	// Problems name what needs an operator: no quorum, a node that
	// stopped beating, a stream without a leader or with a replica
	// behind or offline.
	Problems []string `json:"problems"`
}

// ClusterMember is one node's answer to the status request.
type ClusterMember struct {
	Node     string  `json:"node"`
	Epoch    uint64  `json:"epoch"` // its run (a restart makes another)
	Version  string  `json:"version"`
	Sessions int     `json:"sessions"`
	Conns    int64   `json:"connections"`
	Uptime   float64 `json:"uptime_s"`
	// QueueDepthTotal is the offline queues' items as the node counts
	// them, its /admin/stats queue_depth_total: on JetStream, the queues
	// it wrote to or acked since it started, so two nodes may count the
	// same queue.
	QueueDepthTotal int64 `json:"queue_depth_total"`
}

// StreamStatus is one stream's place in the cluster.
type StreamStatus struct {
	Name     string          `json:"name"`
	Messages uint64          `json:"messages"`
	Leader   string          `json:"leader"` // empty: no leader now
	Replicas []ReplicaStatus `json:"replicas"`
}

// ReplicaStatus is a follower replica of a stream.
type ReplicaStatus struct {
	Node    string `json:"node"`
	Current bool   `json:"current"`
	Offline bool   `json:"offline"`
	Lag     uint64 `json:"lag"`
}
