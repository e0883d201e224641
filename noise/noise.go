// Package noise sets up Parley's encrypted channel: the Noise handshake
// (github.com/flynn/noise) and the small transport cipher that every
// connection keeps afterwards.
//
// Pattern: Noise_IK_25519_ChaChaPoly_SHA256. A Parley client always knows the
// server's static key before it connects — registration publishes it and the
// client pins it — so IK fits: the client's first message already carries
// its encrypted static key (its credential) and the login payload, and the
// server's reply completes the handshake. One round trip from TCP connect to
// a logged-in, usable session, and a client holding a wrong or replaced
// server key fails at the first message instead of talking to an impostor.
// (WhatsApp's XX-then-IK "Noise Pipes" exists for clients that have not yet
// learnt the server key; Parley clients learn it over HTTPS at registration,
// so the XX fallback would only add a round trip.)
//
// A device that logged in before resumes instead, with a ticket from its
// last login (ticket.go). A client's first message therefore starts with
// one byte saying which it is: 1, then the Noise IK message; or 2, then the
// ticket's length (one byte), the ticket and the Noise NNpsk0 message. (The
// byte came with tickets: a client that sends a bare IK message, as the
// first version did, is refused at its first message.) The server's reply
// is the Noise reply, or the one byte RefusedReply for a ticket it will not
// take.
//
// Cipher: ChaCha20-Poly1305, because its whole state is the 32-byte key;
// AES-GCM's expanded key schedule and tables cost about 1 KiB per direction,
// which at millions of idle connections is gigabytes. SHA-256 only runs
// during the handshake, where Go's SHA-NI code path makes it cheap.
package noise

import (
	"bytes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"

	"github.com/cloudflare/circl/dh/x25519"
	fnoise "github.com/flynn/noise"
	"golang.org/x/crypto/chacha20poly1305"
)

// Prologue binds both sides to this protocol: a peer speaking another
// protocol fails the handshake instead of misreading frames.
const Prologue = "parley/1"

// KeyLen is the length of a Curve25519 key.
const KeyLen = 32

// TagLen is what the cipher adds to every message.
const TagLen = chacha20poly1305.Overhead

// Keypair is a Curve25519 static key pair.
type Keypair = fnoise.DHKey

// GenerateKeypair makes a new static key pair from rng (crypto/rand.Reader
// when nil).
func GenerateKeypair(rng io.Reader) (Keypair, error) {
	if rng == nil {
		rng = rand.Reader
	}
	k, err := (*handshakeDH)(nil).GenerateKeypair(rng)
	if err != nil {
		return Keypair{}, fmt.Errorf("noise: generate key: %w", err)
	}
	return k, nil
}

// LoadOrCreateKeypair reads the key pair kept at path (private then public
// key, 64 bytes), creating it with mode 0600 if the file does not exist.
func LoadOrCreateKeypair(path string) (kp Keypair, created bool, err error) {
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		if len(b) != 2*KeyLen {
			return kp, false, fmt.Errorf("key file %s is %d bytes, want %d: restore it from a backup or remove it to make a new key (clients will have to re-register)", path, len(b), 2*KeyLen)
		}
		return Keypair{Private: b[:KeyLen], Public: b[KeyLen:]}, false, nil
	case !errors.Is(err, os.ErrNotExist):
		return kp, false, fmt.Errorf("read key file: %w", err)
	}
	kp, err = GenerateKeypair(nil)
	if err != nil {
		return kp, false, err
	}
	if err := writeFileSync(path, append(append([]byte{}, kp.Private...), kp.Public...)); err != nil {
		return kp, false, fmt.Errorf("write key file: %w", err)
	}
	return kp, true, nil
}

