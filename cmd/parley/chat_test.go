package main

import (
	"bytes"
	"context"
	"io"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parleyhq/parley/wire"
)

func TestMessageLines(t *testing.T) {
	ts := time.Date(2026, 3, 1, 14, 3, 27, 0, time.Local).UnixNano()
	tests := []struct {
		name string
		m    *wire.Message
		want []string
	}{
		{"text", &wire.Message{From: bobPhone, Ts: ts, Body: []byte("hi")},
			[]string{"[14:03:27] +14155550102: hi"}},
		{"empty", &wire.Message{From: bobPhone, Ts: ts},
			[]string{"[14:03:27] +14155550102: "}},
		{"media and caption text", &wire.Message{From: bobPhone, Ts: ts, Body: []byte("look"),
			Media: &wire.Media{Mime: "image/jpeg", Size: 2048, Url: "https://x/v1/media/1"}},
			[]string{"[14:03:27] +14155550102: [image/jpeg 2 KiB] — https://x/v1/media/1", "[14:03:27] +14155550102: look"}},
		// A second line cannot pose as one of mine: it is indented.
		{"multi-line", &wire.Message{From: bobPhone, Ts: ts, Body: []byte("a\n[14:03:28] you ✓ sent: \"x\"")},
			[]string{"[14:03:27] +14155550102: a", `                         [14:03:28] you ✓ sent: "x"`}},
		{"terminal escape", &wire.Message{From: bobPhone, Ts: ts, Body: []byte("\x1b[2Khi")},
			[]string{`[14:03:27] +14155550102: "\x1b[2Khi"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := messageLines(tt.m)
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Fatalf("messageLines =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

// watchedBuffer is an output that a test can wait on.
type watchedBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changed chan struct{} // closed and replaced on every write
}

func newWatchedBuffer() *watchedBuffer { return &watchedBuffer{changed: make(chan struct{})} }

func (w *watchedBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	close(w.changed)
	w.changed = make(chan struct{})
	return w.b.Write(p)
}

func (w *watchedBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// waitFor waits until the output has a line matching re.
func (w *watchedBuffer) waitFor(ctx context.Context, t *testing.T, re *regexp.Regexp) {
	t.Helper()
	for {
		w.mu.Lock()
		out, changed := w.b.String(), w.changed
		w.mu.Unlock()
		if re.MatchString(out) {
			return
		}
		select {
		case <-changed:
		case <-ctx.Done():
			t.Fatalf("no line matching %s in:\n%s", re, out)
		}
	}
}

// TestChatShowsWhoAndWhen: in a chat, the other side's lines carry the time
// and their number, and mine say "you", so neither passes for the other.
func TestChatShowsWhoAndWhen(t *testing.T) {
	e := startNode(t)
	aliceDir, bobDir := e.register(t, alicePhone), e.register(t, bobPhone)
	parley(t, "", "send", "--profile", aliceDir, "--to", bobPhone, "hi bob").must(t)

	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	in, typing := io.Pipe()
	out := newWatchedBuffer()
	root := newRootCmd()
	root.SetArgs([]string{"chat", "--profile", bobDir, "--to", alicePhone})
	root.SetIn(in)
	root.SetOut(out)
	root.SetErr(io.Discard)
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()

	out.waitFor(ctx, t, regexp.MustCompile(`(?m)^\[\d\d:\d\d:\d\d\] \+14155550101: hi bob$`))
	if _, err := io.WriteString(typing, "hello alice\n"); err != nil {
		t.Fatal(err)
	}
	out.waitFor(ctx, t, regexp.MustCompile(`(?m)^\[\d\d:\d\d:\d\d\] you ✓ sent: "hello alice"$`))
	typing.Close()
	if err := <-done; err != nil {
		t.Fatalf("chat: %v\n%s", err, out)
	}
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if !regexp.MustCompile(`^\[\d\d:\d\d:\d\d\] (\+14155550101:|you )`).MatchString(l) {
			t.Errorf("line %q says neither who nor when", l)
		}
	}
}
