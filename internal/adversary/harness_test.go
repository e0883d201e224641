package adversary

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/parleyhq/parley/client"
	"github.com/parleyhq/parley/internal/nodetest"
	"github.com/parleyhq/parley/node"
	"github.com/parleyhq/parley/noise"
)

// ioGuard bounds every blocking read, write and wait: a failure guard,
// never a timing assertion (a healthy server answers in milliseconds).
const ioGuard = 15 * time.Second

// liveness bounds a normal user's whole round (register, log in, send,
// receive) while an attack runs: generous, since the point is that the
// user gets through, not how fast.
const liveness = 10 * time.Second

// env is one node under attack.
type env struct {
	*nodetest.Node
	phones atomic.Int32 // numbers handed out by newPhone
	token  string       // the admin token, if the node has one
}

// start runs a node with lim (zero fields: the defaults) until the test
// ends.
func start(t *testing.T, lim node.Limits, edit ...func(*node.Config)) *env {
	t.Helper()
	n := nodetest.Start(t, append([]func(*node.Config){func(c *node.Config) { c.Limits = lim }}, edit...)...)
	return &env{Node: n}
}

// newPhone returns a number no other user of this node has.
func (e *env) newPhone() string {
	return fmt.Sprintf("+1415555%04d", 100+e.phones.Add(1))
}

// register registers a new number with a new device key through the
// public HTTP API, as a phone would, from 127.0.0.1.
func (e *env) register(ctx context.Context, t testing.TB) (string, noise.Keypair, error) {
	phone := e.newPhone()
	kp, err := noise.GenerateKeypair(nil)
	if err != nil {
		return "", kp, err
	}
	if _, err := client.RequestCode(ctx, nil, e.HTTPURL(), phone); err != nil {
		return "", kp, err
	}
	code := e.Codes.Code(t, phone)
	if _, err := client.Verify(ctx, nil, e.HTTPURL(), phone, code, kp.Public); err != nil {
		return "", kp, err
	}
	return phone, kp, nil
}

// login logs a device in with the SDK, from 127.0.0.1.
func (e *env) login(ctx context.Context, phone string, kp noise.Keypair) (*client.Client, error) {
	return client.Dial(ctx, client.Config{Addr: e.NativeAddr(), ServerKey: e.PublicKey(), Phone: phone, Key: kp})
}

// user is a normal user's logged-in device.
type user struct {
	phone string
	kp    noise.Keypair
	*client.Client
}

// newUser registers and logs in a normal user, failing the test if the
// server does not let it.
func (e *env) newUser(t *testing.T) *user {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), liveness)
	defer cancel()
	phone, kp, err := e.register(ctx, t)
	if err != nil {
		t.Fatalf("a normal user cannot register: %v", err)
	}
	c, err := e.login(ctx, phone, kp)
	if err != nil {
		t.Fatalf("a normal user cannot log in: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return &user{phone: phone, kp: kp, Client: c}
}

// roundTrip has from send to to and to receive and ack it; it returns
// what went wrong, if anything, within liveness.
func roundTrip(ctx context.Context, from, to *client.Client, toPhone string) error {
	ctx, cancel := context.WithTimeout(ctx, liveness)
	defer cancel()
	body := []byte(fmt.Sprintf("hello %d", time.Now().UnixNano()))
	ack, err := from.Send(ctx, toPhone, body)
	if err != nil {
		return fmt.Errorf("send: %w", err)
	}
	for {
		in, err := to.Recv(ctx)
		if err != nil {
			return fmt.Errorf("receive: %w", err)
		}
		if err := to.Ack(in.Seq); err != nil {
			return fmt.Errorf("ack: %w", err)
		}
		if m := in.Message; m != nil && m.ServerId == ack.ServerID {
			if string(m.Body) != string(body) {
				return fmt.Errorf("received %q, sent %q", m.Body, body)
			}
			return nil
		}
	}
}

// checkServes is the liveness check every attack runs meanwhile: two
// new users register, log in, and one sends to the other, who receives
// it, all within liveness.
func (e *env) checkServes(t *testing.T) {
	t.Helper()
	a, b := e.newUser(t), e.newUser(t)
	if err := roundTrip(t.Context(), a.Client, b.Client, b.phone); err != nil {
		t.Fatalf("a normal user, during the attack: %v", err)
	}
	a.Close()
	b.Close()
}

// metric reads one sample of the node's /metrics, e.g.
// `parley_limit_hits_total{limit="max_conns_per_addr"}`; a series not yet
// created reads 0.
func (e *env) metric(t *testing.T, series string) float64 {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, e.AdminURL()+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	if e.token != "" {
		req.Header.Set("Authorization", "Bearer "+e.token)
	}
	resp, err := (&http.Client{Timeout: ioGuard}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 || line[:i] != series {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metric %s: %q", series, line)
		}
		return v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return 0
}

// limitHits is the series of parley_limit_hits_total for limit.
func limitHits(limit string) string { return `parley_limit_hits_total{limit="` + limit + `"}` }

// handshakeFailures is the series of parley_handshake_failures_total for
// reason.
func handshakeFailures(reason string) string {
	return `parley_handshake_failures_total{reason="` + reason + `"}`
}

// from returns a dialer whose connections come from the loopback address
// ip, so that what an attack costs its address is not charged to the
// normal user's 127.0.0.1.
func from(ip string) *net.Dialer {
	return &net.Dialer{Timeout: ioGuard, LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
}

// httpFrom is an HTTP client whose connections come from ip.
func httpFrom(ip string) *http.Client {
	return &http.Client{Timeout: ioGuard, Transport: &http.Transport{DialContext: from(ip).DialContext}}
}

// dialRefusable dials addr from ip, for a connection the server may
// refuse at accept. It resets those, and a reset can come before the dial
// returns: the result is then nil, which closedSoon takes as closed.
func dialRefusable(t *testing.T, ip, addr string) net.Conn {
	t.Helper()
	c, err := from(ip).Dial("tcp", addr)
	if errors.Is(err, syscall.ECONNRESET) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedSoon reports whether the server closes nc (after whatever it
// sends) within ioGuard; it reads and drops what comes. A nil nc was
// reset while dialling (see dialRefusable).
func closedSoon(nc net.Conn) bool {
	if nc == nil {
		return true
	}
	nc.SetReadDeadline(time.Now().Add(ioGuard))
	_, err := io.Copy(io.Discard, nc)
	var ne net.Error
	return err == nil || !(errors.As(err, &ne) && ne.Timeout())
}

// allClosedSoon is closedSoon of each of conns, waited for together.
func allClosedSoon(conns []net.Conn) []bool {
	ok := make([]bool, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() { ok[i] = closedSoon(c) })
	}
	wg.Wait()
	return ok
}
