// Package session is the protocol logic of one logged-in connection, written
// as a pure state machine in the manner of etcd's raft: events go in through
// Step (frames from the client, results of store writes and reads, items
// pushed into the user's queue), and Ready says what to do next (frames to
// send, batches to commit, a queue range to read, a reason to close). The
// caller owns the socket, the store and the clock; this package never
// blocks, so every rule is testable without them.
package session

import (
	"errors"
	"fmt"

	"github.com/parleyhq/parley/store"
	"github.com/parleyhq/parley/wire"
)

// Config is what a Core needs from its surroundings.
type Config struct {
	// User is the logged-in account's phone number.
	User string
	// Window bounds unacknowledged deliveries (flow control).
	Window int
	// Now returns unix nanoseconds; injected so scenarios are repeatable.
	Now func() int64
	// NewID returns a fresh server message id.
	NewID func() uint64
	// MaxPending bounds the requests (sends, reads) a client may have
	// waiting for the store at once; past it the session is closed, so a
	// client pipelining without limit cannot make the server hold
	// unbounded memory. Default 4096.
	MaxPending int
	// IssueUpload returns an upload token for the user, the URL to upload
	// to and the token's expiry (unix nanoseconds); nil when the server
	// takes no media.
	IssueUpload func(user string) (token, url string, expires int64)
}

// Load asks the caller to read the user's queue from seq From, at most Max
// items, and to Step the result back as Loaded.
type Load struct {
	From uint64
	Max  int
}

// Ready is the work Steps produced. The caller commits Writes (each one's
// result is Stepped back as Committed, in commit order), sends Frames, closes
// the connection after them if Close is set, calls Advance, and then
// performs Load, if any, Stepping its result back as Loaded.
type Ready struct {
	Frames []*wire.Frame
	Writes []*store.Batch
	Load   *Load
	Close  *wire.Close
	// AckDelays holds, for each item acked, the nanoseconds from its
	// delivery to its ack (for the deliver->ack latency histogram).
	AckDelays []int64
}

// Event kinds a Core accepts.
type (
	// Start begins delivery once the caller has made the session reachable
	// for pushes (so nothing committed after the first read can be missed).
	Start struct{}
	// Received is a frame from the client.
	Received struct{ Frame *wire.Frame }
	// Committed is the result of the oldest Write not yet reported.
	Committed struct{ Result store.Result }
	// Loaded is the result of a Load.
	Loaded struct {
		Items []store.Item
		Err   error
	}
	// Pushed says item Seq was just appended to the user's queue.
	Pushed struct {
		Seq  uint64
		Data []byte
	}
	// Kicked ends the session for a reason from outside (a new device
	// registered, a newer login, shutdown).
	Kicked struct {
		Code wire.Error_Code
		Text string
	}
)

type pendingKind uint8

const (
	pendSend pendingKind = iota + 1
	pendRead
	pendAck
)

// pending is a write whose result the client may be waiting for.
type pending struct {
	kind     pendingKind
	id       uint64
	serverID uint64
	ts       int64
	ackUpTo  uint64
}

// inflight is a delivered, unacknowledged item: enough to write the
// delivered receipt when it is acked.
type inflight struct {
	seq      uint64
	at       int64  // when it was delivered
	from     string // "" for receipts, which get no receipt of their own
	id       uint64
	serverID uint64
}

// Core is one session's protocol state.
type Core struct {
	cfg Config

	started  bool
	closed   bool
	next     uint64 // next queue seq to deliver
	caughtUp bool   // the last read reached the queue's tail
	loading  bool
	loadMax  int
	// pushedWhileLoading: an item arrived after the outstanding read's
	// snapshot may have been taken, so that read cannot prove the queue
	// was caught up.
	pushedWhileLoading bool
	inflight           []inflight // delivered, unacked, in seq order
	pending            []pending  // writes awaiting Committed, in commit order

	rd Ready
}

// New returns the Core of a freshly logged-in session.
func New(cfg Config) *Core {
	if cfg.Window <= 0 {
		cfg.Window = 256
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = 4096
	}
	return &Core{cfg: cfg}
}

