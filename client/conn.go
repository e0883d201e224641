package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"syscall"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/parleyhq/parley/noise"
	"github.com/parleyhq/parley/wire"
)

// protocolVersion is the native protocol version this SDK speaks.
const protocolVersion = 1

// writeTimeout bounds one write: a server that takes nothing for this long
// is gone, and the connection is dropped (and, with Reconnect, replaced)
// rather than left to block every caller behind the write lock.
const writeTimeout = 30 * time.Second

// conn is one logged-in connection.
type conn struct {
	nc     net.Conn
	br     *bufio.Reader
	rx     *noise.Cipher // the reader goroutine's alone
	window uint32
	since  time.Time
	addr   string // the address dialled

	// wmu serialises writes: the tx cipher's nonces must reach the server
	// in the order they were used, so sealing and writing are one step.
	wmu  sync.Mutex
	tx   *noise.Cipher
	wbuf []byte

	// Under Client.mu: acks must never name a seq this connection has not
	// delivered (the server closes the session for that), so each
	// connection counts its own.
	delivered uint64 // highest seq delivered on this connection
	ackSent   uint64 // highest ack written on this connection

	stopClose func() bool // unregisters the close-on-Client-close hook
}

// write seals f and writes it. A failed write leaves the stream unusable (a
// nonce was spent), so it shuts the connection (see shut); the reader
// goroutine then reads what the server last said, sees the failure, and
// reconnects or ends the client.
func (cn *conn) write(f *wire.Frame) error {
	cn.wmu.Lock()
	defer cn.wmu.Unlock()
	return cn.writeLocked(f)
}

func (cn *conn) writeLocked(f *wire.Frame) error {
	b := append(cn.wbuf[:0], 0, 0, 0)
	b, err := wire.AppendFrame(b, f)
	if err != nil {
		return fmt.Errorf("encode frame: %w", err)
	}
	b = slices.Grow(b, noise.TagLen)
	pt := b[wire.HeaderLen:]
	sealed, err := cn.tx.Seal(pt[:0], pt)
	if err != nil {
		cn.shut()
		return err
	}
	b = b[:wire.HeaderLen+len(sealed)]
	wire.PutHeader(b, len(sealed))
	cn.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, err = cn.nc.Write(b)
	if cap(b) <= 64<<10 {
		cn.wbuf = b[:0]
	}
	if err != nil {
		cn.shut()
		return fmt.Errorf("write: %w", err)
	}
	return nil
}

// shut ends a connection whose writes failed, keeping its read side open a
// moment: the server may have said why before it closed (a Close frame
// saying REPLACED, say), and the reader should learn that rather than see
// its connection closed under it.
func (cn *conn) shut() {
	if tc, ok := cn.nc.(interface{ CloseWrite() error }); ok && tc.CloseWrite() == nil {
		cn.nc.SetReadDeadline(time.Now().Add(writeTimeout))
		return
	}
	cn.nc.Close()
}

// readFrame reads and decrypts the next frame.
func (cn *conn) readFrame(buf []byte) (*wire.Frame, []byte, error) {
	msg, err := wire.ReadMessage(cn.br, buf)
	if err != nil {
		return nil, buf, err
	}
	pt, err := cn.rx.Open(msg[:0], msg)
	if err != nil {
		return nil, msg, err
	}
	f := new(wire.Frame)
	// Unmarshal copies what it keeps, so the buffer is reused next time.
	if err := proto.Unmarshal(pt, f); err != nil {
		return nil, msg, fmt.Errorf("decode frame: %w", err)
	}
	return f, msg, nil
}

// connect dials addr, runs the handshake and logs in. ctx and DialTimeout
// bound all of it.
func (c *Client) connect(parent context.Context, addr string) (*conn, error) {
	ctx, cancel := context.WithTimeout(parent, c.cfg.DialTimeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		switch {
		case parent.Err() != nil:
			return nil, fmt.Errorf("connect to %s: %w", addr, parent.Err())
		case errors.Is(err, syscall.ECONNRESET): // accepted, then reset unread
			return nil, fmt.Errorf("connect to %s: %w (the server is busy or going away: try again later)", addr, err)
		}
		return nil, fmt.Errorf("connect to %s: %w (is the server running, and is this its native address?)", addr, err)
	}
	// A deadline in the past unblocks the handshake's read or write when
	// ctx ends; net.Conn has no other way to cancel them.
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Now()) })
	cn, err := c.handshake(nc)
	if !stop() || err != nil {
		nc.Close()
		switch {
		case parent.Err() != nil:
			return nil, fmt.Errorf("log in to %s: %w", addr, parent.Err())
		case ctx.Err() != nil:
			return nil, fmt.Errorf("log in to %s: no handshake reply within %s (is this a Parley server's native address?)", addr, c.cfg.DialTimeout)
		}
		return nil, err
	}
	nc.SetDeadline(time.Time{})
	return cn, nil
}

