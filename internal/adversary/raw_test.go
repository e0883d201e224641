package adversary

import (
	"errors"
	"fmt"
	"net"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/parleyhq/parley/noise"
	"github.com/parleyhq/parley/wire"
)

// The attacker's side of the native protocol: enough of it to speak it
// well or badly, where the SDK would refuse to.

// errNoReply: the server closed the connection instead of answering the
// handshake.
var errNoReply = errors.New("no handshake reply")

// frameMsg length-prefixes one message as the stream carries it.
func frameMsg(msg []byte) []byte {
	return append(wire.AppendHeader(make([]byte, 0, wire.HeaderLen+len(msg)), len(msg)), msg...)
}

func loginPayload(phone string) []byte {
	b, err := proto.Marshal(&wire.Login{Phone: phone, Version: 1, Agent: "parley-adversary"})
	if err != nil {
		panic(err)
	}
	return b
}

// firstMessage is a full handshake's first message logging in as phone
// with kp, length-prefixed, and the state that finishes it.
func firstMessage(kp noise.Keypair, serverKey []byte, phone string) (*noise.Client, []byte, error) {
	hs, first, err := noise.NewClient(kp, serverKey, loginPayload(phone))
	if err != nil {
		return nil, nil, err
	}
	return hs, frameMsg(first), nil
}

// rawConn is a connection after a completed handshake.
type rawConn struct {
	nc     net.Conn
	tx, rx *noise.Cipher
	rbuf   []byte
}

// rawLogin logs in as phone with kp over nc and sends the login's proof.
// A refused login is an error naming the server's code.
func rawLogin(nc net.Conn, kp noise.Keypair, serverKey []byte, phone string) (*rawConn, error) {
	hs, first, err := firstMessage(kp, serverKey, phone)
	if err != nil {
		return nil, err
	}
	nc.SetDeadline(time.Now().Add(ioGuard))
	defer nc.SetDeadline(time.Time{})
	if _, err := nc.Write(first); err != nil {
		return nil, err
	}
	reply, err := wire.ReadMessage(nc, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNoReply, err)
	}
	pl, tx, rx, err := hs.Finish(reply)
	if err != nil {
		return nil, err
	}
	var res wire.LoginResult
	if err := proto.Unmarshal(pl, &res); err != nil {
		return nil, err
	}
	if res.Error != nil {
		return nil, fmt.Errorf("login refused: %s: %s", res.Error.Code, res.Error.Text)
	}
	c := &rawConn{nc: nc, tx: tx, rx: rx}
	// The proof: an empty message sealed under the new keys.
	return c, c.writePlain(nil)
}

// sealed is pt encrypted and length-prefixed; it advances tx's nonce.
func (c *rawConn) sealed(pt []byte) []byte {
	ct, err := c.tx.Seal(nil, pt)
	if err != nil {
		panic(err)
	}
	return frameMsg(ct)
}

func (c *rawConn) writePlain(pt []byte) error {
	c.nc.SetWriteDeadline(time.Now().Add(ioGuard))
	_, err := c.nc.Write(c.sealed(pt))
	return err
}

func (c *rawConn) writeFrame(f *wire.Frame) error {
	b, err := wire.AppendFrame(nil, f)
	if err != nil {
		return err
	}
	return c.writePlain(b)
}

// readFrame reads, decrypts and decodes one frame within ioGuard.
func (c *rawConn) readFrame() (*wire.Frame, error) {
	c.nc.SetReadDeadline(time.Now().Add(ioGuard))
	msg, err := wire.ReadMessage(c.nc, c.rbuf)
	if err != nil {
		return nil, err
	}
	c.rbuf = msg[:0]
	pt, err := c.rx.Open(nil, msg)
	if err != nil {
		return nil, err
	}
	f := new(wire.Frame)
	return f, proto.Unmarshal(pt, f)
}

// awaitClose reads until the server's Close frame, which it returns, or
// fails with what ended the stream first.
func (c *rawConn) awaitClose() (*wire.Close, error) {
	for {
		f, err := c.readFrame()
		if err != nil {
			return nil, fmt.Errorf("no Close frame: %w", err)
		}
		if cl := f.GetClose(); cl != nil {
			return cl, nil
		}
	}
}

func pingFrame(id uint64) []byte {
	b, err := wire.AppendFrame(nil, &wire.Frame{Kind: &wire.Frame_Ping{Ping: &wire.Ping{Id: id}}})
	if err != nil {
		panic(err)
	}
	return b
}
