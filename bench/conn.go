package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"syscall"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/parleyhq/parley/noise"
	"github.com/parleyhq/parley/wire"
)

// agent names the bench in the server's logs.
const agent = "parley-bench/1"

// dialer opens logged-in connections for the users of one run.
type dialer struct {
	addrs     []string // user i dials addrs[i mod len]
	serverKey []byte
	src       []netip.Addr // source addresses, round robin by user; empty: any
	timeout   time.Duration
	full      bool // never resume: every login a full handshake
}

// hello is a prepared first handshake message: the expensive half of the
// client's handshake, done before a measured interval.
type hello struct {
	hs      *noise.Client
	first   []byte            // length-prefixed, ready to write
	resumed *noise.Resumption // the ticket it presents; nil for a full handshake
}

// prepare makes u's first handshake message (fresh ephemeral key): a
// resumption with the ticket of u's last login if it has one, else a full
// handshake.
func (d *dialer) prepare(u *user) (hello, error) {
	login, err := proto.Marshal(&wire.Login{Phone: u.phone, Version: 1, Agent: agent})
	if err != nil {
		return hello{}, err
	}
	var h hello
	var msg []byte
	if r := u.resume.Load(); !d.full && r.Usable(time.Now()) {
		h.hs, msg, err = noise.Resume(r.Ticket, r.Secret, login)
		h.resumed = r
	} else {
		h.hs, msg, err = u.key.Initiate(d.serverKey, login)
	}
	if err != nil {
		return hello{}, err
	}
	h.first = append(wire.AppendHeader(make([]byte, 0, wire.HeaderLen+len(msg)), len(msg)), msg...)
	return h, nil
}

// errShed is a connection the server reset before reading its handshake:
// it is shedding load (its accept rate, or another admission limit), and
// a later try may pass.
type errShed struct{ phone string }

func (e *errShed) Error() string {
	return fmt.Sprintf("the server reset the connection of %s unread (its accept rate or another admission limit: see /admin/limits; `parley serve --accept-rate -1` lifts the pacing for a benchmark)", e.phone)
}

// errLogin is a login the server refused: retrying cannot help.
type errLogin struct {
	phone string
	code  wire.Error_Code
	text  string
}

func (e *errLogin) Error() string {
	hint := ""
	if e.code == wire.Error_LOGIN_FAILED {
		hint = ": run `parley bench setup` again against this server (same --admin and --state)"
	}
	return fmt.Sprintf("login of %s refused (%s: %s)%s", e.phone, e.code, e.text, hint)
}

// addrOf is the node user u connects to: consecutive users on different
// nodes, so that every pair (2i, 2i+1) crosses nodes when there are two or
// more.
func (d *dialer) addrOf(u *user) string { return d.addrs[u.index%len(d.addrs)] }

// dial connects user u (whose index picks the node and the source address)
// and logs it in with h, or with a fresh hello when h is empty. rbuf is the
// initial read buffer size.
func (d *dialer) dial(ctx context.Context, u *user, h hello, rbuf int) (*conn, error) {
	return d.dialAt(ctx, d.addrOf(u), u, h, rbuf)
}

