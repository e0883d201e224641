package node

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lesismal/nbio"

	"github.com/parleyhq/parley/monitor"
	"github.com/parleyhq/parley/noise"
	"github.com/parleyhq/parley/session"
	"github.com/parleyhq/parley/store"
	"github.com/parleyhq/parley/wire"
)

type evKind uint8

const (
	// evStart makes the session live: it handles its client's frames and
	// is the one the router finds. evDeliver then starts its deliveries;
	// a login that replaced a live one gets it only once its predecessor
	// has stopped (see handOver).
	evStart evKind = iota + 1
	evDeliver
	evFrame
	evCommitted
	evPush
	evKick
	evClosed
)

// event is one entry of a session's mailbox.
type event struct {
	kind evKind
	code wire.Error_Code
	// size, on an evFrame, is the bytes of the message it came in: the
	// frame holds about as much until the session has run (see
	// Limits.MaxMailboxBytes).
	size int32
	// seq is a store seq; on an evKick, the reconnect hint of the Close
	// frame in milliseconds (the field is free there, and events are
	// kept small).
	seq   uint64
	frame *wire.Frame
	data  []byte
	res   store.Result
	text  string
	// next, on an evKick from a newer login, is that login's connection:
	// the kicked session hands over to it (see handOver).
	next *conn
}

// conn is one client connection and the actor that runs its session.
//
// Fields are owned by one side at a time, which is why most need no lock:
// the event loop's poller goroutine owns the read side (partial, rx,
// secured, failed); the worker running the actor owns the session (tx,
// core, live); mu guards only the mailbox hand-off between them.
//
// A server holds one per connection, nearly all of them idle, so what an
// idle connection needs is kept here by value, in one allocation: the two
// ciphers (plain data, see noise.Cipher), the session core, and the
// monitor's per-session rates. Besides it, an idle connection costs only
// nbio's Conn, the user's name and its router slot.
//
// The fields are ordered by alignment, not by owner, so that the struct
// packs into 224 bytes, an allocation size class; each says who owns it.
type conn struct {
	nc   *nbio.Conn
	core session.Core // actor; its User is set before the router can find c

	// partial is an incomplete inbound message; nil when idle (poller). A
	// pointer rather than a slice: nil is 8 bytes, not 24, on every idle
	// connection, for one more small allocation when a message arrives in
	// pieces.
	partial *[]byte

	mbox *mailbox // under mu; nil when empty

	mu       sync.Mutex
	stage    atomic.Uint32 // the poller's; read by the monitor and OnClose
	inflight atomic.Int32  // actor; the monitor reads it
	// msgsIn and msgsOut count messages; the monitor reads them and only
	// ever uses their growth between samples, so 32 bits are enough.
	msgsIn, msgsOut atomic.Uint32 // actor
	rates           monitor.Rates // the monitor's alone, under its lock

	rx        noise.Cipher // poller (lookUp in stageLooking); set by the handshake, with stageProving
	tx        noise.Cipher // actor
	live      bool         // actor: core is a running session, from evStart until evClosed
	scheduled bool         // under mu
	dead      bool         // under mu
	// rereading: a read the store failed is to be made again (one timer
	// at a time, however many wake-ups find the store still failing).
	rereading bool // under mu

	peer peerAddr // the client's address, set before the event loop sees c
	// gen16 is the account's generation this login was checked against,
	// folded (see fold16), set before c is registered: a live upgrade
	// hands it over. 16 bits fit in what was padding.
	gen16 uint16
}

// fold16 folds an account generation into 16 bits, never 0 (which means
// "not known"): two generations fold alike only 65,535 registrations apart.
func fold16(gen uint64) uint16 { return uint16(gen%0xffff) + 1 }

// mailbox holds a session's pending events. It exists only while there are
// some (a pointer in conn is 16 bytes less than a slice on every idle
// connection), and has room for the first event, so that it costs no more
// allocations than a slice growing from nil.
type mailbox struct {
	evs   []event
	bytes int // the frames' sizes (event.size), bounded by MaxMailboxBytes
	first [1]event
}

