package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/parleyhq/parley/noise"
	"github.com/parleyhq/parley/wire"
)

// Config configures a Client. Zero values mean the documented defaults.
type Config struct {
	// Addr is the server's native protocol address, host:port.
	Addr string
	// Addrs are more native addresses of the same server: a cluster's
	// nodes, as registration and GET /v1/server list them. The client
	// tries Addr and Addrs in turn, starting from a random one so that
	// clients spread over the nodes, and moves on to the next after a
	// failed attempt or a lost connection.
	Addrs []string
	// ServerKey is the server's pinned static public key (32 bytes).
	ServerKey []byte
	// Phone is the account's number in E.164.
	Phone string
	// Key is the device's static key pair: its credential.
	Key noise.Keypair
	// Agent names the client in the server's logs. Default "parley-go/1".
	Agent string
	// DialTimeout bounds one connection attempt, TCP connect and handshake
	// together. Default 10s.
	DialTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait between reconnection
	// attempts, which doubles from MinBackoff up to MaxBackoff, with jitter
	// so that clients dropped together do not return together.
	// Defaults 250ms and 30s.
	MinBackoff, MaxBackoff time.Duration
	// Reconnect makes the client reconnect after it loses its connection,
	// resending requests that were not answered (with their ids, so nothing
	// is stored twice). Without it a lost connection ends the client. It
	// never reconnects after REGISTERED_ELSEWHERE, REPLACED or a refused
	// login: those need the user. With it Dial, too, keeps trying (with
	// the same backoff) while every address fails for a reason that may
	// pass, until its context ends: a node of a cluster just killed, the
	// others electing the leaders of its streams, refuse logins with a
	// retryable error for some seconds.
	Reconnect bool
	// Log receives the client's diagnostics (reconnects, protocol
	// oddities). Default: discarded, since an SDK should not write to the
	// application's log unasked.
	Log *slog.Logger
}