// User is the session's account.
func (c *Core) User() string { return c.cfg.User }

// Inflight is the number of unacknowledged deliveries.
func (c *Core) Inflight() int { return len(c.inflight) }

// Closed reports whether the session has ended.
func (c *Core) Closed() bool { return c.closed }

// Ready returns the work accumulated since the last Advance. The caller
// carries it out, then calls Advance before the next Step.
func (c *Core) Ready() Ready { return c.rd }

// Advance says the last Ready was carried out. It keeps the slices' room for
// the next Step but drops what they point to, so an idle session does not
// hold on to the last frames it sent.
func (c *Core) Advance() {
	clear(c.rd.Frames)
	clear(c.rd.Writes)
	c.rd = Ready{Frames: c.rd.Frames[:0], Writes: c.rd.Writes[:0], AckDelays: c.rd.AckDelays[:0]}
}

// Step applies one event.
func (c *Core) Step(ev any) {
	if c.closed {
		return
	}
	switch e := ev.(type) {
	case Start:
		c.started = true
		c.fill()
	case Received:
		c.received(e.Frame)
	case Committed:
		c.committed(e.Result)
	case Loaded:
		c.loaded(e)
	case Pushed:
		c.pushed(e)
	case Kicked:
		c.close(e.Code, e.Text)
	default:
		panic(fmt.Sprintf("session: unknown event %T", ev))
	}
}

func (c *Core) send(f *wire.Frame) { c.rd.Frames = append(c.rd.Frames, f) }

func (c *Core) close(code wire.Error_Code, text string) {
	cl := &wire.Close{Code: code, Text: text}
	c.send(&wire.Frame{Kind: &wire.Frame_Close{Close: cl}})
	c.rd.Close = cl
	c.closed = true
}

func errFrame(id uint64, code wire.Error_Code, text string) *wire.Frame {
	return &wire.Frame{Kind: &wire.Frame_Error{Error: &wire.Error{Id: id, Code: code, Text: text}}}
}

func (c *Core) received(f *wire.Frame) {
	if len(c.pending) >= c.cfg.MaxPending {
		c.close(wire.Error_BAD_REQUEST, fmt.Sprintf("more than %d requests waiting for their answers: wait for SendAcks before sending more", c.cfg.MaxPending))
		return
	}
	switch k := f.Kind.(type) {
	case *wire.Frame_Send:
		c.onSend(k.Send)
	case *wire.Frame_Ack:
		c.onAck(k.Ack.Seq)
	case *wire.Frame_Read:
		c.onRead(k.Read)
	case *wire.Frame_Ping:
		c.send(&wire.Frame{Kind: &wire.Frame_Pong{Pong: &wire.Pong{Id: k.Ping.Id}}})
	case *wire.Frame_UploadRequest:
		id := k.UploadRequest.GetId()
		if c.cfg.IssueUpload == nil {
			c.send(errFrame(id, wire.Error_BAD_REQUEST, "this server does not take media uploads"))
			return
		}
		tok, url, exp := c.cfg.IssueUpload(c.cfg.User)
		c.send(&wire.Frame{Kind: &wire.Frame_UploadToken{UploadToken: &wire.UploadToken{Id: id, Token: tok, Url: url, Expires: exp}}})
	default:
		c.close(wire.Error_BAD_FRAME, fmt.Sprintf("a client may not send %T frames", f.Kind))
	}
}

func (c *Core) onSend(s *wire.Send) {
	serverID, ts := c.cfg.NewID(), c.cfg.Now()
	data, err := wire.EncodeItem(&wire.Item{Kind: &wire.Item_Message{Message: &wire.Message{
		From: c.cfg.User, Id: s.Id, ServerId: serverID, Ts: ts, Body: s.Body, Media: s.Media,
	}}})
	if err != nil {
		c.send(errFrame(s.Id, wire.Error_INTERNAL, "encode message: "+err.Error()))
		return
	}
	c.rd.Writes = append(c.rd.Writes, &store.Batch{
		Dedup:   &store.Dedup{Sender: c.cfg.User, ClientID: s.Id, ServerID: serverID, TS: ts, Fresh: !s.Resend},
		Appends: []store.Append{{To: s.To, Data: data}},
	})
	c.pending = append(c.pending, pending{kind: pendSend, id: s.Id, serverID: serverID, ts: ts})
}