// A connection's stages, as the poller that reads it moves it on. Only the
// poller writes the stage (an atomic so that the monitor and the close
// callback can read it).
//
//	stageNew ──────────────┬─▶ stageProving ─▶ stageLoggedIn ─▶ stageFailed
//	   │ ticket refused    │        │                 (bad input: a Close
//	   ▼                   │        │                  frame, then closed)
//	stageRetry ────────────┤        │
//	   │ any failure       │        │ timeout, close
//	   ▼                   │        ▼
//	stageRefused (closed)  │     (closed; counted as unproven)
//	   ▲                   │
//	   └── stageLooking ◀──┘ (a cluster: the account is read off the
//	                          event loop, then on to stageProving)
const (
	// stageNew: waiting for the client's first handshake message.
	stageNew uint32 = iota
	// stageRetry: a resumption ticket was refused; waiting for a full
	// handshake on the same connection (once).
	stageRetry
	// stageProving: the login was answered; waiting for the client's
	// first transport message, which proves it holds the handshake's keys.
	// Until then the connection has no session: a replayed first message
	// gets an answer it cannot read, and replaces no one.
	stageProving
	// stageLoggedIn: the session runs; messages are sealed frames.
	stageLoggedIn
	// stageRefused: the handshake or the login failed; the connection is
	// closed.
	stageRefused
	// stageFailed: a logged-in client sent bad input; the session closes
	// with a Close frame saying why, and nothing more is read.
	stageFailed
	// stageUncounted: refused at accept for a limit (see admission); it
	// was never counted, so its close uncounts nothing.
	stageUncounted
	// stageLooking: the first message is read and the login decoded; its
	// account is being read across the network (a cluster's store, see
	// lookUp), off the event loop. The lookup's goroutine owns the read
	// side meanwhile and moves c on to stageProving or stageRefused; the
	// poller refuses anything the client sends before that, and a close
	// moves c to stageRefused, each by a compare-and-swap, so that only
	// one of them decides.
	stageLooking
)

// secured reports whether the handshake is done, so messages are sealed.
func (c *conn) secured() bool {
	s := c.stage.Load()
	return s == stageProving || s == stageLoggedIn
}

// stopped reports whether the poller has stopped reading (bad input or a
// refused login).
func (c *conn) stopped() bool {
	s := c.stage.Load()
	return s == stageRefused || s == stageFailed || s == stageUncounted
}

// post appends ev to the mailbox and schedules the actor if it is idle. It
// never blocks: it is called from the event loop and from commit callbacks.
// It reports false, dropping ev, when c is closed.
func (c *conn) post(p *pool, ev event) bool {
	ok, sched := c.enqueue(p, ev)
	if sched {
		p.push(c, time.Now().UnixNano())
	}
	return ok
}

// postFrom is post from a goroutine that may run the actor itself: with
// here, an actor that ev schedules runs now on the caller (runHere).
func (c *conn) postFrom(p *pool, ev event, here bool) {
	_, sched := c.enqueue(p, ev)
	switch {
	case sched && here:
		c.runHere(p)
	case sched:
		p.push(c, time.Now().UnixNano())
	}
}

// enqueue adds ev to c's mailbox, as post does, without scheduling c: sched
// means the actor was idle and is now marked scheduled, so the caller must
// run it (runHere) or queue it for a worker.
func (c *conn) enqueue(p *pool, ev event) (ok, sched bool) {
	c.mu.Lock()
	if c.dead {
		c.mu.Unlock()
		return false, false
	}
	if ev.kind == evClosed {
		c.dead = true
	}
	if c.mbox == nil {
		c.mbox = new(mailbox)
		c.mbox.evs = c.mbox.first[:0]
	}
	overflow := false
	// A kick that hands over to a newer login always gets in: its
	// successor waits for it. There is at most one per login.
	lim := &p.n.cfg.Limits
	if n := len(c.mbox.evs); (n >= lim.MaxMailbox || c.mbox.bytes+int(ev.size) > lim.MaxMailboxBytes) && ev.kind != evClosed && ev.next == nil {
		// The client makes work faster than its session is served (a
		// flood of pings it never reads the answers to, say): cut it off
		// rather than hold its events without bound. The first event
		// over the limit becomes the kick; the rest are dropped, which
		// loses nothing acked (a dropped store result only means its
		// answer never reaches a client being closed anyway).
		if last := c.mbox.evs[n-1]; last.kind == evKick && last.text == mailboxFullText {
			c.mu.Unlock()
			return true, false
		}
		ev = event{kind: evKick, code: wire.Error_BAD_REQUEST, text: mailboxFullText}
		overflow = true
	}
	c.mbox.bytes += int(ev.size)
	c.mbox.evs = append(c.mbox.evs, ev)
	sched = !c.scheduled
	c.scheduled = true
	c.mu.Unlock()
	if overflow {
		p.n.mx.LimitHits.WithLabelValues("max_mailbox").Inc()
		p.n.log.Warn("client cut off: its mailbox is full", "conn", c.id(), "max_events", lim.MaxMailbox, "max_bytes", lim.MaxMailboxBytes)
	}
	return true, sched
}

