package monitor

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the collectors the node updates on its hot path. Every label
// value is resolved here, once, so that counting a frame or observing a
// latency is one atomic operation: no map lookup, no allocation.
//
// Gauges that describe queues (mailboxes, backlog, offline queues, loop lag)
// are not here: the monitor samples them from the Source once per interval,
// which costs the hot path nothing.
type Metrics struct {
	// ConnectionsOpen is the number of open native connections: Inc on
	// accept, Dec on close.
	ConnectionsOpen prometheus.Gauge
	// Accepted and Closed count native connections.
	Accepted, Closed prometheus.Counter
	// Logins counts successful logins; LoginFailures refused ones (also
	// counted in HandshakeFailures.LoginRefused).
	Logins, LoginFailures prometheus.Counter
	// Resumptions counts logins that presented a resumption ticket: the
	// ones that took it, and the ones that were refused it (and fell back
	// to a full handshake).
	Resumptions Resumptions
	// HandshakeFailures counts connections that never reached a session,
	// one counter per reason.
	HandshakeFailures HandshakeFailures
	// FramesIn and FramesOut count protocol frames after decryption and
	// before encryption.
	FramesIn, FramesOut prometheus.Counter
	// MessagesIn counts sends accepted (committed); MessagesOut counts
	// deliveries pushed to a recipient's connection.
	MessagesIn, MessagesOut prometheus.Counter
	// Receipts counts delivery and read receipts accepted.
	Receipts prometheus.Counter
	// SendToDeliver is the time from a send being accepted to its delivery
	// frame being written, in seconds (includes time queued offline).
	SendToDeliver prometheus.Histogram
	// DeliverToAck is the time from a delivery frame being written to the
	// recipient acknowledging it, in seconds.
	DeliverToAck prometheus.Histogram
	// CommitLatency is the time from handing a batch to the store to its
	// group's fsync completing, in seconds.
	CommitLatency prometheus.Histogram
	// CommitBatchSize is the number of batches made durable by one fsync.
	CommitBatchSize prometheus.Histogram
	// Expired counts offline-queue items dropped undelivered for age.
	Expired prometheus.Counter
	// BadInput counts connections closed for malformed or hostile input.
	BadInput prometheus.Counter
	// LimitHits counts requests, connections and frames refused or cut
	// off because they hit one of the node's limits (see node.Limits),
	// by limit name. An alert fires while any limit is being hit.
	LimitHits *prometheus.CounterVec
	// AdminRefused counts admin requests refused, by reason (cross_site,
	// token).
	AdminRefused *prometheus.CounterVec
}

// Resumptions holds the pre-made counters of parley_resumptions_total.
type Resumptions struct {
	Resumed prometheus.Counter // result="resumed": the ticket was taken
	Refused prometheus.Counter // result="refused": expired or foreign ticket; full handshake follows
}

// HandshakeFailures holds one pre-made counter per failure reason of
// parley_handshake_failures_total.
type HandshakeFailures struct {
	BadHandshake prometheus.Counter // reason="bad_handshake": Noise IK failed
	LoginRefused prometheus.Counter // reason="login_refused": unknown number, wrong key, bad version
	Timeout      prometheus.Counter // reason="timeout": no login within the handshake timeout
	BadFrame     prometheus.Counter // reason="bad_frame": unframeable first message
	Unproven     prometheus.Counter // reason="unproven": answered, but the client never proved it holds the keys (a replay, or a client gone)
	Replayed     prometheus.Counter // reason="replayed": a first message seen before, refused unanswered
}

// Histogram buckets, in base units. Delivery spans a push over loopback
// (tens of microseconds) to a message that waited for its recipient to come
// online (hours); commits are dominated by fsync.
var (
	deliveryBuckets = []float64{
		0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
		0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400,
	}
	commitBuckets = []float64{
		0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
		0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
	}
	batchBuckets = []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}
)

// NewMetrics creates the hot-path collectors and registers them with reg.
// It panics if reg already holds collectors of the same names: registering
// twice is a wiring mistake, not a runtime condition.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	hist := func(name, help string, buckets []float64) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets})
	}
	hs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "parley_handshake_failures_total",
		Help: "Native connections that failed before a session started, by reason (bad_handshake, login_refused, timeout, bad_frame, unproven, replayed).",
	}, []string{"reason"})
	rs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "parley_resumptions_total",
		Help: "Logins that presented a resumption ticket, by result (resumed, refused: a full handshake followed).",
	}, []string{"result"})
	m := &Metrics{
		Resumptions: Resumptions{
			Resumed: rs.WithLabelValues("resumed"),
			Refused: rs.WithLabelValues("refused"),
		},
		ConnectionsOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "parley_connections_open",
			Help: "Native protocol connections open now, logged in or not.",
		}),
		Accepted:      counter("parley_connections_accepted_total", "Native protocol connections accepted."),
		Closed:        counter("parley_connections_closed_total", "Native protocol connections closed, for any reason."),
		Logins:        counter("parley_logins_total", "Successful logins (sessions started)."),
		LoginFailures: counter("parley_login_failures_total", "Logins refused: unknown number, unregistered key or unsupported version."),
		HandshakeFailures: HandshakeFailures{
			BadHandshake: hs.WithLabelValues("bad_handshake"),
			LoginRefused: hs.WithLabelValues("login_refused"),
			Timeout:      hs.WithLabelValues("timeout"),
			BadFrame:     hs.WithLabelValues("bad_frame"),
			Unproven:     hs.WithLabelValues("unproven"),
			Replayed:     hs.WithLabelValues("replayed"),
		},
		FramesIn:    counter("parley_frames_in_total", "Protocol frames received from clients."),
		FramesOut:   counter("parley_frames_out_total", "Protocol frames sent to clients."),
		MessagesIn:  counter("parley_messages_in_total", "Messages accepted from senders (committed to the store)."),
		MessagesOut: counter("parley_messages_out_total", "Messages delivered to recipients' connections."),
		Receipts:    counter("parley_receipts_total", "Delivery and read receipts accepted from clients."),
		SendToDeliver: hist("parley_delivery_send_to_deliver_seconds",
			"Time from a message being accepted to its delivery to the recipient, including time queued offline.", deliveryBuckets),
		DeliverToAck: hist("parley_delivery_deliver_to_ack_seconds",
			"Time from a delivery being sent to the recipient acknowledging it.", deliveryBuckets),
		CommitLatency: hist("parley_store_commit_seconds",
			"Time from a batch being handed to the store to its fsync group completing.", commitBuckets),
		CommitBatchSize: hist("parley_store_commit_batch_size",
			"Batches made durable by one fsync (group commit size).", batchBuckets),
		Expired:  counter("parley_queue_expired_total", "Offline-queue items dropped undelivered because they grew too old."),
		BadInput: counter("parley_bad_input_total", "Connections closed for malformed or hostile input."),
		LimitHits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "parley_limit_hits_total",
			Help: "Requests, connections and frames refused or cut off by a limit, by limit (see GET /admin/limits).",
		}, []string{"limit"}),
		AdminRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "parley_admin_refused_total",
			Help: "Admin listener requests refused, by reason (cross_site, token).",
		}, []string{"reason"}),
	}
	reg.MustRegister(
		m.ConnectionsOpen, m.Accepted, m.Closed, m.Logins, m.LoginFailures, hs, rs,
		m.FramesIn, m.FramesOut, m.MessagesIn, m.MessagesOut, m.Receipts,
		m.SendToDeliver, m.DeliverToAck, m.CommitLatency, m.CommitBatchSize,
		m.Expired, m.BadInput, m.LimitHits, m.AdminRefused,
	)
	return m
}
