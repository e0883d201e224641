package session_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"

	"github.com/parleyhq/parley/session"
	"github.com/parleyhq/parley/store"
	"github.com/parleyhq/parley/wire"
)

// TestScenarios runs the lifecycle scripts in testdata/: readable stories
// ("alice sends to offline bob; bob logs in; bob acks; alice gets the
// delivered tick") over session cores and a real Pebble store. Rewrite the
// expected output after an intended change with
//
//	go test ./session -run TestScenarios -rewrite
//
// Commands (arguments name=value; a trailing summary=true prints frames
// counted by kind instead of one line each):
//
//	register u...                  accounts for the users
//	store max-queue-len=N max-age=D   reopen the store (same directory) with these options
//	login u [hold=true window=N max-pending=N max-read-ids=N read-rate=N read-burst=N]
//	                               a new connection's session; a live one is replaced as the node does
//	logout u                       the connection drops
//	send u to id=N [resend=true] [body-size=N] body...
//	send-many u to n=N id=N        N sends with ids id, id+1, ...
//	send-media u to id=N url= mime= size= [body-size=N thumbnail=N caption-size=N media-id-size=N url-pad=N] caption...
//	upload u id=N | ping u id=N | bogus u | kick u
//	ack u seq | read u to id=N ids...
//	hold u / release u             u's writes and queue reads wait (the read's snapshot is taken at once)
//	fail-commits n=N err=internal|closed|unavailable   the next N commits fail so, writing nothing
//	fail-reads u n=N               u's next N queue reads fail (u need not be logged in)
//	fail-checks n=N                the next N received-from checks fail
//	advance d=D                    the sessions' clock moves on
//	sweep after=D                  a sweeper pass as of D from now; prints what expired
//	queue u                        what u's queue holds
func TestScenarios(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		w := newWorld(t)
		datadriven.RunTest(t, path, w.run)
	})
}

// world is a node in miniature: the store is real, and the harness plays the
// event loop and the router, delivering every effect synchronously so a
// script's output is deterministic.
type world struct {
	t    *testing.T
	dir  string
	st   *store.Pebble
	live map[string]*conn // the router: each user's newest session
	// latest is each user's newest connection, closed or not (hold and
	// release may act on a session that has just been closed).
	latest map[string]*conn
	ids    uint64
	clock  int64
	out    strings.Builder
	// expired collects the store's OnExpire reports until sweep prints them.
	expired []string
	// failCommits and failErr inject store failures: the next failCommits
	// commits report failErr and write nothing.
	failCommits int
	failErr     error
	refusals    map[string]int // Config.OnRefused's counts
	failReads   map[string]int // a user's next queue reads fail
	failChecks  int            // the next checks fail
}

// conn is one connection's session as the harness runs it.
type conn struct {
	user, label string
	core        *session.Core
	closed      bool
	// hold keeps writes and reads waiting (held, heldLoad) until release.
	hold     bool
	held     []*store.Batch
	heldLoad *session.Loaded
	// wakeAt is when the core asked to be woken (Ready.WakeIn); 0: not.
	wakeAt int64
}

func newWorld(t *testing.T) *world {
	w := &world{t: t, dir: t.TempDir(), live: map[string]*conn{}, latest: map[string]*conn{}, refusals: map[string]int{}, failReads: map[string]int{},
		clock: 1_700_000_000_000_000_000} // a realistic time: stamps take their real size
	w.open(store.Options{MaxQueueLen: 3})
	t.Cleanup(func() { w.st.Close() })
	return w
}

func (w *world) open(opts store.Options) {
	opts.OnExpire = func(user string, it store.Item) {
		desc := "undecodable"
		if item, err := wire.DecodeItem(it.Data); err == nil {
			desc = fmtItem(item)
		}
		w.expired = append(w.expired, fmt.Sprintf("expired %s seq=%d: %s", user, it.Seq, desc))
	}
	opts.SweepEvery = 24 * time.Hour // only the sweep command sweeps
	st, err := store.OpenPebble(w.dir, opts, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		w.t.Fatal(err)
	}
	w.st = st
}