// mailboxFullText is the reason given to a client cut off for MaxMailbox.
const mailboxFullText = "too much work waiting for this connection: read what the server sends, and wait for answers before sending more"

// maxRounds bounds how long one session keeps a worker before yielding it
// to others, so one flooded session cannot starve the rest.
const maxRounds = 4

// runHere runs the actor that enqueue just scheduled on the calling
// goroutine (the poller that decoded its frames, the committer that
// reported its batch): at light load, waking a worker for it would cost
// more than its work. One round only; whatever
// arrives meanwhile goes to the pool, so a busy session cannot hold the
// event loop.
func (c *conn) runHere(p *pool) {
	w := p.scratch.Get().(*worker)
	c.run(w, time.Now().UnixNano(), 1)
	p.scratch.Put(w)
}

// run processes the mailbox for up to rounds rounds, then yields to the
// pool if more work arrived; the actor was scheduled at schedAt (unix
// nanoseconds).
func (c *conn) run(w *worker, schedAt int64, rounds int) {
	for round := 0; ; round++ {
		c.mu.Lock()
		mb := c.mbox
		if mb == nil {
			c.scheduled = false
			c.mu.Unlock()
			return
		}
		if round == rounds {
			c.mu.Unlock()
			w.n.pool.push(c, time.Now().UnixNano())
			return
		}
		if round == 0 {
			w.n.noteLag(time.Now().UnixNano() - schedAt)
		}
		c.mbox = nil
		c.mu.Unlock()
		closeNow := false
		for i := range mb.evs {
			if c.handle(w, &mb.evs[i]) {
				closeNow = true
			}
		}
		c.flush(w, closeNow)
	}
}

// handle applies one event; it reports whether the connection must close
// once the frames produced so far are written.
func (c *conn) handle(w *worker, ev *event) bool {
	switch ev.kind {
	case evStart:
		c.live = true
		w.n.log.Debug("session started", "user", c.core.User(), "conn", c.id())
		return false
	case evKick:
		closeNow := false
		if c.live {
			c.core.StepKicked(ev.code, ev.text, time.Duration(ev.seq)*time.Millisecond)
			closeNow = c.ready(w)
		}
		if ev.next != nil {
			w.n.handOver(ev.next)
		}
		return closeNow
	case evClosed:
		if c.live {
			w.n.router.unregister(c.core.User(), c)
			w.n.log.Debug("session closed", "user", c.core.User(), "conn", c.id())
			c.live = false
		}
		return false
	}
	if !c.live {
		return false
	}
	switch ev.kind {
	case evFrame:
		if _, ok := ev.frame.Kind.(*wire.Frame_Send); ok {
			c.msgsIn.Add(1)
		}
		c.core.StepReceived(ev.frame)
		// The core keeps nothing of a frame: its parts go to the next
		// one decoded (see wire.DecodeFrameReusing).
		w.n.frames.Put(ev.frame)
		return c.ready(w)
	case evCommitted:
		c.core.StepCommitted(ev.res)
		return c.ready(w)
	case evPush:
		c.core.StepPushed(ev.seq, ev.data)
		return c.ready(w)
	case evDeliver:
		c.core.StepStart()
		return c.ready(w)
	}
	return false
}

