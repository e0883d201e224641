// Package node runs one Parley server: the native listener on an event
// loop, the session actors, the store, and the HTTP and admin listeners.
//
// Event loop: github.com/lesismal/nbio. Like gnet, it keeps an idle
// connection to a small struct registered with epoll — no goroutine and no
// read buffer (reads land in one buffer per poller) — and it was chosen over
// gnet because it can adopt an already-open net.Conn (Engine.AddConn), which
// a live upgrade needs to take over the old process's connections.
//
// Concurrency: the poller goroutines split and decrypt inbound messages and
// post frames to the connection's mailbox; a fixed pool of workers runs a
// session only while its mailbox has work (the actor model of DESIGN
// principle 1). Store writes are asynchronous (group commit); their results
// come back through the same mailbox, so no worker ever waits for an fsync.
package node

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/vfs"
	"github.com/lesismal/nbio"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/parleyhq/parley/account"
	"github.com/parleyhq/parley/media"
	"github.com/parleyhq/parley/monitor"
	"github.com/parleyhq/parley/noise"
	"github.com/parleyhq/parley/session"
	"github.com/parleyhq/parley/store"
	"github.com/parleyhq/parley/store/jetstream"
	"github.com/parleyhq/parley/wire"
)

// Config is a node's configuration. Zero values mean the documented defaults.
type Config struct {
	// DataDir holds the store and the server's static key. Default
	// "./parley-data".
	DataDir string
	// Listen is the native protocol's TCP address. Default "127.0.0.1:5222";
	// port 0 picks a free port (see NativeAddr).
	Listen string
	// Advertise is the native address clients are told to dial (at
	// registration, in GET /v1/server, and to the other nodes of a
	// cluster), when it differs from Listen: a wildcard listen address
	// (0.0.0.0:5222), a NAT or a load balancer. Default: the address the
	// native listener is bound to. A cluster node whose Listen has no host
	// must set it.
	Advertise string
	// HTTP is the public HTTP API's address (registration). Default
	// "127.0.0.1:8080".
	HTTP string
	// Admin is the admin listener's address (health; metrics later). Default
	// "127.0.0.1:9090".
	Admin string
	// SMS sends registration codes. Default: the log gateway.
	SMS account.Gateway
	// SMSDefaultRegion is the region assumed for numbers given without a
	// country code (e.g. "US"); empty requires "+<country code>".
	SMSDefaultRegion string
	// PerNumber and PerAddr rate-limit registration code requests per phone
	// number and per client address. Zero values mean account's defaults
	// (3 per number per 10 minutes, 30 s apart; 20 per address).
	PerNumber, PerAddr account.RateLimit
	// Workers is the size of the session worker pool. Default 4 x GOMAXPROCS.
	Workers int
	// Pollers is the number of event-loop goroutines. Default GOMAXPROCS.
	// Each blocks in epoll_wait holding a P: with a poller on every P the
	// runtime's sysmon polls a lightly loaded node thousands of times a
	// second, so parley serve runs fewer and gives them Ps of their own
	// beyond the CPUs (cmd/parley, pollerProcs).
	Pollers int
	// TicketTTL is how long a resumption ticket is good for: a device that
	// logged in within it logs in again with a cheaper handshake (see
	// noise/ticket.go). Default 7 days; negative: no tickets, every login
	// is a full handshake.
	TicketTTL time.Duration
	// IdleCollect is how often the node looks whether the process has been
	// quiet (see settle): a process quiet for one such period returns its
	// garbage to the OS once. Default 5 s; negative: never (the Go
	// runtime's own schedule only).
	IdleCollect time.Duration
	// AdminToken, when set, is required (Authorization: Bearer) on the
	// admin listener. It must be set when Admin is not a loopback address.
	AdminToken string
	// AlertWebhook, if set, receives a JSON POST when an alert fires or
	// clears.
	AlertWebhook string
	// Alerts are the queue-watch thresholds; zero fields mean monitor's
	// defaults.
	Alerts monitor.Thresholds
	// PublicURL is the HTTP API's base URL as clients reach it (media
	// links and upload URLs are built on it). Default: http:// + HTTP.
	PublicURL string
	// MediaMaxSize bounds one upload (default 64 MiB); MediaTTL is how
	// long media are kept (default 30 days).
	MediaMaxSize int64
	MediaTTL     time.Duration
	// Limits bound what the network can make the node hold or do; zero
	// fields mean DefaultLimits.
	Limits Limits
	// Log receives the node's structured log. Default slog.Default().
	Log *slog.Logger
	// StoreFS is the file system under the store; nil means the disk.
	// Tests set it to one that drops unsynced writes at a simulated power
	// loss (vfs.NewStrictMem).
	StoreFS vfs.FS
	// StoreMemTableSize is the store's memtable size in bytes, which sets
	// its disk footprint (see store.Options.MemTableSize). Default 16 MiB.
	StoreMemTableSize int
	// StoreLazyDelay is how long an ack's batch may wait to share another
	// batch's fsync (store.Options.LazyDelay). Default 2 ms.
	StoreLazyDelay time.Duration
	// Inherit is what the old process of a live upgrade handed over
	// (see handover.go); nil for a fresh start.
	Inherit *Inherited
	// Upgrade, if set, serves POST /admin/upgrade: a live upgrade to a new
	// binary (cmd/parley serve sets it).
	Upgrade UpgradeFunc
	// Cluster, when set, makes the node one of a cluster (see
	// ClusterConfig): its store is JetStream instead of Pebble.
	Cluster *ClusterConfig

	// wrapStore, set only by this package's tests, puts a store of theirs
	// between the node and the one it opened (one that fails some reads,
	// say).
	wrapStore func(nodeStore) nodeStore
}

