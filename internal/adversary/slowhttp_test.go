package adversary

import (
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/parleyhq/parley/node"
)

// Slow HTTP against the public listener: connections that hold an
// address's share, request bodies that never finish arriving, headers
// that trickle in, keep-alives left idle. The share is enforced at accept
// (parley_limit_hits_total{limit="http_conns_per_addr"}); everything else
// is cut off by the timeouts; a normal user registers meanwhile.
func TestSlowHTTP(t *testing.T) {
	const perAddr = 4
	e := start(t, node.Limits{
		HTTPConnsPerAddr:      perAddr,
		HTTPReadHeaderTimeout: 3 * time.Second,
		HTTPRequestTimeout:    time.Second,
		HTTPIdleTimeout:       time.Second,
		HTTPReadTimeout:       3 * time.Second,
	})
	host := strings.TrimPrefix(e.HTTPURL(), "http://")
	dial := func(ip string) net.Conn {
		t.Helper()
		c, err := from(ip).Dial("tcp", host)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	write := func(c net.Conn, s string) {
		t.Helper()
		c.SetWriteDeadline(time.Now().Add(ioGuard))
		if _, err := io.WriteString(c, s); err != nil {
			t.Fatal(err)
		}
	}
	hitsBefore := e.metric(t, limitHits("http_conns_per_addr"))

	// One address's share held by connections that say nothing; the
	// next ones are closed at accept, unanswered.
	var held, extra []net.Conn
	for range perAddr {
		held = append(held, dial("127.0.0.2"))
	}
	for range perAddr {
		extra = append(extra, dial("127.0.0.2"))
	}
	// Bodies that never finish: 4000 bytes declared, one sent.
	var slowBodies []net.Conn
	for range perAddr {
		c := dial("127.0.0.3")
		write(c, "POST /v1/register/request HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n{")
		slowBodies = append(slowBodies, c)
	}
	// Headers that trickle in, a byte at a time, and never end.
	var slowHeaders []net.Conn
	stop := make(chan struct{})
	trickled := make(chan struct{})
	for range perAddr {
		c := dial("127.0.0.4")
		write(c, "GET /v1/server HTTP/1.1\r\nHost: x\r\n")
		slowHeaders = append(slowHeaders, c)
	}
	go func() {
		defer close(trickled)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for range int(ioGuard / (100 * time.Millisecond)) {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			for _, c := range slowHeaders {
				c.SetWriteDeadline(time.Now().Add(time.Second))
				c.Write([]byte("X"))
			}
		}
	}()
	// Keep-alives left idle after one request.
	var idle []net.Conn
	for range perAddr {
		c := dial("127.0.0.5")
		write(c, "GET /v1/server HTTP/1.1\r\nHost: x\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(ioGuard))
		b := make([]byte, 12)
		if _, err := io.ReadFull(c, b); err != nil || string(b) != "HTTP/1.1 200" {
			t.Fatalf("keep-alive's first request: %q, %v", b, err)
		}
		idle = append(idle, c)
	}

	e.checkServes(t) // meanwhile, from 127.0.0.1

	for i, c := range extra {
		c.SetReadDeadline(time.Now().Add(ioGuard))
		if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
			t.Errorf("connection %d over the address's share: read %q, %v; want it closed at once", perAddr+i+1, b, err)
		}
	}
	if got := e.metric(t, limitHits("http_conns_per_addr")) - hitsBefore; got != perAddr {
		t.Errorf("http_conns_per_addr hits: %v, want %d", got, perAddr)
	}
	for what, conns := range map[string][]net.Conn{
		"a silent connection":        held,
		"a body that never finishes": slowBodies,
		"headers that never end":     slowHeaders,
		"an idle keep-alive":         idle,
	} {
		for i, ok := range allClosedSoon(conns) {
			if !ok {
				t.Errorf("%s (%d of %d) was not cut off", what, i+1, len(conns))
			}
		}
	}
	close(stop)
	<-trickled
}

// The admin listener has the same timeouts: a request whose headers never
// end is cut off, and the listener still answers.
func TestSlowAdminHeaders(t *testing.T) {
	e := start(t, node.Limits{HTTPReadHeaderTimeout: time.Second, HTTPReadTimeout: 2 * time.Second})
	host := strings.TrimPrefix(e.AdminURL(), "http://")
	var conns []net.Conn
	for range 8 {
		c, err := net.DialTimeout("tcp", host, ioGuard)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
		conns = append(conns, c)
	}
	// A bulk body that never finishes is cut off by the read timeout.
	c, err := net.DialTimeout("tcp", host, ioGuard)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /admin/accounts/bulk HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"accounts\":[")
	conns = append(conns, c)
	e.metric(t, limitHits("max_conns_per_addr")) // the listener answers meanwhile
	for i, ok := range allClosedSoon(conns) {
		if !ok {
			t.Errorf("slow admin request %d was not cut off", i+1)
		}
	}
	e.checkServes(t)
}