func (w *world) run(t *testing.T, d *datadriven.TestData) string {
	w.out.Reset()
	args := map[string]string{}
	var pos []string
	for _, a := range d.CmdArgs {
		if len(a.Vals) > 0 {
			args[a.Key] = a.Vals[0]
		} else {
			pos = append(pos, a.Key)
		}
	}
	need := func(n int) {
		if len(pos) < n {
			d.Fatalf(t, "%s needs %d arguments", d.Cmd, n)
		}
	}
	u64 := func(s string) uint64 {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			d.Fatalf(t, "bad number %q", s)
		}
		return v
	}
	num := func(key string, def int) int {
		if v, ok := args[key]; ok {
			return int(u64(v))
		}
		return def
	}
	dur := func(key string) time.Duration {
		v, err := time.ParseDuration(args[key])
		if err != nil {
			d.Fatalf(t, "%s: %v", key, err)
		}
		return v
	}
	body := func() []byte {
		if n := num("body-size", 0); n > 0 {
			return bytes.Repeat([]byte("x"), n)
		}
		return []byte(strings.Join(pos[2:], " "))
	}
	switch d.Cmd {
	case "register":
		for _, u := range append(pos, strings.Fields(d.Input)...) {
			if err := w.st.PutAccount(store.Account{Phone: u, Key: make([]byte, 32), Generation: 1}); err != nil {
				d.Fatalf(t, "%v", err)
			}
		}
		return "ok"
	case "store":
		opts := store.Options{MaxQueueLen: num("max-queue-len", 3)}
		if _, ok := args["max-age"]; ok {
			opts.MaxAge = dur("max-age")
		}
		if err := w.st.Close(); err != nil {
			d.Fatalf(t, "%v", err)
		}
		w.open(opts)
		return "ok"
	case "login":
		need(1)
		w.login(pos[0], args["hold"] == "true", &session.Config{
			Window:     num("window", 256),
			MaxPending: num("max-pending", 0),
			MaxReadIDs: num("max-read-ids", 0),
			ReadRate:   num("read-rate", 0),
			ReadBurst:  num("read-burst", 0),
			Now:        func() int64 { w.clock++; return w.clock },
			NewID:      func() uint64 { w.ids++; return 100 + w.ids },
			IssueUpload: func(u string) (string, string, int64) {
				return "token-for-" + u, "http://127.0.0.1:8080/v1/media", 5000
			},
			OnRefused: func(limit string) { w.refusals[limit]++ },
		})
	case "logout":
		need(1)
		if c := w.live[pos[0]]; c != nil {
			c.closed = true
		}
		delete(w.live, pos[0])
		return "ok"
	case "send":
		need(2)
		w.frame(pos[0], &wire.Frame{Kind: &wire.Frame_Send{Send: &wire.Send{Id: u64(args["id"]), To: pos[1], Body: body(), Resend: args["resend"] == "true"}}})
	case "send-many":
		need(2)
		first := u64(args["id"])
		for i := range uint64(num("n", 1)) {
			w.frame(pos[0], &wire.Frame{Kind: &wire.Frame_Send{Send: &wire.Send{Id: first + i, To: pos[1], Body: []byte(fmt.Sprintf("m%d", first+i))}}})
		}
	case "upload":
		need(1)
		w.frame(pos[0], &wire.Frame{Kind: &wire.Frame_UploadRequest{UploadRequest: &wire.UploadRequest{Id: u64(args["id"])}}})
	case "send-media":
		need(2)
		w.frame(pos[0], &wire.Frame{Kind: &wire.Frame_Send{Send: &wire.Send{Id: u64(args["id"]), To: pos[1], Body: body(), Media: &wire.Media{
			Url: args["url"] + strings.Repeat("u", num("url-pad", 0)), Mime: args["mime"], Size: u64(args["size"]), Id: strings.Repeat("i", num("media-id-size", 0)),
			Thumbnail: bytes.Repeat([]byte("j"), num("thumbnail", 4)),
			Caption:   strings.Join(pos[2:], " ") + strings.Repeat("c", num("caption-size", 0)),
		}}}})
	case "ack":
		need(2)
		w.frame(pos[0], &wire.Frame{Kind: &wire.Frame_Ack{Ack: &wire.Ack{Seq: u64(pos[1])}}})
	case "read":
		need(3)
		var ids []uint64
		for _, s := range pos[2:] {
			ids = append(ids, u64(s))
		}
		w.frame(pos[0], &wire.Frame{Kind: &wire.Frame_Read{Read: &wire.Read{Id: u64(args["id"]), To: pos[1], Ids: ids}}})
	case "ping":
		need(1)
		w.frame(pos[0], &wire.Frame{Kind: &wire.Frame_Ping{Ping: &wire.Ping{Id: u64(args["id"])}}})
	case "bogus":
		need(1)
		w.frame(pos[0], &wire.Frame{Kind: &wire.Frame_Deliver{Deliver: &wire.Deliver{Seq: 1}}})
	case "kick":
		need(1)
		if _, ok := args["reconnect-after"]; ok {
			w.step(w.live[pos[0]], session.Kicked{Code: wire.Error_SHUTTING_DOWN, Text: "the server is stopping: reconnect", ReconnectAfter: dur("reconnect-after")})
			break
		}
		w.step(w.live[pos[0]], session.Kicked{Code: wire.Error_REGISTERED_ELSEWHERE, Text: "registered on another device"})
	case "hold":
		need(1)
		w.conn(pos[0]).hold = true
		return "ok"
	case "release":
		need(1)
		c := w.latest[pos[0]]
		if c == nil {
			d.Fatalf(t, "%s never logged in", pos[0])
		}
		w.release(c)
	case "fail-commits":
		w.failCommits = num("n", 1)
		switch args["err"] {
		case "closed":
			w.failErr = fmt.Errorf("commit: %w", store.ErrClosed)
		case "internal":
			w.failErr = errors.New("commit: disk on fire")
		case "unavailable":
			w.failErr = fmt.Errorf("commit: %w", store.ErrUnavailable)
		default:
			d.Fatalf(t, "err must be closed, internal or unavailable")
		}
		return "ok"
	case "fail-checks":
		w.failChecks = num("n", 1)
		return "ok"
	case "fail-reads":
		need(1)
		w.failReads[pos[0]] = num("n", 1)
		return "ok"
	case "advance":
		w.clock += int64(dur("d"))
		// Wake the sessions that asked to be woken by now, as the node's
		// timer would.
		users := make([]string, 0, len(w.live))
		for u := range w.live {
			users = append(users, u)
		}
		slices.Sort(users)
		for _, u := range users {
			if c := w.live[u]; c.wakeAt != 0 && c.wakeAt <= w.clock {
				c.wakeAt = 0
				w.step(c, session.Pushed{Seq: math.MaxUint64})
			}
		}
		if w.out.Len() == 0 {
			return "ok"
		}
	case "refusals":
		if len(w.refusals) == 0 {
			return "none"
		}
		keys := make([]string, 0, len(w.refusals))
		for k := range w.refusals {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			fmt.Fprintf(&w.out, "%s: %d\n", k, w.refusals[k])
		}
	case "sweep":
		n, err := w.st.Sweep(time.Now().Add(dur("after")))
		if err != nil {
			d.Fatalf(t, "%v", err)
		}
		for _, e := range w.expired {
			fmt.Fprintln(&w.out, e)
		}
		w.expired = nil
		fmt.Fprintf(&w.out, "%d expired\n", n)
	case "queue":
		need(1)
		items, err := w.st.ReadQueue(pos[0], 0, 100)
		if err != nil {
			d.Fatalf(t, "%v", err)
		}
		if len(items) == 0 {
			return "empty"
		}
		for _, it := range items {
			item, err := wire.DecodeItem(it.Data)
			if err != nil {
				d.Fatalf(t, "%v", err)
			}
			fmt.Fprintf(&w.out, "%d: %s\n", it.Seq, fmtItem(item))
		}
	default:
		d.Fatalf(t, "unknown command %q", d.Cmd)
	}
	if w.out.Len() == 0 {
		return "(nothing)"
	}
	if args["summary"] == "true" {
		return summarize(w.out.String())
	}
	return w.out.String()
}

