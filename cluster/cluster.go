package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	njs "github.com/nats-io/nats.go/jetstream"
)

// Config says how a node joins its cluster: by embedding a NATS server
// (Name, Node, Listen, Peers, NATSListen, Dir), or by connecting to an
// external NATS system (NATS).
type Config struct {
	// Name is the NATS cluster's name; every node of one cluster gives the
	// same. Required when embedding.
	Name string
	// Node is this node's name, unique in the cluster (it names the node's
	// JetStream peer and its doorbell subject). Required.
	Node string
	// Listen is where the embedded server accepts routes from the other
	// nodes, HOST:PORT. Empty: no routes (a one-node cluster).
	Listen string
	// Peers are the route addresses (HOST:PORT) of the cluster's nodes.
	// The same list may be given to every node, itself included: a route
	// to itself is recognised and dropped.
	Peers []string
	// NATSListen is the embedded server's client address. Default
	// 127.0.0.1 with a free port: the node talks to its server in-process
	// and nothing else needs the port, so three nodes on one machine need
	// not be told three ports.
	NATSListen string
	// Dir holds the embedded server's JetStream files. Required when
	// embedding.
	Dir string
	// NATS, when set, are the URLs of an external NATS system with
	// JetStream: nothing is embedded, and Name, Listen, Peers, NATSListen
	// and Dir are ignored.
	NATS []string
	// NATSOptions are extra connection options for NATS (credentials).
	NATSOptions []nats.Option
	// Replicas is the replication factor of every stream. Zero: 3 when the
	// cluster has at least 3 nodes (Peers, or the NATS URLs), else 1.
	Replicas int
	// RouteTLS, when its files are given, encrypts the routes between the
	// embedded servers and authenticates both ends: every node presents
	// Cert (PEM, with Key) and accepts only peers whose certificate CA
	// signed. Without it the routes are plain and unauthenticated: anyone
	// who reaches a route port joins the cluster and reads everything, so
	// keep that port on a private network.
	RouteTLS RouteTLS
	// Log receives the embedded server's log and the package's own.
	// Default slog.Default().
	Log *slog.Logger
}

// Cluster is a node's place in its cluster: the NATS connection it stores
// and routes through, and the embedded server if there is one.
type Cluster struct {
	cfg  Config
	log  *slog.Logger
	srv  *server.Server // nil with external NATS
	conn *nats.Conn

	closeOnce sync.Once
}

// Nodes is how many nodes cfg describes: the distinct peers, plus this
// node when its own route address is not among them.
func (cfg Config) Nodes() int {
	if len(cfg.NATS) > 0 {
		return len(cfg.NATS)
	}
	seen := map[string]bool{}
	for _, p := range cfg.Peers {
		seen[p] = true
	}
	self := cfg.Listen != "" && seen[cfg.Listen]
	if host, _, err := net.SplitHostPort(cfg.Listen); err == nil {
		if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
			// Listening on every address: the list, given alike to every
			// node, names this one under an address of its own.
			self = len(seen) > 0
		}
	}
	if self {
		return len(seen)
	}
	return len(seen) + 1
}

// ReplicasOrDefault is Replicas, or its default for the cluster's size.
func (cfg Config) ReplicasOrDefault() int {
	if cfg.Replicas > 0 {
		return cfg.Replicas
	}
	if cfg.Nodes() >= 3 {
		return 3
	}
	return 1
}

// RouteTLS names the PEM files of Config.RouteTLS: all three, or none.
type RouteTLS struct {
	Cert, Key, CA string
}

func (t RouteTLS) enabled() bool { return t.Cert != "" || t.Key != "" || t.CA != "" }

func (t RouteTLS) check() error {
	if !t.enabled() {
		return nil
	}
	if t.Cert == "" || t.Key == "" || t.CA == "" {
		return errors.New("cluster: route TLS needs a certificate, its key and the CA that signs every node's (--cluster-tls-cert, --cluster-tls-key, --cluster-tls-ca): one is missing")
	}
	return nil
}

func (cfg *Config) check() error {
	if cfg.Node == "" {
		return errors.New("cluster: no node name (--node): give every node of the cluster its own")
	}
	if len(cfg.NATS) > 0 {
		return nil
	}
	switch {
	case cfg.Name == "":
		return errors.New("cluster: no cluster name (--cluster)")
	case cfg.Dir == "":
		return errors.New("cluster: no directory for the embedded server's files")
	case len(cfg.Peers) > 0 && cfg.Listen == "":
		return errors.New("cluster: peers given but no route address of this node's own (--cluster-listen HOST:PORT)")
	}
	if err := cfg.RouteTLS.check(); err != nil {
		return err
	}
	for _, p := range append([]string{cfg.Listen, cfg.NATSListen}, cfg.Peers...) {
		if p == "" {
			continue
		}
		if _, port, err := net.SplitHostPort(p); err != nil || port == "" {
			return fmt.Errorf("cluster: address %q: want HOST:PORT", p)
		}
	}
	if r := cfg.ReplicasOrDefault(); r > cfg.Nodes() {
		return fmt.Errorf("cluster: %d replicas asked for, but the cluster has %d nodes", r, cfg.Nodes())
	}
	return nil
}

