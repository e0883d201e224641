// Package nodetest starts real Parley nodes for the tests of other
// packages: loopback listeners on free ports, a fresh data directory, and
// an SMS gateway that hands the codes to the test.
package nodetest

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/parleyhq/parley/account"
	"github.com/parleyhq/parley/client"
	"github.com/parleyhq/parley/node"
)

// Codes is an SMS gateway that keeps the last code sent to each number.
type Codes struct {
	mu    sync.Mutex
	codes map[string]string
}

// Send implements account.Gateway.
func (c *Codes) Send(_ context.Context, phone, code string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.codes == nil {
		c.codes = make(map[string]string)
	}
	c.codes[phone] = code
	return nil
}

// Code returns the last code sent to phone, failing the test if none was.
func (c *Codes) Code(t testing.TB, phone string) string {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	code, ok := c.codes[phone]
	if !ok {
		t.Fatalf("no code was sent to %s", phone)
	}
	return code
}

// Node is a running node and what a test needs to talk to it.
type Node struct {
	*node.Node
	Codes   *Codes
	DataDir string
}

// Start runs a node until the test ends. edit, if given, adjusts the
// configuration before the start.
func Start(t testing.TB, edit ...func(*node.Config)) *Node {
	t.Helper()
	codes := &Codes{}
	cfg := node.Config{
		DataDir: t.TempDir(),
		Listen:  "127.0.0.1:0", HTTP: "127.0.0.1:0", Admin: "127.0.0.1:0",
		SMS: codes, Log: Log(t, slog.LevelWarn),
		// Tests re-register numbers: keep the per-number gap out of the way.
		PerNumber: account.RateLimit{Max: 100, Window: time.Minute},
	}
	for _, f := range edit {
		f(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n, err := node.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return &Node{Node: n, Codes: codes, DataDir: cfg.DataDir}
}

// Log returns a logger that writes records at level and above to the
// test's log until the test ends (a server goroutine logging after that
// must not touch t).
func Log(t testing.TB, level slog.Level) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(func() { // registered first, so it runs after later cleanups
		w.mu.Lock()
		w.over = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

type testWriter struct {
	mu   sync.Mutex
	t    testing.TB
	over bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.over {
		w.t.Logf("%s", p)
	}
	return len(p), nil
}

// LiveClients counts the clients of cs (nil ones skipped) whose
// connection has not ended: how many sessions a race of logins left.
func LiveClients(cs []*client.Client) int {
	live := 0
	for _, c := range cs {
		if c == nil {
			continue
		}
		select {
		case <-c.Done():
		default:
			live++
		}
	}
	return live
}