// login starts a session for user the way the node's prove does: the new
// session starts, then becomes the one the router finds, and the one it
// replaces (if any) is kicked with REPLACED.
func (w *world) login(user string, hold bool, cfg *session.Config) {
	c := &conn{user: user, label: user, core: new(session.Core), hold: hold}
	c.core.Init(user, cfg)
	w.step(c, session.Start{})
	prev := w.live[user]
	w.latest[user] = c
	if !c.closed {
		w.live[user] = c
	}
	if prev != nil {
		prev.label = user + " (old)"
		w.step(prev, session.Kicked{Code: wire.Error_REPLACED, Text: "this account logged in on a newer connection"})
	}
}

func (w *world) conn(user string) *conn {
	c := w.live[user]
	if c == nil {
		w.t.Fatalf("%s is not logged in", user)
	}
	return c
}

func (w *world) frame(user string, f *wire.Frame) {
	// What the node would never hand a session: it refuses the frame
	// when it decodes it.
	if err := wire.Validate(f); err != nil {
		w.t.Fatalf("%s: a frame the node would refuse: %v", user, err)
	}
	if n := f.SizeVT(); n > wire.MaxMessage-16 {
		w.t.Fatalf("%s: a %d-byte frame cannot arrive in one transport message", user, n)
	}
	w.step(w.conn(user), session.Received{Frame: f})
}