func (c *Config) setDefaults() {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.DataDir, "./parley-data")
	def(&c.Listen, "127.0.0.1:5222")
	def(&c.HTTP, "127.0.0.1:8080")
	def(&c.Admin, "127.0.0.1:9090")
	if c.Workers <= 0 {
		c.Workers = 4 * runtime.GOMAXPROCS(0)
	}
	if c.Pollers <= 0 {
		c.Pollers = runtime.GOMAXPROCS(0)
	}
	if c.IdleCollect == 0 {
		c.IdleCollect = 5 * time.Second
	}
	if c.TicketTTL == 0 {
		c.TicketTTL = 7 * 24 * time.Hour
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	c.Limits = c.Limits.withDefaults()
}

// counts are the figures the admin endpoints read back directly; every
// other figure is a Prometheus metric in mx.
type counts struct {
	open, logins, commits atomic.Int64
	// commitsStarted and commitsDone bracket every commit, its callback's
	// posts included, so that a handover can wait for none in flight.
	commitsStarted, commitsDone atomic.Int64
	// maxLag is the longest a session waited for a worker since the
	// monitor last asked (nanoseconds): the actor system's loop lag.
	maxLag atomic.Int64
}

// nodeStore is what a node needs of its store: the Store contract, and the
// figures the admin endpoints and the monitor show. Pebble (one node) and
// store/jetstream (a cluster) both provide it.
type nodeStore interface {
	store.Store
	// MemoryStats is the store's own memory beside the Go heap.
	MemoryStats() (memtables, blockCache int64)
	// QueueDepths is the offline queues' total length and the longest.
	QueueDepths() (total int64, maxUser string, maxLen int)
}

