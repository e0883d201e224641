package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/parleyhq/parley/wire"
)

func newSendCmd() *cobra.Command {
	var (
		pf      profileFlags
		to      string
		wait    string
		timeout time.Duration
		asJSON  bool
	)
	cmd := &cobra.Command{
		Use:   "send --to NUMBER [flags] TEXT...",
		Short: "Send one message",
		Long: `Send one message: the TEXT arguments joined by spaces.

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

A dropped connection is reconnected and the message sent again with the same
id, which the server stores once.

Exit status: 0 on success; 124 when --timeout passes first (after a
successful send, the output still says "sent"); 1 on any other error.`,
		Example: `  parley send --to +14155550102 hello bob
  parley send --profile ~/alice --to +14155550102 --wait delivered "are you there?"
  parley send --to +14155550102 --json --timeout 5s ping`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return errors.New("no message: give the text after the flags, e.g. parley send --to +14155550102 hello")
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
			if len(text) > wire.MaxBody {
				return fmt.Errorf("the message is %d bytes, over the %d-byte limit: shorten it", len(text), wire.MaxBody)
			}
			ctx, cancel := withTimeout(cmd.Context(), timeout)
			defer cancel()
			s, err := pf.open(ctx, cmd, true)
			if err != nil {
				if isTimeout(ctx, err) {
					return &statusError{exitTimeout, fmt.Errorf("could not log in within %s: %w", timeout, err)}
				}
				return err
			}
			defer s.c.Close()

			ack, err := s.c.Send(ctx, peer, []byte(text))
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
				if err := writeJSONLine(out, map[string]any{"id": ack.ID, "server_id": ack.ServerID, "ts": ack.TS, "to": peer, "status": status}); err != nil {
					return err
				}
			} else {
				tick := "✓"
				if status == "delivered" {
					tick = "✓✓"
				}
				fmt.Fprintf(out, "%s %s to %s (id %d, server id %d)\n", tick, status, peer, ack.ID, ack.ServerID)
			}
			return waitErr
		},
	}
	pf.add(cmd)
	f := cmd.Flags()
	f.StringVar(&to, "to", "", "recipient's phone number (+14155550102)")
	f.StringVar(&wait, "wait", "sent", "what to wait for: sent (stored for the recipient) or delivered (received by their device)")
	f.DurationVar(&timeout, "timeout", 30*time.Second, "give up after this long, connecting included (0: never)")
	f.BoolVar(&asJSON, "json", false, "print the result as one JSON object")
	return cmd
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
