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
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lesismal/nbio"

	"github.com/parleyhq/parley/account"
	"github.com/parleyhq/parley/noise"
	"github.com/parleyhq/parley/store"
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
	// Window is the most deliveries a session keeps unacknowledged.
	// Default 256.
	Window int
	// Workers is the size of the session worker pool. Default 4 x GOMAXPROCS.
	Workers int
	// Pollers is the number of event-loop goroutines. Default GOMAXPROCS.
	Pollers int
	// MaxQueueLen bounds one user's offline queue. Default 100000.
	MaxQueueLen int
	// MaxQueueAge bounds how long an item waits. Default 30 days.
	MaxQueueAge time.Duration
	// HandshakeTimeout closes connections that do not complete the
	// handshake in time. Default 10s.
	HandshakeTimeout time.Duration
	// FrameTimeout closes logged-in connections that stop in the middle
	// of a message for this long. Default 30s.
	FrameTimeout time.Duration
	// Log receives the node's structured log. Default slog.Default().
	Log *slog.Logger
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
	if c.Window <= 0 {
		c.Window = 256
	}
	if c.Workers <= 0 {
		c.Workers = 4 * runtime.GOMAXPROCS(0)
	}
	if c.Pollers <= 0 {
		c.Pollers = runtime.GOMAXPROCS(0)
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = 10 * time.Second
	}
	if c.FrameTimeout <= 0 {
		c.FrameTimeout = 30 * time.Second
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
}

// metrics are the node's counters; exported on the admin listener.
type metrics struct {
	accepted, closed                atomic.Int64
	handshakes, handshakeFailures   atomic.Int64
	logins, loginFailures, badInput atomic.Int64
	commits, commitErrors, expired  atomic.Int64
	pushes                          atomic.Int64
}

