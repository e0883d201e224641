// Package monitor watches a Parley node's queues, the way WhatsApp judged
// its system's health by the length of its queues. It exports Prometheus
// metrics, computes per-session rates, raises alerts when a queue grows past
// its threshold, and serves the admin API, the live dashboard and the data
// behind `parley top`.
//
// The node only counts (Metrics) and answers questions (Source); everything
// that needs a clock — rates, latency quantiles, alert hysteresis — happens
// here, in one goroutine that samples once per interval however many
// sessions there are. The monitor's own memory does not grow with the
// sessions either: what it needs per session (Rates) lives in the node's
// per-session struct, and the sessions a request asks for are found by
// walking them then.
package monitor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Thresholds are the queue watch's limits. A zero field means its default;
// a negative one turns that check off.
type Thresholds struct {
	// Mailbox is the longest any session's mailbox may grow (events).
	// Default 1000.
	Mailbox int
	// Backlog is the most sessions that may wait for a worker. Default 1000.
	Backlog int
	// QueueUser is the longest any one user's offline queue may grow
	// (items). Default 10000.
	QueueUser int
	// QueueTotal is the most items all offline queues may hold together.
	// Default 1000000.
	QueueTotal int64
	// LoopLag is the most the event loop may run late. Default 100ms.
	LoopLag time.Duration
	// ClearRatio sets the hysteresis: a firing alert clears only once its
	// value falls below threshold × ClearRatio, so a queue hovering at the
	// threshold does not flap. Default 0.5; must be in (0, 1].
	ClearRatio float64
	// For is how long a breach must last before the alert fires. Default 0:
	// fire on the first sample over the threshold.
	For time.Duration
}

// DefaultThresholds are the thresholds used for zero fields, and those the
// shipped Prometheus rules (deploy/prometheus) mirror.
func DefaultThresholds() Thresholds {
	return Thresholds{
		Mailbox:    1000,
		Backlog:    1000,
		QueueUser:  10000,
		QueueTotal: 1000000,
		LoopLag:    100 * time.Millisecond,
		ClearRatio: 0.5,
	}
}

func (t Thresholds) withDefaults() (Thresholds, error) {
	d := DefaultThresholds()
	if t.Mailbox == 0 {
		t.Mailbox = d.Mailbox
	}
	if t.Backlog == 0 {
		t.Backlog = d.Backlog
	}
	if t.QueueUser == 0 {
		t.QueueUser = d.QueueUser
	}
	if t.QueueTotal == 0 {
		t.QueueTotal = d.QueueTotal
	}
	if t.LoopLag == 0 {
		t.LoopLag = d.LoopLag
	}
	if t.ClearRatio == 0 {
		t.ClearRatio = d.ClearRatio
	}
	if t.ClearRatio < 0 || t.ClearRatio > 1 {
		return t, fmt.Errorf("threshold clear ratio %v: want a value in (0, 1], e.g. 0.5 to clear at half the threshold", t.ClearRatio)
	}
	if t.For < 0 {
		return t, fmt.Errorf("threshold hold time %v: want 0 or more", t.For)
	}
	return t, nil
}

// Registry is where the monitor registers its collectors and what /metrics
// serves; *prometheus.Registry is one. The prometheus default registry is
// never used, so two nodes in one process (tests) do not collide.
type Registry interface {
	prometheus.Registerer
	prometheus.Gatherer
}

// Config is a monitor's configuration. Zero values mean the documented
// defaults.
type Config struct {
	// Source is the node being watched. Required.
	Source Source
	// Node is the node's name in its cluster, which every /admin/sessions
	// row carries so that rows merged from several nodes say where each
	// session is. Empty for a node alone.
	Node string
	// Metrics are the node's hot-path collectors, already registered with
	// Registry. Default: New creates them (see Monitor.Metrics).
	Metrics *Metrics
	// Thresholds for the queue watch.
	Thresholds Thresholds
	// Webhook, if set, receives a POST with the JSON of an Alert whenever
	// one fires or clears.
	Webhook string
	// WebhookTimeout bounds one webhook POST. Default 5s.
	WebhookTimeout time.Duration
	// Log receives alert lines and webhook failures. Default slog.Default().
	Log *slog.Logger
	// Registry holds the metrics. Default: a new registry of its own.
	Registry Registry
	// Interval is the time between samples. Default 1s.
	Interval time.Duration
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// AdminToken is the token admin requests must carry (Authorization:
	// Bearer TOKEN) when RequireToken is set.
	AdminToken string
	// RequireToken makes every admin endpoint but the dashboard's static
	// assets demand AdminToken. Set it when the admin listener is not on
	// loopback (see Loopback).
	RequireToken bool
}

// Defaults the Config does not expose.
const (
	// historyLen is how many samples /admin/stats/history keeps: ten
	// minutes at the default interval, what the dashboard's charts span.
	historyLen = 600
	// recentLen is how many resolved alerts /admin/alerts keeps.
	recentLen = 100
	// latencySamples is how many samples the latency quantiles span, so
	// that p99 under light load is not the single message of the last
	// second.
	latencySamples = 10
	// webhookQueue bounds alerts waiting to be posted; beyond it they are
	// dropped (and logged) rather than slowing sampling down.
	webhookQueue = 256
)