// Node is one running Parley server.
type Node struct {
	cfg     Config
	log     *slog.Logger
	key     noise.Keypair
	static  *noise.Static    // key, parsed once for every handshake
	tickets *noise.TicketKey // nil when tickets are off
	store   nodeStore
	ids     *idGen
	router  routes
	cluster *clusterState // nil for a node alone
	pool    *pool
	engine  *nbio.Engine
	counts  counts
	settler *settler // nil with IdleCollect off
	mx      *monitor.Metrics
	// remoteAccounts: the store's account reads cross the network (a
	// cluster), so logins read accounts off the event loop (stageLooking,
	// and the re-check of prove).
	remoteAccounts bool
	// lazyAcks: the store holds acks back to share an fsync (Pebble's
	// lazy batches), so a fresh login delivers after a barrier (see prove).
	lazyAcks bool
	monitor  *monitor.Monitor
	media    *media.Service

	// smallGroup says whether the group commit being reported is small
	// enough for its callbacks to run the sessions they wake themselves
	// (see commit); set by the committer before it reports a group.
	smallGroup atomic.Bool

	// sessionCfg is every session core's configuration, shared rather
	// than copied into each.
	sessionCfg session.Config

	// frames are decoded client frames, recycled once their session has
	// stepped them.
	frames sync.Pool

	// proving holds the logins answered and not yet proven (*conn ->
	// provingLogin; see stageProving). Kept here rather than in conn,
	// which would grow on every connection for a moment of each.
	proving sync.Map
	// replays refuses first handshake messages seen before.
	replays *replayFilter
	// admission holds connections to their limits.
	admission *admission
	// failures throttles addresses whose logins keep failing; loginLogs
	// bounds the log lines of refused logins.
	failures  *failThrottle
	loginLogs logBudget

	nativeLn          net.Listener
	addrs             nbioAddrs // see adopt
	writeQueue        nbioWriteQueue
	connType          nbioConnType
	loopStarted       time.Time
	httpLn, adminLn   net.Listener
	httpSrv, adminSrv *http.Server
	accounts          *account.Service

	started time.Time // for /admin/version

	handover   handover                 // see handover.go
	acceptGate atomic.Pointer[handover] // set while a handover pauses accepting

	stopBG context.CancelFunc // stops the background loops
	// storeOpened is when Start had the store open (after started).
	storeOpened time.Time
	clusterMx   *clusterMetrics // nil for a node alone
	bg          sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// Start opens the store, loads or creates the server key and starts every
// listener. The node runs until Close.
func Start(ctx context.Context, cfg Config) (_ *Node, err error) {
	cfg.setDefaults()
	if !monitor.Loopback(cfg.Admin) && cfg.AdminToken == "" {
		return nil, fmt.Errorf("admin listener %s is not on loopback: set an admin token (--admin-token) so that only operators reach it", cfg.Admin)
	}
	if err := CheckAdvertise(cfg.Listen, cfg.Advertise, cfg.Cluster != nil); err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	n := &Node{cfg: cfg, log: cfg.Log, router: newRouter(), mx: monitor.NewMetrics(reg), started: time.Now()}
	if cfg.IdleCollect > 0 {
		n.settler = newSettler()
	}
	if err := registerBuildInfo(reg); err != nil {
		return nil, err
	}
	n.frames.New = func() any { return new(wire.Frame) }
	n.replays = newReplayFilter(cfg.Limits.ReplayMemory, cfg.Limits.ReplayWindow)
	n.admission = newAdmission(&n.cfg.Limits)
	n.failures = newFailThrottle(cfg.Limits.FailedLoginsPerAddr, cfg.Limits.ThrottleKeys, time.Minute)
	n.loginLogs.perSecond = int64(cfg.Limits.LoginLogsPerSecond)
	defer func() {
		if err != nil {
			n.Close() // whatever was started before the failure
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	kp, created, err := noise.LoadOrCreateKeypair(filepath.Join(cfg.DataDir, "server.key"))
	if err != nil {
		return nil, err
	}
	n.key = kp
	if cfg.Cluster != nil {
		// The store, the server key and the ticket key are the cluster's.
		if n.clusterMx, err = newClusterMetrics(reg); err != nil {
			return nil, err
		}
		if err := n.joinCluster(ctx); err != nil {
			return nil, err
		}
		if st, ok := n.store.(*jetstream.Store); ok {
			if err := registerStoreCounters(reg, st); err != nil {
				return nil, err
			}
		}
	}
	if n.static, err = noise.NewStatic(n.key); err != nil {
		return nil, fmt.Errorf("server key %s: %w", filepath.Join(cfg.DataDir, "server.key"), err)
	}
	if cfg.TicketTTL > 0 {
		path := filepath.Join(cfg.DataDir, "ticket.key")
		secret, err := n.ticketSecret(path)
		if err != nil {
			return nil, err
		}
		if n.tickets, err = noise.NewTicketKey(secret, cfg.TicketTTL); err != nil {
			return nil, fmt.Errorf("ticket key %s: %w", path, err)
		}
		n.static.UseTickets(n.tickets)
	}
	if created {
		n.log.Info("generated server key", "path", filepath.Join(cfg.DataDir, "server.key"))
	}
	if n.store == nil { // a node alone: Pebble
		if err := n.openPebble(); err != nil {
			return nil, err
		}
	}
	if cfg.wrapStore != nil {
		n.store = cfg.wrapStore(n.store)
	}
	n.remoteAccounts = n.cluster != nil
	n.storeOpened = time.Now()
	n.ids = &idGen{st: n.store}
	n.sessionCfg = session.Config{
		Window:      cfg.Limits.Window,
		Now:         func() int64 { return time.Now().UnixNano() },
		NewID:       n.ids.next,
		IssueUpload: n.issueUpload,
		MaxReadIDs:  cfg.Limits.MaxReadIDs,
		ReadRate:    cfg.Limits.ReadRate,
		ReadBurst:   cfg.Limits.ReadBurst,
		// Reads over a bound (per frame, per time) count as limit hits.
		OnRefused: func(limit string) { n.mx.LimitHits.WithLabelValues(limit).Inc() },
	}
	n.pool = newPool(n, cfg.Workers)
	var nodeName string
	if cfg.Cluster != nil {
		nodeName = cfg.Cluster.Node
	}
	n.monitor, err = monitor.New(monitor.Config{
		Source:       n,
		Node:         nodeName,
		Metrics:      n.mx,
		Registry:     reg,
		Thresholds:   cfg.Alerts,
		Webhook:      cfg.AlertWebhook,
		Log:          n.log,
		AdminToken:   cfg.AdminToken,
		RequireToken: cfg.AdminToken != "",
	})
	if err != nil {
		return nil, fmt.Errorf("monitor: %w", err)
	}

	if err := n.listenNative(); err != nil {
		return nil, err
	}
	if err := n.publishNativeAddr(ctx); err != nil {
		return nil, err
	}
	if err := n.startHTTP(); err != nil {
		return nil, err
	}
	// The event loop starts last: nbio's goroutines clear the engine's
	// shutdown flag when they begin, so a Stop soon after Start can be
	// lost (and Stop then waits forever). Starting it last means a Start
	// that fails never has to stop a loop it just started; see also
	// loopSettle in Close.
	if err := n.startLoop(); err != nil {
		return nil, err
	}
	n.startBackground()
	n.log.Info("parley node started",
		"native", n.NativeAddr(), "http", n.HTTPURL(), "admin", n.AdminURL(),
		"data", cfg.DataDir, "server_key", fmt.Sprintf("%x", n.key.Public))
	return n, nil
}

// openPebble opens a lone node's store under its data directory.
func (n *Node) openPebble() error {
	pebble, err := store.OpenPebble(filepath.Join(n.cfg.DataDir, "store"), n.storeOptions(), n.log)
	if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EWOULDBLOCK) || (err != nil && strings.Contains(err.Error(), "lock held by current process")) {
		// Pebble's lock on its directory is taken: by another process
		// (flock's EAGAIN), or by this one (Pebble's own message).
		return fmt.Errorf("another parley server is using the data directory %s: stop it, or give this one another --data", n.cfg.DataDir)
	}
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	n.store = pebble // only now: a nil *Pebble in the interface would not be nil
	n.lazyAcks = true
	return nil
}

// listenNative opens the native listener early, so that port 0 works and
// its address is known before clients are told where to connect.
func (n *Node) listenNative() error {
	// Keep-alive finds peers gone without a FIN (see Limits.KeepAlive)
	// at no memory cost per connection.
	ka := net.KeepAliveConfig{Enable: n.cfg.Limits.KeepAlive > 0, Idle: n.cfg.Limits.KeepAlive, Interval: 15 * time.Second, Count: 4}
	if ln := n.inheritedListener("native"); ln != nil {
		if tl, ok := ln.(*net.TCPListener); ok {
			ln = keepAliveListener{tl, ka}
		}
		n.nativeLn = ln
		return nil
	}
	lc := net.ListenConfig{KeepAliveConfig: ka}
	if n.cfg.Limits.KeepAlive < 0 {
		lc.KeepAlive = -1
	}
	ln, err := lc.Listen(context.Background(), "tcp", n.cfg.Listen)
	if err != nil {
		return fmt.Errorf("native listener on %s: %w (is another server running? choose another address with --listen)", n.cfg.Listen, err)
	}
	n.nativeLn = ln
	return nil
}

// keepAliveListener gives each connection it accepts the configured
// keep-alive: a listener inherited in a live upgrade was made from a
// descriptor, with Go's default (15 s idle) instead of the ListenConfig's.
type keepAliveListener struct {
	*net.TCPListener
	ka net.KeepAliveConfig
}

func (l keepAliveListener) Accept() (net.Conn, error) {
	c, err := l.AcceptTCP()
	if err != nil {
		return nil, err
	}
	if err := c.SetKeepAliveConfig(l.ka); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// startLoop starts the event loop on the native listener.
func (n *Node) startLoop() error {
	n.addrs = findNbioAddrs()
	e := nbio.NewEngine(nbio.Config{
		Name:    "parley",
		Network: "tcp",
		Addrs:   []string{n.nativeLn.Addr().String()},
		NPoller: n.cfg.Pollers,
		// Unread replies (pongs, acks, deliveries) must not pile up
		// without bound for a client that never reads.
		MaxWriteBufferSize: n.cfg.Limits.MaxWriteBuffer,
		Listen:             func(string, string) (net.Listener, error) { return adoptingListener{n.nativeLn, n}, nil },
	})
	e.OnOpen(func(nc *nbio.Conn) {
		if _, gate := nc.Session().(*pollerGate); gate {
			return // the node's own (see handover.go)
		}
		n.mx.Accepted.Inc()
		n.mx.ConnectionsOpen.Inc()
		n.counts.open.Add(1)
		c, adopted := nc.Session().(*conn)
		if !adopted { // where nbio converts connections itself (see adopt)
			c = &conn{nc: nc, peer: makePeerAddr(nc.RemoteAddr())}
			nc.SetSession(c)
		}
		takenOver := c.stage.Load() == stageLoggedIn // in a live upgrade
		// One adopted at accept was admitted there (see adopt).
		if !adopted || takenOver {
			if limit := n.admission.admit(c.peer.AddrPort().Addr(), !takenOver); limit != "" {
				// Over a limit: closed before it costs a handshake. The
				// close callback sees stageUncounted and leaves the counts
				// alone.
				c.stage.Store(stageUncounted)
				n.mx.LimitHits.WithLabelValues(limit).Inc()
				nc.SetLinger(1, 0) // a reset, as in refuseAccepted
				nc.Close()
				return
			}
		}
		if takenOver {
			n.admission.loggedIn()
			if c.partial != nil {
				nc.SetReadDeadline(time.Now().Add(n.cfg.Limits.FrameTimeout))
			}
			return
		}
		nc.SetReadDeadline(time.Now().Add(n.cfg.Limits.HandshakeTimeout))
	})
	e.OnData(func(nc *nbio.Conn, data []byte) {
		switch c := nc.Session().(type) {
		case *conn:
			c.onData(n, data)
		case *pollerGate:
			c.onData()
		}
	})
	e.OnClose(func(nc *nbio.Conn, err error) {
		if _, gate := nc.Session().(*pollerGate); gate {
			return
		}
		n.mx.Closed.Inc()
		n.mx.ConnectionsOpen.Dec()
		n.counts.open.Add(-1)
		if c, ok := nc.Session().(*conn); ok {
			// nbio runs this callback from a list it reuses without
			// clearing, so the last thousand or so closed nbio Conns stay
			// reachable: do not let them keep their sessions too, through
			// the session or through the remote address (see adopt).
			nc.SetSession(nil)
			peer := c.peer
			n.addrs.trim(nc, n.nativeLn.Addr(), &peer)
			stage := c.stage.Load()
			if stage != stageUncounted {
				n.admission.closed(c.peer.AddrPort().Addr(), stage != stageLoggedIn && stage != stageFailed)
			}
			switch stage {
			case stageNew, stageRetry, stageLooking:
				// Closed before the handshake finished: the deadline, or
				// a peer that gave up. A lookup in flight finds the stage
				// moved on and stops.
				c.stage.CompareAndSwap(stageLooking, stageRefused)
				n.mx.HandshakeFailures.Timeout.Inc()
			case stageProving:
				// Answered, never proven: a replayed first message, or a
				// client gone right after the reply.
				n.proving.Delete(c)
				n.mx.HandshakeFailures.Unproven.Inc()
			case stageLoggedIn:
				if errors.Is(err, nbio.ErrReadTimeout) {
					// The only read deadline of a logged-in connection is
					// FrameTimeout's: it stopped in the middle of a message.
					n.mx.LimitHits.WithLabelValues("frame_timeout").Inc()
					n.log.Info("client cut off: it stopped in the middle of a message", "conn", c.id(), "limit", n.cfg.Limits.FrameTimeout)
				}
			}
			c.post(n.pool, event{kind: evClosed})
		}
	})
	if err := e.Start(); err != nil {
		return fmt.Errorf("start event loop: %w", err)
	}
	n.engine, n.loopStarted = e, time.Now()
	n.writeQueue = findNbioWriteQueue()
	n.connType = findNbioConnType()
	t := time.Now()
	if adopted := n.adoptInherited(); adopted > 0 {
		n.log.Info("live upgrade: connections taken over", "count", adopted,
			"store_open", n.storeOpened.Sub(n.started), "adopt", time.Since(t), "start", time.Since(n.started))
	}
	return nil
}

// loopSettle is how long Close lets a just-started event loop run before
// stopping it, so nbio's goroutines have begun and cannot lose the stop
// (see Start). Only a Close right after Start ever waits for it.
const loopSettle = 200 * time.Millisecond

func (n *Node) startHTTP() error {
	svc, err := account.NewService(account.Config{
		Accounts:      n.store,
		SMS:           n.smsGateway(),
		DefaultRegion: n.cfg.SMSDefaultRegion,
		PerNumber:     n.cfg.PerNumber,
		PerAddr:       n.cfg.PerAddr,
		ServerKey:     n.key.Public,
		NativeAddr:    n.AdvertisedAddr(),
		NativeAddrs:   n.nativeAddrs,
		Log:           n.log,
		OnRegistered: func(phone string, old, _ store.Account) {
			if old.Generation == 0 {
				return
			}
			if c := n.router.lookup(phone); c != nil {
				c.post(n.pool, event{kind: evKick, code: wire.Error_REGISTERED_ELSEWHERE, text: "this number was registered on another device"})
			}
			n.router.kickElsewhere(phone, wire.Error_REGISTERED_ELSEWHERE, "this number was registered on another device")
		},
	})
	if err != nil {
		return err
	}
	n.accounts = svc
	if n.httpLn, err = n.listen("http", n.cfg.HTTP); err != nil {
		return fmt.Errorf("HTTP listener on %s: %w (choose another address with --http)", n.cfg.HTTP, err)
	}
	if n.cfg.PublicURL == "" {
		n.cfg.PublicURL = "http://" + n.httpLn.Addr().String()
	}
	// A node alone keeps media in its data directory; a node of a cluster
	// in the cluster's bucket, with the cluster's token key (see
	// joinCluster), so that every node serves them.
	var blobs media.BlobStore
	var secret []byte
	if n.cluster != nil {
		blobs, secret = n.cluster.media, n.cluster.mediaSecret
	} else if secret, err = loadOrCreateSecret(filepath.Join(n.cfg.DataDir, "media.secret"), "outstanding upload tokens stop working"); err != nil {
		return err
	}
	n.media, err = media.New(media.Config{
		Dir:     filepath.Join(n.cfg.DataDir, "media"),
		Store:   blobs,
		Secret:  secret,
		MaxSize: n.cfg.MediaMaxSize,
		TTL:     n.cfg.MediaTTL,
		BaseURL: n.cfg.PublicURL,
		Log:     n.log,
		OnLimit: func(limit string) { n.mx.LimitHits.WithLabelValues(limit).Inc() },
	})
	if err != nil {
		return fmt.Errorf("media: %w", err)
	}
	// A message's media must be this server's (no links elsewhere, no
	// paths, no types it would not serve); set before any session starts.
	n.sessionCfg.CheckMedia = func(m *wire.Media) error { return n.media.CheckRef(m.Url, m.Id, m.Mime) }
	mux := http.NewServeMux()
	mux.Handle("/v1/media", n.media.Handler())
	mux.Handle("/v1/media/", n.media.Handler())
	mux.Handle("/", requestDeadline(n.cfg.Limits.HTTPRequestTimeout, svc.Handler()))
	if n.adminLn, err = n.listen("admin", n.cfg.Admin); err != nil {
		return fmt.Errorf("admin listener on %s: %w (choose another address with --admin)", n.cfg.Admin, err)
	}
	// The listener's read and write timeouts are sized for media (uploads
	// of 64 MiB on slow links); registration requests get the short
	// HTTPRequestTimeout (requestDeadline above).
	lim := n.cfg.Limits
	newServer := func(h http.Handler) *http.Server {
		return &http.Server{
			Handler:           h,
			ReadHeaderTimeout: lim.HTTPReadHeaderTimeout,
			ReadTimeout:       lim.HTTPReadTimeout,
			WriteTimeout:      lim.HTTPWriteTimeout,
			IdleTimeout:       lim.HTTPIdleTimeout,
			ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelWarn),
		}
	}
	n.httpSrv = newServer(mux)
	n.adminSrv = newServer(n.adminHandler())
	httpHits := n.mx.LimitHits.WithLabelValues("http_conns_per_addr")
	go n.httpSrv.Serve(limitPerAddr(n.httpLn, lim.HTTPConnsPerAddr, httpHits.Inc))
	go n.adminSrv.Serve(n.adminLn)
	return nil
}

func (n *Node) smsGateway() account.Gateway {
	if n.cfg.SMS != nil {
		return n.cfg.SMS
	}
	gw, _ := account.ParseGateway("log", account.HTTPGatewayConfig{}, n.log)
	return gw
}

// NativeAddr is the native listener's address.
func (n *Node) NativeAddr() string { return n.nativeLn.Addr().String() }

// AdvertisedAddr is the native address clients are told to dial:
// Config.Advertise, else NativeAddr.
func (n *Node) AdvertisedAddr() string {
	if n.cfg.Advertise != "" {
		return n.cfg.Advertise
	}
	return n.NativeAddr()
}

// CheckAdvertise refuses, before anything starts, a native address no
// client could dial: an advertise that is not HOST:PORT with a port, or,
// in a cluster (whose nodes hand each other's addresses to clients), no
// advertise and a listen address without a host (":5222",
// "0.0.0.0:5222": the listener takes every interface). Start checks it;
// parley serve checks it before joining a cluster, which takes longer.
func CheckAdvertise(listen, advertise string, cluster bool) error {
	if advertise != "" {
		host, port, err := net.SplitHostPort(advertise)
		if err != nil {
			return fmt.Errorf("--advertise %q: %w; give HOST:PORT", advertise, err)
		}
		if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 || host == "" {
			return fmt.Errorf("--advertise %q: want HOST:PORT with a host and a port 1-65535", advertise)
		}
		return nil
	}
	if !cluster {
		return nil
	}
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return nil // the listener reports it
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		return fmt.Errorf("--listen %q takes every interface, and the cluster would hand clients an address they cannot dial: give --advertise HOST:PORT (PARLEY_ADVERTISE), the address clients reach this node at", listen)
	}
	return nil
}

// HTTPURL is the public HTTP API's base URL.
func (n *Node) HTTPURL() string { return "http://" + n.httpLn.Addr().String() }

// AdminURL is the admin listener's base URL.
func (n *Node) AdminURL() string { return "http://" + n.adminLn.Addr().String() }

// issueUpload answers a session's UploadRequest.
func (n *Node) issueUpload(user string) (token, url string, expires int64) {
	tok, exp := n.media.IssueUploadToken(user)
	return tok, n.cfg.PublicURL + "/v1/media", exp.UnixNano()
}

// noteLag records how long a session waited for a worker.
func (n *Node) noteLag(ns int64) {
	for {
		cur := n.counts.maxLag.Load()
		if ns <= cur || n.counts.maxLag.CompareAndSwap(cur, ns) {
			return
		}
	}
}

// Totals implements monitor.Source.
func (n *Node) Totals() monitor.Totals {
	total, maxUser, maxLen := n.store.QueueDepths()
	return monitor.Totals{
		Connections:       int(n.counts.open.Load()),
		Sessions:          n.router.len(),
		Backlog:           n.pool.backlog(),
		QueueDepthTotal:   total,
		QueueDepthMaxUser: maxUser,
		QueueDepthMax:     maxLen,
		LoopLag:           time.Duration(n.counts.maxLag.Swap(0)),
	}
}

// queueLenCacher is a store whose QueueLen is a request (a cluster's) and
// that can say a queue's length from what it has seen, for the monitor.
type queueLenCacher interface {
	QueueLenCached(user string) (int, bool)
}

// EachSession implements monitor.Source: f sees every logged-in session.
//
// Mailbox is what an Erlang process's mailbox would hold: everything sent
// to the session and not yet handled. In Parley messages for a session wait
// in its durable queue, not in memory, once its flow-control window is
// full, so the mailbox is the actor's pending events plus the queued items
// not yet delivered. A slow receiver therefore shows a growing mailbox,
// exactly as in etop, while its memory stays flat.
func (n *Node) EachSession(f func(monitor.SessionStat, *monitor.Rates)) {
	n.router.each(func(c *conn) {
		events := 0
		c.mu.Lock()
		if c.mbox != nil {
			events = len(c.mbox.evs)
		}
		c.mu.Unlock()
		user := c.core.User() // set before the router could hand out c
		var queued int
		if q, ok := n.store.(queueLenCacher); ok {
			queued, _ = q.QueueLenCached(user) // no request per session per sample
		} else {
			queued, _ = n.store.QueueLen(user)
		}
		inflight := int(c.inflight.Load())
		f(monitor.SessionStat{
			User: user, Conn: &c.peer,
			MsgsIn: uint64(c.msgsIn.Load()), MsgsOut: uint64(c.msgsOut.Load()),
			Mailbox: events + max(0, queued-inflight), Inflight: inflight, Queued: queued,
		}, &c.rates)
	})
}

// PublicKey is the server's static Noise public key, which clients pin.
func (n *Node) PublicKey() []byte { return n.key.Public }

// SessionCount is the number of logged-in sessions.
func (n *Node) SessionCount() int { return n.router.len() }

// handOver starts next's deliveries once everything committed before it
// (its predecessor's acks, lazy ones included) is applied: an empty batch
// is done only after every batch committed before it is (see
// store.Store.Commit), so next's first read of the queue no longer holds
// what was acked.
func (n *Node) handOver(next *conn) {
	n.counts.commitsStarted.Add(1) // a live upgrade waits for it too
	n.store.Commit(&store.Batch{}, func(store.Result) {
		defer n.counts.commitsDone.Add(1)
		next.post(n.pool, event{kind: evDeliver})
	})
}

// commit hands a session's batch to the store. The callback runs on the
// store's committer goroutine: it routes every committed append to the
// recipient's live session (if any) and returns the result to the sender's
// mailbox. Routing here rather than in the sender's actor keeps delivery
// going even if the sender disconnects before its commit lands.
func (n *Node) commit(c *conn, b *store.Batch) {
	// An ack's batch (its erase and the delivered receipts it makes) is
	// lazy: the acking client waits for nothing, so it rides on the next
	// Send's fsync instead of paying for its own (see store.Batch.Lazy).
	b.Lazy = b.Dedup == nil && len(b.Acks) > 0
	start := time.Now()
	n.counts.commitsStarted.Add(1)
	n.store.Commit(b, func(r store.Result) {
		defer n.counts.commitsDone.Add(1)
		n.counts.commits.Add(1)
		n.mx.CommitLatency.Observe(time.Since(start).Seconds())
		// After a small group the committer runs the idle sessions it
		// wakes itself: at light load a worker's wake-up costs more than
		// their work. After a large one it leaves them to the pool, so as
		// not to hold up the next group.
		here := n.smallGroup.Load()
		if r.Err == nil && r.Dup == nil {
			if b.Dedup != nil {
				n.mx.MessagesIn.Add(float64(len(b.Appends)))
			} else {
				n.mx.Receipts.Add(float64(len(b.Appends)))
			}
			for i, a := range b.Appends {
				if to := n.router.lookup(a.To); to != nil {
					to.postFrom(n.pool, event{kind: evPush, seq: r.Seqs[i], data: a.Data}, here)
				} else {
					var loc uint64
					if i < len(r.Locs) {
						loc = r.Locs[i]
					}
					n.router.elsewhere(a.To, r.Seqs[i], loc, a.Data, b.Acks)
				}
			}
		} else if r.Dup != nil {
			// A resend of a message stored before. The push of the first
			// copy may never have happened: in a cluster its commit can
			// land after the request timed out (no push), or on a node
			// that died before routing it. Wake the recipients to read
			// their queues; a session that had it drops nothing new.
			for _, a := range b.Appends {
				if to := n.router.lookup(a.To); to != nil {
					to.postFrom(n.pool, event{kind: evPush, seq: wakeSeq}, here)
				} else {
					n.router.elsewhere(a.To, wakeSeq, 0, nil, nil)
				}
			}
		}
		c.postFrom(n.pool, event{kind: evCommitted, res: r}, here)
	})
}

// stopBackground stops the background loops and waits for them.
// startBackground starts the loops that stopBackground stops: the
// account sweeper, the monitor, the media sweeper.
func (n *Node) startBackground() {
	bgCtx, stop := context.WithCancel(context.Background())
	n.stopBG = stop
	n.every(bgCtx, time.Minute, func(now time.Time) { n.accounts.Sweep(now) })
	if n.settler != nil {
		n.every(bgCtx, n.cfg.IdleCollect, func(time.Time) { n.settler.settle() })
	}
	n.background(func() { n.monitor.Run(bgCtx) })
	n.background(func() {
		if err := n.media.Run(bgCtx); err != nil {
			n.log.Error("media sweeper stopped", "err", err)
		}
	})
	if cr, ok := n.router.(*clusterRouter); ok {
		n.background(func() { n.shareMediaLinks(bgCtx) })
		n.background(func() { n.sampleCluster(bgCtx, cr) })
		n.every(bgCtx, clusterSampleEvery, func(time.Time) { n.sampleCluster(bgCtx, cr) })
	}
}

func (n *Node) stopBackground() {
	if n.stopBG != nil {
		n.stopBG()
		n.bg.Wait()
	}
}

// maxInlineGroup is the largest group commit whose callbacks run the
// sessions they wake (see commit).
const maxInlineGroup = 4

// background runs f on a goroutine that Close waits for.
func (n *Node) background(f func()) {
	n.bg.Add(1)
	go func() {
		defer n.bg.Done()
		f()
	}()
}

// every runs f every d on one goroutine until ctx ends.
func (n *Node) every(ctx context.Context, d time.Duration, f func(time.Time)) {
	n.bg.Add(1)
	go func() {
		defer n.bg.Done()
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				f(now)
			}
		}
	}()
}

