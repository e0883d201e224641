package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/parleyhq/parley/client"
	"github.com/parleyhq/parley/wire"
)

func newChatCmd() *cobra.Command {
	var (
		pf profileFlags
		to string
	)
	cmd := &cobra.Command{
		Use:   "chat --to NUMBER",
		Short: "Chat with one number, line by line",
		Long: `Chat interactively with one number. Every line typed is sent to it; what
arrives is printed as it comes, each line with the server's time and who it
is from ("you" for your own messages):

  [14:03:27] +14155550102: hello alice   a message, from whoever sent it
  [14:03:30] +14155550102: [image/jpeg 2.1 MiB] the view — https://.../v1/media/ID
                                         a file (get it with 'parley fetch URL')
  [14:03:41] you ✓ sent: "are you…"      your message is stored for them
  [14:03:41] you ✓✓ delivered: "are…"    their device received it
  [14:03:52] you ✓✓ read: "are you…"     they read it

Messages from the person you chat with are marked read as they are shown;
everything shown is acknowledged (erased from the server). A dropped
connection is reconnected, and unanswered messages are sent again (the
server stores each once).

Type /quit, or end the input (Ctrl-D), to leave; messages typed before that
are sent first.`,
		Example: `  parley chat --to +14155550102
  parley chat --profile ~/alice --to +14155550102
  echo "on my way" | parley chat --to +14155550102`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			peer, err := normalizePhone("--to", to)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			s, err := pf.open(ctx, cmd, true)
			if err != nil {
				return err
			}
			defer s.c.Close()
			ch := &chat{s: s, peer: peer, out: &printer{w: cmd.OutOrStdout()}, mine: make(map[uint64]string)}
			fmt.Fprintf(cmd.ErrOrStderr(), "Chatting with %s as %s. Type a line and press Enter to send; /quit or Ctrl-D to leave.\n", peer, s.profile.Phone)

			// Incoming items are shown while the user types. On the way
			// out the receiver is stopped and waited for, so an item it
			// has shown is also acked before the connection closes.
			recvErr := make(chan error, 1)
			recvDone := make(chan struct{})
			go func() {
				defer close(recvDone)
				recvErr <- ch.receive(ctx)
			}()
			defer func() {
				cancel()
				<-recvDone
			}()

			// Lines come from a goroutine so that the loop below can also
			// notice the client ending (a blocked stdin read cannot be
			// interrupted; the goroutine ends with the process).
			lines := make(chan string)
			go readLines(ctx, cmd, lines)
			for {
				select {
				case line, ok := <-lines:
					if !ok {
						return nil
					}
					if err := ch.send(ctx, line); err != nil {
						return err
					}
				case err := <-recvErr:
					if ctx.Err() != nil {
						return nil // Ctrl-C
					}
					return explainClientError(err, s.profile, s.dir)
				}
			}
		},
	}
	pf.add(cmd)
	cmd.Flags().StringVar(&to, "to", "", "the phone number to chat with (+14155550102)")
	return cmd
}

// readLines sends the input's lines to out until EOF or /quit, then closes
// it. Empty lines are skipped.
func readLines(ctx context.Context, cmd *cobra.Command, out chan<- string) {
	defer close(out)
	sc := bufio.NewScanner(cmd.InOrStdin())
	sc.Buffer(make([]byte, 0, 4096), wire.MaxBody+1)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		switch strings.TrimSpace(line) {
		case "":
			continue
		case "/quit", "/exit":
			return
		}
		select {
		case out <- line:
		case <-ctx.Done():
			return
		}
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "parley: reading input: %v (lines are limited to %d bytes)\n", err, wire.MaxBody)
	}
}

// chat is one chat session's state.
type chat struct {
	s    *clientSession
	peer string
	out  *printer

	mu   sync.Mutex
	mine map[uint64]string // short texts of my messages, by id, until read
}

