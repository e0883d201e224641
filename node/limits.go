package node

import (
	"encoding/json"
	"fmt"
	"net/http"
	"runtime"
	"time"

	"github.com/parleyhq/parley/wire"
)

// Limits bounds everything the network can make a node hold or do. Each
// field's default is in DefaultLimits, the one place defaults live; a zero
// field means its default. GET /admin/limits answers the limits in force,
// as nats-server's /varz does, and parley_limit_hits_total{limit} counts
// what each one refused or cut off (an alert fires while any is hit).
//
// Sizes are for one server; a bigger machine raises the connection limits
// (each idle connection costs about 2 KiB of memory, kernel included).
type Limits struct {
	// MaxConnections bounds native connections in all; past it new ones
	// are closed at once. Default 1,000,000 (the process's open-file limit
	// is the other bound: raise it with ulimit -n).
	MaxConnections int
	// MaxConnsPerAddr bounds native connections from one IP address
	// (IPv6: one /64, which one subscriber holds).
	// Default 10,000: a carrier-grade NAT puts many users behind one
	// address, so this stops one host from taking the whole server, not
	// one user from having two devices.
	MaxConnsPerAddr int
	// MaxHandshakes bounds connections accepted and not yet logged in
	// (handshakes in flight, including logins waiting for their proof).
	// Default 10,000.
	MaxHandshakes int
	// AcceptRate and AcceptBurst pace new native connections: a token
	// bucket of AcceptBurst connections, refilled at AcceptRate a second.
	// A connection past it is reset at once, unread, as past the limits
	// above (the SDK tries again after a jittered backoff, keeping its
	// resumption ticket); connections taken over in a live upgrade are not
	// paced.
	// It is what keeps a reconnect storm (a node of a cluster stopped or
	// dead, its clients all coming to the survivors) from taking the CPU
	// from the users already here: a login costs about 200 us of server
	// CPU with a resumption ticket and 330 us without (BENCHMARKS.md), so
	// 1,000 a second per CPU keeps a storm's logins to a fifth to a third
	// of the machine, and AcceptBurst lets at most half a second's worth
	// through at full speed. No normal server comes near
	// it: a million connections that each reconnect every ten minutes are
	// 1,700 a second, on a machine with many CPUs.
	// Defaults 1,000 and 500 per CPU the process may use (GOMAXPROCS at
	// the start); a negative AcceptRate turns the pacing off (benchmarks
	// that log thousands in at once).
	AcceptRate, AcceptBurst int
	// HandshakeTimeout closes connections that have not logged in (sent
	// their proof included) in time. Default 10s.
	HandshakeTimeout time.Duration
	// FrameTimeout closes logged-in connections that stop in the middle of
	// a message this long. Default 30s.
	FrameTimeout time.Duration
	// KeepAlive is the TCP keep-alive idle time of native connections: a
	// peer gone without a FIN (a phone that lost coverage, a crashed NAT)
	// is found by the kernel after this, plus 4 probes 15s apart, and its
	// connection closed. It costs no memory per connection, unlike a
	// timer. Default 2m; negative turns keep-alive off.
	KeepAlive time.Duration
	// MaxWriteBuffer bounds what the server holds for one client that does
	// not read what it is sent; past it the connection is closed (the
	// client reconnects and its queue is delivered again). Default 4 MiB.
	MaxWriteBuffer int
	// MaxMailbox bounds the events waiting for one session (frames read,
	// store results, pushes); a client that sends faster than its session
	// is served is cut off with a SLOW_CLIENT-style Close (code
	// BAD_REQUEST) past it. Default 4,096.
	MaxMailbox int
	// MaxMailboxBytes bounds the same events in memory: the frames waiting
	// in them, by the size they arrived in (a frame may be up to 64 KiB,
	// so MaxMailbox alone would let one client hold 256 MiB). Past it the
	// client is cut off as for MaxMailbox. Default 4 MiB.
	MaxMailboxBytes int
	// Window is the most deliveries a session keeps unacknowledged.
	// Default 256.
	Window int
	// MaxQueueLen bounds one user's offline queue. Default 100,000.
	MaxQueueLen int
	// MaxQueueAge bounds how long an item waits. Default 30 days.
	MaxQueueAge time.Duration
	// FailedLoginsPerAddr bounds failed logins (a handshake that does not
	// verify, an unknown number, a key not the number's) from one client
	// address (IPv6: one /64) per minute; past it the address's handshakes
	// are closed unanswered, before any cryptography, until the minute is
	// over. Default 60. There is deliberately no limit per number claimed:
	// it would let anyone lock a number's real device out by failing
	// logins in its name; failures against one number cost the attacker's
	// addresses their budget instead, and their log lines are bounded by
	// LoginLogsPerSecond.
	FailedLoginsPerAddr int
	// ThrottleKeys bounds the addresses the failed-login counter
	// remembers in one minute. Default 100,000.
	ThrottleKeys int
	// LoginLogsPerSecond bounds the log lines of refused logins; the rest
	// are only counted (parley_login_failures_total). Default 10.
	LoginLogsPerSecond int
	// ReplayWindow and ReplayMemory size the memory of recent handshakes
	// that refuses a replayed first message before any cryptography: it
	// remembers ReplayMemory handshakes or ReplayWindow, whichever is
	// less, twice over. Defaults 10m and 100,000 (about 10 MB at most).
	ReplayWindow time.Duration
	ReplayMemory int
	// MaxReadIDs bounds the message ids of one Read frame. Default 256.
	MaxReadIDs int
	// ReadRate and ReadBurst bound the ids one session's Reads name over
	// time: a bucket of ReadBurst ids refilled at ReadRate a second (see
	// session.Config). Defaults 16 and 1,024.
	ReadRate, ReadBurst int
	// QueueStates bounds the queues whose head and tail the store keeps in
	// memory (about 100 bytes each), and AccountCache the phones it
	// remembers as registered (about 80 bytes each); past them it forgets
	// settled entries and reads them from disk again when needed.
	// Defaults 1,048,576 each.
	QueueStates, AccountCache int

	// HTTPReadHeaderTimeout, HTTPReadTimeout, HTTPWriteTimeout and
	// HTTPIdleTimeout are the HTTP and admin listeners' timeouts (see
	// net/http.Server). The read and write timeouts bound a whole request
	// and response, a media upload or download included, so they are
	// sized for the largest media at a slow mobile link. Defaults 5s, 5m,
	// 5m and 60s.
	HTTPReadHeaderTimeout, HTTPReadTimeout, HTTPWriteTimeout, HTTPIdleTimeout time.Duration
	// HTTPRequestTimeout bounds how long a registration request may take
	// to arrive and be answered. Default 10s.
	HTTPRequestTimeout time.Duration
	// HTTPConnsPerAddr bounds the HTTP connections one client address
	// (IPv6: one /64) holds open on the public HTTP listener. Default 64.
	HTTPConnsPerAddr int
}

