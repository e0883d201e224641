package bench

// The modes against a real node started in the test (real TCP on loopback,
// a real Pebble directory), run small. These tests check correctness only:
// counts add up, nothing is lost, the JSON carries its fields. Speed is for
// `parley bench`, never for a test.

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parleyhq/parley/node"
)

func startNode(t *testing.T) Config {
	t.Helper()
	n, err := node.Start(context.Background(), node.Config{
		DataDir: t.TempDir(),
		Listen:  "127.0.0.1:0",
		HTTP:    "127.0.0.1:0",
		Admin:   "127.0.0.1:0",
		Log:     slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return Config{
		Addr:   n.NativeAddr(),
		Admin:  n.AdminURL(),
		Server: n.HTTPURL(),
		State:  filepath.Join(t.TempDir(), "state.json"),
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// jsonKeys checks that v's JSON has every key in keys (dotted for nested).
func jsonKeys(t *testing.T, v any, keys ...string) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		cur := m
		parts := strings.Split(k, ".")
		for i, p := range parts {
			x, ok := cur[p]
			if !ok {
				t.Errorf("JSON has no %q: %s", k, b)
				break
			}
			if i < len(parts)-1 {
				if cur, ok = x.(map[string]any); !ok {
					t.Errorf("JSON %q is not an object: %s", k, b)
					break
				}
			}
		}
	}
	// The table renders too.
	var tb bytes.Buffer
	if err := WriteTable(&tb, v.(Result)); err != nil || tb.Len() == 0 {
		t.Errorf("table: %v, %q", err, tb.String())
	}
}

func TestModes(t *testing.T) {
	cfg := startNode(t)
	ctx := testCtx(t)

	setupCfg := cfg
	setupCfg.Users, setupCfg.Chunk = 50, 20 // three chunks
	sr, err := Setup(ctx, setupCfg, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if sr.Users != 50 || sr.Created != 50 {
		t.Fatalf("setup: %+v, want 50 users created", sr)
	}
	jsonKeys(t, sr, "users", "created", "accounts_per_s", "state")

	t.Run("setup keeps the keys", func(t *testing.T) {
		st1, err := loadState(cfg.State)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Setup(ctx, setupCfg, io.Discard); err != nil {
			t.Fatal(err)
		}
		st2, err := loadState(cfg.State)
		if err != nil {
			t.Fatal(err)
		}
		if st1.Seed != st2.Seed {
			t.Error("a second setup changed the seed: earlier users would lose their keys")
		}
	})

	t.Run("idle", func(t *testing.T) {
		c := cfg
		c.Conns, c.Hold, c.Warm = 21, 100*time.Millisecond, true // odd: the last one talks to itself
		r, err := Idle(ctx, c, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if r.Errors != 0 || r.Connected != 21 || r.Exchanged != 21 {
			t.Fatalf("idle: %+v", r)
		}
		if r.LoginsResumed != 21 {
			t.Errorf("%d of 21 logins after the warm-up resumed with its ticket, want all", r.LoginsResumed)
		}
		if r.LoginsPerS <= 0 {
			t.Errorf("logins_per_s = %v", r.LoginsPerS)
		}
		jsonKeys(t, r, "user_bytes_per_conn", "kernel_bytes_per_conn", "logins_per_server_cpu_s", "logins_per_s", "kernel_method")
	})

	t.Run("idle in two processes", func(t *testing.T) {
		var wg sync.WaitGroup
		res := make([]*IdleResult, 2)
		errs := make([]error, 2)
		for i := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := cfg
				c.Conns, c.Offset, c.Total, c.Hold = 10, 10*i, 20, 100*time.Millisecond
				res[i], errs[i] = Idle(ctx, c, io.Discard)
			}()
		}
		wg.Wait()
		for i, r := range res {
			if errs[i] != nil {
				t.Fatal(errs[i])
			}
			if r.Errors != 0 || r.Exchanged != 10 || r.ServerSessions < 20 {
				t.Errorf("process %d: %+v", i, r)
			}
		}
	})

	t.Run("pairs", func(t *testing.T) {
		c := cfg
		c.Pairs, c.Window, c.Msgs = 4, 2, 200
		r, err := Pairs(ctx, c, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if r.Errors != 0 || r.Lost != 0 {
			t.Fatalf("pairs: errors %d %v, lost %d", r.Errors, r.ErrorSamples, r.Lost)
		}
		if r.Sent != 800 || r.Delivered != 800 || r.Received != 800 {
			t.Fatalf("pairs: sent %d delivered %d received %d, want 800 each", r.Sent, r.Delivered, r.Received)
		}
		if r.MsgsPerS <= 0 || r.Latency.Max <= 0 || r.Latency.P50 > r.Latency.P99 {
			t.Errorf("figures: %+v", r)
		}
		jsonKeys(t, r, "msgs_per_s", "latency_ms.p50", "latency_ms.p90", "latency_ms.p99", "latency_ms.p999", "latency_ms.max",
			"server_cpu_us_per_msg", "errors", "lost")
	})

	t.Run("pairs paced", func(t *testing.T) {
		c := cfg
		c.Offset, c.Pairs, c.Window, c.Msgs, c.Rate = 10, 3, 4, 40, 3000
		r, err := Pairs(ctx, c, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if r.Errors != 0 || r.Lost != 0 || r.Delivered != 120 || r.Received != 120 {
			t.Fatalf("pairs: %+v", r)
		}
	})

	t.Run("pairs until duration", func(t *testing.T) {
		c := cfg
		c.Offset, c.Pairs, c.Window, c.Duration = 20, 2, 8, 300*time.Millisecond
		r, err := Pairs(ctx, c, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if r.Errors != 0 || r.Lost != 0 || r.Delivered == 0 || r.Delivered != r.Sent || r.Received != r.Sent {
			t.Fatalf("pairs: %+v", r)
		}
	})

	t.Run("storm", func(t *testing.T) {
		c := cfg
		c.Conns = 20
		r, err := Storm(ctx, c, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if r.Errors != 0 || r.Connected != 20 || r.Reconnected != 20 || r.Seconds <= 0 {
			t.Fatalf("storm: %+v", r)
		}
		if r.Resumed != 20 {
			t.Errorf("%d of 20 reconnects resumed with a ticket, want all", r.Resumed)
		}
		jsonKeys(t, r, "seconds", "logins_per_s", "reconnected", "resumed")
	})

	t.Run("storm with full handshakes", func(t *testing.T) {
		c := cfg
		c.Conns, c.FullHandshake = 20, true
		r, err := Storm(ctx, c, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if r.Errors != 0 || r.Reconnected != 20 || r.Resumed != 0 {
			t.Fatalf("storm --full-handshake: %+v", r)
		}
	})

	t.Run("drain", func(t *testing.T) {
		c := cfg
		c.Offset, c.Msgs = 30, 500
		// Leave something in the receiver's queue, as an aborted run would:
		// the drain must clear it first and not count it.
		leftover(t, ctx, c, 32, 31, 3)
		r, err := Drain(ctx, c, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if r.Errors != 0 || r.Lost != 0 || r.Queued != 500 || r.Received != 500 {
			t.Fatalf("drain: %+v", r)
		}
		if r.Stale != 3 {
			t.Errorf("stale = %d, want the 3 leftovers and nothing else", r.Stale)
		}
		jsonKeys(t, r, "msgs_per_s", "queue_msgs_per_s", "lost", "errors")
	})

	t.Run("not enough users", func(t *testing.T) {
		c := cfg
		c.Conns, c.Offset = 20, 40
		_, err := Idle(ctx, c, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "bench setup --users 60") {
			t.Fatalf("err = %v, want a hint to set up 60 users", err)
		}
	})
}

// leftover queues n messages from user `from` to user `to`.
func leftover(t *testing.T, ctx context.Context, cfg Config, from, to, n int) {
	t.Helper()
	cfg.setDefaults()
	e, err := open(ctx, cfg, "leftover", 0)
	if err != nil {
		t.Fatal(err)
	}
	us, err := e.st.users(0, max(from, to)+1)
	if err != nil {
		t.Fatal(err)
	}
	c, err := e.d.dial(ctx, us[from], hello{}, 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	var progress atomic.Int64
	q2, err := queueMessages(c, 1, us[to].phone, n, []byte("old"), time.Now().Add(10*time.Second), &progress, new(tally))
	if err != nil || q2.acked != int64(n) {
		t.Fatalf("queue leftovers: %+v, %v", q2, err)
	}
}

func TestErrorsSayWhatToDo(t *testing.T) {
	ctx := testCtx(t)
	dir := t.TempDir()
	cfg := Config{Addr: "127.0.0.1:1", Admin: "http://127.0.0.1:1", Server: "http://127.0.0.1:1", State: filepath.Join(dir, "s.json")}
	if _, err := Setup(ctx, Config{Users: 5, Server: cfg.Server, Admin: cfg.Admin, State: cfg.State}, nil); err == nil || !strings.Contains(err.Error(), "--server") {
		t.Errorf("setup with no server: %v", err)
	}
	if _, err := Pairs(ctx, Config{Pairs: 1, Admin: cfg.Admin, State: cfg.State}, nil); err == nil || !strings.Contains(err.Error(), "bench setup") {
		t.Errorf("pairs with no state: %v", err)
	}
	// A state, but no admin listener.
	st := &State{Users: 10, serverKey: make([]byte, 32), seed: make([]byte, 32)}
	if err := st.save(cfg.State); err != nil {
		t.Fatal(err)
	}
	if _, err := Idle(ctx, Config{Conns: 2, Admin: cfg.Admin, State: cfg.State}, nil); err == nil || !strings.Contains(err.Error(), "--admin") {
		t.Errorf("idle with no admin listener: %v", err)
	}
	if err := checkFiles(MaxFiles+1, 0, "idle --conns 20001"); err == nil || !strings.Contains(err.Error(), "--offset") {
		t.Errorf("checkFiles over the limit: %v", err)
	}
}

func TestAutoSources(t *testing.T) {
	if got := autoSources("127.0.0.1:5222", 100); got != nil {
		t.Errorf("100 connections: %v, want none", got)
	}
	if got := autoSources("10.0.0.1:5222", 19000); got != nil {
		t.Errorf("not loopback: %v, want none", got)
	}
	if runtime.GOOS == "linux" {
		got := autoSources("127.0.0.1:5222", 19000)
		if len(got) != 10 || got[0].String() != "127.0.0.2" || got[9].String() != "127.0.0.11" {
			t.Errorf("19,000 connections: %v, want 127.0.0.2..127.0.0.11", got)
		}
	}
}

func TestParseSources(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		fail bool
	}{
		{"", 0, false},
		{"127.0.0.2", 1, false},
		{"127.0.0.2-127.0.0.20", 19, false},
		{"127.0.0.2-127.0.0.3, 127.0.0.9", 3, false},
		{"127.0.0.3-127.0.0.2", 0, true},
		{"nope", 0, true},
	} {
		got, err := ParseSources(tc.in)
		if (err != nil) != tc.fail || len(got) != tc.n {
			t.Errorf("ParseSources(%q) = %v, %v; want %d addresses, fail=%v", tc.in, got, err, tc.n, tc.fail)
		}
	}
}