// ready carries out the Ready of the event just stepped into the core,
// and of the reads it asks for.
func (c *conn) ready(w *worker) (closeNow bool) {
	for {
		rd := c.core.Ready()
		for _, b := range rd.Writes {
			w.n.commit(c, b)
		}
		for _, f := range rd.Frames {
			if err := c.encode(w, f); err != nil {
				w.n.log.Error("encode frame", "user", c.core.User(), "err", err)
				closeNow = true
			}
		}
		if rd.Close != nil {
			w.n.log.Info("closing session", "user", c.core.User(), "conn", c.id(), "code", rd.Close.Code.String(), "reason", rd.Close.Text)
			closeNow = true
		}
		for _, d := range rd.AckDelays {
			w.n.mx.DeliverToAck.Observe(float64(d) / 1e9)
		}
		if rd.WakeIn > 0 {
			// A write the store could not make is to be tried again.
			pool := w.n.pool
			time.AfterFunc(rd.WakeIn, func() { c.post(pool, event{kind: evPush, seq: wakeSeq}) })
		}
		load, check := rd.Load, rd.Check
		c.core.Advance()
		c.inflight.Store(int32(c.core.Inflight()))
		if closeNow || load == nil && check == nil {
			return closeNow
		}
		if check != nil {
			// A Read to a sender the session cannot vouch for from memory
			// (see session.Core.onRead): one store lookup, bounded by the
			// session's read bucket.
			ok, err := w.n.store.ReceivedFrom(c.core.User(), check.Sender)
			if err != nil {
				w.n.log.Error("check read receipt", "user", c.core.User(), "err", err)
			}
			c.core.StepChecked(ok, err)
			if load == nil {
				continue
			}
		}
		items, err := w.n.store.ReadQueue(c.core.User(), load.From, load.Max)
		if err != nil && !errors.Is(err, store.ErrClosed) {
			// A store that may answer again (a cluster's stream electing
			// a new leader while a node leaves): the session lives on,
			// having read nothing, and reads again a moment later. Its
			// client waits for the deliveries; nothing is lost, since
			// every item stays in the queue until acked.
			c.mu.Lock()
			again := !c.rereading
			c.rereading = true
			c.mu.Unlock()
			if again {
				w.n.log.Warn("read queue failed; reading again shortly", "user", c.core.User(), "err", err)
				pool := w.n.pool
				time.AfterFunc(readRetryIn, func() {
					c.mu.Lock()
					c.rereading = false
					c.mu.Unlock()
					c.post(pool, event{kind: evPush, seq: wakeSeq})
				})
			}
			items, err = nil, nil
		} else if err != nil {
			w.n.log.Error("read queue", "user", c.core.User(), "err", err)
		}
		c.core.StepLoaded(items, err)
	}
}

// readRetryIn is how long a session waits to read its queue again after
// the store failed to answer.
const readRetryIn = 500 * time.Millisecond

// encode appends one sealed, length-prefixed frame to the worker's buffer.
func (c *conn) encode(w *worker, o session.Out) error {
	w.n.mx.FramesOut.Inc()
	off := len(w.out)
	out := append(w.out, 0, 0, 0)
	var err error
	switch o.Kind {
	case session.OutDeliver:
		if o.TS != 0 {
			c.msgsOut.Add(1)
			w.n.mx.MessagesOut.Inc()
			w.n.mx.SendToDeliver.Observe(float64(time.Now().UnixNano()-o.TS) / 1e9)
		}
		out = wire.AppendDeliver(out, o.Seq, o.Item)
	case session.OutSendAck:
		out = wire.AppendSendAck(out, o.ID, o.ServerID, o.TS)
	default:
		out, err = wire.AppendFrame(out, o.Frame)
	}
	if err != nil {
		w.out = w.out[:off]
		return err
	}
	out = slices.Grow(out, noise.TagLen) // room to seal in place
	pt := out[off+wire.HeaderLen:]
	if len(pt) > wire.MaxMessage-noise.TagLen {
		w.out = out[:off]
		return fmt.Errorf("a %d-byte frame is over the limit", len(pt))
	}
	sealed, err := c.tx.Seal(pt[:0], pt)
	if err != nil {
		w.out = out[:off]
		return err
	}
	out = out[:off+wire.HeaderLen+len(sealed)]
	wire.PutHeader(out[off:], len(sealed))
	w.out = out
	return nil
}

// flush writes everything one mailbox round produced with one write.
func (c *conn) flush(w *worker, closeNow bool) {
	if len(w.out) > 0 {
		if _, err := c.nc.Write(w.out); errors.Is(err, nbio.ErrOverflow) {
			// nbio closes the connection when it would hold more than
			// MaxWriteBuffer for it: a client that does not read.
			w.n.mx.LimitHits.WithLabelValues("max_write_buffer").Inc()
			w.n.log.Warn("client cut off: it does not read what it is sent", "user", c.core.User(), "conn", c.id(), "limit", w.n.cfg.Limits.MaxWriteBuffer)
		} else if err != nil {
			w.n.log.Debug("write", "user", c.core.User(), "err", err)
		}
		if cap(w.out) > 1<<20 {
			w.out = nil // do not keep a burst's buffer forever
		} else {
			w.out = w.out[:0]
		}
	}
	if closeNow {
		// Not Close: nbio would drop what it has not written yet (the
		// Close frame itself when the socket is full), and closing with
		// the client's bytes unread makes the kernel answer with a reset,
		// which can destroy the frame before the client reads it; the
		// client would then reconnect instead of learning why (a REPLACED
		// one would throw out the newer login). The client closes once it
		// has read the frame; the deadline bounds one that does not. The
		// closed core ignores whatever the client sends meanwhile.
		c.nc.SetReadDeadline(time.Now().Add(closeLinger))
	}
}