// Join starts the embedded NATS server (or connects to the external
// system) and waits until JetStream answers: in a cluster, until a quorum
// of the nodes is up and has elected its meta leader. ctx bounds the wait.
func Join(ctx context.Context, cfg Config) (_ *Cluster, err error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	cfg.Replicas = cfg.ReplicasOrDefault()
	c := &Cluster{cfg: cfg, log: cfg.Log.With("component", "cluster", "node", cfg.Node)}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if len(cfg.NATS) > 0 {
		opts := append([]nats.Option{nats.Name("parley " + cfg.Node), nats.MaxReconnects(-1)}, cfg.NATSOptions...)
		if c.conn, err = nats.Connect(strings.Join(cfg.NATS, ","), opts...); err != nil {
			return nil, fmt.Errorf("cluster: connect to NATS %s: %w", strings.Join(cfg.NATS, ","), err)
		}
	} else {
		if err := c.embed(); err != nil {
			return nil, err
		}
	}
	if err := c.waitJetStream(ctx); err != nil {
		return nil, err
	}
	c.log.Info("joined the cluster", "replicas", cfg.Replicas, "nodes", cfg.Nodes(), "nats", c.ClientURL())
	return c, nil
}

// embed starts the embedded server and connects to it in-process.
func (c *Cluster) embed() error {
	cfg := c.cfg
	host, port, err := splitPort(cfg.NATSListen, "127.0.0.1", -1)
	if err != nil {
		return fmt.Errorf("cluster: --nats-listen %q: %w", cfg.NATSListen, err)
	}
	opts := &server.Options{
		ServerName: cfg.Node,
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   cfg.Dir,
		NoSigs:     true, // the process is the node's; it handles signals
	}
	if len(cfg.Peers) > 0 || cfg.Listen != "" {
		rh, rp, err := splitPort(cfg.Listen, "", 0)
		if err != nil {
			return fmt.Errorf("cluster: --cluster-listen %q: %w", cfg.Listen, err)
		}
		opts.Cluster = server.ClusterOpts{Name: cfg.Name, Host: rh, Port: rp}
		if t := cfg.RouteTLS; t.enabled() {
			tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: t.Cert, KeyFile: t.Key, CaFile: t.CA, Verify: true})
			if err != nil {
				return fmt.Errorf("cluster: route TLS: %w", err)
			}
			// A node is both ends of its routes: the CA verifies the
			// peers it dials as well as those that dial it (nats-server's
			// own configuration does the same).
			tc.RootCAs = tc.ClientCAs
			opts.Cluster.TLSConfig, opts.Cluster.TLSTimeout = tc, 2
		}
		for _, p := range cfg.Peers {
			opts.Routes = append(opts.Routes, &url.URL{Scheme: "nats", Host: p})
		}
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("cluster: embedded NATS server: %w", err)
	}
	logger := &natsLog{l: c.log.With("component", "nats")}
	srv.SetLoggerV2(logger, false, false, false)
	c.srv = srv
	go srv.Start()
	// The server logs a listener it could not open and carries on
	// without it: look for that while waiting for it to be ready.
	for i := 0; ; i++ {
		if f := logger.fatal(); f != "" {
			return fmt.Errorf("cluster: embedded NATS server: %s", f)
		}
		if srv.ReadyForConnections(100 * time.Millisecond) {
			break
		}
		if i == 300 {
			return fmt.Errorf("cluster: embedded NATS server did not start listening on %s and %s within 30s", cfg.NATSListen, cfg.Listen)
		}
	}
	c.conn, err = nats.Connect("", nats.InProcessServer(srv), nats.Name("parley "+cfg.Node), nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("cluster: connect to the embedded NATS server: %w", err)
	}
	return nil
}

// splitPort parses HOST:PORT, with defaults for an empty address.
func splitPort(addr, defHost string, defPort int) (string, int, error) {
	if addr == "" {
		return defHost, defPort, nil
	}
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(ps)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", ps)
	}
	if port == 0 {
		port = -1 // nats-server's "any free port"
	}
	return host, port, nil
}