func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Cipher is one direction of an established channel: the key and the next
// nonce, and nothing else. It is plain data (see State) so that a session
// can be handed to a new process during a live upgrade, and so that a
// server can keep it by value in its per-connection struct: an AEAD object
// kept per direction (another copy of the key behind an interface, in an
// allocation of its own) would cost about 100 MB at a million idle
// connections.
type Cipher struct {
	key [KeyLen]byte
	// nonce is the next message's nonce as ChaCha20-Poly1305 takes it: four
	// zero bytes, then the 64-bit counter, little-endian. Keeping the
	// counter in that form lets Seal and Open hand the AEAD a slice of the
	// Cipher itself rather than of a local array, which would have to be
	// moved to the heap on every message (it is passed to an interface
	// method).
	nonce [chacha20poly1305.NonceSize]byte
}

// CipherState is a Cipher written out: enough to resume it elsewhere.
type CipherState struct {
	Key   [KeyLen]byte
	Nonce uint64
}

// NewCipher resumes a cipher from its state.
func NewCipher(st CipherState) *Cipher {
	c := &Cipher{key: st.Key}
	c.setCounter(st.Nonce)
	return c
}

// State writes the cipher out.
func (c *Cipher) State() CipherState { return CipherState{Key: c.key, Nonce: c.counter()} }

func (c *Cipher) counter() uint64     { return binary.LittleEndian.Uint64(c.nonce[4:]) }
func (c *Cipher) setCounter(n uint64) { binary.LittleEndian.PutUint64(c.nonce[4:], n) }

// ErrNonceExhausted: 2^64-1 messages in one direction. Reconnect.
var ErrNonceExhausted = errors.New("noise: nonce exhausted")

// aead builds the AEAD for one message. This is one small allocation per
// message (x/crypto offers no way to build it in place), taken on purpose:
// ChaCha20 has no key schedule, so building it costs a 32-byte copy, while
// keeping it would cost its memory on every idle connection.
func (c *Cipher) aead() cipher.AEAD {
	aead, err := chacha20poly1305.New(c.key[:])
	if err != nil {
		panic(err) // only on a wrong key length, impossible with an array
	}
	return aead
}

// Seal appends the encryption of plaintext to dst. dst and plaintext may
// overlap exactly (dst = plaintext[:0]) for in-place encryption.
func (c *Cipher) Seal(dst, plaintext []byte) ([]byte, error) {
	n := c.counter()
	if n == ^uint64(0) {
		return nil, ErrNonceExhausted
	}
	out := c.aead().Seal(dst, c.nonce[:], plaintext, nil)
	c.setCounter(n + 1)
	return out, nil
}

// Open appends the decryption of ciphertext to dst; dst = ciphertext[:0]
// decrypts in place. A failure means the stream is corrupt or forged.
func (c *Cipher) Open(dst, ciphertext []byte) ([]byte, error) {
	n := c.counter()
	if n == ^uint64(0) {
		return nil, ErrNonceExhausted
	}
	out, err := c.aead().Open(dst, c.nonce[:], ciphertext, nil)
	if err != nil {
		return nil, fmt.Errorf("noise: decrypt message %d: %w", n, err)
	}
	c.setCounter(n + 1)
	return out, nil
}

func fromState(cs *fnoise.CipherState) *Cipher {
	return NewCipher(CipherState{Key: cs.UnsafeKey(), Nonce: cs.Nonce()})
}

// Static is a static key pair made ready for many handshakes.
//
// Handshakes are where a server spends its CPU at login time, almost all of
// it in X25519. flynn/noise's built-in DH goes through x/crypto's
// curve25519.X25519, which parses the private key with crypto/ecdh on every
// call, and parsing computes the public key: two scalar multiplications per
// DH, ten per IK responder. A Static's handshakes use CIRCL's X25519
// instead (github.com/cloudflare/circl/dh/x25519: constant-time, amd64
// assembly with MULX/ADX, a fixed-base table for key generation), which
// takes raw keys: one ladder per DH, and a cheaper one for the ephemeral.
// On the 2-core development machine (go test -bench Accept ./noise) a
// server handshake went from 446 us to 178 us. A device that logged in
// before resumes with a ticket instead (ticket.go), about half of that.
//
// An initiator may also Pin the one server key it talks to: the static-static
// DH is then computed once and reused by every later handshake, as WireGuard
// keeps a precomputed static-static secret per peer.
type Static struct {
	kp      Keypair
	pinned  atomic.Pointer[pinnedDH]
	tickets *TicketKey // nil unless UseTickets was called
}