// Monitor samples a Source, evaluates the queue watch and serves the
// results. Its methods are safe for concurrent use.
type Monitor struct {
	src      Source
	node     string
	metrics  *Metrics
	th       Thresholds
	log      *slog.Logger
	reg      Registry
	interval time.Duration
	now      func() time.Time
	token    string
	needTok  bool
	hook     *notifier

	// sampleMu serializes Sample and the walks of /admin/sessions, which
	// read the Rates that Sample writes; the fields below it belong to it.
	sampleMu sync.Mutex
	last     time.Time
	lastIn   uint64
	lastOut  uint64
	rateDT   float64 // seconds the sessions' Rates span (the last interval)
	sendLat  *latencyWindow
	ackLat   *latencyWindow
	watches  []*watch

	// viewMu guards what readers see: the latest sample, its history and
	// the resolved alerts.
	viewMu  sync.RWMutex
	view    *snapshot
	history []Stats // ring, oldest at histHead once full
	histN   int
	recent  []Alert // newest last, at most recentLen
}

// snapshot is one sample as readers see it; never modified once published.
type snapshot struct {
	stats  Stats
	firing []Alert
}

// New creates a monitor. It registers its own gauges, and the standard Go
// and process collectors, with cfg.Registry (creating the node's Metrics
// there too unless cfg.Metrics is given). Nothing runs until Run.
func New(cfg Config) (*Monitor, error) {
	if cfg.Source == nil {
		return nil, errors.New("monitor: no Source: pass the node being watched")
	}
	th, err := cfg.Thresholds.withDefaults()
	if err != nil {
		return nil, err
	}
	if cfg.RequireToken && cfg.AdminToken == "" {
		return nil, errors.New("the admin listener is reachable from other machines but no admin token is set: set one, or bind the admin listener to loopback")
	}
	if cfg.Webhook != "" {
		u, err := url.Parse(cfg.Webhook)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("alert webhook %q: want an http:// or https:// URL", cfg.Webhook)
		}
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.WebhookTimeout <= 0 {
		cfg.WebhookTimeout = 5 * time.Second
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(cfg.Registry)
	}
	m := &Monitor{
		src:      cfg.Source,
		node:     cfg.Node,
		metrics:  cfg.Metrics,
		th:       th,
		log:      cfg.Log,
		reg:      cfg.Registry,
		interval: cfg.Interval,
		now:      cfg.Now,
		token:    cfg.AdminToken,
		needTok:  cfg.RequireToken,
		sendLat:  newLatencyWindow(cfg.Metrics.SendToDeliver),
		ackLat:   newLatencyWindow(cfg.Metrics.DeliverToAck),
		watches:  newWatches(th),
		view:     &snapshot{},
		history:  make([]Stats, historyLen),
	}
	m.lastIn = counterValue(cfg.Metrics.MessagesIn)
	m.lastOut = counterValue(cfg.Metrics.MessagesOut)

	hookErrors := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "parley_alert_webhook_errors_total",
		Help: "Alert webhook posts that failed or were dropped because the webhook queue was full.",
	})
	if err := cfg.Registry.Register(hookErrors); err != nil {
		return nil, fmt.Errorf("register monitor metrics: %w", err)
	}
	if cfg.Webhook != "" {
		m.hook = newNotifier(cfg.Webhook, cfg.WebhookTimeout, m.log, hookErrors)
	}
	if err := cfg.Registry.Register(&sampledCollector{m: m}); err != nil {
		return nil, fmt.Errorf("register monitor metrics: %w", err)
	}
	// The standard collectors may already be registered by the caller;
	// that is not a mistake worth failing for.
	for _, c := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		var are prometheus.AlreadyRegisteredError
		if err := cfg.Registry.Register(c); err != nil && !errors.As(err, &are) {
			return nil, fmt.Errorf("register standard collectors: %w", err)
		}
	}
	return m, nil
}

// Metrics are the hot-path collectors the node updates.
func (m *Monitor) Metrics() *Metrics { return m.metrics }

// Thresholds are the queue watch's thresholds, defaults filled in.
func (m *Monitor) Thresholds() Thresholds { return m.th }

// Run samples every interval until ctx ends, and posts alert webhooks. It
// is the only goroutine the monitor needs, however many sessions there are.
// The first sample comes one interval after Run starts.
func (m *Monitor) Run(ctx context.Context) {
	var wg sync.WaitGroup
	if m.hook != nil {
		wg.Go(func() { m.hook.run(ctx) })
	}
	t := time.NewTicker(m.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case <-t.C:
			m.Sample(m.now())
		}
	}
}

// Stats are the latest sample's node figures.
func (m *Monitor) Stats() Stats {
	m.viewMu.RLock()
	defer m.viewMu.RUnlock()
	return m.view.stats
}

// History is up to n of the latest samples' node figures, oldest first.
func (m *Monitor) History(n int) []Stats {
	m.viewMu.RLock()
	defer m.viewMu.RUnlock()
	n = min(n, m.histN)
	out := make([]Stats, 0, max(n, 0))
	for i := m.histN - n; i < m.histN; i++ {
		out = append(out, m.history[i%historyLen])
	}
	return out
}

// Alerts are the firing alerts and up to 100 recently resolved ones, newest
// first.
func (m *Monitor) Alerts() (firing, recent []Alert) {
	m.viewMu.RLock()
	defer m.viewMu.RUnlock()
	firing = append([]Alert{}, m.view.firing...)
	recent = make([]Alert, 0, len(m.recent))
	for i := len(m.recent) - 1; i >= 0; i-- {
		recent = append(recent, m.recent[i])
	}
	return firing, recent
}

func (m *Monitor) current() *snapshot {
	m.viewMu.RLock()
	defer m.viewMu.RUnlock()
	return m.view
}

// Loopback reports whether a listen address (host:port, as given to
// net.Listen) accepts connections only from this machine. An empty host
// listens on every interface, so it is not loopback.
func Loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