func (cfg *Config) setDefaults() {
	if cfg.Agent == "" {
		cfg.Agent = "parley-go/1"
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 250 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	cfg.MaxBackoff = max(cfg.MaxBackoff, cfg.MinBackoff)
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
}

func (cfg *Config) check() error {
	switch {
	case len(cfg.addrs()) == 0:
		return errors.New("no server address (Config.Addr, Config.Addrs)")
	case cfg.Phone == "":
		return errors.New("no phone number (Config.Phone)")
	case len(cfg.ServerKey) != noise.KeyLen:
		return fmt.Errorf("server key is %d bytes, want %d (Config.ServerKey)", len(cfg.ServerKey), noise.KeyLen)
	case len(cfg.Key.Private) != noise.KeyLen || len(cfg.Key.Public) != noise.KeyLen:
		return fmt.Errorf("device key pair is %d+%d bytes, want %d+%d (Config.Key)", len(cfg.Key.Private), len(cfg.Key.Public), noise.KeyLen, noise.KeyLen)
	}
	return nil
}

// addrs is Addr and Addrs, without blanks and repeats.
func (cfg *Config) addrs() []string {
	var out []string
	for _, a := range append([]string{cfg.Addr}, cfg.Addrs...) {
		if a != "" && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// SendAck says a message is durable in the recipient's queue.
type SendAck struct {
	// ID is the message's id, chosen by this client.
	ID uint64
	// ServerID is the server's id for it; the recipient sees it too.
	ServerID uint64
	// TS is when the server accepted it, in unix nanoseconds.
	TS int64
}

// Time is TS as a time.Time.
func (a SendAck) Time() time.Time { return time.Unix(0, a.TS) }

// Incoming is one delivered queue item: exactly one of Message and Receipt
// is set (both nil only for an item of a kind this SDK does not know; ack it
// like any other).
type Incoming struct {
	// Seq is the item's position in this account's queue; pass it to Ack.
	Seq     uint64
	Message *wire.Message
	Receipt *wire.Receipt
}

// stableAfter is how long a connection must last before the reconnect
// backoff starts again from MinBackoff. A connection that dies right after
// login (a server that closes it over something this client keeps doing) is
// treated like a failed attempt, so it cannot cause a tight loop.
const stableAfter = 10 * time.Second

// dedupSize is how many server ids the client remembers to drop duplicate
// messages: far above the server's delivery window, the furthest a
// duplicate can trail its original.
const dedupSize = 8192

// Client is a device's connection to its Parley server. All methods are safe
// for concurrent use; Sends from many goroutines are pipelined on the one
// connection.
type Client struct {
	cfg Config
	log *slog.Logger
	// addrs are the server's native addresses; next is the one to dial
	// next. Only Dial, then the run goroutine, use them.
	addrs []string
	next  int
	// key is cfg.Key parsed, with the DH with the server's key computed
	// once for all the reconnects to come.
	key *noise.Static
	// resume is the last login's resumption ticket; reconnects present it.
	resume atomic.Pointer[noise.Resumption]

	// ctx ends when Close is called; it bounds reconnects and closes the
	// live connection.
	ctx    context.Context
	cancel context.CancelFunc

	ids     atomic.Uint64 // the last request id handed out
	callSeq atomic.Uint64 // orders calls, to resend them in issue order

	done    chan struct{} // closed once the client has ended (err is set)
	stopped chan struct{} // closed when the run goroutine has returned

	mu     sync.Mutex
	cn     *conn            // the live connection; nil while reconnecting
	calls  map[uint64]*call // requests waiting for their answer, by id
	err    error            // why the client ended
	inbox  []Incoming       // delivered, not yet returned by Recv
	wake   chan struct{}    // signals Recv that inbox grew or the client ended
	trk    tracker
	window uint32
}

// call is a request waiting for its answer.
type call struct {
	n     uint64 // issue order
	frame *wire.Frame
	res   chan result // buffered: the answer never waits for the caller
	on    *conn       // the connection it was last written to
}

type result struct {
	f   *wire.Frame
	err error
}

// Dial connects to the server and logs in. It makes one attempt: a refused
// login is a *LoginError, a server that rejects the handshake gives
// ErrHandshake, and anything else is the network's error. Once Dial has
// succeeded, Config.Reconnect governs what happens when the connection is
// lost.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	cfg.setDefaults()
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("parley client: %w", err)
	}
	key, err := noise.NewStatic(cfg.Key)
	if err == nil {
		err = key.Pin(cfg.ServerKey)
	}
	if err != nil {
		return nil, fmt.Errorf("parley client: %w (Config.Key, Config.ServerKey)", err)
	}
	c := &Client{
		key:     key,
		cfg:     cfg,
		log:     cfg.Log.With("user", cfg.Phone),
		done:    make(chan struct{}),
		stopped: make(chan struct{}),
		calls:   make(map[uint64]*call),
		wake:    make(chan struct{}, 1),
		trk:     newTracker(dedupSize),
		addrs:   cfg.addrs(),
	}
	c.next = rand.IntN(len(c.addrs))
	// A random start makes ids unique across runs of the same account
	// without storing a counter: the server dedups Sends by (sender, id),
	// so a reused id would be silently taken for a resend. 52 bits keep
	// ids exact in JSON numbers (JavaScript, jq) with room to count up.
	c.ids.Store(rand.Uint64() >> 12)
	c.ctx, c.cancel = context.WithCancel(context.Background())
	cn, err := c.connectAny(ctx)
	for attempt := 0; err != nil && cfg.Reconnect && transient(err, attempt) && ctx.Err() == nil; {
		wait := c.backoff(attempt)
		attempt++
		c.log.Warn("login failed on every address; trying again", "in", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
			cn, err = c.connectAny(ctx)
		case <-ctx.Done():
			t.Stop()
		}
	}
	if err != nil {
		c.cancel()
		return nil, err
	}
	c.publish(cn)
	c.log.Debug("logged in", "addr", cn.addr, "window", cn.window)
	go c.run(cn)
	return c, nil
}

// connectAny tries each address once, from the next one on, until one
// logs in. It stops early only where another address cannot help: a
// refused login, or ctx ending.
func (c *Client) connectAny(ctx context.Context) (*conn, error) {
	var errs []error
	for range c.addrs {
		cn, err := c.dialNext(ctx)
		if err == nil {
			return cn, nil
		}
		errs = append(errs, err)
		var le *LoginError
		if ctx.Err() != nil || errors.As(err, &le) && le.permanent() {
			return nil, err
		}
	}
	if len(errs) == 1 {
		return nil, errs[0]
	}
	return nil, errors.Join(errs...)
}

// transient reports whether a failure to log in, after attempt tries
// again, may pass by itself: not a refused login that would be refused
// again. A handshake the server closed unanswered after reading it is
// what a wrong server key gets (ErrHandshake), but also what a node
// dying may do: it is tried a few times (handshakeTries), then reported,
// so that a wrong key does not keep Dial waiting. A connection reset
// unread (a node shedding load: a reconnect storm paced) is not
// ErrHandshake, and is tried until it passes.
func transient(err error, attempt int) bool {
	var le *LoginError
	if errors.As(err, &le) && le.permanent() {
		return false
	}
	return !errors.Is(err, ErrHandshake) || attempt < handshakeTries
}

// handshakeTries is how many times Dial tries again (with Reconnect) after
// handshakes closed unanswered on every address.
const handshakeTries = 5

// dialNext makes one attempt on the next address, and moves next on past
// it if the attempt fails.
func (c *Client) dialNext(ctx context.Context) (*conn, error) {
	addr := c.addrs[c.next]
	cn, err := c.connect(ctx, addr)
	if err != nil {
		c.next = (c.next + 1) % len(c.addrs)
		return nil, err
	}
	cn.addr = addr
	return cn, nil
}

// Window is the most deliveries the server keeps unacknowledged, as it said
// at the last login.
func (c *Client) Window() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return int(c.window)
}

