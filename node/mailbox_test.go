package node

import (
	"log/slog"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/parleyhq/parley/monitor"
	"github.com/parleyhq/parley/wire"
)

// A session's mailbox is bounded in events and in bytes: the event that
// would pass either bound becomes a kick that cuts the client off, and
// nothing more is held after it.
func TestMailboxIsBoundedInEventsAndBytes(t *testing.T) {
	for _, tc := range []struct {
		name          string
		events, bytes int
		frameSize     int32
		wantHeld      int // frames held before the kick
	}{
		{"events", 8, 1 << 20, 10, 8},
		{"bytes", 1000, 100_000, 30_000, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := &Node{log: slog.New(slog.DiscardHandler), mx: monitor.NewMetrics(prometheus.NewRegistry())}
			n.cfg.Limits = Limits{MaxMailbox: tc.events, MaxMailboxBytes: tc.bytes}.withDefaults()
			p := &pool{n: n}
			c := &conn{}
			c.scheduled = true // no worker runs it: the mailbox only fills
			for range 2 * tc.wantHeld {
				c.post(p, event{kind: evFrame, size: tc.frameSize})
			}
			evs := c.mbox.evs
			if len(evs) != tc.wantHeld+1 {
				t.Fatalf("mailbox holds %d events, want %d frames and the kick", len(evs), tc.wantHeld)
			}
			last := evs[len(evs)-1]
			if last.kind != evKick || last.code != wire.Error_BAD_REQUEST || last.text != mailboxFullText {
				t.Errorf("last event %+v, want the mailbox-full kick", last)
			}
			if c.mbox.bytes > tc.bytes {
				t.Errorf("mailbox holds %d bytes of frames, over the bound of %d", c.mbox.bytes, tc.bytes)
			}
		})
	}
}
