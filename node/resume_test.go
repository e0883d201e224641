package node_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/parleyhq/parley/account"
	"github.com/parleyhq/parley/node"
	"github.com/parleyhq/parley/noise"
	"github.com/parleyhq/parley/wire"
)

// startNodeIn starts a node on dataDir (so a test can restart it, or read
// its ticket key) and registers phones on its first start.
func startNodeIn(t *testing.T, dataDir string, gw *codeGateway) *node.Node {
	t.Helper()
	n, err := node.Start(context.Background(), node.Config{
		DataDir: dataDir,
		Listen:  "127.0.0.1:0", HTTP: "127.0.0.1:0", Admin: "127.0.0.1:0",
		SMS:       gw,
		PerNumber: account.RateLimit{Max: 100, Window: time.Minute},
		Log:       testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// ticketKeyIn is the ticket key of the node on dataDir, with the node's
// default lifetime, so a test can make tickets the node takes.
func ticketKeyIn(t *testing.T, dataDir string) *noise.TicketKey {
	t.Helper()
	secret, err := os.ReadFile(filepath.Join(dataDir, "ticket.key"))
	if err != nil {
		t.Fatal(err)
	}
	k, err := noise.NewTicketKey(secret, 7*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// ticketOf is what a login result hands the device for its next login.
type ticketOf struct{ ticket, secret []byte }

// loginFull logs in with a full handshake and returns the connection and
// the ticket it was given.
func loginFull(t *testing.T, n *node.Node, phone string, kp noise.Keypair) (*rawConn, ticketOf) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", n.NativeAddr(), ioGuard)
	if err != nil {
		t.Fatal(err)
	}
	rc, res, err := handshake(nc, kp, n.PublicKey(), loginPayload(phone, 1))
	if err != nil || res.Error != nil {
		t.Fatalf("full login of %s: %v %v", phone, err, res.GetError())
	}
	t.Cleanup(func() { rc.Close() })
	if len(res.Ticket) == 0 || len(res.TicketSecret) != noise.PSKLen || res.TicketExpires <= time.Now().UnixNano() {
		t.Fatalf("login result carries ticket %x, secret %x, expiry %d: want a ticket for the next login", res.Ticket, res.TicketSecret, res.TicketExpires)
	}
	return rc, ticketOf{res.Ticket, res.TicketSecret}
}

// resume sends a resumption as phone with tk on nc and returns the login
// result, or noise.ErrTicketRefused when the server refused the ticket
// (nc is then still open for a full handshake).
func resume(nc net.Conn, phone string, tk ticketOf) (*rawConn, *wire.LoginResult, error) {
	hs, first, err := noise.Resume(tk.ticket, tk.secret, loginPayload(phone, 1))
	if err != nil {
		return nil, nil, err
	}
	if err := writeMsg(nc, first); err != nil {
		return nil, nil, err
	}
	nc.SetReadDeadline(time.Now().Add(ioGuard))
	reply, err := wire.ReadMessage(nc, nil)
	if err != nil {
		return nil, nil, errors.Join(errNoReply, err)
	}
	pl, tx, rx, err := hs.Finish(reply)
	if err != nil {
		return nil, nil, err
	}
	res := new(wire.LoginResult)
	if err := proto.Unmarshal(pl, res); err != nil {
		return nil, nil, err
	}
	return provenConn(nc, tx, rx, res)
}

func dial(t *testing.T, n *node.Node) net.Conn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", n.NativeAddr(), ioGuard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return nc
}

// A device that logged in once logs in again with its ticket, gets a new
// one, and its session works: it sends, and receives what was sent to it.
func TestResumedSessionWorks(t *testing.T) {
	gw := &codeGateway{}
	n := startNodeIn(t, t.TempDir(), gw)
	akp, _ := register(t, n.HTTPURL(), alicePhone, gw.code)
	bkp, _ := register(t, n.HTTPURL(), bobPhone, gw.code)
	first, tk := loginFull(t, n, alicePhone, akp)
	first.Close()
	bob, _ := loginFull(t, n, bobPhone, bkp)

	alice, res, err := resume(dial(t, n), alicePhone, tk)
	if err != nil || res.Error != nil {
		t.Fatalf("resumption: %v %v", err, res.GetError())
	}
	if len(res.Ticket) == 0 || bytes.Equal(res.Ticket, tk.ticket) || bytes.Equal(res.TicketSecret, tk.secret) {
		t.Fatal("a resumed login must hand out a new ticket and secret")
	}
	if err := alice.send(1, bobPhone, []byte("resumed hello")); err != nil {
		t.Fatal(err)
	}
	awaitSendAck(t, alice, 1)
	awaitMessage(t, bob, alicePhone, 1, []byte("resumed hello"))
	if err := bob.send(1, alicePhone, []byte("hi back")); err != nil {
		t.Fatal(err)
	}
	awaitMessage(t, alice, bobPhone, 1, []byte("hi back"))

	// The new ticket works too, and so does the old one until it expires
	// (tickets are not single-use: the server keeps no state for them).
	for _, next := range []ticketOf{{res.Ticket, res.TicketSecret}, tk} {
		rc, r, err := resume(dial(t, n), alicePhone, next)
		if err != nil || r.Error != nil {
			t.Fatalf("resumption with a later ticket: %v %v", err, r.GetError())
		}
		rc.Close()
	}
}

// Tickets are sealed with a key kept in the data directory: they survive a
// restart, which is when a whole server's devices reconnect at once.
func TestTicketsSurviveRestart(t *testing.T) {
	dir, gw := t.TempDir(), &codeGateway{}
	n := startNodeIn(t, dir, gw)
	akp, _ := register(t, n.HTTPURL(), alicePhone, gw.code)
	c, tk := loginFull(t, n, alicePhone, akp)
	c.Close()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	n2 := startNodeIn(t, dir, gw)
	if _, res, err := resume(dial(t, n2), alicePhone, tk); err != nil || res.Error != nil {
		t.Fatalf("resumption after a restart: %v %v", err, res.GetError())
	}
}

// A ticket the server will not take is refused with one byte; the device
// then logs in with a full handshake on the same connection. A second
// refusal on one connection closes it.
func TestRefusedTicketFallsBackToFullHandshake(t *testing.T) {
	dir, gw := t.TempDir(), &codeGateway{}
	n := startNodeIn(t, dir, gw)
	akp, _ := register(t, n.HTTPURL(), alicePhone, gw.code)

	serverKey := ticketKeyIn(t, dir)
	expired, esecret, _, err := serverKey.Issue(alicePhone, 1, akp.Public, time.Now().Add(-8*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	otherKey, err := noise.NewTicketKey(bytes.Repeat([]byte{9}, 32), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	foreign, fsecret, _, err := otherKey.Issue(alicePhone, 1, akp.Public, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for name, tk := range map[string]ticketOf{
		"expired":          {expired, esecret[:]},
		"another server's": {foreign, fsecret[:]},
	} {
		t.Run(name, func(t *testing.T) {
			nc := dial(t, n)
			if _, _, err := resume(nc, alicePhone, tk); !errors.Is(err, noise.ErrTicketRefused) {
				t.Fatalf("resumption with an %s ticket: %v, want ErrTicketRefused", name, err)
			}
			rc, res, err := handshake(nc, akp, n.PublicKey(), loginPayload(alicePhone, 1))
			if err != nil || res.Error != nil {
				t.Fatalf("full handshake after the refusal: %v %v", err, res.GetError())
			}
			if err := rc.send(1, alicePhone, []byte("note to self")); err != nil {
				t.Fatal(err)
			}
			awaitSendAck(t, rc, 1)
		})
	}
	t.Run("twice", func(t *testing.T) {
		nc := dial(t, n)
		if _, _, err := resume(nc, alicePhone, ticketOf{expired, esecret[:]}); !errors.Is(err, noise.ErrTicketRefused) {
			t.Fatalf("first refusal: %v", err)
		}
		_, _, err := resume(nc, alicePhone, ticketOf{expired, esecret[:]})
		if !errors.Is(err, errNoReply) && !errors.Is(err, io.EOF) {
			t.Fatalf("a second refused resumption on one connection: %v, want the connection closed", err)
		}
	})
}

// A ticket logs in only its own number, and only while the account is
// still its device's: a re-registration on another device locks the old
// device's tickets out at once, as it does its key. (The ticket also names
// the device key, so a key replaced without a new generation would lock it
// out too; no path of the server does that any more: see
// TestBulkNeverReplacesAnAccount.)
func TestTicketsRefusedOnceTheAccountMovedOn(t *testing.T) {
	for _, tc := range []struct {
		name   string
		as     string // the number the resumption logs in as
		change func(t *testing.T, n *node.Node, gw *codeGateway)
		want   wire.Error_Code
	}{
		{"presented for another number", bobPhone, nil, wire.Error_LOGIN_FAILED},
		{"after a re-registration", alicePhone, func(t *testing.T, n *node.Node, gw *codeGateway) {
			register(t, n.HTTPURL(), alicePhone, gw.code) // a new device, generation 2
		}, wire.Error_REGISTERED_ELSEWHERE},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gw := &codeGateway{}
			n := startNodeIn(t, t.TempDir(), gw)
			akp, _ := register(t, n.HTTPURL(), alicePhone, gw.code)
			register(t, n.HTTPURL(), bobPhone, gw.code)
			c, tk := loginFull(t, n, alicePhone, akp)
			c.Close()
			if tc.change != nil {
				tc.change(t, n, gw)
			}
			_, res, err := resume(dial(t, n), tc.as, tk)
			if err != nil {
				t.Fatal(err)
			}
			if res.Error == nil || res.Error.Code != tc.want {
				t.Fatalf("the old ticket answered %v, want %s", res.Error, tc.want)
			}
		})
	}
}

// A chain of resumptions lasts the ticket lifetime from the full handshake
// that began it: each login hands out a new ticket and secret, but not a
// new lifetime, so a copied ticket is not a credential for ever.
func TestResumptionChainKeepsItsStart(t *testing.T) {
	dir, gw := t.TempDir(), &codeGateway{}
	n := startNodeIn(t, dir, gw)
	akp, _ := register(t, n.HTTPURL(), alicePhone, gw.code)
	serverKey := ticketKeyIn(t, dir)
	// A ticket from a full handshake two days ago.
	began := time.Now().Add(-48 * time.Hour).Truncate(time.Second)
	old, osecret, _, err := serverKey.Issue(alicePhone, 1, akp.Public, began)
	if err != nil {
		t.Fatal(err)
	}
	_, res, err := resume(dial(t, n), alicePhone, ticketOf{old, osecret[:]})
	if err != nil || res.Error != nil {
		t.Fatalf("resumption: %v %v", err, res.GetError())
	}
	if want := began.Add(7 * 24 * time.Hour).UnixNano(); res.TicketExpires != want {
		t.Fatalf("the resumed login's ticket expires at %v, want %v (the chain's start + 7 days)", time.Unix(0, res.TicketExpires), time.Unix(0, want))
	}
	next, err := serverKey.Open(res.Ticket)
	if err != nil || !next.Authenticated.Equal(began) {
		t.Fatalf("new ticket: %+v, %v; want its chain to begin at %v", next, err, began)
	}
}