// closeLinger bounds how long a connection stays open after its Close
// frame, for a client that does not close it (see flush).
const closeLinger = 2 * time.Second

// id names the connection in logs: the client's address.
func (c *conn) id() string { return c.peer.String() }

// maxFirstMessage bounds a handshake's first message, length prefix
// excluded: the largest real one (a resumption's 255-byte ticket, keys,
// tags and a Login with a long agent name) is far below it. Until a
// connection has logged in it may not declare more, so that a host's
// unfinished first messages, held until the handshake timeout, cost at
// most this each (MaxHandshakes of them), not wire.MaxMessage.
const maxFirstMessage = 4 << 10

var errFirstTooLarge = fmt.Errorf("first handshake message longer than %d bytes", maxFirstMessage)

// onData runs on the event loop for every read. It splits messages off the
// stream; only an incomplete tail is kept between reads, so an idle
// connection holds no buffer.
func (c *conn) onData(n *Node, data []byte) {
	if c.stopped() {
		return
	}
	wasPartial := c.partial != nil
	completed := 0
	// The frames of this read go to the mailbox first, then the actor
	// runs once here for all of them (one write for all their answers).
	run := false
	defer func() {
		if run {
			c.runHere(n.pool)
		}
	}()
	buf := data
	if c.partial != nil {
		*c.partial = append(*c.partial, data...)
		buf = *c.partial
	}
	for {
		msg, rest, ok, err := wire.Next(buf)
		if err == nil && !c.secured() && len(buf) >= wire.HeaderLen && int(buf[0])<<16|int(buf[1])<<8|int(buf[2]) > maxFirstMessage {
			err = errFirstTooLarge
		}
		if err != nil {
			if c.stage.Load() != stageLoggedIn {
				n.mx.HandshakeFailures.BadFrame.Inc()
			}
			c.fail(n, wire.Error_BAD_FRAME, err.Error())
			return
		}
		if !ok {
			break
		}
		buf = rest
		completed++
		if !c.onMessage(n, msg, &run) {
			return
		}
	}
	switch {
	case len(buf) == 0:
		c.partial = nil
	case c.partial != nil && &buf[0] == &(*c.partial)[0]:
		// nothing consumed: keep the buffer as it is
	default:
		p := append(make([]byte, 0, len(buf)+512), buf...)
		c.partial = &p
	}
	// A logged-in peer that stops in the middle of a message holds a
	// buffer of up to 64 KiB: give it FrameTimeout to finish that message.
	// The clock starts with each new partial message (reads that keep
	// ending mid-message while messages complete are progress), and idle
	// peers between messages hold nothing and get no timer.
	if c.stage.Load() == stageLoggedIn {
		switch {
		case c.partial != nil && (!wasPartial || completed > 0):
			c.nc.SetReadDeadline(time.Now().Add(n.cfg.Limits.FrameTimeout))
		case c.partial == nil && wasPartial:
			c.nc.SetReadDeadline(time.Time{})
		}
	}
}

// onMessage handles one complete message; false stops reading. A frame
// that schedules the actor sets *run: the caller runs it (runHere).
func (c *conn) onMessage(n *Node, msg []byte, run *bool) bool {
	if c.stage.Load() == stageLooking && c.stage.CompareAndSwap(stageLooking, stageRefused) {
		// A message before the handshake's answer: no client sends one
		// (its next message is sealed with the answer's keys).
		n.mx.HandshakeFailures.BadFrame.Inc()
		n.failures.fail(c.peer.AddrPort().Addr(), time.Now())
		c.nc.Close()
		return false
	}
	if c.stopped() {
		// Refused meanwhile by lookUp's answer (it runs on a goroutine of
		// its own): the rest of this read is not for anyone.
		return false
	}
	if !c.secured() {
		return c.handshake(n, msg)
	}
	pt, err := c.rx.Open(msg[:0], msg)
	if err != nil {
		c.fail(n, wire.Error_BAD_FRAME, "message does not decrypt")
		return false
	}
	if c.stage.Load() == stageProving {
		// The proof: only the holder of the handshake's keys could seal
		// a message under them. Its own content is empty (wire doc).
		c.prove(n)
		if len(pt) == 0 {
			return true
		}
	}
	f := n.frames.Get().(*wire.Frame)
	if err := wire.DecodeFrameReusing(pt, f); err != nil {
		n.frames.Put(f)
		c.fail(n, wire.Error_BAD_FRAME, err.Error())
		return false
	}
	n.mx.FramesIn.Inc()
	if _, sched := c.enqueue(n.pool, event{kind: evFrame, frame: f, size: int32(len(pt))}); sched {
		*run = true
	}
	return true
}