// step feeds one event and carries out the Ready, recursively, like the
// node's actor does — but synchronously.
func (w *world) step(c *conn, ev any) {
	if c == nil || c.closed {
		return
	}
	c.core.Step(ev)
	w.carryOut(c)
}

func (w *world) carryOut(c *conn) {
	for {
		rd := c.core.Ready()
		writes := append([]*store.Batch(nil), rd.Writes...)
		for _, f := range rd.Frames {
			fmt.Fprintf(&w.out, "%s <- %s\n", c.label, fmtFrame(f.Proto()))
		}
		if rd.WakeIn > 0 {
			fmt.Fprintf(&w.out, "%s: wake in %s\n", c.label, rd.WakeIn)
			c.wakeAt = w.clock + int64(rd.WakeIn)
		}
		if rd.Close != nil {
			c.closed = true
			if w.live[c.user] == c {
				delete(w.live, c.user)
			}
			fmt.Fprintf(&w.out, "%s: connection closed\n", c.label)
		}
		load, check := rd.Load, rd.Check
		c.core.Advance()
		if c.hold {
			c.held = append(c.held, writes...)
			if load != nil {
				c.heldLoad = w.read(c, load)
				load = nil
			}
		} else {
			for _, b := range writes {
				w.commit(c, b)
			}
		}
		stepped := false
		// A check is answered at once, held or not, like the node's.
		if check != nil && !c.closed {
			c.core.Step(w.check(c, check))
			stepped = true
		}
		if load != nil && !c.closed {
			c.core.Step(*w.read(c, load))
			stepped = true
		}
		if !stepped {
			return
		}
	}
}

func (w *world) check(c *conn, ck *session.Check) session.Checked {
	if w.failChecks > 0 {
		w.failChecks--
		return session.Checked{Err: errors.New("received from: disk on fire")}
	}
	ok, err := w.st.ReceivedFrom(c.user, ck.Sender)
	return session.Checked{OK: ok, Err: err}
}

// release carries out what c held, in order: the writes, then the read
// (whose snapshot was taken when it was asked for).
func (w *world) release(c *conn) {
	c.hold = false
	held, ld := c.held, c.heldLoad
	c.held, c.heldLoad = nil, nil
	for _, b := range held {
		w.commit(c, b)
	}
	if ld != nil {
		w.step(c, *ld)
	}
}

func (w *world) read(c *conn, load *session.Load) *session.Loaded {
	if w.failReads[c.user] > 0 {
		w.failReads[c.user]--
		return &session.Loaded{Err: errors.New("read queue: disk on fire")}
	}
	items, err := w.st.ReadQueue(c.user, load.From, load.Max)
	return &session.Loaded{Items: items, Err: err}
}