// dialAt is dial to the native listener addr.
func (d *dialer) dialAt(ctx context.Context, addr string, u *user, h hello, rbuf int) (*conn, error) {
	c, err := d.dialLazy(ctx, addr, u, h, rbuf)
	if err != nil {
		return nil, err
	}
	if err := c.complete(); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

// dialLazy is dial up to the arrival of the server's handshake reply: the
// reply is kept, and complete verifies it, reads the login result and
// sends the proof.
func (d *dialer) dialLazy(ctx context.Context, addr string, u *user, h hello, rbuf int) (*conn, error) {
	if h.hs == nil {
		var err error
		if h, err = d.prepare(u); err != nil {
			return nil, err
		}
	}
	nd := net.Dialer{Timeout: d.timeout}
	if len(d.src) > 0 {
		nd.LocalAddr = &net.TCPAddr{IP: d.src[u.index%len(d.src)].AsSlice()}
	}
	nc, err := nd.DialContext(ctx, "tcp", addr)
	if errors.Is(err, syscall.ECONNRESET) {
		return nil, &errShed{phone: u.phone}
	}
	if errors.Is(err, syscall.EADDRNOTAVAIL) {
		return nil, fmt.Errorf("connect to %s: %w: out of local ports (connections in TIME_WAIT from other programs?): spread connections over source addresses with --src 127.0.0.2-127.0.0.20, or wait a minute", addr, err)
	}
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w (is `parley serve` running? check --addr)", addr, err)
	}
	c := &conn{nc: nc, rbuf: make([]byte, max(rbuf, 256))}
	err = c.login(u, h, d.timeout)
	if errors.Is(err, noise.ErrTicketRefused) {
		// The server would not take the ticket: a full handshake, on
		// this connection, as the SDK does.
		u.resume.CompareAndSwap(h.resumed, nil)
		if h, err = d.prepare(u); err == nil {
			err = c.login(u, h, d.timeout)
		}
	}
	if err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// conn is one logged-in connection: a socket, the two ciphers and the
// buffers. It is used by one goroutine at a time (pairs' paced senders lock
// around it).
type conn struct {
	nc     net.Conn
	tx, rx *noise.Cipher
	window uint32

	rbuf []byte // bytes read: rbuf[r:w] not yet parsed
	r, w int
	wbuf []byte // sealed frames waiting for flush

	pending *pendingLogin // dialLazy's reply, until complete
	resumed bool          // logged in with a resumption ticket
}

func (c *conn) login(u *user, h hello, timeout time.Duration) error {
	c.nc.SetDeadline(time.Now().Add(timeout))
	if _, err := c.nc.Write(h.first); err != nil {
		return fmt.Errorf("send handshake of %s: %w", u.phone, err)
	}
	reply, err := c.nextRaw()
	if err != nil {
		if errors.Is(err, syscall.ECONNRESET) {
			return &errShed{phone: u.phone}
		}
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("the server closed the connection of %s during the handshake: its key may have changed since setup (new --data?): run `parley bench setup` again", u.phone)
		}
		return fmt.Errorf("read handshake reply for %s: %w", u.phone, err)
	}
	c.nc.SetDeadline(time.Time{})
	if h.resumed != nil && bytes.Equal(reply, noise.RefusedReply) {
		return noise.ErrTicketRefused
	}
	c.pending = &pendingLogin{u: u, hs: h.hs, reply: append([]byte(nil), reply...), resumed: h.resumed != nil}
	return nil
}

// pendingLogin is a handshake reply received and not yet verified.
type pendingLogin struct {
	u       *user
	hs      *noise.Client
	reply   []byte
	resumed bool
}

// complete verifies the server's handshake reply and reads the login
// result; a connection is usable only after it.
func (c *conn) complete() error {
	p := c.pending
	if p == nil {
		return nil
	}
	c.pending = nil
	payload, tx, rx, err := p.hs.Finish(p.reply)
	if err != nil {
		return fmt.Errorf("handshake of %s: %w", p.u.phone, err)
	}
	var res wire.LoginResult
	if err := proto.Unmarshal(payload, &res); err != nil {
		return fmt.Errorf("login result for %s does not decode: %w", p.u.phone, err)
	}
	if e := res.GetError(); e != nil {
		return &errLogin{phone: p.u.phone, code: e.Code, text: e.Text}
	}
	if r := noise.NewResumption(res.Ticket, res.TicketSecret, res.TicketExpires); r != nil {
		p.u.resume.Store(r)
	}
	c.tx, c.rx, c.window, c.resumed = tx, rx, res.Window, p.resumed
	// The server starts the session when it opens a message sealed with
	// the new keys: send one, empty, at once.
	off := len(c.wbuf)
	c.wbuf = append(c.wbuf, 0, 0, 0)
	if err := c.seal(off); err != nil {
		return err
	}
	if err := c.flush(); err != nil {
		return fmt.Errorf("send login proof of %s: %w", p.u.phone, err)
	}
	return nil
}

// nextRaw returns the next length-prefixed message, reading as needed. The
// message is a view into rbuf, valid until the next read.
func (c *conn) nextRaw() ([]byte, error) {
	for {
		msg, ok, err := c.split()
		if ok || err != nil {
			return msg, err
		}
		if err := c.fill(); err != nil {
			return nil, err
		}
	}
}