// fail ends a logged-in connection for bad input: the actor sends a Close
// frame with the reason, then closes. Reading stops at once.
func (c *conn) fail(n *Node, code wire.Error_Code, text string) {
	c.partial = nil
	n.mx.BadInput.Inc()
	if c.stage.Load() != stageLoggedIn {
		c.refuse(n, text)
		return
	}
	c.stage.Store(stageFailed)
	c.post(n.pool, event{kind: evKick, code: code, text: text})
}

// refuse closes a connection that has not logged in, for bad input: its
// address is counted as failing (see failThrottle).
func (c *conn) refuse(n *Node, text string) {
	c.stage.Store(stageRefused)
	n.proving.Delete(c) // answered, then its proof did not decrypt
	n.failures.fail(c.peer.AddrPort().Addr(), time.Now())
	if n.loginLogs.allow(time.Now()) {
		n.log.Info("connection refused", "conn", c.id(), "reason", text)
	}
	c.nc.Close()
}

// handshake answers the client's first message: a full handshake (Noise
// IK, carrying the device's static key) or a resumption with a ticket from
// an earlier login (see noise/ticket.go). Either carries the login, so the
// reply both completes the handshake and says whether the login succeeded;
// a successful login's result carries a ticket for the next one.
func (c *conn) handshake(n *Node, msg []byte) bool {
	if n.failures.over(c.peer.AddrPort().Addr(), time.Now()) {
		// This address keeps failing to log in: no handshake for it until
		// its minute is over.
		c.stage.Store(stageRefused)
		n.mx.LimitHits.WithLabelValues("failed_logins_per_addr").Inc()
		c.nc.Close()
		return false
	}
	eph, hasEph := noise.Ephemeral(msg)
	if hasEph && n.replays.seen(eph) {
		// A first message seen before: a replay. Refused before any
		// Diffie-Hellman, so that a flood of them costs little.
		c.stage.Store(stageRefused)
		n.mx.HandshakeFailures.Replayed.Inc()
		c.nc.Close()
		return false
	}
	h, err := n.static.Accept(msg)
	if err == nil && hasEph {
		n.replays.record(eph, time.Now())
	}
	if errors.Is(err, noise.ErrTicketRefused) && c.stage.Load() == stageNew {
		// Expired or foreign ticket: say so, and read the client's full
		// handshake next, on this connection (once: a second refusal
		// closes it).
		c.stage.Store(stageRetry)
		n.mx.Resumptions.Refused.Inc()
		n.log.Debug("resumption refused", "conn", c.id(), "reason", err)
		if err := c.writeHandshake(noise.RefusedReply); err != nil {
			c.stage.Store(stageRefused)
			c.nc.Close()
			return false
		}
		return true
	}
	if err != nil {
		n.mx.HandshakeFailures.BadHandshake.Inc()
		c.fail(n, wire.Error_LOGIN_FAILED, err.Error())
		return false
	}
	var login wire.Login
	res := &wire.LoginResult{Window: uint32(n.cfg.Limits.Window)}
	switch err = login.UnmarshalVT(h.Payload); {
	case err != nil:
		res.Error = &wire.Error{Code: wire.Error_BAD_FRAME, Text: "login payload does not decode"}
	case login.Version != 1:
		res.Error = &wire.Error{Code: wire.Error_UNSUPPORTED_VERSION, Text: fmt.Sprintf("protocol version %d is not supported; this server speaks 1: update the client", login.Version)}
	case h.Ticket != nil && h.Ticket.Phone != login.Phone:
		res.Error = &wire.Error{Code: wire.Error_LOGIN_FAILED, Text: "the resumption ticket is for another number: log in with a full handshake"}
	case n.remoteAccounts:
		// The account is read across the network, which may take as long
		// as an election: not on the event loop, whose other connections
		// would wait for it (see stageLooking).
		if from := c.stage.Load(); from == stageRefused || !c.stage.CompareAndSwap(from, stageLooking) {
			return false
		}
		go c.lookUp(n, h, &login, res)
		return true
	default:
		acct, err := n.store.Account(login.Phone)
		return c.answer(n, h, &login, res, acct, err)
	}
	return c.answer(n, h, &login, res, store.Account{}, nil)
}