// waitJetStream waits until the JetStream API answers without an error:
// in a cluster, once a quorum of nodes is up and has a meta leader.
func (c *Cluster) waitJetStream(ctx context.Context) error {
	logged := time.Now()
	for {
		// Each request has its own short deadline: a server without a
		// meta leader does not answer at all.
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		m, err := c.conn.RequestWithContext(rctx, "$JS.API.INFO", nil)
		cancel()
		if err == nil && !strings.Contains(string(m.Data), `"error"`) {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("cluster: JetStream did not become ready (are enough of the peers %s up?): %w", strings.Join(c.cfg.Peers, ","), ctx.Err())
		}
		if time.Since(logged) > 5*time.Second {
			logged = time.Now()
			reason := "no answer"
			if m != nil {
				reason = string(m.Data)
			}
			c.log.Info("waiting for a JetStream quorum: start the other nodes", "peers", strings.Join(c.cfg.Peers, ","), "reason", reason)
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Conn is the node's connection to the cluster's NATS system.
func (c *Cluster) Conn() *nats.Conn { return c.conn }

// Node is this node's name.
func (c *Cluster) Node() string { return c.cfg.Node }

// Replicas is the replication factor the node's streams use.
func (c *Cluster) Replicas() int { return c.cfg.Replicas }

// ClientURL is the embedded server's client URL, or the external URLs.
func (c *Cluster) ClientURL() string {
	if c.srv != nil {
		return c.srv.ClientURL()
	}
	return strings.Join(c.cfg.NATS, ",")
}

// StepDown hands the stream leaderships of the embedded server (queues,
// accounts, buckets) to the other nodes, for a planned stop: a request in
// flight to a leader that shuts down is lost, and the node that sent it
// waits out its timeout (2 s); a leader that steps down first hands over
// what it has. It returns once every stream it led has a leader on
// another node, or ctx ends: JetStream answers a step-down before the new
// leader is elected, and clients that move before that find the streams
// between leaders (their logins and sends refused, to be tried again). It
// returns how many streams it asked to move. A cluster on an external NATS
// system has no leaders of its own: nothing to do.
func (c *Cluster) StepDown(ctx context.Context) (int, error) {
	if c.srv == nil || c.conn == nil {
		return 0, nil
	}
	js, err := njs.New(c.conn)
	if err != nil {
		return 0, err
	}
	self := c.srv.Name()
	var led []string
	streams := js.ListStreams(ctx)
	for info := range streams.Info() {
		if info.Cluster != nil && info.Cluster.Leader == self {
			led = append(led, info.Config.Name)
		}
	}
	if err := streams.Err(); err != nil {
		return 0, fmt.Errorf("list streams: %w", err)
	}
	var errs []error
	for _, name := range led {
		if _, err := c.conn.RequestWithContext(ctx, "$JS.API.STREAM.LEADER.STEPDOWN."+name, nil); err != nil {
			errs = append(errs, fmt.Errorf("step down from %s: %w", name, err))
		}
	}
	for _, name := range led {
		if err := awaitLeaderElsewhere(ctx, js, name, self); err != nil {
			errs = append(errs, err)
			break // ctx is over: the others would wait for nothing
		}
	}
	return len(led), errors.Join(errs...)
}

// leaderPoll is how often StepDown asks whether a stream has its new
// leader: an election after a step-down takes tens of milliseconds.
const leaderPoll = 10 * time.Millisecond

// awaitLeaderElsewhere waits until stream name has a leader other than
// self, or ctx ends.
func awaitLeaderElsewhere(ctx context.Context, js njs.JetStream, name, self string) error {
	for {
		// Only the stream's leader answers its info; between leaders the
		// request fails or times out, and is asked again.
		rctx, cancel := context.WithTimeout(ctx, 250*time.Millisecond)
		st, err := js.Stream(rctx, name)
		cancel()
		if err == nil {
			if ci := st.CachedInfo().Cluster; ci != nil && ci.Leader != "" && ci.Leader != self {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stream %s has no leader on another node yet: %w", name, ctx.Err())
		case <-time.After(leaderPoll):
		}
	}
}

// Close closes the connection and shuts the embedded server down (a
// clean shutdown: its stream leaderships move at once to other nodes).
func (c *Cluster) Close() error {
	c.closeOnce.Do(func() {
		if c.conn != nil {
			// Flush what the node published last (doorbells, releases).
			_ = c.conn.Drain()
			for i := 0; i < 100 && !c.conn.IsClosed(); i++ {
				time.Sleep(20 * time.Millisecond)
			}
			c.conn.Close()
		}
		if c.srv != nil {
			c.srv.Shutdown()
			c.srv.WaitForShutdown()
		}
	})
	return nil
}

// natsLog sends the embedded server's log to slog. Its notices (a banner
// of some forty lines at start, every route made, every leader elected)
// go out at Debug; warnings and errors as such.
type natsLog struct {
	l  *slog.Logger
	mu sync.Mutex
	// fatalMsg is the server's first fatal error (a listener that could
	// not bind): the server logs it and carries on without the listener,
	// so Join reports it.
	fatalMsg string
}

func (n *natsLog) fatal() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.fatalMsg
}

func (n *natsLog) Noticef(f string, v ...any) { n.l.Debug(fmt.Sprintf(f, v...)) }
func (n *natsLog) Warnf(f string, v ...any)   { n.l.Warn(fmt.Sprintf(f, v...)) }
func (n *natsLog) Errorf(f string, v ...any)  { n.l.Error(fmt.Sprintf(f, v...)) }
func (n *natsLog) Debugf(f string, v ...any)  { n.l.Debug(fmt.Sprintf(f, v...)) }
func (n *natsLog) Tracef(f string, v ...any)  {}
func (n *natsLog) Fatalf(f string, v ...any) {
	msg := fmt.Sprintf(f, v...)
	n.l.Error(msg)
	n.mu.Lock()
	if n.fatalMsg == "" {
		n.fatalMsg = msg
	}
	n.mu.Unlock()
}