// NewID returns a fresh request id, for callers that want to know a
// message's id before sending it (to keep it in an outbox, and resend with
// SendWithID after a restart).
func (c *Client) NewID() uint64 {
	for {
		if id := c.ids.Add(1); id != 0 { // 0 is "no request" in Error frames
			return id
		}
	}
}

// Send sends body to the account to and returns once the server has stored
// it durably in the recipient's queue. Errors: *ServerError when the server
// refuses it (UNKNOWN_RECIPIENT, QUEUE_FULL, UNAVAILABLE when its cluster
// has no quorum, ...; Retryable says which may pass later), ctx's error,
// or why the client ended. When ctx ends first, or the refusal is
// retryable, the message may or may not have been stored; SendWithID with
// the same id finds out without storing it twice.
func (c *Client) Send(ctx context.Context, to string, body []byte) (SendAck, error) {
	return c.send(ctx, c.NewID(), false, to, body, nil)
}

// SendWithID is Send with an id the caller chose. The server stores one
// message per (sender, id): a second send with the same id returns the first
// one's SendAck and stores nothing. Ids must therefore be unique per
// account, not only per client (NewID gives such ids).
//
// The server looks up an id only when the Send is marked as a resend, and
// this client cannot know whether the caller's id was sent before (an
// outbox restored after a restart), so SendWithID always marks it: it costs
// the server one disk lookup more than Send, which marks only its own
// resends after a reconnect.
func (c *Client) SendWithID(ctx context.Context, id uint64, to string, body []byte) (SendAck, error) {
	return c.send(ctx, id, true, to, body, nil)
}