// lookUp reads the account of a login in stageLooking and answers it. A
// store between leaders (ErrUnavailable: a node of the cluster just died,
// and its clients are logging in here) is asked again every recheckEvery
// for up to half the handshake timeout, rather than refusing a client
// that would only come back; a connection closed meanwhile stops it.
func (c *conn) lookUp(n *Node, h *noise.Hello, login *wire.Login, res *wire.LoginResult) {
	until := time.Now().Add(n.cfg.Limits.HandshakeTimeout / 2)
	for {
		acct, err := n.store.Account(login.Phone)
		if errors.Is(err, store.ErrUnavailable) && time.Now().Add(recheckEvery).Before(until) && c.stage.Load() == stageLooking {
			time.Sleep(recheckEvery)
			continue
		}
		if c.stage.Load() != stageLooking {
			return // closed meanwhile: counted by OnClose, nobody to answer
		}
		c.answer(n, h, login, res, acct, err)
		return
	}
}

// answer completes a handshake whose login has been decoded (res.Error set
// if it was refused already) and whose account was read (acct, err): it
// checks the device's key or ticket against the account, writes the reply
// and moves c to stageProving, or refuses the login and closes c. It runs
// on the poller, or on lookUp's goroutine while c is in stageLooking, when
// the poller does not touch c's read side.
func (c *conn) answer(n *Node, h *noise.Hello, login *wire.Login, res *wire.LoginResult, acct store.Account, err error) bool {
	res.ServerTime = time.Now().UnixNano() // after the lookup, which may have taken seconds
	if res.Error == nil {
		switch {
		case errors.Is(err, store.ErrNotFound):
			res.Error = &wire.Error{Code: wire.Error_LOGIN_FAILED, Text: "no account has this number: register first"}
		case err != nil:
			res.Error = &wire.Error{Code: wire.Error_INTERNAL, Text: "account lookup failed: try again"}
			if !errors.Is(err, store.ErrClosed) { // the node stopping
				n.log.Error("account lookup", "user", login.Phone, "err", err)
			}
		case h.Ticket != nil && (h.Ticket.Generation != acct.Generation || !bytes.Equal(h.Ticket.Key[:], acct.Key)):
			// Re-registered, or its key replaced: the ticket's device is
			// not the account's any more.
			res.Error = &wire.Error{Code: wire.Error_REGISTERED_ELSEWHERE, Text: "this number was registered on another device"}
		case h.Ticket == nil && !bytes.Equal(acct.Key, h.PeerKey):
			res.Error = &wire.Error{Code: wire.Error_LOGIN_FAILED, Text: "this device's key is not registered for this number (registered on another device?): register again"}
		}
	}
	if res.Error == nil && n.tickets != nil {
		// A resumption's ticket keeps the time of the full handshake
		// that began the chain (see noise.Ticket).
		authenticated := time.Now()
		if h.Ticket != nil {
			authenticated = h.Ticket.Authenticated
		}
		ticket, secret, expires, err := n.tickets.Issue(login.Phone, acct.Generation, acct.Key, authenticated)
		if err != nil {
			n.log.Error("issue resumption ticket", "user", login.Phone, "err", err)
		} else {
			res.Ticket, res.TicketSecret, res.TicketExpires = ticket, secret[:], expires.UnixNano()
		}
	}
	reply, err := res.MarshalVT()
	if err == nil {
		var tx, rx *noise.Cipher
		reply, tx, rx, err = h.Server.Reply(reply)
		if err == nil && res.Error == nil {
			c.tx, c.rx = *tx, *rx
		}
	}
	if err != nil {
		n.mx.BadInput.Inc()
		c.refuse(n, err.Error())
		return false
	}
	if res.Error == nil {
		// Until the proof arrives the login is only remembered; the read
		// deadline set at accept still runs, so a replayer that cannot
		// answer is closed by it.
		n.proving.Store(c, provingLogin{user: login.Phone, gen: acct.Generation, resumed: h.Ticket != nil})
		if from := c.stage.Load(); from == stageRefused || !c.stage.CompareAndSwap(from, stageProving) {
			// lookUp's connection, refused by the poller (it sent before
			// the answer) or closed meanwhile.
			n.proving.Delete(c)
			return false
		}
	}
	if res.Error.GetCode() == wire.Error_LOGIN_FAILED {
		// Counted before the refusal is sent: a client that tries again
		// the moment it reads it must find this failure counted.
		n.failures.fail(c.peer.AddrPort().Addr(), time.Now())
	}
	if err := c.writeHandshake(reply); err != nil || res.Error != nil {
		n.proving.Delete(c)
		c.stage.Store(stageRefused)
		n.mx.LoginFailures.Inc()
		n.mx.HandshakeFailures.LoginRefused.Inc()
		if n.loginLogs.allow(time.Now()) {
			n.log.Info("login refused", "user", login.Phone, "conn", c.id(), "reason", res.Error.GetText())
		}
		c.nc.Close()
		return false
	}
	return true
}

