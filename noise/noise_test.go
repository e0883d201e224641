package noise

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"path/filepath"
	"testing"
	"time"

	fnoise "github.com/flynn/noise"
)

func mustKey(t testing.TB) Keypair {
	t.Helper()
	kp, err := GenerateKeypair(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

func handshake(t *testing.T, device, server Keypair) (ctx, crx, stx, srx *Cipher) {
	t.Helper()
	c, first, err := NewClient(device, server.Public, []byte("login"))
	if err != nil {
		t.Fatal(err)
	}
	h, err := Accept(server, first)
	if err != nil {
		t.Fatal(err)
	}
	s, peer, payload := h.Server, h.PeerKey, h.Payload
	if !bytes.Equal(peer, device.Public) || string(payload) != "login" {
		t.Fatalf("server saw key %x payload %q", peer, payload)
	}
	reply, stx, srx, err := s.Reply([]byte("welcome"))
	if err != nil {
		t.Fatal(err)
	}
	got, ctx, crx, err := c.Finish(reply)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "welcome" {
		t.Fatalf("client got payload %q", got)
	}
	return ctx, crx, stx, srx
}

func TestHandshakeAndTransportBothWays(t *testing.T) {
	ctx, crx, stx, srx := handshake(t, mustKey(t), mustKey(t))
	for i := 0; i < 3; i++ {
		ct, err := ctx.Seal(nil, []byte("hello"))
		if err != nil {
			t.Fatal(err)
		}
		pt, err := srx.Open(nil, ct)
		if err != nil || string(pt) != "hello" {
			t.Fatalf("server open: %q %v", pt, err)
		}
		ct, _ = stx.Seal(nil, []byte("back"))
		pt, err = crx.Open(ct[:0], ct)
		if err != nil || string(pt) != "back" {
			t.Fatalf("client open: %q %v", pt, err)
		}
	}
}

func TestWrongServerKeyFailsAtFirstMessage(t *testing.T) {
	server, impostor := mustKey(t), mustKey(t)
	_, first, err := NewClient(mustKey(t), impostor.Public, []byte("login"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Accept(server, first); err == nil {
		t.Fatal("server accepted a first message made for another key")
	}
}

func TestTamperedAndReplayedMessagesFail(t *testing.T) {
	ctx, _, _, srx := handshake(t, mustKey(t), mustKey(t))
	ct, _ := ctx.Seal(nil, []byte("pay 10"))
	bad := append([]byte{}, ct...)
	bad[0] ^= 1
	if _, err := srx.Open(nil, bad); err == nil {
		t.Fatal("tampered message opened")
	}
	ctx2, _, _, srx2 := handshake(t, mustKey(t), mustKey(t))
	ct2, _ := ctx2.Seal(nil, []byte("once"))
	if _, err := srx2.Open(nil, ct2); err != nil {
		t.Fatal(err)
	}
	if _, err := srx2.Open(nil, ct2); err == nil {
		t.Fatal("replayed message opened")
	}
}

func TestCipherStateResumes(t *testing.T) {
	ctx, _, _, srx := handshake(t, mustKey(t), mustKey(t))
	ct, _ := ctx.Seal(nil, []byte("one"))
	if _, err := srx.Open(nil, ct); err != nil {
		t.Fatal(err)
	}
	resumed := NewCipher(srx.State())
	ct, _ = ctx.Seal(nil, []byte("two"))
	if pt, err := resumed.Open(nil, ct); err != nil || string(pt) != "two" {
		t.Fatalf("resumed cipher: %q %v", pt, err)
	}
}

func TestKeyFileIsCreatedOnceAndReused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "server.key")
	kp, created, err := LoadOrCreateKeypair(path)
	if err != nil || !created {
		t.Fatalf("first load: created=%v err=%v", created, err)
	}
	again, created, err := LoadOrCreateKeypair(path)
	if err != nil || created || !bytes.Equal(again.Public, kp.Public) || !bytes.Equal(again.Private, kp.Private) {
		t.Fatalf("second load: created=%v err=%v", created, err)
	}
}

// FuzzAccept runs the responder against first messages that a real
// initiator wrote — a full handshake or a resumption, with the device key
// and the payload the input chooses — as written, or changed: a byte
// flipped (at, xor), cut to its first keep bytes, with tail appended
// (keep 0 and a tail make any bytes at all).
//
// A message as the initiator wrote it must be accepted and both sides must
// agree: the server learns the device's key (or its ticket), the payload
// and the ephemeral key that replay detection keys on; the client reads
// the server's reply; transport messages go both ways. A message that
// differs in any way is a forgery and must be refused: every byte of a
// first message is authenticated.
func FuzzAccept(f *testing.F) {
	server := Keypair{Private: bytes.Repeat([]byte{1}, 32)}
	server.Public = mustPublic(f, server.Private)
	st, err := NewStatic(server)
	if err != nil {
		f.Fatal(err)
	}
	// Resumptions too: a key whose tickets stay good as long as the seeds.
	tk, err := NewTicketKey(bytes.Repeat([]byte{3}, 32), 100*365*24*time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	st.UseTickets(tk)
	const keep = 0xffff // keep everything
	for _, resume := range []bool{false, true} {
		f.Add([]byte("device"), []byte("login"), resume, uint16(0), byte(0), uint16(keep), []byte(nil))
		f.Add([]byte("device"), []byte(nil), resume, uint16(0), byte(1), uint16(keep), []byte(nil))    // the kind byte
		f.Add([]byte("device"), []byte("x"), resume, uint16(1), byte(0x80), uint16(keep), []byte(nil)) // the ticket length, or e
		f.Add([]byte("device"), []byte("x"), resume, uint16(40), byte(4), uint16(keep), []byte(nil))
		f.Add([]byte("device"), []byte("login"), resume, uint16(0), byte(0), uint16(keep), []byte{0})
		f.Add([]byte("device"), []byte("login"), resume, uint16(0), byte(0), uint16(20), []byte(nil))
		f.Add([]byte("device"), []byte("login"), resume, uint16(0), byte(0), uint16(0), []byte("GET / HTTP/1.1\r\n\r\n"))
	}
	f.Add([]byte("device"), []byte(nil), false, uint16(0), byte(0), uint16(0), []byte{kindResume, 255})
	f.Add([]byte("device"), []byte(nil), false, uint16(0), byte(0), uint16(0), bytes.Repeat([]byte{0}, 96))
	f.Fuzz(func(t *testing.T, device, payload []byte, resume bool, at uint16, xor byte, keep uint16, tail []byte) {
		if len(payload) > 1024 {
			payload = payload[:1024]
		}
		priv := sha256.Sum256(device)
		dev := Keypair{Private: priv[:], Public: mustPublic(t, priv[:])}
		const phone, gen = "+14155550101", 7
		var (
			cli   *Client
			first []byte
			psk   [PSKLen]byte
			err   error
		)
		if resume {
			var ticket []byte
			ticket, psk, _, err = tk.Issue(phone, gen, dev.Public, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			cli, first, err = Resume(ticket, psk[:], payload)
		} else {
			cli, first, err = NewClient(dev, server.Public, payload)
		}
		if err != nil {
			t.Fatal(err)
		}

		msg := bytes.Clone(first)
		if xor != 0 {
			msg[int(at)%len(msg)] ^= xor
		}
		if int(keep) < len(msg) {
			msg = msg[:keep]
		}
		msg = append(msg, tail...)
		hello, err := st.Accept(msg)
		if !bytes.Equal(msg, first) {
			if err == nil {
				t.Fatalf("accepted a changed first message:\n wrote %x\n  sent %x", first, msg)
			}
			return
		}
		if err != nil {
			t.Fatalf("refused the message a real initiator wrote: %v", err)
		}

		if resume {
			tkt := hello.Ticket
			if tkt == nil || hello.PeerKey != nil {
				t.Fatalf("a resumption gave ticket %v and peer key %x", tkt, hello.PeerKey)
			}
			if tkt.Phone != phone || tkt.Generation != gen || !bytes.Equal(tkt.Key[:], dev.Public) || tkt.PSK != psk {
				t.Fatalf("server opened ticket %+v; issued to %s generation %d key %x", tkt, phone, gen, dev.Public)
			}
		} else if hello.Ticket != nil || !bytes.Equal(hello.PeerKey, dev.Public) {
			t.Fatalf("a full handshake gave ticket %v and peer key %x, want key %x", hello.Ticket, hello.PeerKey, dev.Public)
		}
		if !bytes.Equal(hello.Payload, payload) {
			t.Fatalf("server read payload %q, client sent %q", hello.Payload, payload)
		}
		if e, ok := Ephemeral(msg); !ok || !bytes.Equal(e[:], cli.hs.LocalEphemeral().Public) {
			t.Fatalf("Ephemeral read %x (ok=%v), the client's is %x", e, ok, cli.hs.LocalEphemeral().Public)
		}

		welcome := append([]byte("welcome "), payload...)
		reply, stx, srx, err := hello.Server.Reply(welcome)
		if err != nil {
			t.Fatal(err)
		}
		got, ctx, crx, err := cli.Finish(reply)
		if err != nil {
			t.Fatalf("client refused the server's reply: %v", err)
		}
		if !bytes.Equal(got, welcome) {
			t.Fatalf("client read reply payload %q, server sent %q", got, welcome)
		}
		for i := range 3 {
			up := append([]byte{byte(i)}, payload...)
			ct, err := ctx.Seal(nil, up)
			if err != nil {
				t.Fatal(err)
			}
			if pt, err := srx.Open(nil, ct); err != nil || !bytes.Equal(pt, up) {
				t.Fatalf("message %d to the server: opened %q, %v; sent %q", i, pt, err, up)
			}
			down := append([]byte{byte(i), 'd'}, payload...)
			if ct, err = stx.Seal(nil, down); err != nil {
				t.Fatal(err)
			}
			if pt, err := crx.Open(nil, ct); err != nil || !bytes.Equal(pt, down) {
				t.Fatalf("message %d to the client: opened %q, %v; sent %q", i, pt, err, down)
			}
		}
	})
}

func mustPublic(t testing.TB, priv []byte) []byte {
	k, err := ecdh.X25519().NewPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey().Bytes()
}

func BenchmarkSealOpen(b *testing.B) {
	kp1, _ := GenerateKeypair(rand.Reader)
	kp2, _ := GenerateKeypair(rand.Reader)
	c, first, _ := NewClient(kp1, kp2.Public, nil)
	h, _ := Accept(kp2, first)
	reply, _, srx, _ := h.Server.Reply(nil)
	_, ctx, _, _ := c.Finish(reply)
	msg := make([]byte, 64)
	buf := make([]byte, 0, 64+TagLen)
	b.ReportAllocs()
	b.SetBytes(64)
	for i := 0; i < b.N; i++ {
		ct, _ := ctx.Seal(buf[:0], msg)
		if _, err := srx.Open(ct[:0], ct); err != nil {
			b.Fatal(err)
		}
	}
}

// The fast DH must be the same X25519: a Static talks to flynn/noise's own
// DH25519 on the other side, both ways, pinned or not.
func TestStaticInteroperatesWithPlainDH(t *testing.T) {
	cli, srv := mustKey(t), mustKey(t)
	plain := fnoise.NewCipherSuite(fnoise.DH25519, fnoise.CipherChaChaPoly, fnoise.HashSHA256)
	hsConfig := func(initiator bool, kp Keypair, peer []byte) fnoise.Config {
		return fnoise.Config{CipherSuite: plain, Pattern: fnoise.HandshakeIK, Initiator: initiator,
			Prologue: []byte(Prologue), StaticKeypair: kp, PeerStatic: peer}
	}

	// Static initiator (pinned) -> plain responder.
	st, err := NewStatic(cli)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Pin(srv.Public); err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 2; round++ { // the second round uses the pinned DH
		c, first, err := st.Initiate(srv.Public, []byte("hello"))
		if err != nil {
			t.Fatal(err)
		}
		hs, err := fnoise.NewHandshakeState(hsConfig(false, srv, nil))
		if err != nil {
			t.Fatal(err)
		}
		if first[0] != kindFull {
			t.Fatalf("round %d: first message starts with kind %d, want %d", round, first[0], kindFull)
		}
		if p, _, _, err := hs.ReadMessage(nil, first[1:]); err != nil || string(p) != "hello" {
			t.Fatalf("round %d: plain responder read %q, %v", round, p, err)
		}
		reply, _, _, err := hs.WriteMessage(nil, []byte("welcome"))
		if err != nil {
			t.Fatal(err)
		}
		if p, _, _, err := c.Finish(reply); err != nil || string(p) != "welcome" {
			t.Fatalf("round %d: static initiator read %q, %v", round, p, err)
		}
	}

	// Plain initiator -> Static responder.
	ss, err := NewStatic(srv)
	if err != nil {
		t.Fatal(err)
	}
	hs, err := fnoise.NewHandshakeState(hsConfig(true, cli, srv.Public))
	if err != nil {
		t.Fatal(err)
	}
	first, _, _, err := hs.WriteMessage([]byte{kindFull}, []byte("hi"))
	if err != nil {
		t.Fatal(err)
	}
	h, err := ss.Accept(first)
	if err != nil || string(h.Payload) != "hi" || !bytes.Equal(h.PeerKey, cli.Public) {
		t.Fatalf("static responder: %+v, %v", h, err)
	}
	reply, _, _, err := h.Server.Reply([]byte("ok"))
	if err != nil {
		t.Fatal(err)
	}
	if p, _, _, err := hs.ReadMessage(nil, reply); err != nil || string(p) != "ok" {
		t.Fatalf("plain initiator read %q, %v", p, err)
	}
}

func TestLowOrderPeerKeyIsRefused(t *testing.T) {
	st, err := NewStatic(mustKey(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Pin(make([]byte, KeyLen)); err == nil {
		t.Fatal("pinning the all-zero (low-order) key succeeded")
	}
	if _, _, err := st.Initiate(make([]byte, KeyLen), nil); err == nil {
		t.Fatal("a handshake with the all-zero server key started")
	}
}

func TestStaticRejectsMismatchedPair(t *testing.T) {
	a, b := mustKey(t), mustKey(t)
	if _, err := NewStatic(Keypair{Private: a.Private, Public: b.Public}); err == nil {
		t.Fatal("a private key with another key's public half was accepted")
	}
	if _, err := NewStatic(Keypair{Private: a.Private[:31], Public: a.Public}); err == nil {
		t.Fatal("a 31-byte private key was accepted")
	}
}

// BenchmarkAccept is the server's CPU per login for the handshake alone:
// reading the first message and writing the reply.
func BenchmarkAccept(b *testing.B) {
	cli, srv := mustKey(b), mustKey(b)
	st, err := NewStatic(srv)
	if err != nil {
		b.Fatal(err)
	}
	_, first, err := NewClient(cli, srv.Public, []byte("login"))
	if err != nil {
		b.Fatal(err)
	}
	benchAccept(b, st, first)
}

// benchAccept measures a server's handshake: first read, reply written.
func benchAccept(b *testing.B, st *Static, first []byte) {
	b.ReportAllocs()
	for b.Loop() {
		h, err := st.Accept(first)
		if err != nil {
			b.Fatal(err)
		}
		if _, _, _, err := h.Server.Reply(nil); err != nil {
			b.Fatal(err)
		}
	}
}

// The transport cipher keeps no AEAD between messages, so each Seal and
// Open builds one: that allocation, and nothing else (the nonce in
// particular stays inside the Cipher), is all a message costs the heap.
func TestSealAndOpenAllocateOnlyTheAEAD(t *testing.T) {
	ctx, _, _, srx := handshake(t, mustKey(t), mustKey(t))
	buf := make([]byte, 0, 64+TagLen)
	msg := make([]byte, 64)
	allocs := testing.AllocsPerRun(100, func() {
		ct, err := ctx.Seal(buf[:0], msg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := srx.Open(ct[:0], ct); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 2 {
		t.Errorf("a Seal and an Open allocate %v times, want 2 (one AEAD each)", allocs)
	}
}

// BenchmarkX25519: the operations a handshake is made of, on this CPU
// (CIRCL's X25519): a DH, and a fresh key pair.
func BenchmarkX25519(b *testing.B) {
	kp := mustKey(b)
	peer := mustKey(b)
	b.Run("shared", func(b *testing.B) {
		for b.Loop() {
			if _, err := x25519DH(kp.Private, peer.Public); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("keygen", func(b *testing.B) {
		for b.Loop() {
			if _, err := (*handshakeDH)(nil).GenerateKeypair(nil); err != nil {
				b.Fatal(err)
			}
		}
	})
}
