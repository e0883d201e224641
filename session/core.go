// Package session is the protocol logic of one logged-in connection, written
// as a pure state machine in the manner of etcd's raft: events go in through
// Step (frames from the client, results of store writes and reads, items
// pushed into the user's queue), and Ready says what to do next (frames to
// send, batches to commit, a queue range to read, a reason to close). The
// caller owns the socket, the store and the clock; this package never
// blocks, so every rule is testable without them.
package session

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/parleyhq/parley/store"
	"github.com/parleyhq/parley/wire"
)

// Config is what a Core needs from its surroundings. One Config serves every
// session of a server: New keeps a pointer to it, so it must not change
// once sessions use it.
type Config struct {
	// Window bounds unacknowledged deliveries (flow control). Default 256.
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
	// CheckMedia, if set, vets a Send's media fields (that they name this
	// server's media, of a type it serves); a Send it refuses gets
	// BAD_REQUEST with its error's text and is not stored.
	CheckMedia func(m *wire.Media) error
	// MaxReadIDs bounds the message ids of one Read. Default 256.
	MaxReadIDs int
	// ReadRate and ReadBurst bound the message ids a session's Reads may
	// name over time: a token bucket of ReadBurst ids (at least
	// MaxReadIDs), refilled at ReadRate ids a second (at most 1000: the
	// bucket keeps time in milliseconds). A Read that would overdraw it is
	// refused, and stores nothing. Defaults 16 and 1024.
	ReadRate, ReadBurst int
	// OnRefused, if set, is called with a limit's name (as in
	// node.Limits' JSON: "max_read_ids", "read_rate"; and "forged_read"
	// for a read receipt to someone the reader never received from) each
	// time a request is refused for it, so refusals are counted. It must
	// not block.
	OnRefused func(limit string)
}

// Load asks the caller to read the user's queue from seq From, at most Max
// items, and to Step the result back as Loaded.
type Load struct {
	From uint64
	Max  int
}

// Check asks the caller whether the session's user has received from
// Sender (store.Store.ReceivedFrom), and to Step the answer back as
// Checked. Checks are answered in the order they are asked.
type Check struct {
	Sender string
}

// Ready is the work Steps produced. The caller commits Writes (each one's
// result is Stepped back as Committed, in commit order), sends Frames, closes
// the connection after them if Close is set, calls Advance, and then
// performs Check, if any, Stepping its answer back as Checked, and Load,
// if any, Stepping its result back as Loaded.
type Ready struct {
	Frames []Out
	Writes []*store.Batch
	Check  *Check
	Load   *Load
	Close  *wire.Close
	// AckDelays holds, for each item acked, the nanoseconds from its
	// delivery to its ack (for the deliver->ack latency histogram).
	AckDelays []int64
	// WakeIn, if set, asks the caller to Step a wake-up (a Pushed with
	// seq math.MaxUint64) after this long: a write the store could not
	// make is due to be tried again then.
	WakeIn time.Duration
}

// Out is one frame for the client. The two commonest are not built as
// protobuf frames but written straight into the connection's buffer
// (wire.AppendDeliver, wire.AppendSendAck): a delivery carries the queue
// item as the store keeps it, undecoded.
type Out struct {
	Kind OutKind
	// Frame is the frame of an OutFrame.
	Frame *wire.Frame
	// Seq and Item are an OutDeliver's: the queue item's seq and its
	// encoding (a view into what the store or the push handed over).
	Seq  uint64
	Item []byte
	// ID, ServerID and TS are an OutSendAck's fields; an OutDeliver of a
	// message has the message's TS (for the send->deliver latency), of a
	// receipt 0.
	ID, ServerID uint64
	TS           int64
}

// OutKind says what an Out is.
type OutKind uint8

const (
	OutFrame   OutKind = iota // Frame
	OutDeliver                // a Deliver of Item
	OutSendAck                // a SendAck
)