// send sends a message: body, media (may be nil), or both. resend marks
// an id that may have reached the server before (wire.Send.Resend).
func (c *Client) send(ctx context.Context, id uint64, resend bool, to string, body []byte, media *wire.Media) (SendAck, error) {
	switch {
	case id == 0:
		return SendAck{}, errors.New("send: id 0 is reserved: use NewID")
	case !isE164(to):
		return SendAck{}, fmt.Errorf("send: recipient %q is not an E.164 number (+, then the country code and number: up to 15 digits)", to)
	case len(body) > wire.MaxBody:
		return SendAck{}, fmt.Errorf("send: message is %d bytes, over the %d-byte limit: send large content as media (Upload, SendMedia)", len(body), wire.MaxBody)
	}
	f := &wire.Frame{Kind: &wire.Frame_Send{Send: &wire.Send{Id: id, To: to, Body: body, Media: media, Resend: resend}}}
	if media != nil {
		// The server would refuse it too, and close the connection for
		// a bad frame; say so here, before anything is sent.
		if err := wire.Validate(f); err != nil {
			return SendAck{}, fmt.Errorf("send media: %w", err)
		}
	}
	ans, err := c.do(ctx, id, f)
	if err != nil {
		return SendAck{}, fmt.Errorf("send to %s: %w", to, err)
	}
	a := ans.GetSendAck()
	if a == nil {
		return SendAck{}, fmt.Errorf("send to %s: server answered with %T, not a SendAck", to, ans.Kind)
	}
	return SendAck{ID: id, ServerID: a.ServerId, TS: a.Ts}, nil
}

// MarkRead tells the sender from that its messages ids (the sender's ids,
// Message.Id) were read; the sender gets a READ receipt. It returns once the
// server has stored the receipt. Should the connection drop before the
// answer, the request is sent again after the reconnect, so the sender may
// get the same read receipt twice; receipts are safe to apply twice.
func (c *Client) MarkRead(ctx context.Context, from string, ids []uint64) error {
	if len(ids) == 0 {
		return errors.New("mark read: no message ids")
	}
	if !isE164(from) {
		return fmt.Errorf("mark read: sender %q is not an E.164 number", from)
	}
	// The protocol bounds one Read; longer lists go in several.
	for chunk := range slices.Chunk(ids, wire.MaxReadIDs) {
		id := c.NewID()
		f, err := c.do(ctx, id, &wire.Frame{Kind: &wire.Frame_Read{Read: &wire.Read{Id: id, To: from, Ids: chunk}}})
		if err != nil {
			return fmt.Errorf("mark read for %s: %w", from, err)
		}
		if f.GetOk() == nil {
			return fmt.Errorf("mark read for %s: server answered with %T, not Ok", from, f.Kind)
		}
	}
	return nil
}

