package session_test

import (
	"fmt"
	"io"
	"log/slog"
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
	t        *testing.T
	st       store.Store
	sessions map[string]*session.Core
	ids      uint64
	clock    int64
	out      strings.Builder
}

func newWorld(t *testing.T) *world {
	st, err := store.OpenPebble(t.TempDir(), store.Options{MaxQueueLen: 3}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &world{t: t, st: st, sessions: map[string]*session.Core{}}
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
	switch d.Cmd {
	case "register":
		for _, u := range append(pos, strings.Fields(d.Input)...) {
			if err := w.st.PutAccount(store.Account{Phone: u, Key: make([]byte, 32), Generation: 1}); err != nil {
				d.Fatalf(t, "%v", err)
			}
		}
		return "ok"
	case "login":
		need(1)
		win := 256
		if v, ok := args["window"]; ok {
			win = int(u64(v))
		}
		core := session.New(pos[0], &session.Config{
			Window: win,
			Now:    func() int64 { w.clock++; return w.clock },
			NewID:  func() uint64 { w.ids++; return 100 + w.ids },
			IssueUpload: func(u string) (string, string, int64) {
				return "token-for-" + u, "http://127.0.0.1:8080/v1/media", 5000
			},
		})
		w.sessions[pos[0]] = core
		w.step(pos[0], session.Start{})
	case "logout":
		need(1)
		delete(w.sessions, pos[0])
		return "ok"
	case "send":
		need(3)
		w.frame(pos[0], &wire.Frame{Kind: &wire.Frame_Send{Send: &wire.Send{Id: u64(args["id"]), To: pos[1], Body: []byte(strings.Join(pos[2:], " ")), Resend: args["resend"] == "true"}}})
	case "upload":
		need(1)
		w.frame(pos[0], &wire.Frame{Kind: &wire.Frame_UploadRequest{UploadRequest: &wire.UploadRequest{Id: u64(args["id"])}}})
	case "send-media":
		need(2)
		w.frame(pos[0], &wire.Frame{Kind: &wire.Frame_Send{Send: &wire.Send{Id: u64(args["id"]), To: pos[1], Media: &wire.Media{
			Url: args["url"], Mime: args["mime"], Size: u64(args["size"]), Thumbnail: []byte("jpeg"), Caption: strings.Join(pos[2:], " "),
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
		w.step(pos[0], session.Kicked{Code: wire.Error_REGISTERED_ELSEWHERE, Text: "registered on another device"})
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
	return w.out.String()
}

func (w *world) frame(user string, f *wire.Frame) {
	if _, ok := w.sessions[user]; !ok {
		w.t.Fatalf("%s is not logged in", user)
	}
	w.step(user, session.Received{Frame: f})
}

// step feeds one event and carries out the Ready, recursively, like the
// node's actor does — but synchronously.
func (w *world) step(user string, ev any) {
	core := w.sessions[user]
	if core == nil {
		return
	}
	core.Step(ev)
	for {
		rd := core.Ready()
		writes := append([]*store.Batch(nil), rd.Writes...)
		for _, f := range rd.Frames {
			fmt.Fprintf(&w.out, "%s <- %s\n", user, fmtFrame(f.Proto()))
		}
		if rd.Close != nil {
			delete(w.sessions, user)
			fmt.Fprintf(&w.out, "%s: connection closed\n", user)
		}
		load := rd.Load
		core.Advance()
		for _, b := range writes {
			res := w.commit(b)
			if res.Err == nil && res.Dup == nil {
				for i, a := range b.Appends {
					w.step(a.To, session.Pushed{Seq: res.Seqs[i], Data: a.Data})
				}
			}
			w.step(user, session.Committed{Result: res})
		}
		if load == nil || w.sessions[user] == nil {
			return
		}
		items, err := w.st.ReadQueue(user, load.From, load.Max)
		core.Step(session.Loaded{Items: items, Err: err})
	}
}

func (w *world) commit(b *store.Batch) store.Result {
	done := make(chan store.Result, 1)
	w.st.Commit(b, func(r store.Result) { done <- r })
	select {
	case r := <-done:
		return r
	case <-time.After(10 * time.Second):
		w.t.Fatal("commit did not complete")
		return store.Result{}
	}
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
		return fmt.Sprintf("Close %s: %s", k.Close.Code, k.Close.Text)
	}
	return fmt.Sprintf("%T", f.Kind)
}

func fmtItem(it *wire.Item) string {
	if m := it.GetMessage(); m != nil && m.Media != nil {
		return fmt.Sprintf("media from=%s id=%d server_id=%d url=%s mime=%s size=%d thumbnail=%dB caption=%q", m.From, m.Id, m.ServerId, m.Media.Url, m.Media.Mime, m.Media.Size, len(m.Media.Thumbnail), m.Media.Caption)
	}
	if m := it.GetMessage(); m != nil {
		return fmt.Sprintf("message from=%s id=%d server_id=%d %q", m.From, m.Id, m.ServerId, m.Body)
	}
	r := it.GetReceipt()
	return fmt.Sprintf("receipt %s by=%s ids=%v server_ids=%v", strings.ToLower(r.Kind.String()), r.By, r.Ids, r.ServerIds)
}