// DefaultLimits returns the defaults of every limit (those that scale with
// the machine, for this process's GOMAXPROCS).
func DefaultLimits() Limits {
	cpus := runtime.GOMAXPROCS(0)
	return Limits{
		MaxConnections:        1_000_000,
		MaxConnsPerAddr:       10_000,
		MaxHandshakes:         10_000,
		AcceptRate:            1000 * cpus,
		AcceptBurst:           500 * cpus,
		HandshakeTimeout:      10 * time.Second,
		FrameTimeout:          30 * time.Second,
		KeepAlive:             2 * time.Minute,
		MaxWriteBuffer:        4 << 20,
		MaxMailbox:            4096,
		MaxMailboxBytes:       4 << 20,
		Window:                256,
		MaxQueueLen:           100_000,
		MaxQueueAge:           30 * 24 * time.Hour,
		FailedLoginsPerAddr:   60,
		ThrottleKeys:          100_000,
		LoginLogsPerSecond:    10,
		ReplayWindow:          10 * time.Minute,
		ReplayMemory:          100_000,
		MaxReadIDs:            256,
		ReadRate:              16,
		ReadBurst:             1024,
		QueueStates:           1 << 20,
		AccountCache:          1 << 20,
		HTTPReadHeaderTimeout: 5 * time.Second,
		HTTPReadTimeout:       5 * time.Minute,
		HTTPWriteTimeout:      5 * time.Minute,
		HTTPIdleTimeout:       60 * time.Second,
		HTTPRequestTimeout:    10 * time.Second,
		HTTPConnsPerAddr:      64,
	}
}