// isE164 checks the shape of a phone number the server would accept. The
// check is local because a frame the server cannot accept closes the whole
// connection, and with Reconnect the frame would be resent on every new one.
func isE164(s string) bool {
	if len(s) < 2 || len(s) > wire.MaxPhone || s[0] != '+' {
		return false
	}
	for i := 1; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// Ping makes a round trip to the server.
func (c *Client) Ping(ctx context.Context) error {
	id := c.NewID()
	f, err := c.do(ctx, id, &wire.Frame{Kind: &wire.Frame_Ping{Ping: &wire.Ping{Id: id}}})
	if err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	if f.GetPong() == nil {
		return fmt.Errorf("ping: server answered with %T, not Pong", f.Kind)
	}
	return nil
}

// do sends request f (whose id is id) and waits for its answer. While the
// client reconnects, the request stays registered and the new connection
// sends it again: that is what makes a Send survive a lost connection.
func (c *Client) do(ctx context.Context, id uint64, f *wire.Frame) (*wire.Frame, error) {
	cl := &call{n: c.callSeq.Add(1), frame: f, res: make(chan result, 1)}
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	if _, busy := c.calls[id]; busy {
		c.mu.Unlock()
		return nil, fmt.Errorf("request id %d is already waiting for its answer", id)
	}
	c.calls[id] = cl
	cn := c.cn
	cl.on = cn
	c.mu.Unlock()
	if cn != nil {
		// A failed write closes the connection; the request is resent
		// on the next one, or answered with the client's end.
		_ = cn.write(f)
	}
	select {
	case r := <-cl.res:
		return r.f, r.err
	case <-ctx.Done():
		c.mu.Lock()
		if c.calls[id] == cl {
			delete(c.calls, id)
		}
		c.mu.Unlock()
		select {
		case r := <-cl.res: // answered while we gave up: take it
			return r.f, r.err
		default:
			return nil, ctx.Err()
		}
	}
}

// Recv returns the next delivered item. Each item stays in the server's
// queue until acked (Ack), and comes again after a reconnect until then;
// Recv does not return an item twice. When the server ends the client
// (REGISTERED_ELSEWHERE, ...), Recv returns the items already received, then
// the reason; after Close it returns ErrClosed.
func (c *Client) Recv(ctx context.Context) (Incoming, error) {
	for {
		c.mu.Lock()
		if len(c.inbox) > 0 {
			in := c.inbox[0]
			c.inbox[0] = Incoming{}
			c.inbox = c.inbox[1:]
			if len(c.inbox) == 0 {
				c.inbox = nil
			} else {
				c.signal() // another Recv may be waiting
			}
			c.trk.give(in.Seq)
			c.mu.Unlock()
			return in, nil
		}
		err := c.err
		c.mu.Unlock()
		if err != nil {
			return Incoming{}, err
		}
		select {
		case <-c.wake:
		case <-c.done:
		case <-ctx.Done():
			return Incoming{}, ctx.Err()
		}
	}
}

// signal wakes one waiting Recv; c.mu is held.
func (c *Client) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Ack acknowledges every item with a sequence number <= seq that Recv has
// returned: the server erases them (and tells the senders of messages among
// them that they were delivered). It does not wait for an answer; the
// protocol has none. Acking items Recv has not returned yet is cut down to
// what it has returned.
func (c *Client) Ack(seq uint64) error {
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return err
	}
	c.trk.ack(seq)
	cn := c.cn
	c.mu.Unlock()
	if cn != nil {
		c.flushAck(cn)
	}
	return nil
}

// flushAck sends the ack level to cn if cn may be told more than it has
// been. An ack can only name seqs this connection delivered (the server
// closes the session otherwise), so after a reconnect the level is sent as
// far as redelivery has come.
func (c *Client) flushAck(cn *conn) {
	c.mu.Lock()
	target := min(c.trk.level, cn.delivered)
	if c.cn != cn || target <= cn.ackSent {
		c.mu.Unlock()
		return
	}
	cn.ackSent = target
	c.mu.Unlock()
	// Two flushes may write out of order; the server ignores an ack below
	// one it has, so only the highest matters.
	_ = cn.write(&wire.Frame{Kind: &wire.Frame_Ack{Ack: &wire.Ack{Seq: target}}})
}

// Done is closed when the client has ended; Err says why.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err is why the client ended (ErrClosed after Close), or nil while it runs.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close ends the client: it closes the connection and fails waiting calls
// with ErrClosed. Unacked deliveries stay in the server's queue.
func (c *Client) Close() error {
	c.cancel() // closes the live connection and stops reconnecting
	<-c.stopped
	return nil
}

