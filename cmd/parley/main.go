// Command parley is Parley's one binary: the server (serve) and the client
// tools (register, send, recv, chat).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRootCmd()
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "parley:", err)
		var ec exitCoder
		if errors.As(err, &ec) {
			os.Exit(ec.ExitCode())
		}
		os.Exit(1)
	}
}

// exitCoder lets a command choose its exit status (e.g. recv's timeout).
type exitCoder interface{ ExitCode() int }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "parley",
		Short: "Parley: a messaging server and its client tools",
		Long: `Parley is a messaging server built the way WhatsApp built its backend:
long-lived encrypted connections, durable store-and-forward delivery with
receipts, and phone-number accounts.

Every flag can also be set through an environment variable: PARLEY_ and the
flag name in upper case with '-' as '_' (--data -> PARLEY_DATA).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return flagsFromEnv(cmd.Flags(), os.LookupEnv)
		},
	}
	root.AddCommand(newServeCmd(), newRegisterCmd(), newSendCmd(), newRecvCmd(), newChatCmd(), newFetchCmd(), newTopCmd(), newBenchCmd(), newVersionCmd(), newUpgradeCmd())
	return root
}

// flagsFromEnv fills every flag not given on the command line from its
// PARLEY_* variable, so a deployment can configure the server without flags.
func flagsFromEnv(fs *pflag.FlagSet, lookup func(string) (string, bool)) error {
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed || f.Name == "help" {
			return
		}
		name := "PARLEY_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := lookup(name); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("environment variable %s=%q: %w", name, v, e)
			}
		}
	})
	return err
}