// UseTickets makes a responder accept resumptions with tickets sealed by
// k (see ticket.go). Call it before the Static is used.
func (s *Static) UseTickets(k *TicketKey) { s.tickets = k }

type pinnedDH struct {
	peer, ss []byte
}

// NewStatic checks kp and keeps it.
func NewStatic(kp Keypair) (*Static, error) {
	if len(kp.Private) != KeyLen || len(kp.Public) != KeyLen {
		return nil, fmt.Errorf("noise: static key pair is %d+%d bytes, want %d+%d", len(kp.Private), len(kp.Public), KeyLen, KeyLen)
	}
	var priv, pub x25519.Key
	copy(priv[:], kp.Private)
	x25519.KeyGen(&pub, &priv)
	if !bytes.Equal(pub[:], kp.Public) {
		return nil, errors.New("noise: static key pair: the public key does not belong to the private key")
	}
	return &Static{kp: kp}, nil
}

// Keypair returns the key pair.
func (s *Static) Keypair() Keypair { return s.kp }

// Pin precomputes the DH of this key with peer's static key, for handshakes
// with peer. It is safe to call while handshakes run.
func (s *Static) Pin(peer []byte) error {
	ss, err := x25519DH(s.kp.Private, peer)
	if err != nil {
		return err
	}
	s.pinned.Store(&pinnedDH{peer: bytes.Clone(peer), ss: ss})
	return nil
}

// suite returns a cipher suite for one handshake with this key.
func (s *Static) suite() fnoise.CipherSuite {
	return fnoise.NewCipherSuite(&handshakeDH{static: s}, fnoise.CipherChaChaPoly, fnoise.HashSHA256)
}

// handshakeDH is X25519 for one handshake of a Static (nil in a
// resumption, which has no static keys).
type handshakeDH struct {
	static *Static
}

func (*handshakeDH) GenerateKeypair(rng io.Reader) (fnoise.DHKey, error) {
	if rng == nil {
		rng = rand.Reader
	}
	var priv, pub x25519.Key
	if _, err := io.ReadFull(rng, priv[:]); err != nil {
		return fnoise.DHKey{}, err
	}
	x25519.KeyGen(&pub, &priv)
	return fnoise.DHKey{Private: priv[:], Public: pub[:]}, nil
}

func (d *handshakeDH) DH(privkey, pubkey []byte) ([]byte, error) {
	if st := d.static; st != nil && len(pubkey) == KeyLen {
		// The pinned static-static DH, if this is it.
		if p := st.pinned.Load(); p != nil && bytes.Equal(pubkey, p.peer) &&
			subtle.ConstantTimeCompare(privkey, st.kp.Private) == 1 {
			return bytes.Clone(p.ss), nil
		}
	}
	return x25519DH(privkey, pubkey)
}

func (*handshakeDH) DHLen() int     { return KeyLen }
func (*handshakeDH) DHName() string { return "25519" }

// x25519DH is X25519(priv, pub), refusing a low-order pub (the result would
// be all zeros, RFC 7748 section 6.1).
func x25519DH(priv, pub []byte) ([]byte, error) {
	if len(priv) != KeyLen || len(pub) != KeyLen {
		return nil, fmt.Errorf("noise: X25519 keys are %d+%d bytes, want %d+%d", len(priv), len(pub), KeyLen, KeyLen)
	}
	var k, p, out x25519.Key
	copy(k[:], priv)
	copy(p[:], pub)
	if !x25519.Shared(&out, &k, &p) {
		return nil, errors.New("noise: peer key is a low-order point")
	}
	return out[:], nil
}