// commit commits b and routes the result as the node's commit callback
// does: each append to its recipient's live session, then the result to c.
func (w *world) commit(c *conn, b *store.Batch) {
	var res store.Result
	if w.failCommits > 0 {
		w.failCommits--
		res = store.Result{Err: w.failErr}
	} else {
		done := make(chan store.Result, 1)
		w.st.Commit(b, func(r store.Result) { done <- r })
		select {
		case res = <-done:
		case <-time.After(10 * time.Second):
			w.t.Fatal("commit did not complete")
		}
	}
	if res.Err == nil && res.Dup == nil {
		for i, a := range b.Appends {
			w.step(w.live[a.To], session.Pushed{Seq: res.Seqs[i], Data: a.Data})
		}
	}
	w.step(c, session.Committed{Result: res})
}

// summarize counts output lines by who and what ("bob <- Deliver"), in
// order of first appearance, for scripts that move many messages.
func summarize(out string) string {
	var order []string
	counts := map[string]int{}
	for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		key := l
		if who, what, ok := strings.Cut(l, " <- "); ok {
			kind, _, _ := strings.Cut(what, " ")
			key = who + " <- " + kind
		}
		if counts[key] == 0 {
			order = append(order, key)
		}
		counts[key]++
	}
	var b strings.Builder
	for _, k := range order {
		fmt.Fprintf(&b, "%s x%d\n", k, counts[k])
	}
	return b.String()
}

func fmtFrame(f *wire.Frame) string {
	switch k := f.Kind.(type) {
	case *wire.Frame_SendAck:
		return fmt.Sprintf("SendAck id=%d server_id=%d", k.SendAck.Id, k.SendAck.ServerId)
	case *wire.Frame_Deliver:
		return fmt.Sprintf("Deliver seq=%d %s", k.Deliver.Seq, fmtItem(k.Deliver.Item))
	case *wire.Frame_Error:
		return fmt.Sprintf("Error id=%d %s: %s", k.Error.Id, k.Error.Code, k.Error.Text)
	case *wire.Frame_Ok:
		return fmt.Sprintf("Ok id=%d", k.Ok.Id)
	case *wire.Frame_UploadToken:
		return fmt.Sprintf("UploadToken id=%d token=%s url=%s", k.UploadToken.Id, k.UploadToken.Token, k.UploadToken.Url)
	case *wire.Frame_Pong:
		return fmt.Sprintf("Pong id=%d", k.Pong.Id)
	case *wire.Frame_Close:
		if ms := k.Close.ReconnectAfterMs; ms > 0 {
			return fmt.Sprintf("Close %s: %s (reconnect after %d ms)", k.Close.Code, k.Close.Text, ms)
		}
		return fmt.Sprintf("Close %s: %s", k.Close.Code, k.Close.Text)
	}
	return fmt.Sprintf("%T", f.Kind)
}

func fmtItem(it *wire.Item) string {
	if m := it.GetMessage(); m != nil && m.Media != nil {
		url, caption := m.Media.Url, fmt.Sprintf("%q", m.Media.Caption)
		if len(url) > 64 {
			url = fmt.Sprintf("%s...(%d bytes)", url[:40], len(url))
		}
		if len(m.Media.Caption) > 64 {
			caption = fmt.Sprintf("(%d bytes)", len(m.Media.Caption))
		}
		return fmt.Sprintf("media from=%s id=%d server_id=%d url=%s mime=%s size=%d thumbnail=%dB caption=%s", m.From, m.Id, m.ServerId, url, m.Media.Mime, m.Media.Size, len(m.Media.Thumbnail), caption)
	}
	if m := it.GetMessage(); m != nil {
		return fmt.Sprintf("message from=%s id=%d server_id=%d %q", m.From, m.Id, m.ServerId, m.Body)
	}
	r := it.GetReceipt()
	return fmt.Sprintf("receipt %s by=%s ids=%s server_ids=%s", strings.ToLower(r.Kind.String()), r.By, fmtIDs(r.Ids), fmtIDs(r.ServerIds))
}

// fmtIDs prints an id list, long ones by their ends and length.
func fmtIDs(ids []uint64) string {
	if len(ids) <= 8 {
		return fmt.Sprint(ids)
	}
	return fmt.Sprintf("[%d %d ... %d %d] (%d ids)", ids[0], ids[1], ids[len(ids)-2], ids[len(ids)-1], len(ids))
}