// Close shuts the node down: stop accepting, tell every session the server
// is going away, finish in-flight commits, close the store.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		var errs []error
		n.stopBackground()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, s := range []*http.Server{n.httpSrv, n.adminSrv} {
			if s != nil {
				errs = append(errs, s.Shutdown(ctx))
			}
		}
		if n.engine != nil {
			window := n.reconnectWindow()
			n.router.each(func(c *conn) {
				var after uint64 // ms; at least 1 when there is a window: 0 is no hint
				if window > 0 {
					after = 1 + uint64(mrand.N(window+time.Millisecond)/time.Millisecond)
				}
				c.post(n.pool, event{kind: evKick, code: wire.Error_SHUTTING_DOWN, text: "the server is stopping: reconnect", seq: after})
			})
			// Give the actors a moment to write their Close frames.
			for i := 0; i < 100 && n.router.len() > 0; i++ {
				time.Sleep(10 * time.Millisecond)
			}
			time.Sleep(loopSettle - time.Since(n.loopStarted)) // see loopSettle
			n.engine.Stop()
		} else if n.nativeLn != nil {
			n.nativeLn.Close()
		}
		n.router.close() // after the sessions, so their hints are released
		if n.store != nil {
			errs = append(errs, n.store.Close())
		}
		if n.pool != nil {
			n.pool.close()
		}
		n.closeErr = errors.Join(errs...)
		n.log.Info("parley node stopped")
	})
	return n.closeErr
}

