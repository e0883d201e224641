package noise

import (
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// Resumption tickets.
//
// A full handshake (Noise_IK) costs the server four X25519 operations and
// an ephemeral key: on the development machine about 215 us of its CPU
// (go test -run x -bench Accept ./noise),
// most of a login. A device that logs in again — after an app restart, a
// network change, a server restart — has already proved its static key,
// so, as TLS 1.3 does with session tickets, the server hands every logged-in
// device a ticket and a fresh secret (the pre-shared key), inside the
// encrypted login result. The next login presents the ticket and runs
// Noise_NNpsk0_25519_ChaChaPoly_SHA256 keyed with that secret: one X25519
// and the ephemeral key on the server, about half the CPU (102 us).
//
// What a ticket keeps, and why that is enough:
//   - The ticket is sealed (XChaCha20-Poly1305) with a key only the server
//     holds, so it is opaque to the device and cannot be forged or altered;
//     the server keeps no per-ticket state, and tickets survive restarts
//     (the key is a file in the data directory).
//   - Only the device the server gave the secret to can complete the
//     handshake: the secret keys the first message, and the ticket is in
//     the prologue, so a ticket cannot be paired with another secret. A
//     captured first message can be replayed, as an IK first message can,
//     but the replayer cannot finish the handshake (it lacks the ephemeral
//     key that ee needs).
//   - Forward secrecy of the session: ee, with both ephemeral keys fresh.
//     The login payload is encrypted under the secret alone; it carries the
//     phone number, which the ticket holds anyway.
//   - A re-registration elsewhere locks the old device out: the ticket
//     carries the account's generation and the device's static public key,
//     and the server refuses a ticket whose account has moved on to
//     another generation or key, exactly as it refuses the old device's
//     static key.
//   - Tickets expire: a ticket is good for TicketKey's ttl from the last
//     time the device proved its static key (its last full handshake).
//     Each login hands out a new ticket and secret, but a resumption's
//     ticket keeps that time, so a chain of resumptions ends ttl after
//     the full handshake that began it: a stolen ticket and secret are not
//     a credential for ever. A ticket seen on the wire twice links two
//     logins of one device only if the device reused it.
//   - What it does not stop: a captured first message can be replayed, as
//     a Noise IK first message can. The replayer cannot finish the
//     handshake, but the server has logged the user in by then, and a
//     login replaces the user's live connection (the device reconnects).
//
// A ticket the server cannot use (expired, sealed with another key,
// garbled) is refused with a one-byte reply, RefusedReply, shorter than
// any Noise reply; the client then runs a full handshake on the same
// connection.

// Handshake kinds: the first byte of a client's first message.
const (
	kindFull   byte = 1 // Noise_IK: the device's static key and the login
	kindResume byte = 2 // Noise_NNpsk0 keyed by a ticket's secret
)

// RefusedReply is the server's whole reply to a resumption it will not
// take: one byte, where every Noise reply is at least 48. The connection
// stays open for a full handshake.
var RefusedReply = []byte{0}

// ErrTicketRefused: the server did not accept the ticket (expired,
// sealed with a key it no longer has, or not a ticket). Log in with a full
// handshake instead.
var ErrTicketRefused = errors.New("noise: resumption ticket refused")

// PSKLen is the length of a ticket's secret.
const PSKLen = 32

const (
	ticketVersion = 2
	ticketNonce   = chacha20poly1305.NonceSizeX
	// ticketFixed is a sealed ticket without its phone number: version,
	// nonce, generation, authentication time, device key, secret and tag.
	ticketFixed = 1 + ticketNonce + 8 + 8 + KeyLen + PSKLen + chacha20poly1305.Overhead
	// MaxTicketLen bounds a ticket (its length travels in one byte).
	MaxTicketLen = 255
	// maxTicketPhone is what room is left for the phone number: far more
	// than E.164's 16 characters.
	maxTicketPhone = MaxTicketLen - ticketFixed
)

// Ticket is what a resumption ticket says about the device that holds it.
type Ticket struct {
	Phone      string       // the account
	Generation uint64       // the account's generation when the ticket was issued
	Key        [KeyLen]byte // the device's static public key, as its full handshake proved it
	// Authenticated is when the device last proved its static key (its
	// last full handshake), to the second: the ticket expires ttl after it.
	Authenticated time.Time
	PSK           [PSKLen]byte
}

// TicketKey seals and opens tickets, and says how long they are good for.
type TicketKey struct {
	aead cipher.AEAD
	ttl  time.Duration
}

// NewTicketKey makes a ticket key from a 32-byte secret; tickets it issues
// are good for ttl.
func NewTicketKey(secret []byte, ttl time.Duration) (*TicketKey, error) {
	aead, err := chacha20poly1305.NewX(secret)
	if err != nil {
		return nil, fmt.Errorf("noise: ticket key: %w", err)
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("noise: ticket lifetime %s: must be positive", ttl)
	}
	return &TicketKey{aead: aead, ttl: ttl}, nil
}

// Issue makes a ticket, with a fresh secret, for the device with static
// key devKey of the account phone at generation gen, which proved its key
// at authenticated (now, after a full handshake; the ticket's own time,
// after a resumption). It returns the ticket sealed, its secret and its
// expiry.
func (k *TicketKey) Issue(phone string, gen uint64, devKey []byte, authenticated time.Time) (sealed []byte, psk [PSKLen]byte, expires time.Time, err error) {
	if len(devKey) != KeyLen {
		return nil, psk, time.Time{}, fmt.Errorf("noise: ticket for a %d-byte device key, want %d", len(devKey), KeyLen)
	}
	if _, err := rand.Read(psk[:]); err != nil {
		return nil, psk, time.Time{}, err
	}
	t := Ticket{Phone: phone, Generation: gen, Key: [KeyLen]byte(devKey), Authenticated: authenticated.Truncate(time.Second), PSK: psk}
	sealed, err = k.Seal(t)
	return sealed, psk, t.Authenticated.Add(k.ttl), err
}

// Seal seals t. A phone number longer than a ticket has room for is an
// error (no E.164 number is).
func (k *TicketKey) Seal(t Ticket) ([]byte, error) {
	if len(t.Phone) > maxTicketPhone {
		return nil, fmt.Errorf("noise: ticket for a %d-byte phone number: at most %d", len(t.Phone), maxTicketPhone)
	}
	b := make([]byte, 1+ticketNonce, ticketFixed+len(t.Phone))
	b[0] = ticketVersion
	if _, err := rand.Read(b[1 : 1+ticketNonce]); err != nil {
		return nil, err
	}
	pt := make([]byte, 0, 8+8+KeyLen+PSKLen+len(t.Phone))
	pt = binary.BigEndian.AppendUint64(pt, t.Generation)
	pt = binary.BigEndian.AppendUint64(pt, uint64(t.Authenticated.Unix()))
	pt = append(pt, t.Key[:]...)
	pt = append(pt, t.PSK[:]...)
	pt = append(pt, t.Phone...)
	return k.aead.Seal(b, b[1:1+ticketNonce], pt, b[:1]), nil
}

// Open checks a sealed ticket and returns what it says. It does not look
// at the expiry; Valid does.
func (k *TicketKey) Open(b []byte) (Ticket, error) {
	if len(b) < ticketFixed || len(b) > MaxTicketLen {
		return Ticket{}, fmt.Errorf("%w: %d bytes is not a ticket", ErrTicketRefused, len(b))
	}
	if b[0] != ticketVersion {
		return Ticket{}, fmt.Errorf("%w: ticket version %d", ErrTicketRefused, b[0])
	}
	pt, err := k.aead.Open(nil, b[1:1+ticketNonce], b[1+ticketNonce:], b[:1])
	if err != nil {
		return Ticket{}, fmt.Errorf("%w: the ticket does not verify (sealed with another key?)", ErrTicketRefused)
	}
	t := Ticket{
		Generation:    binary.BigEndian.Uint64(pt),
		Authenticated: time.Unix(int64(binary.BigEndian.Uint64(pt[8:])), 0),
		Phone:         string(pt[16+KeyLen+PSKLen:]),
	}
	copy(t.Key[:], pt[16:16+KeyLen])
	copy(t.PSK[:], pt[16+KeyLen:16+KeyLen+PSKLen])
	return t, nil
}

// Valid reports whether t, issued by this key, is still good at now (a
// minute of clock skew allowed).
func (k *TicketKey) Valid(t Ticket, now time.Time) bool {
	return !now.Before(t.Authenticated.Add(-time.Minute)) && now.Before(t.Authenticated.Add(k.ttl))
}

// Resumption is what a device keeps from a login result for its next
// login: the ticket, its secret and when it expires.
type Resumption struct {
	Ticket, Secret []byte
	Expires        time.Time
}

// NewResumption is the resumption a login result offers (its ticket,
// ticket secret and expiry in unix nanoseconds), or nil when it offers
// none.
func NewResumption(ticket, secret []byte, expires int64) *Resumption {
	if len(ticket) == 0 || len(secret) != PSKLen {
		return nil
	}
	return &Resumption{Ticket: ticket, Secret: secret, Expires: time.Unix(0, expires)}
}

// Usable reports whether r is there and not expired at now.
func (r *Resumption) Usable(now time.Time) bool { return r != nil && now.Before(r.Expires) }

// resumePrologue binds a resumption's transcript to its ticket.
func resumePrologue(ticket []byte) []byte {
	return append([]byte(Prologue+" resume "), ticket...)
}

// Resume starts a resumption with ticket and its secret psk (from an
// earlier login's result), carrying payload. It returns the first message
// (to send, length-prefixed). A Client whose Finish reports
// ErrTicketRefused needs a full handshake (Static.Initiate) on the same
// connection.
func Resume(ticket, psk, payload []byte) (*Client, []byte, error) {
	if len(ticket) == 0 || len(ticket) > MaxTicketLen {
		return nil, nil, fmt.Errorf("noise: a %d-byte ticket: at most %d", len(ticket), MaxTicketLen)
	}
	if len(psk) != PSKLen {
		return nil, nil, fmt.Errorf("noise: a %d-byte ticket secret, want %d", len(psk), PSKLen)
	}
	hs, err := newResumeState(ticket, psk, true)
	if err != nil {
		return nil, nil, err
	}
	msg := make([]byte, 0, 2+len(ticket)+KeyLen+len(payload)+TagLen)
	msg = append(msg, kindResume, byte(len(ticket)))
	msg = append(msg, ticket...)
	msg, _, _, err = hs.WriteMessage(msg, payload)
	if err != nil {
		return nil, nil, fmt.Errorf("noise: write first message: %w", err)
	}
	return &Client{hs: hs}, msg, nil
}
