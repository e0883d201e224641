package node_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/parleyhq/parley/node"
	"github.com/parleyhq/parley/noise"
	"github.com/parleyhq/parley/wire"
)

// A captured first handshake message, sent again, must cost the real device
// nothing: while the server remembers it, it is refused unanswered; once
// it does not (after a restart), it is answered, but the replayer cannot
// prove it holds the keys, so it replaces no one.
func TestReplayedLoginReplacesNoOne(t *testing.T) {
	dir := t.TempDir()
	gw := &codeGateway{}
	n := startNodeIn(t, dir, gw)
	akp, _ := register(t, n.HTTPURL(), alicePhone, gw.code)

	// The real device logs in; the attacker captures its first message.
	hs, first, err := noise.NewClient(akp, n.PublicKey(), loginPayload(alicePhone, 1))
	if err != nil {
		t.Fatal(err)
	}
	nc := dial(t, n)
	if err := writeMsg(nc, first); err != nil {
		t.Fatal(err)
	}
	nc.SetReadDeadline(time.Now().Add(ioGuard))
	reply, err := wire.ReadMessage(nc, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, tx, rx, err := hs.Finish(reply)
	if err != nil {
		t.Fatal(err)
	}
	alice, _, err := provenConn(nc, tx, rx, &wire.LoginResult{})
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.writePlain(pingFrame(1)); err != nil {
		t.Fatal(err)
	}
	awaitPong(t, alice, 1)

	for i := range 20 {
		r := dial(t, n)
		if err := writeMsg(r, first); err != nil {
			t.Fatal(err)
		}
		expectHangup(t, r, true)
		if t.Failed() {
			t.Fatalf("replay %d was answered", i+1)
		}
	}
	if err := alice.writePlain(pingFrame(2)); err != nil {
		t.Fatal(err)
	}
	awaitPong(t, alice, 2) // no Close frame came first

	// After a restart the server has forgotten the message: it answers the
	// replay, and the device that logs in meanwhile stays in.
	alice.Close()
	n.Close()
	n = startNodeIn(t, dir, gw)
	alice2, _ := loginFull(t, n, alicePhone, akp)
	r := dial(t, n)
	if err := writeMsg(r, first); err != nil {
		t.Fatal(err)
	}
	r.SetReadDeadline(time.Now().Add(ioGuard))
	if _, err := wire.ReadMessage(r, nil); err != nil {
		t.Fatalf("the forgotten replay was not answered: %v", err)
	}
	if err := alice2.writePlain(pingFrame(3)); err != nil {
		t.Fatal(err)
	}
	awaitPong(t, alice2, 3) // not REPLACED by the unproven replay
	// The replay's connection is closed at the handshake deadline, never
	// having started a session.
	if got := n.SessionCount(); got != 1 {
		t.Errorf("sessions = %d, want 1 (alice's)", got)
	}
}

// GET /admin/limits echoes every limit in force, defaults filled in.
func TestAdminLimits(t *testing.T) {
	n := startNodeWith(t, node.Limits{MaxConnsPerAddr: 7})
	resp, err := (&http.Client{Timeout: ioGuard}).Get(n.AdminURL() + "/admin/limits")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got struct {
		Node     map[string]any `json:"node"`
		Media    map[string]any `json:"media"`
		Protocol map[string]any `json:"protocol"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	// Every field of Limits is shown: a new limit must be added to the
	// endpoint too.
	if want := reflect.TypeOf(node.Limits{}).NumField(); len(got.Node) != want {
		t.Errorf("/admin/limits shows %d node limits, Limits has %d fields", len(got.Node), want)
	}
	for _, k := range []string{"max_size", "max_decode_bytes", "decode_memory", "uploads_per_minute"} {
		if _, ok := got.Media[k]; !ok {
			t.Errorf("/admin/limits has no media.%s", k)
		}
	}
	if got.Protocol["max_first_message"] == nil || got.Protocol["max_frame"] == nil {
		t.Errorf("/admin/limits protocol bounds: %v", got.Protocol)
	}
	def := node.DefaultLimits()
	for k, want := range map[string]any{
		"max_conns_per_addr":  float64(7),
		"max_handshakes":      float64(def.MaxHandshakes),
		"accept_rate":         float64(def.AcceptRate),
		"accept_burst":        float64(def.AcceptBurst),
		"handshake_timeout":   def.HandshakeTimeout.String(),
		"max_mailbox":         float64(def.MaxMailbox),
		"http_conns_per_addr": float64(def.HTTPConnsPerAddr),
	} {
		if got.Node[k] != want {
			t.Errorf("limits[%s] = %v, want %v", k, got.Node[k], want)
		}
	}
}

func startNodeWith(t *testing.T, lim node.Limits) *node.Node {
	t.Helper()
	n, err := node.Start(t.Context(), node.Config{
		DataDir: t.TempDir(), Listen: "127.0.0.1:0", HTTP: "127.0.0.1:0", Admin: "127.0.0.1:0",
		SMS: &codeGateway{}, Limits: lim, Log: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// Slow HTTP clients: a request that never finishes arriving is cut off at
// the request timeout, and one address cannot hold more connections than
// its share; another client is served meanwhile.
func TestSlowHTTPClientsAreBounded(t *testing.T) {
	const perAddr = 4
	n := startNodeWith(t, node.Limits{HTTPRequestTimeout: 500 * time.Millisecond, HTTPConnsPerAddr: perAddr})
	host := strings.TrimPrefix(n.HTTPURL(), "http://")

	// A POST declaring 4000 bytes and sending one.
	slow, err := net.DialTimeout("tcp", host, ioGuard)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	fmt.Fprintf(slow, "POST /v1/register/request HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n{")
	slow.SetReadDeadline(time.Now().Add(ioGuard))
	if _, err := io.ReadAll(slow); err != nil {
		t.Errorf("a request that never finishes arriving was not cut off: %v", err)
	}

	// perAddr idle connections hold the address's share; the next is
	// closed at once.
	var held []net.Conn
	for range perAddr {
		c, err := net.DialTimeout("tcp", host, ioGuard)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	extra, err := net.DialTimeout("tcp", host, ioGuard)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	extra.SetReadDeadline(time.Now().Add(ioGuard))
	if b, err := io.ReadAll(extra); err != nil || len(b) != 0 {
		t.Errorf("connection %d from one address: read %q, %v; want it closed at once", perAddr+1, b, err)
	}
	// Another address is served.
	d := net.Dialer{Timeout: ioGuard, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	c, err := d.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /v1/server HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(ioGuard))
	b, _ := io.ReadAll(c)
	if !strings.HasPrefix(string(b), "HTTP/1.1 200") {
		t.Errorf("another address: %.40q, want 200", b)
	}
	for _, h := range held {
		h.Close()
	}
}

// awaitErrorFrame reads until the Error frame answering request id.
func awaitErrorFrame(t *testing.T, c *rawConn, id uint64) *wire.Error {
	t.Helper()
	for {
		f, err := c.readFrame(ioGuard)
		if err != nil {
			t.Fatalf("waiting for the answer to request %d: %v", id, err)
		}
		switch k := f.Kind.(type) {
		case *wire.Frame_Error:
			if k.Error.Id == id {
				return k.Error
			}
		case *wire.Frame_SendAck:
			if k.SendAck.Id == id {
				t.Fatalf("request %d was accepted, want an error", id)
			}
		case *wire.Frame_Close:
			t.Fatalf("waiting for the answer to request %d: Close %v", id, k.Close)
		}
	}
}

// What a session refuses of a client's frames, answered with an error and
// without storing anything: media that are not this server's, and read
// receipts that are too big or name no one.
func TestSessionRefusesForgedFields(t *testing.T) {
	gw := &codeGateway{}
	n := startNodeIn(t, t.TempDir(), gw)
	akp, _ := register(t, n.HTTPURL(), alicePhone, gw.code)
	register(t, n.HTTPURL(), bobPhone, gw.code)
	alice, _ := loginFull(t, n, alicePhone, akp)
	for i, m := range []*wire.Media{
		{Url: "http://evil.example/x", Id: "x", Mime: "image/jpeg", Size: 1},
		{Url: n.HTTPURL() + "/v1/media/../../etc/passwd", Id: "../../etc/passwd", Mime: "image/jpeg", Size: 1},
		{Url: n.HTTPURL() + "/v1/media/abc", Id: "abc", Mime: "text/html", Size: 1},
	} {
		id := uint64(100 + i)
		if err := alice.writeFrame(&wire.Frame{Kind: &wire.Frame_Send{Send: &wire.Send{Id: id, To: bobPhone, Media: m}}}); err != nil {
			t.Fatal(err)
		}
		if e := awaitErrorFrame(t, alice, id); e.Code != wire.Error_BAD_REQUEST {
			t.Errorf("media %v: %v, want BAD_REQUEST", m, e)
		}
	}
	ids := make([]uint64, node.DefaultLimits().MaxReadIDs+1)
	for i := range ids {
		ids[i] = uint64(i + 1)
	}
	for _, tc := range []struct {
		read *wire.Read
		want wire.Error_Code
	}{
		{&wire.Read{Id: 200, To: bobPhone, Ids: ids}, wire.Error_TOO_LARGE},
		{&wire.Read{Id: 201, To: alicePhone, Ids: []uint64{1}}, wire.Error_BAD_REQUEST},
	} {
		if err := alice.writeFrame(&wire.Frame{Kind: &wire.Frame_Read{Read: tc.read}}); err != nil {
			t.Fatal(err)
		}
		if e := awaitErrorFrame(t, alice, tc.read.Id); e.Code != tc.want {
			t.Errorf("read to %s of %d ids: %v, want %v", tc.read.To, len(tc.read.Ids), e, tc.want)
		}
	}
}

// A client that floods the server with requests faster than its session
// is served is cut off with a reason, instead of its mailbox growing
// without bound.
func TestFloodingClientIsCutOff(t *testing.T) {
	gw := &codeGateway{}
	n, err := node.Start(t.Context(), node.Config{
		DataDir: t.TempDir(), Listen: "127.0.0.1:0", HTTP: "127.0.0.1:0", Admin: "127.0.0.1:0",
		SMS: gw, Limits: node.Limits{MaxMailbox: 2}, Log: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	kp, _ := register(t, n.HTTPURL(), alicePhone, gw.code)
	c, _ := loginFull(t, n, alicePhone, kp)
	var flood []byte
	c.wmu.Lock()
	for i := range 5000 {
		msg, err := c.sealed(pingFrame(uint64(i)))
		if err != nil {
			t.Fatal(err)
		}
		flood = append(flood, msg...)
	}
	c.wmu.Unlock()
	go c.writeRaw(flood) // may fail once the server closes
	for {
		f, err := c.readFrame(ioGuard)
		if err != nil {
			t.Fatalf("flooding client: %v before a Close frame", err)
		}
		if cl := f.GetClose(); cl != nil {
			if !strings.Contains(cl.Text, "too much work waiting") {
				t.Errorf("Close %v, want the mailbox reason", cl)
			}
			return
		}
	}
}

// An address whose logins keep failing gets no more handshakes for the
// rest of the minute (refused before any cryptography), while a user on
// another address logs in as usual.
func TestFailedLoginsThrottled(t *testing.T) {
	const budget = 3
	n := startNodeWith(t, node.Limits{FailedLoginsPerAddr: budget})
	for i := range budget {
		if _, err := dialLogin(n.NativeAddr(), n.PublicKey(), malloryPhone, newKeypair(t)); err == nil {
			t.Fatalf("failed login %d: logged in", i+1)
		}
	}
	nc, err := net.DialTimeout("tcp", n.NativeAddr(), ioGuard)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_, _, err = handshake(nc, newKeypair(t), n.PublicKey(), loginPayload(malloryPhone, 1))
	if err == nil || !strings.Contains(err.Error(), errNoReply.Error()) {
		t.Errorf("login over the budget: %v, want the connection closed unanswered", err)
	}
	// Another address is not held up.
	d := net.Dialer{Timeout: ioGuard, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	other, err := d.Dial("tcp", n.NativeAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, res, err := handshake(other, newKeypair(t), n.PublicKey(), loginPayload(malloryPhone, 1)); err != nil || res.Error.GetCode() != wire.Error_LOGIN_FAILED {
		t.Errorf("a login from another address: %v %v, want it answered (LOGIN_FAILED: no such account)", res.GetError(), err)
	}
}

// Two servers on one data directory: the second says so, and what to do.
func TestDataDirInUse(t *testing.T) {
	dir := t.TempDir()
	startNodeIn(t, dir, &codeGateway{})
	_, err := node.Start(t.Context(), node.Config{
		DataDir: dir, Listen: "127.0.0.1:0", HTTP: "127.0.0.1:0", Admin: "127.0.0.1:0", Log: testLogger(t),
	})
	if err == nil || !strings.Contains(err.Error(), "another parley server is using the data directory") {
		t.Fatalf("second server on one data directory: %v", err)
	}
}