// withDefaults fills every zero field from DefaultLimits.
func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	zi := func(v *int, def int) {
		if *v <= 0 {
			*v = def
		}
	}
	zd := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	zi(&l.MaxConnections, d.MaxConnections)
	zi(&l.MaxConnsPerAddr, d.MaxConnsPerAddr)
	zi(&l.MaxHandshakes, d.MaxHandshakes)
	if l.AcceptRate == 0 { // negative: off
		l.AcceptRate = d.AcceptRate
	}
	zi(&l.AcceptBurst, d.AcceptBurst)
	zd(&l.HandshakeTimeout, d.HandshakeTimeout)
	zd(&l.FrameTimeout, d.FrameTimeout)
	zd(&l.KeepAlive, d.KeepAlive)
	zi(&l.MaxWriteBuffer, d.MaxWriteBuffer)
	zi(&l.MaxMailbox, d.MaxMailbox)
	zi(&l.MaxMailboxBytes, d.MaxMailboxBytes)
	zi(&l.Window, d.Window)
	zi(&l.MaxQueueLen, d.MaxQueueLen)
	zd(&l.MaxQueueAge, d.MaxQueueAge)
	zi(&l.FailedLoginsPerAddr, d.FailedLoginsPerAddr)
	zi(&l.ThrottleKeys, d.ThrottleKeys)
	zi(&l.LoginLogsPerSecond, d.LoginLogsPerSecond)
	zd(&l.ReplayWindow, d.ReplayWindow)
	zi(&l.ReplayMemory, d.ReplayMemory)
	zi(&l.MaxReadIDs, d.MaxReadIDs)
	zi(&l.ReadRate, d.ReadRate)
	zi(&l.ReadBurst, d.ReadBurst)
	zi(&l.QueueStates, d.QueueStates)
	zi(&l.AccountCache, d.AccountCache)
	zd(&l.HTTPReadHeaderTimeout, d.HTTPReadHeaderTimeout)
	zd(&l.HTTPReadTimeout, d.HTTPReadTimeout)
	zd(&l.HTTPWriteTimeout, d.HTTPWriteTimeout)
	zd(&l.HTTPIdleTimeout, d.HTTPIdleTimeout)
	zd(&l.HTTPRequestTimeout, d.HTTPRequestTimeout)
	zi(&l.HTTPConnsPerAddr, d.HTTPConnsPerAddr)
	return l
}

// MarshalJSON writes the limits with snake_case names and durations as
// Go duration strings ("10s"), which is how an operator sets them.
func (l Limits) MarshalJSON() ([]byte, error) {
	d := func(v time.Duration) string { return v.String() }
	return json.Marshal(map[string]any{
		"max_connections":          l.MaxConnections,
		"max_conns_per_addr":       l.MaxConnsPerAddr,
		"max_handshakes":           l.MaxHandshakes,
		"accept_rate":              l.AcceptRate,
		"accept_burst":             l.AcceptBurst,
		"handshake_timeout":        d(l.HandshakeTimeout),
		"frame_timeout":            d(l.FrameTimeout),
		"keep_alive":               d(l.KeepAlive),
		"max_write_buffer":         l.MaxWriteBuffer,
		"max_mailbox":              l.MaxMailbox,
		"max_mailbox_bytes":        l.MaxMailboxBytes,
		"window":                   l.Window,
		"max_queue_len":            l.MaxQueueLen,
		"max_queue_age":            d(l.MaxQueueAge),
		"failed_logins_per_addr":   l.FailedLoginsPerAddr,
		"throttle_keys":            l.ThrottleKeys,
		"login_logs_per_second":    l.LoginLogsPerSecond,
		"replay_window":            d(l.ReplayWindow),
		"replay_memory":            l.ReplayMemory,
		"max_read_ids":             l.MaxReadIDs,
		"read_rate":                l.ReadRate,
		"read_burst":               l.ReadBurst,
		"queue_states":             l.QueueStates,
		"account_cache":            l.AccountCache,
		"http_read_header_timeout": d(l.HTTPReadHeaderTimeout),
		"http_read_timeout":        d(l.HTTPReadTimeout),
		"http_write_timeout":       d(l.HTTPWriteTimeout),
		"http_idle_timeout":        d(l.HTTPIdleTimeout),
		"http_request_timeout":     d(l.HTTPRequestTimeout),
		"http_conns_per_addr":      l.HTTPConnsPerAddr,
	})
}

// handleLimits answers GET /admin/limits: every limit in force, and the
// ones that live in other parts (media, registration).
func (n *Node) handleLimits(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"node":  n.cfg.Limits,
		"media": n.media.Limits(),
		// Fixed by the protocol, not configurable; shown so that every
		// bound on what the network sends is in one place.
		"protocol": map[string]any{"max_first_message": maxFirstMessage, "max_frame": wire.MaxMessage},
		"registration": map[string]any{
			"per_number": fmt.Sprintf("%d per %s, %s apart", n.cfg.PerNumber.Max, n.cfg.PerNumber.Window, n.cfg.PerNumber.MinGap),
			"per_addr":   fmt.Sprintf("%d per %s", n.cfg.PerAddr.Max, n.cfg.PerAddr.Window),
		},
	})
}
