package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/parleyhq/parley/client"
	"github.com/parleyhq/parley/wire"
)

func newRecvCmd() *cobra.Command {
	var (
		pf      profileFlags
		count   int
		timeout time.Duration
		read    bool
		asJSON  bool
	)
	cmd := &cobra.Command{
		Use:   "recv [flags]",
		Short: "Receive messages and receipts",
		Long: `Print the messages and receipts waiting for this account, then the ones
that arrive, one per line, acknowledging each once it is printed (the server
then erases it, and the sender of a message gets its delivered tick).

With --read, a read receipt is sent for every message printed.

A message carrying a file (a picture, audio, ...) is shown as
  [15:04:05] +14155550101: [image/jpeg 2.1 MiB] the caption — https://.../v1/media/ID
Download it with 'parley fetch URL' (or the id).

With --json every line is one object:
  {"type":"message","from":"+..","id":..,"server_id":..,"ts":..,"text":".."}
  {"type":"receipt","from":"+..","id":..,"server_id":..,"kind":"delivered|read","ts":..}
A message's id is the sender's id for it; a receipt says that its sender
("from") received or read your message id, one line per id (a read receipt
names no server id). ts is unix nanoseconds. A body that is not UTF-8 also
comes as "body_base64". A message carrying a file also has
  "media":{"url":"..","id":"..","sha256":"<hex>","size":..,"mime":"..",
           "thumbnail":"<base64 JPEG>","caption":".."}
and its "text" is the caption. thumbnail comes only with pictures the server
could make one for; pass url and sha256 to 'parley fetch URL --sha256 HEX'
(or the whole line: parley fetch --from-json LINE).

recv stops after --count items (a receipt naming several messages is one
item), when --timeout passes, or on Ctrl-C; with neither flag it runs until
Ctrl-C.

Exit status: 0 when it stops after --count items, on Ctrl-C, or when
--timeout passes with no --count; 124 when --timeout passes before --count
items came; 1 on any other error.`,
		Example: `  parley recv
  parley recv --profile ~/bob --count 1 --read
  parley recv --json --timeout 10s`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if count < 0 {
				return fmt.Errorf("--count %d: want 0 (no limit) or more", count)
			}
			ctx, cancel := withTimeout(cmd.Context(), timeout)
			defer cancel()
			s, err := pf.open(ctx, cmd, true)
			if err != nil {
				if isTimeout(ctx, err) && count > 0 {
					return &statusError{exitTimeout, fmt.Errorf("could not log in within %s: %w", timeout, err)}
				}
				return err
			}
			defer s.c.Close()
			out := &printer{w: cmd.OutOrStdout()}
			got, acked := 0, false
			for count == 0 || got < count {
				in, err := s.c.Recv(ctx)
				if err != nil {
					switch {
					case isTimeout(ctx, err) && count > 0:
						err = &statusError{exitTimeout, fmt.Errorf("timed out after %s with %d of %d items", timeout, got, count)}
					case ctx.Err() != nil: // the timeout with no count, or Ctrl-C: a normal end
						err = nil
					default:
						err = explainClientError(err, s.profile, s.dir)
					}
					confirmAcks(s, acked, cmd)
					return err
				}
				got++
				if err := printIncoming(out, in, asJSON); err != nil {
					return err
				}
				// Ack before the read receipt: the server handles them in
				// order, so the sender sees delivered before read.
				if err := s.c.Ack(in.Seq); err != nil {
					return explainClientError(err, s.profile, s.dir)
				}
				acked = true
				if m := in.Message; m != nil && read {
					if err := s.c.MarkRead(ctx, m.From, []uint64{m.Id}); err != nil {
						return fmt.Errorf("send read receipt to %s: %w", m.From, err)
					}
				}
			}
			confirmAcks(s, acked, cmd)
			return nil
		},
	}
	pf.add(cmd)
	f := cmd.Flags()
	f.IntVarP(&count, "count", "n", 0, "stop after this many items (0: no limit)")
	f.DurationVar(&timeout, "timeout", 0, "stop after this long (0: no limit; see exit status)")
	f.BoolVar(&read, "read", false, "send a read receipt for every message printed")
	f.BoolVar(&asJSON, "json", false, "print one JSON object per line")
	return cmd
}

// confirmAcks makes a round trip before exiting: the server handles a
// connection's frames in order, so the answer means the acks before it
// arrived. Without it the last ack could be lost in a reconnect, and the
// item printed again by the next recv.
func confirmAcks(s *clientSession, acked bool, cmd *cobra.Command) {
	if !acked {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(cmd.Context()), 5*time.Second)
	defer cancel()
	if err := s.c.Ping(ctx); err != nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "parley: could not confirm the last acknowledgement reached the server (%v): the next recv may show the last items again\n", err)
	}
}

// printIncoming prints one item: a line, or one JSON object per line (a
// receipt gets one per message id it names).
func printIncoming(p *printer, in client.Incoming, asJSON bool) error {
	switch {
	case in.Message != nil:
		m := in.Message
		if asJSON {
			obj := map[string]any{"type": "message", "from": m.From, "id": m.Id, "server_id": m.ServerId, "ts": m.Ts, "text": string(m.Body)}
			if !utf8.Valid(m.Body) {
				obj["body_base64"] = base64.StdEncoding.EncodeToString(m.Body)
			}
			if md := m.Media; md != nil {
				obj["media"] = mediaJSON(md, true)
				obj["text"] = md.Caption
				if len(m.Body) > 0 && utf8.Valid(m.Body) {
					obj["body"] = string(m.Body) // another client's body beside its media
				}
			}
			return p.json(obj)
		}
		if md := m.Media; md != nil {
			p.line("[%s] %s: %s", clock(m.Ts), m.From, mediaSummary(md))
			if len(m.Body) > 0 {
				p.line("[%s] %s: %s", clock(m.Ts), m.From, textOf(m.Body))
			}
			return nil
		}
		p.line("[%s] %s: %s", clock(m.Ts), m.From, textOf(m.Body))
	case in.Receipt != nil:
		r := in.Receipt
		kind := receiptKind(r.Kind)
		if asJSON {
			for i, id := range r.Ids {
				obj := map[string]any{"type": "receipt", "from": r.By, "id": id, "kind": kind, "ts": r.Ts}
				if i < len(r.ServerIds) {
					obj["server_id"] = r.ServerIds[i]
				}
				if err := p.json(obj); err != nil {
					return err
				}
			}
			return nil
		}
		ids := make([]string, len(r.Ids))
		for i, id := range r.Ids {
			ids[i] = fmt.Sprint(id)
		}
		what := "message"
		if len(ids) > 1 {
			what = "messages"
		}
		p.line("[%s] %s %s by %s: %s %s", clock(r.Ts), tick(r.Kind), kind, r.By, what, strings.Join(ids, ", "))
	default:
		if asJSON {
			return p.json(map[string]any{"type": "unknown", "seq": in.Seq})
		}
		p.line("(item %d of a kind this client does not know; update parley)", in.Seq)
	}
	return nil
}

func receiptKind(k wire.Receipt_Kind) string {
	switch k {
	case wire.Receipt_DELIVERED:
		return "delivered"
	case wire.Receipt_READ:
		return "read"
	}
	return strings.ToLower(k.String())
}

func tick(k wire.Receipt_Kind) string {
	if k == wire.Receipt_DELIVERED || k == wire.Receipt_READ {
		return "✓✓"
	}
	return "?"
}