func (c *Core) onRead(r *wire.Read) {
	data, err := wire.EncodeItem(&wire.Item{Kind: &wire.Item_Receipt{Receipt: &wire.Receipt{
		Kind: wire.Receipt_READ, By: c.cfg.User, Ids: r.Ids, Ts: c.cfg.Now(),
	}}})
	if err != nil {
		c.send(errFrame(r.Id, wire.Error_INTERNAL, "encode receipt: "+err.Error()))
		return
	}
	c.rd.Writes = append(c.rd.Writes, &store.Batch{Appends: []store.Append{{To: r.To, Data: data}}})
	c.pending = append(c.pending, pending{kind: pendRead, id: r.Id})
}

// onAck erases the acked items and queues one delivered receipt per sender.
// The session does not wait for the erase to be durable: if it is lost in a
// crash the items are delivered again and the client drops them by id.
func (c *Core) onAck(seq uint64) {
	if seq >= c.next {
		c.close(wire.Error_BAD_REQUEST, fmt.Sprintf("ack of seq %d, which was never delivered (next to deliver: %d)", seq, c.next))
		return
	}
	n := 0
	for n < len(c.inflight) && c.inflight[n].seq <= seq {
		n++
	}
	if n == 0 {
		return // an old or repeated ack: nothing left to erase
	}
	b := &store.Batch{Acks: []store.Ack{{User: c.cfg.User, UpTo: seq}}}
	now := c.cfg.Now()
	// One receipt per sender. An ack usually covers one or two senders, so
	// a linear scan of a short slice beats building a map per ack.
	type senderReceipt struct {
		from string
		r    *wire.Receipt
	}
	var receipts []senderReceipt
	for _, it := range c.inflight[:n] {
		c.rd.AckDelays = append(c.rd.AckDelays, now-it.at)
		if it.from == "" {
			continue
		}
		var r *wire.Receipt
		for _, sr := range receipts {
			if sr.from == it.from {
				r = sr.r
				break
			}
		}
		if r == nil {
			r = &wire.Receipt{Kind: wire.Receipt_DELIVERED, By: c.cfg.User, Ts: now}
			receipts = append(receipts, senderReceipt{it.from, r})
		}
		r.Ids = append(r.Ids, it.id)
		r.ServerIds = append(r.ServerIds, it.serverID)
	}
	for _, sr := range receipts {
		from := sr.from
		data, err := wire.EncodeItem(&wire.Item{Kind: &wire.Item_Receipt{Receipt: sr.r}})
		if err != nil {
			continue // a receipt cannot fail to encode; losing one beats losing the ack
		}
		b.Appends = append(b.Appends, store.Append{To: from, Data: data})
	}
	c.rd.Writes = append(c.rd.Writes, b)
	c.pending = append(c.pending, pending{kind: pendAck, ackUpTo: seq})
	c.inflight = c.inflight[n:]
	if len(c.inflight) == 0 {
		c.inflight = nil // an idle session holds no delivery buffer
	}
	c.fill()
}