// handshake logs in on nc: with the resumption ticket of the last login
// if there is one (see noise/ticket.go: about half a full handshake's
// server CPU), else, or if the server refuses the ticket, with Noise IK,
// on the same connection. Either way the login rides in the first message
// and the reply completes the channel and carries the login result, and a
// new ticket for next time.
func (c *Client) handshake(nc net.Conn) (*conn, error) {
	login, err := proto.Marshal(&wire.Login{Phone: c.cfg.Phone, Version: protocolVersion, Agent: c.cfg.Agent})
	if err != nil {
		return nil, err
	}
	br := bufio.NewReaderSize(nc, 16<<10)
	if r := c.resume.Load(); r.Usable(time.Now()) {
		hs, first, err := noise.Resume(r.Ticket, r.Secret, login)
		if err == nil {
			cn, err := c.exchange(nc, br, hs, first)
			switch {
			case errors.Is(err, noise.ErrTicketRefused):
				// Expired, or the server's ticket key changed: a full
				// handshake, now on this connection and from now on.
				c.resume.CompareAndSwap(r, nil)
			case errors.Is(err, ErrHandshake):
				// The server closed the connection or the reply did not
				// verify: whatever the ticket's part, the next attempt
				// uses the device key.
				c.resume.CompareAndSwap(r, nil)
				return nil, err
			default: // logged in, refused by the server, or the network failed
				return cn, err
			}
		}
	}
	hs, first, err := c.key.Initiate(c.cfg.ServerKey, login)
	if err != nil {
		return nil, err
	}
	return c.exchange(nc, br, hs, first)
}

// exchange sends a handshake's first message and reads the reply and the
// login result.
func (c *Client) exchange(nc net.Conn, br *bufio.Reader, hs *noise.Client, first []byte) (*conn, error) {
	out := wire.AppendHeader(make([]byte, 0, wire.HeaderLen+len(first)), len(first))
	if _, err := nc.Write(append(out, first...)); err != nil {
		return nil, fmt.Errorf("send handshake to %s: %w", nc.RemoteAddr(), err)
	}
	reply, err := wire.ReadMessage(br, nil)
	if err != nil {
		// The server answers a first message it cannot decrypt by closing
		// the connection after reading it; nothing else ends a handshake
		// this way. A reset is not that: the server closed the connection
		// with the message unread, as a node over a limit (a reconnect
		// storm paced) or a dying one does. That may pass, and says
		// nothing against a resumption ticket.
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w (%s closed the connection)", ErrHandshake, nc.RemoteAddr())
		}
		return nil, fmt.Errorf("read handshake reply from %s: %w (the server is busy or going away: try again later)", nc.RemoteAddr(), err)
	}
	payload, tx, rx, err := hs.Finish(reply)
	if errors.Is(err, noise.ErrTicketRefused) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrHandshake, err)
	}
	var res wire.LoginResult
	if err := proto.Unmarshal(payload, &res); err != nil {
		return nil, fmt.Errorf("%w: login result does not decode: %v", ErrHandshake, err)
	}
	if e := res.GetError(); e != nil {
		return nil, &LoginError{Code: e.Code, Text: e.Text}
	}
	if r := noise.NewResumption(res.Ticket, res.TicketSecret, res.TicketExpires); r != nil {
		c.resume.Store(r)
	}
	// The login takes effect when the server opens a message sealed with
	// the new keys (a replay of our first message cannot produce one):
	// send it now, empty, so deliveries start without waiting for a frame.
	proof, err := tx.Seal(wire.AppendHeader(make([]byte, 0, wire.HeaderLen+noise.TagLen), noise.TagLen), nil)
	if err == nil {
		_, err = nc.Write(proof)
	}
	if err != nil {
		return nil, fmt.Errorf("send login proof to %s: %w", nc.RemoteAddr(), err)
	}
	return &conn{nc: nc, br: br, rx: rx, tx: tx, window: res.Window, since: time.Now()}, nil
}
