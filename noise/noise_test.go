package noise

import (
	"bytes"
	"crypto/rand"
	"path/filepath"
	"testing"
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
	s, peer, payload, err := Accept(server, first)
	if err != nil {
		t.Fatal(err)
	}
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
	if _, _, _, err := Accept(server, first); err == nil {
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

// FuzzAccept feeds arbitrary first messages to the server side: it must
// reject them without panicking.
func FuzzAccept(f *testing.F) {
	server := Keypair{Private: bytes.Repeat([]byte{1}, 32)}
	server.Public = mustPublic(f, server.Private)
	_, good, _ := NewClient(Keypair{Private: bytes.Repeat([]byte{2}, 32), Public: mustPublic(f, bytes.Repeat([]byte{2}, 32))}, server.Public, []byte("x"))
	f.Add(good)
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{0}, 96))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		_, _, _, _ = Accept(server, msg)
	})
}

func mustPublic(t testing.TB, priv []byte) []byte {
	kp, err := suite.GenerateKeypair(bytes.NewReader(priv))
	if err != nil {
		t.Fatal(err)
	}
	return kp.Public
}

func BenchmarkSealOpen(b *testing.B) {
	kp1, _ := GenerateKeypair(rand.Reader)
	kp2, _ := GenerateKeypair(rand.Reader)
	c, first, _ := NewClient(kp1, kp2.Public, nil)
	s, _, _, _ := Accept(kp2, first)
	reply, _, srx, _ := s.Reply(nil)
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