// Proto returns o as a protobuf frame, decoding a delivery's item: for
// tests and logs, not for the per-message path.
func (o Out) Proto() *wire.Frame {
	switch o.Kind {
	case OutDeliver:
		it, err := wire.DecodeItem(o.Item)
		if err != nil {
			it = &wire.Item{}
		}
		return &wire.Frame{Kind: &wire.Frame_Deliver{Deliver: &wire.Deliver{Seq: o.Seq, Item: it}}}
	case OutSendAck:
		return &wire.Frame{Kind: &wire.Frame_SendAck{SendAck: &wire.SendAck{Id: o.ID, ServerId: o.ServerID, Ts: o.TS}}}
	}
	return o.Frame
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
	// Checked answers the oldest Check not yet answered.
	Checked struct {
		OK  bool
		Err error
	}
	// Pushed says item Seq was just appended to the user's queue.
	Pushed struct {
		Seq  uint64
		Data []byte
	}
	// Kicked ends the session for a reason from outside (a new device
	// registered, a newer login, shutdown). ReconnectAfter, with
	// SHUTTING_DOWN, is the wait the Close frame tells the client to take
	// before it reconnects (whole milliseconds; 0: its own backoff).
	Kicked struct {
		Code           wire.Error_Code
		Text           string
		ReconnectAfter time.Duration
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
	// recv is an ack's Received: senders the user is known to have
	// received from while the ack's record is being written.
	recv []string
	// batch is an ack's write, to try again if the store could not make
	// it.
	batch *store.Batch
}

// readCheck is a Read waiting for its Check: its receipt, encoded.
type readCheck struct {
	id   uint64
	to   string
	data []byte
}

// inflight is a delivered, unacknowledged item: enough to write the
// delivered receipt when it is acked.
type inflight struct {
	seq      uint64
	at       int64 // when it was delivered
	id       uint64
	serverID uint64
	// from is the sender, kept here rather than as a view into the item,
	// which would keep the whole item (body included) in memory until the
	// ack. fromLen is 0 for receipts, which get no receipt of their own.
	from    [wire.MaxPhone]byte
	fromLen uint8
}

func (f *inflight) sender() []byte { return f.from[:f.fromLen] }

// Core is one session's protocol state.
//
// A server keeps one per logged-in connection, most of them idle, so an
// idle Core is kept small: the shared Config by pointer, and everything that
// only exists while something is in progress (deliveries awaiting their
// ack, writes awaiting their commit, the Ready being built) in a work
// struct that Advance drops once nothing is in progress.
type Core struct {
	cfg  *Config
	user string
	next uint64 // next queue seq to deliver
	// readTAT is the read bucket's state (see onRead): the millisecond,
	// as the low 32 bits of unix time, at which it is full again; 0 when
	// this session has not read. 32 bits keep an idle Core within its
	// budget (node's conn is sized to a malloc class).
	readTAT  uint32
	started  bool
	closed   bool
	caughtUp bool // the last read reached the queue's tail
	// pushedWhileLoading: an item arrived after the outstanding read's
	// snapshot may have been taken, so that read cannot prove the queue
	// was caught up.
	pushedWhileLoading bool

	work *work // nil while idle
}

// work is the part of a session's state that only exists while something
// is in progress.
type work struct {
	inflight []inflight  // delivered, unacked, in seq order
	pending  []pending   // writes awaiting Committed, in commit order
	checks   []readCheck // Reads awaiting Checked, in order
	rd       Ready
	// loadMax is the Max of the outstanding Load; zero when no read is
	// outstanding.
	loadMax int
	// retry holds ack writes the store could not make, to write again
	// once the clock passes retryAt (see ackRetryIn).
	retry   []*store.Batch
	retryAt int64

	// Room for the usual Ready (a frame or two, one write, one ack's
	// delay), so that a session going from idle to busy allocates its work
	// struct and not three slices besides.
	frames    [2]Out
	writes    [1]*store.Batch
	ackDelays [1]int64
}

// New returns the Core of a freshly logged-in session of user. cfg is kept,
// not copied (see Config).
func New(user string, cfg *Config) *Core {
	c := new(Core)
	c.Init(user, cfg)
	return c
}

// Init makes c the Core of a freshly logged-in session of user, like New,
// for a caller that keeps the Core inside its own per-connection struct
// (one allocation per connection rather than two).
func (c *Core) Init(user string, cfg *Config) {
	*c = Core{cfg: cfg, user: user}
}

// User is the session's account.
func (c *Core) User() string { return c.user }

// Inflight is the number of unacknowledged deliveries.
func (c *Core) Inflight() int {
	if c.work == nil {
		return 0
	}
	return len(c.work.inflight)
}

// Closed reports whether the session has ended.
func (c *Core) Closed() bool { return c.closed }

// Ready returns the work accumulated since the last Advance. The caller
// carries it out, then calls Advance before the next Step.
func (c *Core) Ready() Ready {
	if c.work == nil {
		return Ready{}
	}
	return c.work.rd
}

// Advance says the last Ready was carried out. While deliveries or writes
// are outstanding it keeps the Ready's slices' room for the next Step (but
// drops what they point to); once none are, the session is idle and drops
// its work struct altogether, so that an idle session holds no buffers.
func (c *Core) Advance() {
	w := c.work
	if w == nil {
		return
	}
	if len(w.inflight) == 0 && len(w.pending) == 0 && len(w.checks) == 0 && w.loadMax == 0 && len(w.retry) == 0 {
		c.work = nil
		return
	}
	clear(w.rd.Frames)
	clear(w.rd.Writes)
	w.rd = Ready{Frames: w.rd.Frames[:0], Writes: w.rd.Writes[:0], AckDelays: w.rd.AckDelays[:0]}
}

// w returns the session's work struct, making it if the session was idle.
func (c *Core) w() *work {
	if c.work == nil {
		w := new(work)
		w.rd = Ready{Frames: w.frames[:0], Writes: w.writes[:0], AckDelays: w.ackDelays[:0]}
		c.work = w
	}
	return c.work
}

func (c *Core) window() int {
	if c.cfg.Window > 0 {
		return min(c.cfg.Window, math.MaxInt32)
	}
	return 256
}

func (c *Core) maxPending() int {
	if c.cfg.MaxPending > 0 {
		return c.cfg.MaxPending
	}
	return 4096
}

func (c *Core) numPending() int {
	if c.work == nil {
		return 0
	}
	return len(c.work.pending) + len(c.work.checks)
}

// Step applies one event. The Step* methods apply one event of a known
// kind without boxing it in an interface (an allocation per event on the
// per-message path); Step is for callers that pass events around.
func (c *Core) Step(ev any) {
	switch e := ev.(type) {
	case Start:
		c.StepStart()
	case Received:
		c.StepReceived(e.Frame)
	case Committed:
		c.StepCommitted(e.Result)
	case Loaded:
		c.StepLoaded(e.Items, e.Err)
	case Checked:
		c.StepChecked(e.OK, e.Err)
	case Pushed:
		c.StepPushed(e.Seq, e.Data)
	case Kicked:
		c.StepKicked(e.Code, e.Text, e.ReconnectAfter)
	default:
		panic(fmt.Sprintf("session: unknown event %T", ev))
	}
}

// StepStart is Step(Start{}).
func (c *Core) StepStart() {
	if c.closed {
		return
	}
	c.started = true
	c.fill()
}

// StepReceived is Step(Received{Frame: f}).
func (c *Core) StepReceived(f *wire.Frame) {
	if !c.closed {
		c.received(f)
	}
}

// StepCommitted is Step(Committed{Result: r}).
func (c *Core) StepCommitted(r store.Result) {
	if !c.closed {
		c.committed(r)
	}
}

// StepLoaded is Step(Loaded{Items: items, Err: err}).
func (c *Core) StepLoaded(items []store.Item, err error) {
	if !c.closed {
		c.loaded(items, err)
	}
}

// StepChecked is Step(Checked{OK: ok, Err: err}).
func (c *Core) StepChecked(ok bool, err error) {
	if !c.closed {
		c.checked(ok, err)
	}
}

// StepPushed is Step(Pushed{Seq: seq, Data: data}).
func (c *Core) StepPushed(seq uint64, data []byte) {
	if !c.closed {
		c.pushed(seq, data)
	}
}

// StepKicked is Step(Kicked{Code: code, Text: text, ReconnectAfter: after}).
func (c *Core) StepKicked(code wire.Error_Code, text string, after time.Duration) {
	if !c.closed {
		c.close(code, text).ReconnectAfterMs = uint32(min(after.Milliseconds(), math.MaxUint32))
	}
}

func (c *Core) send(f *wire.Frame) { c.out(Out{Frame: f}) }

func (c *Core) out(o Out) { w := c.w(); w.rd.Frames = append(w.rd.Frames, o) }

// close ends the session with a Close frame, which it returns (still
// unwritten: the caller may add to it).
func (c *Core) close(code wire.Error_Code, text string) *wire.Close {
	cl := &wire.Close{Code: code, Text: text}
	c.send(&wire.Frame{Kind: &wire.Frame_Close{Close: cl}})
	c.work.rd.Close = cl
	c.closed = true
	return cl
}

// defaultMaxReadIDs is Config.MaxReadIDs's default.
const defaultMaxReadIDs = 256

func errFrame(id uint64, code wire.Error_Code, text string) *wire.Frame {
	return &wire.Frame{Kind: &wire.Frame_Error{Error: &wire.Error{Id: id, Code: code, Text: text}}}
}

func (c *Core) received(f *wire.Frame) {
	if limit := c.maxPending(); c.numPending() >= limit {
		c.close(wire.Error_BAD_REQUEST, fmt.Sprintf("more than %d requests waiting for their answers: wait for SendAcks before sending more", limit))
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
		tok, url, exp := c.cfg.IssueUpload(c.user)
		c.send(&wire.Frame{Kind: &wire.Frame_UploadToken{UploadToken: &wire.UploadToken{Id: id, Token: tok, Url: url, Expires: exp}}})
	default:
		c.close(wire.Error_BAD_FRAME, fmt.Sprintf("a client may not send %T frames", f.Kind))
	}
}

func (c *Core) onSend(s *wire.Send) {
	if s.Media != nil && c.cfg.CheckMedia != nil {
		if err := c.cfg.CheckMedia(s.Media); err != nil {
			c.send(errFrame(s.Id, wire.Error_BAD_REQUEST, err.Error()))
			return
		}
	}
	serverID, ts := c.cfg.NewID(), c.cfg.Now()
	data := wire.AppendMessageItem(nil, c.user, s.Id, serverID, ts, s.Body, s.Media)
	if len(data) > wire.MaxItem {
		// It would be stored, and then could never be delivered: the
		// recipient would be cut off at every login until it expired.
		c.send(errFrame(s.Id, wire.Error_TOO_LARGE, fmt.Sprintf("the message is %d bytes once stamped, over the %d a delivery can carry: send a shorter body or caption", len(data), wire.MaxItem)))
		return
	}
	w := c.w()
	sw := &sendWrite{dedup: store.Dedup{Sender: c.user, ClientID: s.Id, ServerID: serverID, TS: ts, Fresh: !s.Resend}}
	sw.appends[0] = store.Append{To: s.To, Data: data}
	sw.b = store.Batch{Dedup: &sw.dedup, Appends: sw.appends[:]}
	w.rd.Writes = append(w.rd.Writes, &sw.b)
	w.pending = append(w.pending, pending{kind: pendSend, id: s.Id, serverID: serverID, ts: ts})
}

// Read receipts and what the server can vouch for. A Read names the
// sender's message ids; the server stamps By, so a receipt always says
// truly who sent it. That the reader ever received from the sender is
// checked against what the store keeps after the messages are erased:
// every ack records the senders it covers (store.Batch.Received), and a
// Read to a sender the user has no record for within the store's MaxAge
// is refused as forged (BAD_REQUEST, counted as "forged_read"). A
// legitimate Read may come long after the ack, on a new connection
// (client.MarkRead also resends an unanswered Read after a reconnect);
// the record serves it. The session answers from memory when it can
// (the senders of its unacked deliveries and of its acks still being
// written, whose records may not be in the store yet) and asks the caller
// for a Check otherwise. Which ids a Read names is not checked: the
// server keeps no record per message. What bounds that is how much a Read
// may push into the sender's queue: MaxReadIDs ids a frame, and a token
// bucket of ReadBurst ids refilled at ReadRate a second (see readBucket),
// taken before the check so that it also bounds the store lookups. Clients
// should show a read receipt only on messages they sent to its By.
func (c *Core) onRead(r *wire.Read) {
	if max := cmp.Or(c.cfg.MaxReadIDs, defaultMaxReadIDs); len(r.Ids) > max {
		c.refused("max_read_ids")
		c.send(errFrame(r.Id, wire.Error_TOO_LARGE, fmt.Sprintf("a read receipt names %d messages, over the %d one may: split it", len(r.Ids), max)))
		return
	}
	if r.To == c.user {
		c.send(errFrame(r.Id, wire.Error_BAD_REQUEST, "a read receipt goes to the messages' sender, not to yourself"))
		return
	}
	if wait := c.readBucket(len(r.Ids)); wait > 0 {
		c.refused("read_rate")
		rate, burst := c.readLimits()
		c.send(errFrame(r.Id, wire.Error_BAD_REQUEST, fmt.Sprintf("read receipts may name %d messages a second (%d at once): send this one again in %dms", rate, burst, wait)))
		return
	}
	data, err := wire.EncodeItem(&wire.Item{Kind: &wire.Item_Receipt{Receipt: &wire.Receipt{
		Kind: wire.Receipt_READ, By: c.user, Ids: r.Ids, Ts: c.cfg.Now(),
	}}})
	if err != nil {
		c.send(errFrame(r.Id, wire.Error_INTERNAL, "encode receipt: "+err.Error()))
		return
	}
	if !c.receivingFrom(r.To) {
		w := c.w()
		w.checks = append(w.checks, readCheck{id: r.Id, to: r.To, data: data})
		w.rd.Check = &Check{Sender: r.To}
		return
	}
	c.writeRead(r.Id, r.To, data)
}

// writeRead stores a Read's receipt in the sender's queue.
func (c *Core) writeRead(id uint64, to string, data []byte) {
	w := c.w()
	w.rd.Writes = append(w.rd.Writes, &store.Batch{Appends: []store.Append{{To: to, Data: data}}})
	w.pending = append(w.pending, pending{kind: pendRead, id: id})
}

// receivingFrom reports whether the session knows, without the store,
// that its user received from sender: a delivery from sender is unacked,
// or an ack covering one is still being written.
func (c *Core) receivingFrom(sender string) bool {
	w := c.work
	if w == nil {
		return false
	}
	for i := range w.inflight {
		if string(w.inflight[i].sender()) == sender {
			return true
		}
	}
	for i := range w.pending {
		if slices.Contains(w.pending[i].recv, sender) {
			return true
		}
	}
	return false
}

func (c *Core) checked(ok bool, err error) {
	if c.work == nil || len(c.work.checks) == 0 {
		panic("session: Checked with no check outstanding")
	}
	w := c.work
	rc := w.checks[0]
	w.checks = w.checks[1:]
	if len(w.checks) == 0 {
		w.checks = nil
	}
	switch {
	case errors.Is(err, store.ErrClosed):
		c.send(errFrame(rc.id, wire.Error_SHUTTING_DOWN, "the server is shutting down: reconnect and send the read receipt again"))
	case err != nil:
		c.send(errFrame(rc.id, wire.Error_INTERNAL, "checking the read receipt failed: send it again"))
	case !ok:
		c.refused("forged_read")
		c.send(errFrame(rc.id, wire.Error_BAD_REQUEST, fmt.Sprintf("you have received no message from %s (none acked in the server's retention time): a read receipt goes only to the sender of messages you received", rc.to)))
	default:
		c.writeRead(rc.id, rc.to, rc.data)
	}
}

func (c *Core) refused(limit string) {
	if c.cfg.OnRefused != nil {
		c.cfg.OnRefused(limit)
	}
}

// Config.ReadRate's and Config.ReadBurst's defaults.
const (
	defaultReadRate  = 16
	defaultReadBurst = 1024
)

// readLimits returns the read bucket's rate (ids a second, 1..1000) and
// size (ids, at least MaxReadIDs, so that any Read the frame bound lets
// through can pass a full bucket).
func (c *Core) readLimits() (rate, burst int) {
	rate = min(cmp.Or(c.cfg.ReadRate, defaultReadRate), 1000)
	burst = max(cmp.Or(c.cfg.ReadBurst, defaultReadBurst), cmp.Or(c.cfg.MaxReadIDs, defaultMaxReadIDs))
	return rate, burst
}

// readBucket takes n ids from the session's read bucket and returns 0, or
// leaves it as it is and returns the milliseconds until it could give n.
//
// The bucket is kept as one number, GCRA's theoretical arrival time: the
// millisecond at which it is full again (readTAT). It is ahead of now by
// what has been taken and not yet refilled, at most the bucket's span
// (burst ids' worth of refill); taking n ids moves it on by n ids' worth.
// Only the low 32 bits of the millisecond are kept, which wrap every 49.7
// days: a difference past the span can only be a session that has not read
// for that long, whose bucket is full. (One that has been idle a multiple
// of 49.7 days, give or take the span, may be asked to wait up to the span
// once.)
func (c *Core) readBucket(n int) (waitMs int64) {
	rate, burst := c.readLimits()
	span := int64(burst) * 1000 / int64(rate)
	cost := (int64(n)*1000 + int64(rate) - 1) / int64(rate)
	now := uint32(uint64(c.cfg.Now()) / 1e6)
	ahead := int64(int32(c.readTAT - now))
	if c.readTAT == 0 || ahead < 0 || ahead > span {
		ahead = 0 // full
	}
	if ahead+cost > span {
		return ahead + cost - span
	}
	c.readTAT = max(now+uint32(ahead+cost), 1) // 0 means "has not read"
	return 0
}

// sendWrite is a Send's batch with its parts, in one allocation.
type sendWrite struct {
	b       store.Batch
	dedup   store.Dedup
	appends [1]store.Append
}

// ackWrite is an ack's batch with room for two senders' receipts and
// received records, in one allocation.
type ackWrite struct {
	b        store.Batch
	acks     [1]store.Ack
	appends  [2]store.Append
	received [2]string
}

// onAck erases the acked items, queues one delivered receipt per sender
// and records the senders as received from (see onRead).
// The session does not wait for the erase to be durable: if it is lost in a
// crash the items are delivered again and the client drops them by id.
func (c *Core) onAck(seq uint64) {
	if seq >= c.next {
		c.close(wire.Error_BAD_REQUEST, fmt.Sprintf("ack of seq %d, which was never delivered (next to deliver: %d)", seq, c.next))
		return
	}
	if c.Inflight() == 0 || c.work.inflight[0].seq > seq {
		return // an old or repeated ack: nothing left to erase
	}
	w := c.work
	n := 0
	for n < len(w.inflight) && w.inflight[n].seq <= seq {
		n++
	}
	aw := &ackWrite{}
	aw.acks[0] = store.Ack{User: c.user, UpTo: seq}
	aw.b = store.Batch{Acks: aw.acks[:], Appends: aw.appends[:0], Received: aw.received[:0]}
	b := &aw.b
	now := c.cfg.Now()
	acked := w.inflight[:n]
	for i := range acked {
		w.rd.AckDelays = append(w.rd.AckDelays, now-acked[i].at)
	}
	// One delivered receipt per sender, in the order of their first
	// message: an ack usually covers one or two senders, so scanning the
	// acked deliveries once per sender beats building a map per ack. A
	// delivery counted in its sender's receipt is marked by clearing its
	// fromLen (they leave inflight below).
	for i := range acked {
		if acked[i].fromLen == 0 {
			continue // a receipt's delivery, or its sender's receipt is made
		}
		from := acked[i].sender()
		to := string(from)
		var mineBuf [8]int32
		mine := mineBuf[:0] // indices of this sender's deliveries
		for j := i; j < len(acked); j++ {
			if acked[j].fromLen != 0 && bytes.Equal(acked[j].sender(), from) {
				mine = append(mine, int32(j))
			}
		}
		for _, j := range mine {
			acked[j].fromLen = 0
		}
		b.Received = append(b.Received, to)
		for len(mine) > 0 { // at most MaxReceiptIDs ids a receipt
			part := mine[:min(len(mine), wire.MaxReceiptIDs)]
			mine = mine[len(part):]
			data := wire.AppendReceiptItem(nil, wire.Receipt_DELIVERED, c.user, len(part), func(k int) (uint64, uint64) {
				d := &acked[part[k]]
				return d.id, d.serverID
			}, now)
			b.Appends = append(b.Appends, store.Append{To: to, Data: data})
		}
	}
	w.rd.Writes = append(w.rd.Writes, b)
	w.pending = append(w.pending, pending{kind: pendAck, ackUpTo: seq, recv: b.Received, batch: b})
	w.inflight = w.inflight[n:]
	if len(w.inflight) == 0 {
		w.inflight = nil // an idle session holds no delivery buffer
	}
	c.fill()
}

func (c *Core) committed(r store.Result) {
	if c.numPending() == 0 {
		panic("session: Committed with no write pending")
	}
	w := c.work
	p := w.pending[0]
	w.pending = w.pending[1:]
	if len(w.pending) == 0 {
		w.pending = nil
	}
	switch p.kind {
	case pendSend:
		switch {
		case r.Err != nil:
			c.send(errFrame(p.id, storeErrCode(r.Err), storeErrText(r.Err)))
		case r.Dup != nil:
			c.out(Out{Kind: OutSendAck, ID: p.id, ServerID: r.Dup.ServerID, TS: r.Dup.TS})
		default:
			c.out(Out{Kind: OutSendAck, ID: p.id, ServerID: p.serverID, TS: p.ts})
		}
	case pendRead:
		if r.Err != nil {
			c.send(errFrame(p.id, storeErrCode(r.Err), storeErrText(r.Err)))
		} else {
			c.send(&wire.Frame{Kind: &wire.Frame_Ok{Ok: &wire.Ok{Id: p.id}}})
		}
	case pendAck:
		switch {
		case r.Err == nil, errors.Is(r.Err, store.ErrClosed):
		case errors.Is(r.Err, store.ErrQueueFull), errors.Is(r.Err, store.ErrUnknownUser):
			// The receipts were refused (a sender's queue is full or gone):
			// erase the acked items anyway, so the recipient is not flooded
			// with redeliveries. The refusal is the sender's loss of a tick,
			// not of a message; the received records are still written.
			b := &store.Batch{Acks: []store.Ack{{User: c.user, UpTo: p.ackUpTo}}, Received: p.recv}
			w.rd.Writes = append(w.rd.Writes, b)
			w.pending = append(w.pending, pending{kind: pendAck, ackUpTo: p.ackUpTo, recv: p.recv, batch: b})
		default:
			// The store could not write the ack now (a cluster stream
			// between leaders, a disk error): some of it may be written
			// (a cluster writes each partition's share on its own), so
			// the items may be erased and the receipts not made. Write
			// the whole of it again shortly, as often as it takes: a
			// receipt made twice marks what is marked, an ack of erased
			// items erases nothing. Not at once: the store fails fast
			// while it cannot write.
			w.retry = append(w.retry, p.batch)
			w.retryAt = c.cfg.Now() + int64(ackRetryIn)
			w.rd.WakeIn = ackRetryIn
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
	case errors.Is(err, store.ErrUnavailable):
		return wire.Error_UNAVAILABLE
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
	case wire.Error_UNAVAILABLE:
		return "the server cannot store messages now (its cluster has no quorum): send again later with the same id"
	}
	return "internal error: send again with the same id"
}

// loading reports whether a Load is outstanding.
func (c *Core) loading() bool { return c.work != nil && c.work.loadMax > 0 }

// fill delivers or reads more while the window has room.
func (c *Core) fill() {
	if !c.started || c.loading() || c.caughtUp {
		return
	}
	room := c.window() - c.Inflight()
	if room <= 0 {
		return
	}
	w := c.w()
	w.loadMax = room
	w.rd.Load = &Load{From: c.next, Max: room}
}

func (c *Core) loaded(items []store.Item, err error) {
	loadMax := 0
	if c.work != nil {
		loadMax = c.work.loadMax
		c.work.loadMax = 0
	}
	if err != nil {
		c.close(wire.Error_INTERNAL, "reading your queue failed: reconnect")
		return
	}
	for _, it := range items {
		if it.Seq < c.next {
			continue
		}
		if !c.deliver(it.Seq, it.Data) {
			return
		}
	}
	c.caughtUp = len(items) < loadMax && !c.pushedWhileLoading
	c.pushedWhileLoading = false
	c.fill()
}

// ackRetryIn is how long an ack write the store could not make waits
// before it is tried again.
const ackRetryIn = 500 * time.Millisecond

// retryDue writes again the ack writes whose wait is over.
func (c *Core) retryDue() {
	w := c.work
	if w == nil || len(w.retry) == 0 {
		return
	}
	if c.cfg.Now() < w.retryAt {
		w.rd.WakeIn = time.Duration(w.retryAt - c.cfg.Now())
		return
	}
	for _, b := range w.retry {
		w.rd.Writes = append(w.rd.Writes, b)
		w.pending = append(w.pending, pending{kind: pendAck, ackUpTo: b.Acks[0].UpTo, recv: b.Received, batch: b})
	}
	clear(w.retry)
	w.retry = w.retry[:0]
}

func (c *Core) pushed(seq uint64, data []byte) {
	c.retryDue()
	switch {
	case seq < c.next:
		// already read from the store
	case c.started && c.caughtUp && !c.loading() && seq == c.next && c.Inflight() < c.window():
		c.deliver(seq, data)
	default:
		// Behind, or the window is full: the item waits in the store and
		// the next read picks it up.
		c.caughtUp = false
		if c.loading() {
			c.pushedWhileLoading = true
		}
		c.fill()
	}
}

// deliver sends one item as it is stored and remembers what its ack needs.
func (c *Core) deliver(seq uint64, data []byte) bool {
	h, err := wire.ReadItemHead(data)
	if err != nil {
		c.close(wire.Error_INTERNAL, fmt.Sprintf("queue item %d is corrupt: %v", seq, err))
		return false
	}
	fl := inflight{seq: seq, at: c.cfg.Now()}
	o := Out{Kind: OutDeliver, Seq: seq, Item: data}
	if h.Message {
		// The server stamped the sender: an account's phone number.
		if len(h.From) == 0 || len(h.From) > wire.MaxPhone {
			c.close(wire.Error_INTERNAL, fmt.Sprintf("queue item %d is corrupt: sender %q", seq, h.From))
			return false
		}
		fl.fromLen = uint8(copy(fl.from[:], h.From))
		fl.id, fl.serverID = h.ID, h.ServerID
		o.TS = h.TS
	}
	w := c.w()
	w.inflight = append(w.inflight, fl)
	c.next = seq + 1
	c.out(o)
	return true
}