// send sends one line and shows its first tick. Sends are one at a time so
// the peer sees the lines in the order they were typed.
func (ch *chat) send(ctx context.Context, line string) error {
	if len(line) > wire.MaxBody {
		ch.out.line("%s ✗ not sent (%d bytes, over the %d-byte limit)", ch.own(time.Now().UnixNano()), len(line), wire.MaxBody)
		return nil
	}
	// The id is known before sending so that a receipt arriving before
	// Send returns still finds the text.
	id := ch.s.c.NewID()
	short := shortText(line, 24)
	ch.mu.Lock()
	ch.mine[id] = short
	ch.mu.Unlock()
	ack, err := ch.s.c.SendWithID(ctx, id, ch.peer, []byte(line))
	var se *client.ServerError
	switch {
	case err == nil:
		ch.out.line("%s ✓ sent: %q", ch.own(ack.TS), short)
	case errors.As(err, &se):
		ch.out.line("%s ✗ not sent: %q: %s", ch.own(time.Now().UnixNano()), short, se.Text)
		ch.forget(id)
	default:
		return explainClientError(err, ch.s.profile, ch.s.dir)
	}
	return nil
}

// own starts a line about one of my messages: "[14:03:27] you".
func (ch *chat) own(ts int64) string { return "[" + clock(ts) + "] you" }

// messageLines are the lines an incoming message shows as: a media summary
// and the text, each "[time] sender: ...". Nothing the other side sends may
// pass for my own lines, so the lines of a multi-line text are indented
// under the first, and a line with control characters (terminal escapes)
// is shown quoted.
func messageLines(m *wire.Message) []string {
	prefix := fmt.Sprintf("[%s] %s: ", clock(m.Ts), printable(m.From))
	var lines []string
	if m.Media != nil {
		lines = append(lines, prefix+mediaSummary(m.Media))
	}
	if len(m.Body) > 0 || m.Media == nil {
		indent := strings.Repeat(" ", utf8.RuneCountInString(prefix))
		for i, l := range strings.Split(textOf(m.Body), "\n") {
			if i == 0 {
				lines = append(lines, prefix+printable(l))
			} else {
				lines = append(lines, indent+printable(l))
			}
		}
	}
	return lines
}

func (ch *chat) forget(id uint64) {
	ch.mu.Lock()
	delete(ch.mine, id)
	ch.mu.Unlock()
}

// receive shows incoming items until the client ends or ctx is done.
func (ch *chat) receive(ctx context.Context) error {
	for {
		in, err := ch.s.c.Recv(ctx)
		if err != nil {
			return err
		}
		var readFrom *wire.Message
		switch {
		case in.Message != nil:
			m := in.Message
			for _, l := range messageLines(m) {
				ch.out.line("%s", l)
			}
			if m.From == ch.peer {
				readFrom = m // shown on screen: that is what "read" means here
			}
		case in.Receipt != nil:
			ch.showReceipt(in.Receipt)
		}
		// Ack before the read receipt: the server handles them in order,
		// so the sender sees delivered before read.
		if err := ch.s.c.Ack(in.Seq); err != nil {
			return err
		}
		if m := readFrom; m != nil {
			if err := ch.s.c.MarkRead(ctx, m.From, []uint64{m.Id}); err != nil && ctx.Err() == nil {
				ch.out.line("  (could not send the read receipt: %v)", err)
			}
		}
	}
}

func (ch *chat) showReceipt(r *wire.Receipt) {
	kind := receiptKind(r.Kind)
	for _, id := range r.Ids {
		ch.mu.Lock()
		short, ok := ch.mine[id]
		if ok && r.Kind == wire.Receipt_READ {
			delete(ch.mine, id) // nothing comes after read
		}
		ch.mu.Unlock()
		who := ch.own(r.Ts)
		switch {
		case ok && r.By == ch.peer:
			ch.out.line("%s %s %s: %q", who, tick(r.Kind), kind, short)
		case ok:
			ch.out.line("%s %s %s by %s: %q", who, tick(r.Kind), kind, printable(r.By), short)
		default: // a message sent before this chat started
			ch.out.line("%s %s %s by %s: message %d", who, tick(r.Kind), kind, printable(r.By), id)
		}
	}
}