// maxReconnectWindow bounds the wait a stopping node asks of its clients.
const maxReconnectWindow = time.Minute

// reconnectWindow is the time a stopping node spreads its clients'
// reconnects over: its connections at half the accept rate of the nodes
// that will take them (the other members of a cluster, this one's own
// rate for a node alone, which they come back to after its restart), so
// that the storm uses at most half of their accept budget (the rest is
// for their own users) and none of them is refused for it. Each client is
// told a uniform wait in [1 ms, window + 1 ms] in its Close frame. Zero
// (no hint: the client's own backoff) when accepts are not paced.
func (n *Node) reconnectWindow() time.Duration {
	rate := n.cfg.Limits.AcceptRate
	if rate <= 0 {
		return 0
	}
	receivers := 1
	if cr, ok := n.router.(*clusterRouter); ok {
		receivers = max(cr.beats.others(), 1)
	}
	conns := n.router.len()
	w := time.Duration(float64(conns) / (float64(rate*receivers) / 2) * float64(time.Second))
	return min(w, maxReconnectWindow)
}

// loadOrCreateSecret reads the 32-byte secret kept at path, creating it on
// first start so that what is sealed or signed with it survives restarts.
// lost says what a new secret would cost, for the error on a bad file.
func loadOrCreateSecret(path, lost string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		if len(b) != 32 {
			return nil, fmt.Errorf("secret file %s is %d bytes, want 32: remove it to make a new one (%s)", path, len(b), lost)
		}
		return b, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read secret: %w", err)
	}
	b = make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return nil, fmt.Errorf("write secret: %w", err)
	}
	return b, nil
}

// idGen hands out server message ids from blocks reserved durably in the
// store, so the store is touched once per block, not once per message, and
// a Send takes no lock: the current block is claimed from with an atomic
// add, and only the goroutine that finds it used up takes the mutex.
type idGen struct {
	st  store.Store
	mu  sync.Mutex // held while reserving the next block
	blk atomic.Pointer[idBlock]
}

type idBlock struct {
	next atomic.Uint64
	end  uint64
}

const idBlockSize = 1 << 16

func (g *idGen) next() uint64 {
	for {
		b := g.blk.Load()
		if b != nil {
			if id := b.next.Add(1) - 1; id < b.end {
				return id
			}
		}
		g.mu.Lock()
		if g.blk.Load() == b { // nobody replaced it meanwhile
			first, err := g.st.ReserveIDs(idBlockSize)
			if err != nil {
				g.mu.Unlock()
				// Without a durable block an id could repeat after a
				// crash; stopping is safer than a duplicate id.
				panic(fmt.Sprintf("reserve message ids: %v", err))
			}
			nb := &idBlock{end: first + idBlockSize}
			nb.next.Store(first)
			g.blk.Store(nb)
		}
		g.mu.Unlock()
	}
}
