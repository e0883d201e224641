package main

// The client commands run in-process (newRootCmd with arguments, output
// captured) against a real node started by the test.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/parleyhq/parley/account"
	"github.com/parleyhq/parley/client"
	"github.com/parleyhq/parley/internal/nodetest"
	"github.com/parleyhq/parley/node"
)

// guard bounds every command; a failure guard, never a measurement.
const guard = 20 * time.Second

// quiet is the --timeout of a recv that is meant to time out, nothing
// being due. It must outlast the login, which under -race on a loaded
// machine took longer than the 100-200 ms these once used: recv then
// failed to log in instead of timing out.
const quiet = "2s"

const (
	alicePhone = "+14155550101"
	bobPhone   = "+14155550102"
)

type cliEnv struct {
	n  *node.Node
	gw *nodetest.Codes
}

func startNode(t *testing.T) *cliEnv {
	t.Helper()
	tn := nodetest.Start(t, func(c *node.Config) { c.Log = slog.New(slog.DiscardHandler) })
	return &cliEnv{n: tn.Node, gw: tn.Codes}
}

// result is what one command run produced.
type result struct {
	stdout, stderr string
	err            error
}

// parley runs the CLI with args and stdin.
func parley(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	root := newRootCmd()
	var out, errb bytes.Buffer
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetIn(strings.NewReader(stdin))
	err := root.ExecuteContext(ctx)
	return result{out.String(), errb.String(), err}
}

func (r result) must(t *testing.T) result {
	t.Helper()
	if r.err != nil {
		t.Fatalf("command failed: %v\nstdout:\n%s\nstderr:\n%s", r.err, r.stdout, r.stderr)
	}
	return r
}

// jsonLines decodes every line of out.
func jsonLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var objs []map[string]any
	dec := json.NewDecoder(strings.NewReader(out))
	dec.UseNumber() // ids are 64-bit: keep every digit
	for {
		var m map[string]any
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			return objs
		} else if err != nil {
			t.Fatalf("output is not JSON lines: %v\n%s", err, out)
		}
		objs = append(objs, m)
	}
}

// register registers phone with the CLI into a new profile directory.
func (e *cliEnv) register(t *testing.T, phone string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), strings.TrimPrefix(phone, "+"))
	url := e.n.HTTPURL()
	r := parley(t, "", "register", "--server", url, "--phone", phone, "--json").must(t)
	if got := jsonLines(t, r.stdout); len(got) != 1 || got[0]["status"] != "code_sent" || got[0]["phone"] != phone {
		t.Fatalf("register (request) printed %v", got)
	}
	r = parley(t, "", "register", "--server", url, "--phone", phone, "--code", e.gw.Code(t, phone), "--profile", dir, "--json").must(t)
	got := jsonLines(t, r.stdout)
	if len(got) != 1 || got[0]["status"] != "registered" || got[0]["phone"] != phone || got[0]["profile"] != dir {
		t.Fatalf("register (verify) printed %v", got)
	}
	p, err := client.LoadProfile(dir)
	if err != nil {
		t.Fatal(err)
	}
	if p.Phone != phone || p.NativeAddr != e.n.NativeAddr() || !slices.Equal(p.NativeAddrs, []string{e.n.NativeAddr()}) || !bytes.Equal(p.ServerKey, e.n.PublicKey()) {
		t.Fatalf("profile = %+v", p)
	}
	return dir
}