func (c *Core) committed(r store.Result) {
	if len(c.pending) == 0 {
		panic("session: Committed with no write pending")
	}
	p := c.pending[0]
	c.pending = c.pending[1:]
	if len(c.pending) == 0 {
		c.pending = nil
	}
	switch p.kind {
	case pendSend:
		switch {
		case r.Err != nil:
			c.send(errFrame(p.id, storeErrCode(r.Err), storeErrText(r.Err)))
		case r.Dup != nil:
			c.send(&wire.Frame{Kind: &wire.Frame_SendAck{SendAck: &wire.SendAck{Id: p.id, ServerId: r.Dup.ServerID, Ts: r.Dup.TS}}})
		default:
			c.send(&wire.Frame{Kind: &wire.Frame_SendAck{SendAck: &wire.SendAck{Id: p.id, ServerId: p.serverID, Ts: p.ts}}})
		}
	case pendRead:
		if r.Err != nil {
			c.send(errFrame(p.id, storeErrCode(r.Err), storeErrText(r.Err)))
		} else {
			c.send(&wire.Frame{Kind: &wire.Frame_Ok{Ok: &wire.Ok{Id: p.id}}})
		}
	case pendAck:
		if r.Err != nil && !errors.Is(r.Err, store.ErrClosed) {
			// The receipts were refused (a sender's queue is full or gone):
			// erase the acked items anyway, so the recipient is not flooded
			// with redeliveries. The refusal is the sender's loss of a tick,
			// not of a message.
			c.rd.Writes = append(c.rd.Writes, &store.Batch{Acks: []store.Ack{{User: c.cfg.User, UpTo: p.ackUpTo}}})
			c.pending = append(c.pending, pending{kind: pendAck, ackUpTo: p.ackUpTo})
		}
	}
}

func storeErrCode(err error) wire.Error_Code {
	switch {
	case errors.Is(err, store.ErrUnknownUser):
		return wire.Error_UNKNOWN_RECIPIENT
	case errors.Is(err, store.ErrQueueFull):
		return wire.Error_QUEUE_FULL
	case errors.Is(err, store.ErrClosed):
		return wire.Error_SHUTTING_DOWN
	}
	return wire.Error_INTERNAL
}

func storeErrText(err error) string {
	switch storeErrCode(err) {
	case wire.Error_UNKNOWN_RECIPIENT:
		return "no account has this number: check the number, or ask the person to register"
	case wire.Error_QUEUE_FULL:
		return "the recipient has too many undelivered messages: try again later"
	case wire.Error_SHUTTING_DOWN:
		return "the server is shutting down: reconnect and send again with the same id"
	}
	return "internal error: send again with the same id"
}

// fill delivers or reads more while the window has room.
func (c *Core) fill() {
	if !c.started || c.loading || c.caughtUp {
		return
	}
	room := c.cfg.Window - len(c.inflight)
	if room <= 0 {
		return
	}
	c.loading, c.loadMax = true, room
	c.rd.Load = &Load{From: c.next, Max: room}
}

func (c *Core) loaded(e Loaded) {
	c.loading = false
	if e.Err != nil {
		c.close(wire.Error_INTERNAL, "reading your queue failed: reconnect")
		return
	}
	for _, it := range e.Items {
		if it.Seq < c.next {
			continue
		}
		if !c.deliver(it.Seq, it.Data) {
			return
		}
	}
	c.caughtUp = len(e.Items) < c.loadMax && !c.pushedWhileLoading
	c.pushedWhileLoading = false
	c.fill()
}

func (c *Core) pushed(e Pushed) {
	switch {
	case e.Seq < c.next:
		// already read from the store
	case c.started && c.caughtUp && !c.loading && e.Seq == c.next && len(c.inflight) < c.cfg.Window:
		c.deliver(e.Seq, e.Data)
	default:
		// Behind, or the window is full: the item waits in the store and
		// the next read picks it up.
		c.caughtUp = false
		if c.loading {
			c.pushedWhileLoading = true
		}
		c.fill()
	}
}

// deliver sends one item and remembers what its ack needs.
func (c *Core) deliver(seq uint64, data []byte) bool {
	it, err := wire.DecodeItem(data)
	if err != nil {
		c.close(wire.Error_INTERNAL, fmt.Sprintf("queue item %d is corrupt: %v", seq, err))
		return false
	}
	fl := inflight{seq: seq, at: c.cfg.Now()}
	if m := it.GetMessage(); m != nil {
		fl.from, fl.id, fl.serverID = m.From, m.Id, m.ServerId
	}
	c.inflight = append(c.inflight, fl)
	c.next = seq + 1
	c.send(&wire.Frame{Kind: &wire.Frame_Deliver{Deliver: &wire.Deliver{Seq: seq, Item: it}}})
	return true
}
