// Package top is `parley top`: a live terminal view of one node, like
// Erlang's etop — node totals at the top, sessions sorted by mailbox length
// (or message rates, or offline queue) below, redrawn every second — read
// from the node's admin listener. Given the admin listeners of several
// nodes of a cluster, it merges their readings, each session naming its
// node.
package top

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"strings"
	"time"

	"github.com/parleyhq/parley/monitor"
)

// Options are `parley top`'s flags.
type Options struct {
	// Sort orders the sessions. Default monitor.SortMailbox.
	Sort monitor.SortKey
	// Limit is how many sessions to show. Default: as many as fit the
	// terminal, or 50 when not drawing on one.
	Limit int
	// Interval is the time between refreshes. Default 1s.
	Interval time.Duration
	// Once prints one reading and exits.
	Once bool
	// JSON prints readings as JSON objects (Snapshot:
	// {"totals":...,"sessions":[...],"total":N}, and "cluster" on a node of
	// one), one per line.
	JSON bool
}

// batchLimit is the default number of sessions when not on a terminal.
const batchLimit = 50

// Keys are the live view's keys.
const Keys = "m: sort by mailbox  i: by msgs/s in  o: by msgs/s out  q: by offline queue  x or Ctrl-C: quit"

// KeysNeedEnter says whether keys wait for Enter on this platform (no raw
// terminal mode).
const KeysNeedEnter = !rawKeys

// Run shows the nodes behind c: a live view when out is a terminal, else
// one reading (Once) or one per interval, as text or JSON. Keys are read
// from in. It returns when ctx ends, on the quit key, or on a fetch error
// before the first reading.
func Run(ctx context.Context, c *Client, o Options, in io.Reader, out io.Writer) error {
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	if o.Sort == "" {
		o.Sort = monitor.SortMailbox
	}
	outFd, tty := terminal(out)
	if o.Once || o.JSON || !tty {
		return batch(ctx, c, o, out)
	}
	return live(ctx, c, o, in, out, func() (int, int, bool) { return termSize(outFd) })
}

// batch prints readings for scripts and pipes: one and done with Once,
// else one per interval until ctx ends.
func batch(ctx context.Context, c *Client, o Options, out io.Writer) error {
	limit := o.Limit
	if limit <= 0 {
		limit = batchLimit
	}
	t := time.NewTicker(o.Interval)
	defer t.Stop()
	for {
		s, err := c.Fetch(ctx, o.Sort, limit)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if o.JSON {
			if err := json.NewEncoder(out).Encode(s); err != nil {
				return err
			}
		} else {
			Render(out, s, View{Admin: c.URL(), Sort: o.Sort})
		}
		if o.Once {
			return nil
		}
		if !o.JSON {
			io.WriteString(out, "\n")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// live redraws the view every interval and on every sort key.
func live(ctx context.Context, c *Client, o Options, in io.Reader, out io.Writer, size func() (int, int, bool)) error {
	// limit is how many rows fit under s's header (a node of a cluster
	// has a line more).
	limit := func(s Snapshot) int {
		if o.Limit > 0 {
			return o.Limit
		}
		if _, h, ok := size(); ok {
			return max(h-headerLines(s)-2, 1)
		}
		return batchLimit
	}
	// fetch asks for the rows that fitted under the last header, and cuts
	// them when this header is taller.
	fetch := func(last Snapshot) (Snapshot, error) {
		s, err := c.Fetch(ctx, o.Sort, limit(last))
		if n := limit(s); err == nil && len(s.Sessions) > n {
			s.Sessions = s.Sessions[:n]
		}
		return s, err
	}
	// Check the node answers before taking over the screen, so a wrong
	// --admin prints its error on the normal screen.
	snap, err := fetch(Snapshot{})
	if err != nil {
		return err
	}

	if inFd, ok := terminal(in); ok {
		if restore, err := rawInput(inFd); err == nil {
			defer restore()
		}
	}
	done := make(chan struct{})
	defer close(done)
	keys := make(chan byte)
	go readKeys(in, keys, done)

	io.WriteString(out, "\x1b[?1049h\x1b[?25l") // alternate screen, cursor hidden
	defer io.WriteString(out, "\x1b[?25h\x1b[?1049l")

	t := time.NewTicker(o.Interval)
	defer t.Stop()
	for {
		w, _, _ := size()
		var frame strings.Builder
		frame.WriteString("\x1b[H\x1b[2J") // home, clear screen
		Render(&frame, snap, View{Admin: c.URL(), Sort: o.Sort, Width: w, ANSI: true, Err: err, Keys: true})
		io.WriteString(out, frame.String())

		if quit := wait(ctx, keys, t.C, &o.Sort); quit {
			return nil
		}
		// On an error keep the last reading on screen, with the error
		// above it, and try again next interval.
		var s Snapshot
		if s, err = fetch(snap); err == nil {
			snap = s
		} else if ctx.Err() != nil {
			return nil
		}
	}
}

// wait returns at the next refresh: the interval's tick, or a key that
// changes the sort. It reports whether to quit instead.
func wait(ctx context.Context, keys <-chan byte, tick <-chan time.Time, sort *monitor.SortKey) (quit bool) {
	for {
		select {
		case <-ctx.Done():
			return true
		case <-tick:
			return false
		case k, ok := <-keys:
			if !ok {
				// Input closed (e.g. </dev/null): keep refreshing until
				// ctx ends.
				keys = nil
				continue
			}
			switch k {
			case 'x', 'X', 3, 4: // x, Ctrl-C, Ctrl-D
				return true
			case 'm', 'M':
				*sort = monitor.SortMailbox
			case 'i', 'I':
				*sort = monitor.SortInRate
			case 'o', 'O':
				*sort = monitor.SortOutRate
			case 'q', 'Q':
				*sort = monitor.SortQueued
			default:
				continue
			}
			return false
		}
	}
}

// readKeys passes on each byte read from in. A read cannot be interrupted,
// so when top quits this goroutine lingers in its read until the process
// exits; done keeps it from blocking on the channel meanwhile.
func readKeys(in io.Reader, keys chan<- byte, done <-chan struct{}) {
	defer close(keys)
	if in == nil {
		return
	}
	buf := make([]byte, 64)
	for {
		n, err := in.Read(buf)
		for _, b := range buf[:n] {
			select {
			case keys <- b:
			case <-done:
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// terminal reports whether f is a terminal, and its descriptor.
func terminal(f any) (int, bool) {
	file, ok := f.(*os.File)
	if !ok {
		return 0, false
	}
	fd := int(file.Fd())
	return fd, isTerminal(fd)
}