func TestRegisterSendRecv(t *testing.T) {
	e := startNode(t)
	aliceDir, bobDir := e.register(t, alicePhone), e.register(t, bobPhone)

	// Bob listens while Alice sends and waits for the delivered receipt.
	recv := make(chan result, 1)
	go func() {
		recv <- parley(t, "", "recv", "--profile", bobDir, "--count", "1", "--json", "--timeout", "15s")
	}()
	sent := parley(t, "", "send", "--profile", aliceDir, "--to", bobPhone, "--wait", "delivered", "--json", "hello", "bob").must(t)
	s := jsonLines(t, sent.stdout)
	if len(s) != 1 || s[0]["status"] != "delivered" || s[0]["to"] != bobPhone || s[0]["id"] == nil || s[0]["server_id"] == nil || s[0]["ts"] == nil {
		t.Fatalf("send printed %v", s)
	}
	r := (<-recv).must(t)
	got := jsonLines(t, r.stdout)
	if len(got) != 1 {
		t.Fatalf("recv printed %d lines, want 1:\n%s", len(got), r.stdout)
	}
	m := got[0]
	if m["type"] != "message" || m["from"] != alicePhone || m["text"] != "hello bob" ||
		m["id"] != s[0]["id"] || m["server_id"] != s[0]["server_id"] || m["ts"] != s[0]["ts"] {
		t.Fatalf("recv printed %v; send printed %v", m, s[0])
	}

	// send --wait delivered acknowledged nothing: the receipt it saw is
	// still queued for Alice's recv.
	r = parley(t, "", "recv", "--profile", aliceDir, "--count", "1", "--json", "--timeout", "15s").must(t)
	got = jsonLines(t, r.stdout)
	if len(got) != 1 || got[0]["type"] != "receipt" || got[0]["kind"] != "delivered" || got[0]["from"] != bobPhone ||
		got[0]["id"] != s[0]["id"] || got[0]["server_id"] != s[0]["server_id"] {
		t.Fatalf("alice's recv printed %v, want the delivered receipt of %v", got, s[0])
	}

	// Plain send, then a recv with --read: alice gets delivered and read.
	sent = parley(t, "", "send", "--profile", aliceDir, "--to", bobPhone, "--json", "second").must(t)
	s = jsonLines(t, sent.stdout)
	if s[0]["status"] != "sent" {
		t.Fatalf("send printed %v", s)
	}
	r = parley(t, "", "recv", "--profile", bobDir, "--count", "1", "--read").must(t)
	if !strings.Contains(r.stdout, alicePhone+": second") {
		t.Fatalf("recv printed %q", r.stdout)
	}
	r = parley(t, "", "recv", "--profile", aliceDir, "--count", "2", "--json", "--timeout", "15s").must(t)
	got = jsonLines(t, r.stdout)
	if len(got) != 2 || got[0]["kind"] != "delivered" || got[1]["kind"] != "read" || got[1]["id"] != s[0]["id"] {
		t.Fatalf("alice's recv printed %v, want delivered then read of %v", got, s[0]["id"])
	}
}

// --addr replaces the profile's addresses: a list goes past one that
// refuses, and one that refuses alone is what the error names.
func TestAddrFlag(t *testing.T) {
	e := startNode(t)
	aliceDir := e.register(t, alicePhone)
	e.register(t, bobPhone)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()

	parley(t, "", "send", "--profile", aliceDir, "--addr", closed+","+e.n.NativeAddr(), "--to", bobPhone, "hi").must(t)
	r := parley(t, "", "send", "--profile", aliceDir, "--addr", closed, "--to", bobPhone, "hi")
	if r.err == nil || !strings.Contains(r.err.Error(), closed) {
		t.Fatalf("send --addr %s (nothing listens): %v, want an error naming it", closed, r.err)
	}
}

func TestChat(t *testing.T) {
	e := startNode(t)
	aliceDir, bobDir := e.register(t, alicePhone), e.register(t, bobPhone)

	r := parley(t, "hi via chat\n\nsecond line\n/quit\nnot sent\n", "chat", "--profile", aliceDir, "--to", bobPhone).must(t)
	for _, want := range []string{`✓ sent: "hi via chat"`, `✓ sent: "second line"`} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("chat output lacks %q:\n%s", want, r.stdout)
		}
	}
	r = parley(t, "", "recv", "--profile", bobDir, "--count", "2", "--json", "--timeout", "15s").must(t)
	got := jsonLines(t, r.stdout)
	if len(got) != 2 || got[0]["text"] != "hi via chat" || got[1]["text"] != "second line" {
		t.Fatalf("bob received %v", got)
	}

	// Bob answers in a chat. Alice's queue then holds his message and the
	// delivered receipts of her two lines (in receipts of one or more ids).
	parley(t, "got it\n", "chat", "--profile", bobDir, "--to", alicePhone).must(t)
	var sawReply bool
	delivered := map[string]bool{}
	for i := 0; i < 5 && !(sawReply && len(delivered) == 2); i++ {
		r := parley(t, "", "recv", "--profile", aliceDir, "--count", "1", "--json", "--timeout", "15s").must(t)
		for _, obj := range jsonLines(t, r.stdout) {
			switch {
			case obj["type"] == "message" && obj["from"] == bobPhone && obj["text"] == "got it":
				sawReply = true
			case obj["type"] == "receipt" && obj["kind"] == "delivered" && obj["from"] == bobPhone:
				delivered[string(obj["id"].(json.Number))] = true
			default:
				t.Fatalf("unexpected item %v", obj)
			}
		}
	}
	if !sawReply || len(delivered) != 2 {
		t.Fatalf("alice got reply=%v and delivered receipts for %v, want the reply and 2 receipts", sawReply, delivered)
	}
}

