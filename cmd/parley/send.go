package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/parleyhq/parley/client"
	"github.com/parleyhq/parley/wire"
)

func newSendCmd() *cobra.Command {
	var (
		pf      profileFlags
		to      string
		wait    string
		timeout time.Duration
		asJSON  bool
		file    string
		caption string
	)
	cmd := &cobra.Command{
		Use:   "send --to NUMBER [flags] TEXT... | send --to NUMBER --file PATH [CAPTION...]",
		Short: "Send one message, or a file",
		Long: `Send one message: the TEXT arguments joined by spaces.

With --file PATH, send a file instead (a picture, audio, video, anything up to
the server's limit, 64 MiB by default): send asks the server for an upload
token, uploads the file over HTTP (with a progress line on stderr for files
over 1 MiB), and sends a message carrying its link, size, type, SHA-256 and,
for pictures, a thumbnail. The caption is --caption, or else the TEXT
arguments (not both). The recipient sees it in 'parley recv' and downloads it
with 'parley fetch'.

--wait sent (the default) returns once the server has stored the message in
the recipient's queue (one tick). --wait delivered also waits until the
recipient's device has received it (two ticks). While waiting, send watches
the deliveries to this account for the receipt but acknowledges nothing, so
messages waiting for you stay queued for 'parley recv'. (If more items wait
for you than the server delivers at once, the receipt is behind them: send
says so; run 'parley recv' first.)

Prints the message's server id, or with --json one object:
  {"id":..,"server_id":..,"ts":..,"to":"+..","status":"sent|delivered"}
(id is this client's message id, which receipts name; ts is unix nanoseconds).
With --file the object also has
  "media":{"id":"..","url":"..","size":..,"mime":"..","sha256":"<hex>","caption":".."}

A dropped connection is reconnected and the message sent again with the same
id, which the server stores once.

--timeout bounds connecting and every wait for the server; with --file the
clock starts again after the upload, whose transfer it does not bound (a big
file on a slow link takes what it takes; Ctrl-C stops it).

Exit status: 0 on success; 124 when --timeout passes first (after a
successful send, the output still says "sent"); 1 on any other error.`,
		Example: `  parley send --to +14155550102 hello bob
  parley send --profile ~/alice --to +14155550102 --wait delivered "are you there?"
  parley send --to +14155550102 --json --timeout 5s ping
  parley send --to +14155550102 --file photo.jpg --caption "the view"
  parley send --to +14155550102 --file report.pdf here is the report`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 && file == "" {
				return errors.New("no message: give the text after the flags, e.g. parley send --to +14155550102 hello, or a file with --file PATH")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			peer, err := normalizePhone("--to", to)
			if err != nil {
				return err
			}
			if wait != "sent" && wait != "delivered" {
				return fmt.Errorf("--wait %q: want sent or delivered", wait)
			}
			text := strings.Join(args, " ")
			var att *attachment
			switch {
			case file != "":
				if cmd.Flags().Changed("caption") && len(args) > 0 {
					return errors.New("two captions: give it either with --caption or as the text after the flags, not both")
				}
				if !cmd.Flags().Changed("caption") {
					caption = text
				}
				// Everything about the file is checked before connecting.
				if att, err = openAttachment(file, caption); err != nil {
					return err
				}
				defer att.f.Close()
			case cmd.Flags().Changed("caption"):
				return errors.New("--caption goes with --file: a text message is its own text")
			case len(text) > wire.MaxBody:
				return fmt.Errorf("the message is %d bytes, over the %d-byte limit: shorten it, or send it as a file with --file", len(text), wire.MaxBody)
			}
			ctx, cancel := withTimeout(cmd.Context(), timeout)
			defer func() { cancel() }()
			s, err := pf.open(ctx, cmd, true)
			if err != nil {
				if isTimeout(ctx, err) {
					return &statusError{exitTimeout, fmt.Errorf("could not log in within %s: %w", timeout, err)}
				}
				return err
			}
			defer s.c.Close()

			var (
				ack client.SendAck
				m   *wire.Media
			)
			if att != nil {
				if m, err = att.upload(ctx, cmd, s); err != nil {
					if isTimeout(ctx, err) {
						return &statusError{exitTimeout, fmt.Errorf("no upload token from the server within %s", timeout)}
					}
					return err
				}
				// The upload's transfer is not the server being slow:
				// give the rest of the send its full timeout.
				cancel()
				ctx, cancel = withTimeout(cmd.Context(), timeout)
				ack, err = s.c.SendMedia(ctx, peer, m)
			} else {
				ack, err = s.c.Send(ctx, peer, []byte(text))
			}
			if err != nil {
				if isTimeout(ctx, err) {
					return &statusError{exitTimeout, fmt.Errorf("no answer from the server within %s: the message may or may not have been stored", timeout)}
				}
				return explainClientError(err, s.profile, s.dir)
			}
			status := "sent"
			var waitErr error
			if wait == "delivered" {
				if waitErr = awaitDelivered(ctx, s, peer, ack.ID); waitErr == nil {
					status = "delivered"
				} else if isTimeout(ctx, waitErr) {
					waitErr = &statusError{exitTimeout, fmt.Errorf("sent, but %s has not received it within %s: it waits in their queue until their device connects", peer, timeout)}
				} else {
					waitErr = explainClientError(waitErr, s.profile, s.dir)
				}
			}
			out := cmd.OutOrStdout()
			if asJSON {
				obj := map[string]any{"id": ack.ID, "server_id": ack.ServerID, "ts": ack.TS, "to": peer, "status": status}
				if m != nil {
					obj["media"] = mediaJSON(m, false)
				}
				if err := writeJSONLine(out, obj); err != nil {
					return err
				}
			} else {
				tick := "✓"
				if status == "delivered" {
					tick = "✓✓"
				}
				what := ""
				if m != nil {
					what = fmt.Sprintf(" %s (%s, %s)", filepath.Base(att.path), mediaType(m), humanBytes(int64(m.Size)))
				}
				fmt.Fprintf(out, "%s %s%s to %s (id %d, server id %d)\n", tick, status, what, peer, ack.ID, ack.ServerID)
			}
			return waitErr
		},
	}
	pf.add(cmd)
	f := cmd.Flags()
	f.StringVar(&to, "to", "", "recipient's phone number (+14155550102)")
	f.StringVar(&wait, "wait", "sent", "what to wait for: sent (stored for the recipient) or delivered (received by their device)")
	f.DurationVar(&timeout, "timeout", 30*time.Second, "give up after this long, connecting included (0: never; see above for --file)")
	f.BoolVar(&asJSON, "json", false, "print the result as one JSON object")
	f.StringVarP(&file, "file", "f", "", "send this file (picture, audio, video, document) instead of text")
	f.StringVar(&caption, "caption", "", "the file's caption (with --file; default: the TEXT arguments)")
	return cmd
}

