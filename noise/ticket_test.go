package noise

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"
	"time"
)

// devKey stands for a device's static public key in tickets.
var devKey = bytes.Repeat([]byte{0xd}, KeyLen)

func mustTicketKey(t testing.TB, ttl time.Duration) *TicketKey {
	t.Helper()
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		t.Fatal(err)
	}
	k, err := NewTicketKey(secret, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// resumingServer is a responder that takes tickets sealed with k.
func resumingServer(t testing.TB, k *TicketKey) *Static {
	t.Helper()
	st, err := NewStatic(mustKey(t))
	if err != nil {
		t.Fatal(err)
	}
	st.UseTickets(k)
	return st
}

func TestTicketSealsAndOpens(t *testing.T) {
	k := mustTicketKey(t, time.Hour)
	now := time.Unix(1_800_000_000, 500)
	sealed, psk, expires, err := k.Issue("+14155550101", 7, devKey, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(sealed) > MaxTicketLen {
		t.Fatalf("ticket is %d bytes, over %d", len(sealed), MaxTicketLen)
	}
	if !expires.Equal(time.Unix(1_800_000_000+3600, 0)) {
		t.Errorf("expires %v", expires)
	}
	got, err := k.Open(sealed)
	if err != nil {
		t.Fatal(err)
	}
	want := Ticket{Phone: "+14155550101", Generation: 7, Key: [KeyLen]byte(devKey), Authenticated: time.Unix(1_800_000_000, 0), PSK: psk}
	if got.Phone != want.Phone || got.Generation != want.Generation || got.Key != want.Key || !got.Authenticated.Equal(want.Authenticated) || got.PSK != want.PSK {
		t.Fatalf("opened %+v, want %+v", got, want)
	}
	if !k.Valid(got, now.Add(59*time.Minute)) || k.Valid(got, now.Add(time.Hour)) {
		t.Error("a one-hour ticket must be valid for an hour and no longer")
	}
	if k.Valid(got, now.Add(-2*time.Minute)) {
		t.Error("a ticket issued in the future (beyond clock skew) must not be valid")
	}
	// Two tickets for the same account differ: fresh nonce, fresh secret.
	again, psk2, _, _ := k.Issue("+14155550101", 7, devKey, now)
	if bytes.Equal(again, sealed) || psk2 == psk {
		t.Error("two issues of a ticket are the same")
	}
}

func TestTicketRefusesTamperingAndOtherKeys(t *testing.T) {
	k, other := mustTicketKey(t, time.Hour), mustTicketKey(t, time.Hour)
	sealed, _, _, err := k.Issue("+14155550101", 1, devKey, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string][]byte{
		"empty":        nil,
		"short":        sealed[:ticketFixed-1],
		"too long":     append(bytes.Clone(sealed), make([]byte, MaxTicketLen)...),
		"bit flipped":  flip(sealed, len(sealed)/2),
		"version":      flip(sealed, 0),
		"nonce":        flip(sealed, 3),
		"tag":          flip(sealed, len(sealed)-1),
		"truncated":    sealed[:len(sealed)-1],
		"other key's":  mustIssue(t, other),
		"random bytes": bytes.Repeat([]byte{7}, len(sealed)),
	}
	for name, b := range cases {
		if _, err := k.Open(b); !errors.Is(err, ErrTicketRefused) {
			t.Errorf("%s: Open = %v, want ErrTicketRefused", name, err)
		}
	}
	if _, err := k.Seal(Ticket{Phone: string(make([]byte, maxTicketPhone+1))}); err == nil {
		t.Error("sealed a ticket with a phone number too long to fit")
	}
	if _, _, _, err := k.Issue("+14155550101", 1, devKey[:31], time.Now()); err == nil {
		t.Error("issued a ticket for a 31-byte device key")
	}
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 1
	return c
}

func mustIssue(t testing.TB, k *TicketKey) []byte {
	sealed, _, _, err := k.Issue("+14155550101", 1, devKey, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return sealed
}

func TestResumptionHandshakeAndTransport(t *testing.T) {
	k := mustTicketKey(t, time.Hour)
	st := resumingServer(t, k)
	ticket, psk, _, err := k.Issue("+14155550101", 3, devKey, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	c, first, err := Resume(ticket, psk[:], []byte("login"))
	if err != nil {
		t.Fatal(err)
	}
	h, err := st.Accept(first)
	if err != nil {
		t.Fatal(err)
	}
	if h.Ticket == nil || h.Ticket.Phone != "+14155550101" || h.Ticket.Generation != 3 || !bytes.Equal(h.Ticket.Key[:], devKey) || h.PeerKey != nil || string(h.Payload) != "login" {
		t.Fatalf("server saw %+v (ticket %+v)", h, h.Ticket)
	}
	reply, stx, srx, err := h.Server.Reply([]byte("welcome"))
	if err != nil {
		t.Fatal(err)
	}
	p, ctx, crx, err := c.Finish(reply)
	if err != nil || string(p) != "welcome" {
		t.Fatalf("client finish: %q, %v", p, err)
	}
	ct, _ := ctx.Seal(nil, []byte("ping"))
	if pt, err := srx.Open(nil, ct); err != nil || string(pt) != "ping" {
		t.Fatalf("client->server: %q, %v", pt, err)
	}
	ct, _ = stx.Seal(nil, []byte("pong"))
	if pt, err := crx.Open(nil, ct); err != nil || string(pt) != "pong" {
		t.Fatalf("server->client: %q, %v", pt, err)
	}
}

func TestResumptionRefusals(t *testing.T) {
	k := mustTicketKey(t, time.Hour)
	st := resumingServer(t, k)
	good, psk, _, err := k.Issue("+14155550101", 1, devKey, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	expired, epsk, _, _ := k.Issue("+14155550101", 1, devKey, time.Now().Add(-2*time.Hour))
	foreign, fpsk, _, _ := mustTicketKey(t, time.Hour).Issue("+14155550101", 1, devKey, time.Now())
	noTickets, _ := NewStatic(mustKey(t))

	first := func(ticket []byte, psk [PSKLen]byte) []byte {
		_, m, err := Resume(ticket, psk[:], []byte("login"))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	// Refused: answer RefusedReply and wait for a full handshake.
	for name, c := range map[string]struct {
		st  *Static
		msg []byte
	}{
		"expired ticket":          {st, first(expired, epsk)},
		"another server's ticket": {st, first(foreign, fpsk)},
		"server without tickets":  {noTickets, first(good, psk)},
	} {
		if _, err := c.st.Accept(c.msg); !errors.Is(err, ErrTicketRefused) {
			t.Errorf("%s: Accept = %v, want ErrTicketRefused", name, err)
		}
	}
	// Not refused but failed: the message is not from the ticket's holder.
	var wrong [PSKLen]byte
	wrong[0] = 1
	m := first(good, psk)
	for name, msg := range map[string][]byte{
		"wrong secret":          first(good, wrong),
		"garbled after ticket":  flip(m, len(m)-1),
		"ticket longer than it": m[:2+len(good)-1],
		"kind only":             {kindResume},
		"unknown kind":          append([]byte{9}, m[1:]...),
		"empty":                 {},
	} {
		_, err := st.Accept(msg)
		if err == nil || errors.Is(err, ErrTicketRefused) {
			t.Errorf("%s: Accept = %v, want a failure that is not a refusal", name, err)
		}
	}
	// A ticket cannot be moved to another resumption's secret: the
	// prologue binds the ticket, the first message the secret.
	other, opsk, _, _ := k.Issue("+14155550102", 1, devKey, time.Now())
	_, m2, _ := Resume(good, opsk[:], []byte("login"))
	if _, err := st.Accept(m2); err == nil {
		t.Error("accepted a ticket paired with another ticket's secret")
	}
	_ = other
}

func TestClientSeesRefusal(t *testing.T) {
	k := mustTicketKey(t, time.Hour)
	ticket, psk, _, _ := k.Issue("+14155550101", 1, devKey, time.Now())
	c, _, err := Resume(ticket, psk[:], nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := c.Finish(RefusedReply); !errors.Is(err, ErrTicketRefused) {
		t.Fatalf("Finish(RefusedReply) = %v, want ErrTicketRefused", err)
	}
}

// FuzzOpenTicket: a ticket comes from the network; opening anything must
// fail cleanly or give back what was sealed.
func FuzzOpenTicket(f *testing.F) {
	secret := bytes.Repeat([]byte{3}, 32)
	k, err := NewTicketKey(secret, time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	good, _, _, err := k.Issue("+14155550101", 1, devKey, time.Unix(1_800_000_000, 0))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{1}, ticketFixed))
	f.Fuzz(func(t *testing.T, b []byte) {
		tk, err := k.Open(b)
		if err != nil {
			if !errors.Is(err, ErrTicketRefused) {
				t.Fatalf("Open failed with %v, not a refusal", err)
			}
			return
		}
		again, err := k.Seal(tk)
		if err != nil {
			t.Fatal(err)
		}
		if back, err := k.Open(again); err != nil || back.Phone != tk.Phone || back.PSK != tk.PSK || back.Key != tk.Key {
			t.Fatalf("reseal of %+v: %+v, %v", tk, back, err)
		}
	})
}

func BenchmarkAcceptResume(b *testing.B) {
	k := mustTicketKey(b, time.Hour)
	st := resumingServer(b, k)
	ticket, psk, _, _ := k.Issue("+14155550101", 1, devKey, time.Now())
	_, first, err := Resume(ticket, psk[:], []byte("login"))
	if err != nil {
		b.Fatal(err)
	}
	benchAccept(b, st, first)
}