// Client runs the initiator side of the handshake.
type Client struct {
	hs *fnoise.HandshakeState
}

// NewClient starts a handshake as the device with key pair static to the
// server whose static public key is serverKey. It returns the first message
// (to send, length-prefixed), carrying payload encrypted.
//
// It parses static each call; a client that connects more than once keeps a
// Static and calls its Initiate.
func NewClient(static Keypair, serverKey, payload []byte) (*Client, []byte, error) {
	st, err := NewStatic(static)
	if err != nil {
		return nil, nil, err
	}
	return st.Initiate(serverKey, payload)
}

// Initiate is NewClient with a parsed key.
func (s *Static) Initiate(serverKey, payload []byte) (*Client, []byte, error) {
	if len(serverKey) != KeyLen {
		return nil, nil, fmt.Errorf("server key is %d bytes, want %d", len(serverKey), KeyLen)
	}
	hs, err := fnoise.NewHandshakeState(fnoise.Config{
		CipherSuite:   s.suite(),
		Pattern:       fnoise.HandshakeIK,
		Initiator:     true,
		Prologue:      []byte(Prologue),
		StaticKeypair: s.kp,
		PeerStatic:    serverKey,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("noise: start handshake: %w", err)
	}
	msg, _, _, err := hs.WriteMessage([]byte{kindFull}, payload)
	if err != nil {
		return nil, nil, fmt.Errorf("noise: write first message: %w", err)
	}
	return &Client{hs: hs}, msg, nil
}

// Finish reads the server's reply and returns its payload and the ciphers
// for sending (tx) and receiving (rx). A resumption the server refused
// ends with ErrTicketRefused: the connection is still usable for a full
// handshake.
func (c *Client) Finish(reply []byte) (payload []byte, tx, rx *Cipher, err error) {
	if len(reply) == len(RefusedReply) && reply[0] == RefusedReply[0] {
		return nil, nil, nil, ErrTicketRefused
	}
	payload, cs1, cs2, err := c.hs.ReadMessage(nil, reply)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("noise: server reply does not verify (wrong or replaced server key?): %w", err)
	}
	if cs1 == nil || cs2 == nil {
		return nil, nil, nil, errors.New("noise: handshake not complete after server reply")
	}
	return payload, fromState(cs1), fromState(cs2), nil
}

// Server is the responder side of one handshake in progress.
type Server struct {
	hs *fnoise.HandshakeState
}

// Hello is what a server learns from a client's first handshake message.
type Hello struct {
	Server  *Server // writes the reply
	PeerKey []byte  // a full handshake's device static key (its credential)
	Ticket  *Ticket // a resumption's ticket, opened and unexpired
	Payload []byte  // the login
}

// Accept reads the client's first message with the server's static key
// pair (a full handshake only: no tickets).
//
// It parses static each call; a server keeps a Static and calls its Accept.
func Accept(static Keypair, first []byte) (*Hello, error) {
	st, err := NewStatic(static)
	if err != nil {
		return nil, err
	}
	return st.Accept(first)
}