// publish makes cn the live connection and resends on it every request not
// yet answered, in the order they were issued. cn's write lock is held
// throughout so that no new request overtakes the resent ones.
func (c *Client) publish(cn *conn) {
	cn.stopClose = context.AfterFunc(c.ctx, func() { cn.nc.Close() })
	cn.wmu.Lock()
	defer cn.wmu.Unlock()
	c.mu.Lock()
	c.cn = cn
	c.window = cn.window
	var resend []*call
	for _, cl := range c.calls {
		if cl.on != cn {
			cl.on = cn
			if s := cl.frame.GetSend(); s != nil && !s.Resend {
				// The server may have stored it already, so this copy is
				// marked for a lookup. A copy, not a change: the first
				// write may still be marshalling the original.
				cl.frame = &wire.Frame{Kind: &wire.Frame_Send{Send: &wire.Send{
					Id: s.Id, To: s.To, Body: s.Body, Media: s.Media, Resend: true,
				}}}
			}
			resend = append(resend, cl)
		}
	}
	c.mu.Unlock()
	slices.SortFunc(resend, func(a, b *call) int { return cmpUint(a.n, b.n) })
	for _, cl := range resend {
		if err := cn.writeLocked(cl.frame); err != nil {
			return // the reader will see the closed connection
		}
	}
	if len(resend) > 0 {
		c.log.Info("resent unanswered requests after reconnecting", "count", len(resend))
	}
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// run is the client's one goroutine: it reads the live connection, and when
// the connection is lost it reconnects or ends the client.
func (c *Client) run(cn *conn) {
	defer close(c.stopped)
	attempt := 0
	for {
		err := c.serve(cn)
		cn.stopClose()
		cn.nc.Close()
		c.mu.Lock()
		if c.cn == cn {
			c.cn = nil
		}
		c.mu.Unlock()
		if c.ctx.Err() != nil {
			c.end(ErrClosed)
			return
		}
		var ce *CloseError
		if errors.As(err, &ce) && ce.terminal() {
			c.end(err)
			return
		}
		if !c.cfg.Reconnect {
			c.end(fmt.Errorf("connection to %s lost: %w", cn.addr, err))
			return
		}
		if time.Since(cn.since) >= stableAfter {
			attempt = 0
		}
		// The node may be gone: the first try goes to another address,
		// picked at random so that a stopped node's clients spread over
		// the others instead of all landing on the next one.
		if n := len(c.addrs); n > 1 && c.addrs[c.next] == cn.addr {
			c.next = (c.next + 1 + rand.IntN(n-1)) % n
		}
		// A stopping server says when to come back (it spreads its
		// clients out): the first try waits that, not the backoff.
		var hint time.Duration
		if ce != nil && ce.Code == wire.Error_SHUTTING_DOWN {
			hint = ce.ReconnectAfter
		}
		c.log.Info("connection lost: reconnecting", "addr", cn.addr, "err", err, "hint", hint)
		cn, err = c.reconnect(&attempt, hint)
		if err != nil {
			c.end(err)
			return
		}
	}
}

// reconnect dials until it logs in, waiting a growing, jittered backoff
// before each attempt (the first waits hint instead, when the server gave
// one), each attempt on the address after the last one tried. It gives
// up only on a refused login or Close.
func (c *Client) reconnect(attempt *int, hint time.Duration) (*conn, error) {
	for {
		wait := c.backoff(*attempt)
		if hint > 0 {
			wait, hint = min(hint, c.cfg.MaxBackoff), 0
		}
		*attempt++
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-c.ctx.Done():
			t.Stop()
			return nil, ErrClosed
		}
		addr := c.addrs[c.next]
		cn, err := c.dialNext(c.ctx)
		if err == nil {
			c.publish(cn)
			c.log.Info("reconnected", "addr", addr, "attempt", *attempt)
			return cn, nil
		}
		if c.ctx.Err() != nil {
			return nil, ErrClosed
		}
		var le *LoginError
		if errors.As(err, &le) && le.permanent() {
			return nil, err
		}
		c.log.Warn("reconnect failed", "addr", addr, "attempt", *attempt, "err", err)
	}
}

// backoff is the wait before reconnection attempt n (from 0): uniform in
// [MinBackoff, min(MaxBackoff, MinBackoff*2^(n+1))]. The jitter spreads out
// clients that lost their connections together (a server restart), so they
// do not all come back in the same instant.
func (c *Client) backoff(n int) time.Duration {
	lo, hi := c.cfg.MinBackoff, c.cfg.MaxBackoff
	ceil := lo
	for i := 0; i <= n && ceil < hi; i++ {
		ceil *= 2
	}
	ceil = min(ceil, hi)
	if ceil <= lo {
		return lo
	}
	return lo + rand.N(ceil-lo+1)
}