// provingLogin is a login answered and waiting for its proof (see
// stageProving).
type provingLogin struct {
	user    string
	gen     uint64 // the account's generation when the handshake checked its key
	resumed bool
}

// prove starts the session of the login that c's first transport message
// has just proven; only now may it replace an older connection. It runs on
// the poller, so that logins of one user are registered in the order their
// proofs arrived: the newest proven login wins, whichever actor runs
// first.
func (c *conn) prove(n *Node) {
	v, ok := n.proving.LoadAndDelete(c)
	if !ok {
		return // cannot happen: stageProving is set only with an entry
	}
	pl := v.(provingLogin)
	if pl.resumed {
		n.mx.Resumptions.Resumed.Inc()
	}
	c.nc.SetReadDeadline(time.Time{})
	c.stage.Store(stageLoggedIn)
	n.admission.loggedIn()
	n.counts.logins.Add(1)
	n.mx.Logins.Inc()
	// No actor has run for c yet, so the poller may set up its core. The
	// start is posted before c can be found, so that a kick from a newer
	// login or a re-registration reaches a running session, not one that
	// has yet to start (which would ignore it).
	c.core.Init(pl.user, &n.sessionCfg)
	c.gen16 = fold16(pl.gen)
	c.post(n.pool, event{kind: evStart})
	// While two connections of one user overlap, the newer one delivers
	// nothing until the older has stopped and its acks are applied, so
	// that nothing the older acked is delivered again.
	// With no live predecessor, its last acks may still wait in the
	// store as lazy batches (an app that acked and reconnected at once):
	// where the store has them, deliver after a barrier too, which
	// commits them first.
	prev := n.router.register(pl.user, c)
	if prev == nil || prev == c || !prev.post(n.pool, event{kind: evKick, code: wire.Error_REPLACED, text: "this account logged in on a newer connection", next: c}) {
		if n.lazyAcks {
			n.handOver(c)
		} else {
			c.post(n.pool, event{kind: evDeliver})
		}
	}
	c.mu.Lock()
	dead := c.dead
	c.mu.Unlock()
	if dead {
		// Closed (its deadline fired) while being proven: its evClosed
		// may have come before the registration, so undo it here.
		n.router.unregister(pl.user, c)
		return
	}
	// A re-registration may have landed between the handshake's key check
	// and the registration above; it kicked whoever was registered then,
	// so check again now that c is the one a kick would find (off the
	// event loop where the read crosses the network).
	if n.remoteAccounts {
		go n.recheckAccount(c, pl.user, pl.gen, 0)
	} else {
		n.recheckAccount(c, pl.user, pl.gen, 0)
	}
}

// recheckAccount closes c if user's account is no longer at generation
// gen (see prove). A store that cannot answer now (a cluster's stream
// between leaders: a node just stopped or died, and its clients are
// logging in here) is asked again every recheckEvery, up to
// recheckTries times, before c is closed: closing a moved client for a
// few hundred milliseconds of election would only move it again.
func (n *Node) recheckAccount(c *conn, user string, gen uint64, try int) {
	switch a, err := n.store.Account(user); {
	case errors.Is(err, store.ErrClosed):
		// The node is stopping; its sessions are closed with it.
	case err != nil && errors.Is(err, store.ErrUnavailable) && try < recheckTries:
		time.AfterFunc(recheckEvery, func() { n.recheckAccount(c, user, gen, try+1) })
	case err != nil:
		n.log.Error("account lookup at login", "user", user, "err", err)
		c.post(n.pool, event{kind: evKick, code: wire.Error_INTERNAL, text: "account lookup failed: reconnect"})
	case a.Generation != gen:
		c.post(n.pool, event{kind: evKick, code: wire.Error_REGISTERED_ELSEWHERE, text: "this number was registered on another device"})
	}
}

// recheckEvery and recheckTries bound recheckAccount's retries: 5 s in
// all, about what JetStream takes to elect a leader after a node's loss.
const (
	recheckEvery = 250 * time.Millisecond
	recheckTries = 20
)

// writeHandshake writes a handshake reply, length-prefixed (it is not
// sealed: the handshake makes the ciphers).
func (c *conn) writeHandshake(msg []byte) error {
	out := append(wire.AppendHeader(make([]byte, 0, wire.HeaderLen+len(msg)), len(msg)), msg...)
	_, err := c.nc.Write(out)
	return err
}