// Accept reads a client's first message: a full handshake, which yields
// the device's static key, or a resumption, which yields its ticket. A
// resumption whose ticket the server will not take returns an error
// wrapping ErrTicketRefused: answer RefusedReply and read the client's
// next first message. Any other error means the message is not from a
// client of this server; close the connection.
func (s *Static) Accept(first []byte) (*Hello, error) {
	if len(first) == 0 {
		return nil, errors.New("noise: empty first message")
	}
	switch kind, rest := first[0], first[1:]; kind {
	case kindFull:
		hs, err := fnoise.NewHandshakeState(fnoise.Config{
			CipherSuite:   s.suite(),
			Pattern:       fnoise.HandshakeIK,
			Initiator:     false,
			Prologue:      []byte(Prologue),
			StaticKeypair: s.kp,
		})
		if err != nil {
			return nil, fmt.Errorf("noise: start handshake: %w", err)
		}
		payload, _, _, err := hs.ReadMessage(nil, rest)
		if err != nil {
			return nil, fmt.Errorf("noise: first message does not verify (garbage, or a client with the wrong server key): %w", err)
		}
		return &Hello{Server: &Server{hs: hs}, PeerKey: hs.PeerStatic(), Payload: payload}, nil
	case kindResume:
		if len(rest) == 0 || len(rest) < 1+int(rest[0]) {
			return nil, errors.New("noise: resumption message shorter than its ticket")
		}
		ticket, msg := rest[1:1+int(rest[0])], rest[1+int(rest[0]):]
		if s.tickets == nil {
			return nil, fmt.Errorf("%w: this server does not resume sessions", ErrTicketRefused)
		}
		t, err := s.tickets.Open(ticket)
		if err != nil {
			return nil, err
		}
		if !s.tickets.Valid(t, time.Now()) {
			return nil, fmt.Errorf("%w: the ticket of a full handshake at %s has expired", ErrTicketRefused, t.Authenticated.UTC().Format(time.RFC3339))
		}
		hs, err := newResumeState(ticket, t.PSK[:], false)
		if err != nil {
			return nil, err
		}
		payload, _, _, err := hs.ReadMessage(nil, msg)
		if err != nil {
			return nil, fmt.Errorf("noise: resumption does not verify (not keyed with the ticket's secret): %w", err)
		}
		return &Hello{Server: &Server{hs: hs}, Ticket: &t, Payload: payload}, nil
	default:
		return nil, fmt.Errorf("noise: unknown handshake kind %d", kind)
	}
}

// Ephemeral returns the client's ephemeral public key from a first
// message, without any cryptography: both handshakes send it in the clear
// at a fixed place. A client makes a new one for every handshake, so a
// server that has seen it before is looking at a replay and can refuse it
// before spending a Diffie-Hellman on it.
func Ephemeral(first []byte) (e [KeyLen]byte, ok bool) {
	if len(first) == 0 {
		return e, false
	}
	rest := first[1:]
	switch first[0] {
	case kindFull:
	case kindResume:
		if len(rest) == 0 || len(rest) < 1+int(rest[0]) {
			return e, false
		}
		rest = rest[1+int(rest[0]):]
	default:
		return e, false
	}
	if len(rest) < KeyLen {
		return e, false
	}
	copy(e[:], rest)
	return e, true
}

// newResumeState starts Noise_NNpsk0 keyed by a ticket's secret, with the
// ticket in the prologue.
func newResumeState(ticket, psk []byte, initiator bool) (*fnoise.HandshakeState, error) {
	hs, err := fnoise.NewHandshakeState(fnoise.Config{
		CipherSuite:           fnoise.NewCipherSuite(&handshakeDH{}, fnoise.CipherChaChaPoly, fnoise.HashSHA256),
		Pattern:               fnoise.HandshakeNN,
		Initiator:             initiator,
		Prologue:              resumePrologue(ticket),
		PresharedKey:          psk,
		PresharedKeyPlacement: 0,
	})
	if err != nil {
		return nil, fmt.Errorf("noise: start resumption: %w", err)
	}
	return hs, nil
}

// Reply writes the server's reply carrying payload and returns it with the
// ciphers for sending (tx) and receiving (rx).
func (s *Server) Reply(payload []byte) (msg []byte, tx, rx *Cipher, err error) {
	msg, cs1, cs2, err := s.hs.WriteMessage(nil, payload)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("noise: write reply: %w", err)
	}
	// cs1 encrypts initiator->responder, cs2 responder->initiator.
	return msg, fromState(cs2), fromState(cs1), nil
}