func TestClientCommandErrors(t *testing.T) {
	e := startNode(t)
	aliceDir := e.register(t, alicePhone)
	empty := t.TempDir()

	tests := []struct {
		name string
		args []string
		want string // part of the error that says what to do
		code int    // exit status, when not 1
	}{
		{"send without profile", []string{"send", "--profile", empty, "--to", bobPhone, "hi"}, "register this device first", 0},
		{"send without text", []string{"send", "--profile", aliceDir, "--to", bobPhone}, "give the text", 0},
		{"send to a bad number", []string{"send", "--profile", aliceDir, "--to", "12", "hi"}, "--to", 0},
		{"send to nobody", []string{"send", "--profile", aliceDir, "--to", "+14155550109", "hi"}, "UNKNOWN_RECIPIENT", 0},
		{"bad --addr", []string{"send", "--profile", aliceDir, "--addr", "127.0.0.1", "--to", bobPhone, "hi"}, "HOST:PORT[,HOST:PORT...]", 0},
		{"bad --wait", []string{"send", "--profile", aliceDir, "--to", bobPhone, "--wait", "read", "hi"}, "want sent or delivered", 0},
		{"recv timeout before count", []string{"recv", "--profile", aliceDir, "--count", "1", "--timeout", quiet}, "timed out after", exitTimeout},
		{"register wrong code", []string{"register", "--server", e.n.HTTPURL(), "--phone", bobPhone, "--code", "000000", "--profile", t.TempDir()}, "request a code first", 0},
		{"register without phone", []string{"register", "--server", e.n.HTTPURL()}, "--phone is required", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := parley(t, "", tt.args...)
			if r.err == nil {
				t.Fatalf("succeeded:\n%s", r.stdout)
			}
			if !strings.Contains(r.err.Error(), tt.want) {
				t.Errorf("error %q does not say %q", r.err, tt.want)
			}
			var ec exitCoder
			if tt.code != 0 && (!errors.As(r.err, &ec) || ec.ExitCode() != tt.code) {
				t.Errorf("error %v: want exit status %d", r.err, tt.code)
			}
		})
	}

	// recv with only --timeout ends normally.
	parley(t, "", "recv", "--profile", aliceDir, "--timeout", quiet).must(t)
}

// TestRegisterErrorsSayItOnce: what register prints for the server's
// refusals gives each hint once (it used to print "wait 59m59s and try
// again (try again in 59m59s)" and two example numbers).
func TestRegisterErrorsSayItOnce(t *testing.T) {
	tn := nodetest.Start(t, func(c *node.Config) {
		c.Log = slog.New(slog.DiscardHandler)
		c.PerNumber = account.RateLimit{Max: 1, Window: time.Hour}
	})
	url := tn.HTTPURL()
	parley(t, "", "register", "--server", url, "--phone", alicePhone).must(t)

	r := parley(t, "", "register", "--server", url, "--phone", alicePhone)
	if r.err == nil || !strings.Contains(r.err.Error(), "rate_limited") || strings.Count(r.err.Error(), "try again") != 1 {
		t.Errorf("second code request: %v; want rate_limited saying once when to try again", r.err)
	}
	r = parley(t, "", "register", "--server", url, "--phone", "4155550101")
	if r.err == nil || !strings.Contains(r.err.Error(), "invalid_phone") || strings.Count(r.err.Error(), "e.g.") != 1 {
		t.Errorf("number without country code: %v; want invalid_phone with one example", r.err)
	}
	r = parley(t, "", "register", "--server", url, "--phone", "+4915123456789x")
	if r.err == nil || !strings.Contains(r.err.Error(), "contains 'x'") {
		t.Errorf("number with a typo: %v; want it refused, naming the x", r.err)
	}
}