// end ends the client with err: waiting calls fail with it, and Recv
// returns it once the inbox is drained.
func (c *Client) end(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	calls := c.calls
	c.calls = make(map[uint64]*call)
	c.cn = nil
	err = c.err
	if errors.Is(err, ErrClosed) {
		// The application closed the client: it wants no more items, and
		// the server keeps the unacked ones for the next connection.
		clear(c.inbox)
		c.inbox = nil
	}
	c.mu.Unlock()
	c.cancel()
	close(c.done)
	for _, cl := range calls {
		cl.res <- result{err: err}
	}
	if !errors.Is(err, ErrClosed) {
		c.log.Info("client ended", "err", err)
	}
}

// serve reads and dispatches frames until the connection fails or the
// server closes it.
func (c *Client) serve(cn *conn) error {
	var buf []byte
	for {
		f, b, err := cn.readFrame(buf)
		buf = b
		if err != nil {
			return err
		}
		if err := c.dispatch(cn, f); err != nil {
			return err
		}
		// Acks for redeliveries wait until the reader has caught up with
		// what arrived, so a burst of them costs one Ack frame.
		if cn.br.Buffered() == 0 {
			c.flushAck(cn)
		}
	}
}

// dispatch handles one frame from the server. It returns an error for a
// Close frame: the server closes the connection after it.
func (c *Client) dispatch(cn *conn, f *wire.Frame) error {
	switch k := f.Kind.(type) {
	case *wire.Frame_SendAck:
		c.answer(k.SendAck.GetId(), result{f: f})
	case *wire.Frame_Ok:
		c.answer(k.Ok.GetId(), result{f: f})
	case *wire.Frame_Pong:
		c.answer(k.Pong.GetId(), result{f: f})
	case *wire.Frame_UploadToken:
		c.answer(k.UploadToken.GetId(), result{f: f})
	case *wire.Frame_Error:
		e := k.Error
		if e.GetId() == 0 {
			c.log.Warn("server error", "code", e.GetCode().String(), "text", e.GetText())
			return nil
		}
		if e.GetCode() == wire.Error_SHUTTING_DOWN && c.cfg.Reconnect {
			// The server could not store it because it is stopping; the
			// request stays registered and goes out again, same id, on
			// the next connection.
			return nil
		}
		c.answer(e.GetId(), result{err: &ServerError{Code: e.GetCode(), Text: e.GetText()}})
	case *wire.Frame_Deliver:
		c.deliver(cn, k.Deliver)
	case *wire.Frame_Close:
		return &CloseError{Code: k.Close.GetCode(), Text: k.Close.GetText(),
			ReconnectAfter: time.Duration(k.Close.GetReconnectAfterMs()) * time.Millisecond}
	default:
		c.log.Warn("ignoring unexpected frame from server", "kind", fmt.Sprintf("%T", f.Kind))
	}
	return nil
}

// answer hands r to the call waiting for id. An answer nobody waits for is
// normal: its caller gave up, or it answers a resend of something already
// answered.
func (c *Client) answer(id uint64, r result) {
	c.mu.Lock()
	cl := c.calls[id]
	delete(c.calls, id)
	c.mu.Unlock()
	if cl == nil {
		c.log.Debug("answer to no waiting request", "id", id)
		return
	}
	cl.res <- r
}

func (c *Client) deliver(cn *conn, d *wire.Deliver) {
	in := Incoming{Seq: d.GetSeq(), Message: d.GetItem().GetMessage(), Receipt: d.GetItem().GetReceipt()}
	c.mu.Lock()
	defer c.mu.Unlock()
	cn.delivered = max(cn.delivered, in.Seq)
	if !c.trk.deliver(in.Seq, in.Message.GetServerId()) {
		c.log.Debug("dropped duplicate delivery", "seq", in.Seq)
		return
	}
	// The inbox needs no bound of its own: the server keeps at most its
	// window of items unacked, and everything here is unacked.
	c.inbox = append(c.inbox, in)
	c.signal()
}