// Node is one running Parley server.
type Node struct {
	cfg     Config
	log     *slog.Logger
	key     noise.Keypair
	store   *store.Pebble
	ids     *idGen
	router  *router
	pool    *pool
	engine  *nbio.Engine
	metrics metrics

	nativeLn          net.Listener
	httpLn, adminLn   net.Listener
	httpSrv, adminSrv *http.Server
	accounts          *account.Service

	stopBG context.CancelFunc // stops the background loops
	bg     sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// Start opens the store, loads or creates the server key and starts every
// listener. The node runs until Close.
func Start(ctx context.Context, cfg Config) (n *Node, err error) {
	cfg.setDefaults()
	n = &Node{cfg: cfg, log: cfg.Log, router: newRouter()}
	defer func() {
		if err != nil {
			n.Close()
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
	if created {
		n.log.Info("generated server key", "path", filepath.Join(cfg.DataDir, "server.key"))
	}
	n.store, err = store.OpenPebble(filepath.Join(cfg.DataDir, "store"), store.Options{
		MaxQueueLen: cfg.MaxQueueLen,
		MaxAge:      cfg.MaxQueueAge,
		OnExpire: func(user string, it store.Item) {
			n.metrics.expired.Add(1)
			n.log.Warn("queue item expired undelivered", "user", user, "seq", it.Seq, "queued", time.Unix(0, it.TS))
		},
	}, n.log)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	n.ids = &idGen{st: n.store}
	n.pool = newPool(cfg.Workers)

	if err := n.startNative(); err != nil {
		return nil, err
	}
	if err := n.startHTTP(); err != nil {
		return nil, err
	}
	bgCtx, stop := context.WithCancel(context.Background())
	n.stopBG = stop
	n.every(bgCtx, time.Minute, func(now time.Time) { n.accounts.Sweep(now) })
	n.log.Info("parley node started",
		"native", n.NativeAddr(), "http", n.HTTPURL(), "admin", n.AdminURL(),
		"data", cfg.DataDir, "server_key", fmt.Sprintf("%x", n.key.Public))
	return n, nil
}

func (n *Node) startNative() error {
	ln, err := net.Listen("tcp", n.cfg.Listen)
	if err != nil {
		return fmt.Errorf("native listener on %s: %w (is another server running? choose another address with --listen)", n.cfg.Listen, err)
	}
	n.nativeLn = ln
	e := nbio.NewEngine(nbio.Config{
		Name:    "parley",
		Network: "tcp",
		Addrs:   []string{ln.Addr().String()},
		NPoller: n.cfg.Pollers,
		// The listener is made above so that port 0 works and its address
		// is known before clients are told where to connect.
		Listen: func(string, string) (net.Listener, error) { return wrapListener(ln), nil },
	})
	e.OnOpen(func(nc *nbio.Conn) {
		n.metrics.accepted.Add(1)
		c := &conn{n: n, nc: nc}
		nc.SetSession(c)
		nc.SetReadDeadline(time.Now().Add(n.cfg.HandshakeTimeout))
	})
	e.OnData(func(nc *nbio.Conn, data []byte) {
		if c, ok := nc.Session().(*conn); ok {
			c.onData(data)
		}
	})
	e.OnClose(func(nc *nbio.Conn, err error) {
		n.metrics.closed.Add(1)
		if c, ok := nc.Session().(*conn); ok {
			c.post(event{kind: evClosed})
		}
	})
	if err := e.Start(); err != nil {
		return fmt.Errorf("start event loop: %w", err)
	}
	n.engine = e
	return nil
}

func (n *Node) startHTTP() error {
	svc, err := account.NewService(account.Config{
		Accounts:      n.store,
		SMS:           n.smsGateway(),
		DefaultRegion: n.cfg.SMSDefaultRegion,
		PerNumber:     n.cfg.PerNumber,
		PerAddr:       n.cfg.PerAddr,
		ServerKey:     n.key.Public,
		NativeAddr:    n.NativeAddr(),
		Log:           n.log,
		OnRegistered: func(phone string, old, _ store.Account) {
			if old.Generation == 0 {
				return
			}
			if c := n.router.lookup(phone); c != nil {
				c.post(event{kind: evKick, code: wire.Error_REGISTERED_ELSEWHERE, text: "this number was registered on another device"})
			}
		},
	})
	if err != nil {
		return err
	}
	n.accounts = svc
	if n.httpLn, err = net.Listen("tcp", n.cfg.HTTP); err != nil {
		return fmt.Errorf("HTTP listener on %s: %w (choose another address with --http)", n.cfg.HTTP, err)
	}
	if n.adminLn, err = net.Listen("tcp", n.cfg.Admin); err != nil {
		return fmt.Errorf("admin listener on %s: %w (choose another address with --admin)", n.cfg.Admin, err)
	}
	n.httpSrv = &http.Server{Handler: svc.Handler(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(n.log.Handler(), slog.LevelWarn)}
	n.adminSrv = &http.Server{Handler: n.adminHandler(), ReadHeaderTimeout: 10 * time.Second}
	go n.httpSrv.Serve(n.httpLn)
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

// HTTPURL is the public HTTP API's base URL.
func (n *Node) HTTPURL() string { return "http://" + n.httpLn.Addr().String() }

// AdminURL is the admin listener's base URL.
func (n *Node) AdminURL() string { return "http://" + n.adminLn.Addr().String() }

// PublicKey is the server's static Noise public key, which clients pin.
func (n *Node) PublicKey() []byte { return n.key.Public }

// Sessions is the number of logged-in sessions.
func (n *Node) Sessions() int { return n.router.len() }

// commit hands a session's batch to the store. The callback runs on the
// store's committer goroutine: it routes every committed append to the
// recipient's live session (if any) and returns the result to the sender's
// mailbox. Routing here rather than in the sender's actor keeps delivery
// going even if the sender disconnects before its commit lands.
func (n *Node) commit(c *conn, b *store.Batch) {
	n.store.Commit(b, func(r store.Result) {
		n.metrics.commits.Add(1)
		if r.Err != nil {
			n.metrics.commitErrors.Add(1)
		} else if r.Dup == nil {
			for i, a := range b.Appends {
				if to := n.router.lookup(a.To); to != nil {
					n.metrics.pushes.Add(1)
					to.post(event{kind: evPush, seq: r.Seqs[i], data: a.Data})
				}
			}
		}
		c.post(event{kind: evCommitted, res: r})
	})
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
		if n.stopBG != nil {
			n.stopBG()
			n.bg.Wait()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, s := range []*http.Server{n.httpSrv, n.adminSrv} {
			if s != nil {
				errs = append(errs, s.Shutdown(ctx))
			}
		}
		if n.engine != nil {
			n.router.each(func(c *conn) {
				c.post(event{kind: evKick, code: wire.Error_SHUTTING_DOWN, text: "the server is restarting: reconnect"})
			})
			// Give the actors a moment to write their Close frames.
			for i := 0; i < 100 && n.router.len() > 0; i++ {
				time.Sleep(10 * time.Millisecond)
			}
			n.engine.Stop()
		} else if n.nativeLn != nil {
			n.nativeLn.Close()
		}
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

// idGen hands out server message ids from blocks reserved durably in the
// store, so the store is touched once per block, not once per message.
type idGen struct {
	st       store.Store
	mu       sync.Mutex
	cur, end uint64
}

const idBlock = 1 << 16

func (g *idGen) next() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cur == g.end {
		first, err := g.st.ReserveIDs(idBlock)
		if err != nil {
			// Without a durable block an id could repeat after a crash;
			// stopping is safer than a duplicate id.
			panic(fmt.Sprintf("reserve message ids: %v", err))
		}
		g.cur, g.end = first, first+idBlock
	}
	id := g.cur
	g.cur++
	return id
}