// attachment is a file to send, opened and checked before connecting.
type attachment struct {
	path    string
	f       *os.File
	size    int64
	caption string
}

func openAttachment(path, caption string) (*attachment, error) {
	if len(caption) > wire.MaxCaption {
		return nil, fmt.Errorf("the caption is %d bytes, over the %d-byte limit: shorten it", len(caption), wire.MaxCaption)
	}
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("--file %s: no such file: check the path", path)
		}
		return nil, fmt.Errorf("--file %s: %w", path, err)
	}
	fi, err := f.Stat()
	switch {
	case err != nil:
		f.Close()
		return nil, fmt.Errorf("--file %s: %w", path, err)
	case fi.IsDir():
		f.Close()
		return nil, fmt.Errorf("--file %s is a directory: send one file (archive a directory first)", path)
	case !fi.Mode().IsRegular():
		f.Close()
		return nil, fmt.Errorf("--file %s is not a regular file", path)
	case fi.Size() == 0:
		f.Close()
		return nil, fmt.Errorf("--file %s is empty: there is nothing to send", path)
	}
	return &attachment{path: path, f: f, size: fi.Size(), caption: caption}, nil
}

// progressMin is the size from which an upload shows its progress.
const progressMin = 1 << 20

// upload gets an upload token (within ctx) and uploads the file (bounded
// only by the command's own context: Ctrl-C). An expired token (the upload
// started late) is replaced once.
func (a *attachment) upload(ctx context.Context, cmd *cobra.Command, s *clientSession) (*wire.Media, error) {
	for attempt := 0; ; attempt++ {
		tok, err := s.c.UploadToken(ctx)
		if err != nil {
			var se *client.ServerError
			if errors.As(err, &se) {
				return nil, fmt.Errorf("the server refused an upload token (%w): it may not take media", err)
			}
			if isTimeout(ctx, err) {
				return nil, err
			}
			return nil, explainClientError(err, s.profile, s.dir)
		}
		if _, err := a.f.Seek(0, io.SeekStart); err != nil {
			return nil, fmt.Errorf("read %s: %w", a.path, err)
		}
		var r io.Reader = a.f
		var pr *progressReader
		if a.size > progressMin {
			pr = &progressReader{r: a.f, total: a.size, name: filepath.Base(a.path), w: cmd.ErrOrStderr(), last: -1}
			r = pr
		}
		m, err := client.Upload(cmd.Context(), nil, tok, r, a.size)
		if pr != nil {
			pr.end()
		}
		var ae *client.APIError
		if err != nil && attempt == 0 && errors.As(err, &ae) && ae.Code == "token_expired" {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("cannot send %s: %w", a.path, err)
		}
		m.Caption = a.caption
		return m, nil
	}
}

// progressReader writes "uploading NAME: X of Y (P%)" to w as the file is
// read, rewriting one line.
type progressReader struct {
	r     io.Reader
	name  string
	w     io.Writer
	total int64
	done  int64
	last  int // the percentage last shown
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.done += int64(n)
	if pct := int(p.done * 100 / p.total); pct != p.last {
		p.last = pct
		fmt.Fprintf(p.w, "\ruploading %s: %s of %s (%d%%)", p.name, humanBytes(p.done), humanBytes(p.total), pct)
	}
	return n, err
}

// end finishes the progress line.
func (p *progressReader) end() {
	if p.last >= 0 {
		fmt.Fprintln(p.w)
	}
}

// awaitDelivered reads deliveries until the receipt for message id from
// peer. It never acks: acks are cumulative and would erase items meant for
// 'parley recv'. (The SDK itself only acks what the application acked, or
// a duplicate with nothing unacked below it, so with no Ack calls nothing
// is erased.)
func awaitDelivered(ctx context.Context, s *clientSession, peer string, id uint64) error {
	window := s.c.Window()
	seen := 0
	for {
		in, err := s.c.Recv(ctx)
		if err != nil {
			return err
		}
		if r := in.Receipt; r != nil && r.By == peer && slices.Contains(r.Ids, id) &&
			(r.Kind == wire.Receipt_DELIVERED || r.Kind == wire.Receipt_READ) {
			return nil
		}
		// The server delivers at most its window of unacked items; once
		// that many others came, the receipt cannot come before they are
		// acked by a 'parley recv'.
		if seen++; window > 0 && seen >= window {
			return fmt.Errorf("sent, but %d items wait for you ahead of the delivery receipt: run 'parley recv' to take them, then watch for the receipt there", seen)
		}
	}
}