// split takes the next complete message off the buffer without reading.
func (c *conn) split() (msg []byte, ok bool, err error) {
	msg, rest, ok, err := wire.Next(c.rbuf[c.r:c.w])
	if err != nil {
		return nil, false, err
	}
	if ok {
		c.r = c.w - len(rest)
	}
	return msg, ok, nil
}

// next returns the next decrypted frame already in the buffer, without
// reading; ok is false when none is complete.
func (c *conn) next() (pt []byte, ok bool, err error) {
	msg, ok, err := c.split()
	if !ok || err != nil {
		return nil, false, err
	}
	pt, err = c.rx.Open(msg[:0], msg)
	if err != nil {
		return nil, false, err
	}
	return pt, true, nil
}

// wait returns at once if a complete message is buffered (one read can
// bring the handshake reply and the first deliveries together), and
// otherwise blocks in fill until more bytes come.
func (c *conn) wait() error {
	b := c.rbuf[c.r:c.w]
	if len(b) >= wire.HeaderLen && len(b) >= wire.HeaderLen+(int(b[0])<<16|int(b[1])<<8|int(b[2])) {
		return nil
	}
	return c.fill()
}

// fill blocks for at least one more byte, making room first: the unparsed
// tail moves to the front, and the buffer grows if one message needs it.
func (c *conn) fill() error {
	if c.r == c.w {
		c.r, c.w = 0, 0
	}
	need := wire.HeaderLen
	if c.w-c.r >= wire.HeaderLen {
		b := c.rbuf[c.r:]
		need += int(b[0])<<16 | int(b[1])<<8 | int(b[2])
	}
	if c.r > 0 && (len(c.rbuf)-c.w < 512 || len(c.rbuf)-c.r < need) {
		c.w = copy(c.rbuf, c.rbuf[c.r:c.w])
		c.r = 0
	}
	if len(c.rbuf) < need {
		c.rbuf = slices.Grow(c.rbuf[:c.w], need-c.w)[:need]
	}
	n, err := c.nc.Read(c.rbuf[c.w:])
	c.w += n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// releaseBuffers drops the buffers of a connection that will only be held.
func (c *conn) releaseBuffers() {
	if c.r == c.w {
		c.rbuf, c.r, c.w = nil, 0, 0
	}
	c.wbuf = nil
}

// seal encrypts the plaintext frame appended to wbuf at off (after room for
// its header) and writes the header.
func (c *conn) seal(off int) error {
	b := slices.Grow(c.wbuf, noise.TagLen)
	pt := b[off+wire.HeaderLen:]
	sealed, err := c.tx.Seal(pt[:0], pt)
	if err != nil {
		return err
	}
	c.wbuf = b[:off+wire.HeaderLen+len(sealed)]
	wire.PutHeader(c.wbuf[off:], len(sealed))
	return nil
}

// queueSend adds a sealed Send to the write buffer.
func (c *conn) queueSend(id uint64, to string, body []byte) error {
	return c.queueSendAgain(id, to, body, false)
}

// queueSendAgain is queueSend, marked as a resend (the server looks the
// id up and answers an earlier send's SendAck instead of storing it
// again) if resend.
func (c *conn) queueSendAgain(id uint64, to string, body []byte, resend bool) error {
	off := len(c.wbuf)
	c.wbuf = appendSend(append(c.wbuf, 0, 0, 0), id, to, body, resend)
	return c.seal(off)
}

// queueAck adds a sealed Ack to the write buffer.
func (c *conn) queueAck(seq uint64) error {
	off := len(c.wbuf)
	c.wbuf = appendAck(append(c.wbuf, 0, 0, 0), seq)
	return c.seal(off)
}

// queuePing adds a sealed Ping to the write buffer.
func (c *conn) queuePing(id uint64) error {
	off := len(c.wbuf)
	c.wbuf = appendPing(append(c.wbuf, 0, 0, 0), id)
	return c.seal(off)
}

// flush writes the buffered frames with one write.
func (c *conn) flush() error {
	if len(c.wbuf) == 0 {
		return nil
	}
	_, err := c.nc.Write(c.wbuf)
	if cap(c.wbuf) > 1<<20 {
		c.wbuf = nil
	} else {
		c.wbuf = c.wbuf[:0]
	}
	return err
}

// close drops the connection with a reset rather than a FIN: the bench
// opens and closes tens of thousands of connections a run, and closed ones
// would otherwise wait in TIME_WAIT holding their local port for a minute,
// until connect has to search long for a free one, then finds none.
func (c *conn) close() {
	if c == nil || c.nc == nil {
		return
	}
	if tc, ok := c.nc.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.nc.Close()
}

// settle makes sure the server has handled everything written so far (it
// handles a connection's frames in order, so a Pong comes after them all):
// a connection about to be reset must not lose its last Ack. Deliveries
// that come meanwhile are acked, and settled in turn, so settle also drains
// the user's queue; it returns how many it acked.
func (c *conn) settle(deadline time.Time) (acked int64, err error) {
	c.nc.SetReadDeadline(deadline)
	defer c.nc.SetReadDeadline(time.Time{})
	var f frame
	for ping := uint64(1); ; ping++ {
		if err := c.queuePing(ping); err != nil {
			return acked, err
		}
		if err := c.flush(); err != nil {
			return acked, err
		}
		var ack uint64
		for pong := false; !pong; {
			if err := c.wait(); err != nil {
				return acked, err
			}
			for {
				pt, ok, err := c.next()
				if err == nil && ok {
					err = parseFrame(pt, &f)
				}
				if err != nil {
					return acked, err
				}
				if !ok {
					break
				}
				switch f.kind {
				case fPong:
					pong = pong || f.id == ping
				case fDeliver:
					ack = max(ack, f.seq)
					acked++
				case fClose:
					return acked, closeErr(&f)
				}
			}
		}
		if ack == 0 {
			return acked, nil
		}
		if err := c.queueAck(ack); err != nil {
			return acked, err
		}
	}
}

// closedError is a Close frame from the server.
type closedError struct {
	code  wire.Error_Code
	text  string
	after time.Duration // the server's reconnect hint
}

func (e *closedError) Error() string {
	return fmt.Sprintf("server closed the session (%s): %s", e.code, e.text)
}

// closeErr describes a Close frame from the server.
func closeErr(f *frame) error {
	return &closedError{code: wire.Error_Code(f.code), text: string(f.text), after: time.Duration(f.after) * time.Millisecond}
}

// reconnectHint is the wait a stopping server asked for in the Close
// frame that err reports, as the SDK honours it; 0 when there is none.
func reconnectHint(err error) time.Duration {
	var ce *closedError
	if errors.As(err, &ce) && ce.code == wire.Error_SHUTTING_DOWN {
		return ce.after
	}
	return 0
}

// proveDrained shows that to's queue holds nothing more: sc (logged in as
// from) sends to a marker with id markerID, and, a queue being FIFO,
// whatever was queued before the marker reaches rc (logged in as to) first.
// It returns how many items came before the marker: late duplicates or
// strays that a check stopping at the expected count would miss. Neither
// connection may be read elsewhere meanwhile; deadline bounds the wait.
func proveDrained(sc, rc *conn, from, to string, markerID uint64, deadline time.Time) (late int64, err error) {
	if err := sc.queueSend(markerID, to, []byte("marker")); err != nil {
		return 0, err
	}
	if err := sc.flush(); err != nil {
		return 0, err
	}
	rc.nc.SetReadDeadline(deadline)
	defer rc.nc.SetReadDeadline(time.Time{})
	var f frame
	for {
		if err := rc.wait(); err != nil {
			return late, fmt.Errorf("waiting for the marker to %s: %w", to, err)
		}
		var ack uint64
		found := false
		for {
			pt, ok, err := rc.next()
			if err == nil && ok {
				err = parseFrame(pt, &f)
			}
			if err != nil {
				return late, err
			}
			if !ok {
				break
			}
			switch f.kind {
			case fClose:
				return late, closeErr(&f)
			case fDeliver:
				ack = max(ack, f.seq)
				if f.isMsg && string(f.from) == from && f.msgID == markerID {
					found = true
				} else if !found {
					late++
				}
			}
		}
		if ack > 0 {
			if err := rc.queueAck(ack); err != nil {
				return late, err
			}
			if err := rc.flush(); err != nil {
				return late, err
			}
		}
		if found {
			return late, nil
		}
	}
}
