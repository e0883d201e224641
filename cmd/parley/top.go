package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/parleyhq/parley/monitor"
	"github.com/parleyhq/parley/monitor/top"
)

func newTopCmd() *cobra.Command {
	var (
		admin, token, sort string
		o                  top.Options
	)
	keys := top.Keys
	if top.KeysNeedEnter {
		keys += "\n(this platform has no raw terminal mode here: press Enter after a key)"
	}
	cmd := &cobra.Command{
		Use:   "top",
		Short: "Watch a running node's queues and sessions live",
		Long: `Show a live view of a running Parley node, like Erlang's etop: node totals
at the top (connections, messages per second in and out, offline queue depth,
mailboxes, alerts firing), sessions below sorted by mailbox length, refreshed
every --interval. It reads the node's admin listener: --admin (or
PARLEY_ADMIN) is its URL, or HOST:PORT as parley serve --admin takes it.

On a node of a cluster the header also names the cluster's members with
their connections, and its problems (GET /admin/cluster). Each node lists
only its own sessions: give --admin the admin listeners of several nodes,
comma-separated, to see all of theirs merged, with a NODE column saying
which node each session is on (the totals are then summed; the largest
queue and mailbox, the loop lag and the latencies are the worst node's).

Keys:
  ` + keys + `

Without a terminal (a pipe, a file), or with --once or --json, it prints
readings instead: --once --json prints one JSON object
{"totals":{...},"sessions":[...],"total":N} ("cluster":{...} too on a node
of a cluster, as GET /admin/cluster answers) and exits.

When the admin listener is not on loopback it needs the admin token: --token
or PARLEY_TOKEN.`,
		Example: `  parley top
  parley top --admin http://10.0.0.5:9090 --token "$PARLEY_ADMIN_TOKEN"
  parley top --admin 127.0.0.1:39090
  parley top --admin 127.0.0.1:9091,127.0.0.1:9092,127.0.0.1:9093
  parley top --sort in_rate
  parley top --once --json | jq '.sessions[0]'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if o.Sort, err = monitor.ParseSortKey(sort); err != nil {
				return fmt.Errorf("--sort: %w", err)
			}
			if o.Limit < 0 {
				return fmt.Errorf("--limit %d: want a positive number of sessions, or 0 to fit the screen", o.Limit)
			}
			if o.Interval < 100*time.Millisecond {
				return fmt.Errorf("--interval %v: want 100ms or more (the node samples once a second)", o.Interval)
			}
			var admins []string
			for a := range strings.SplitSeq(admin, ",") {
				u, err := listenerURL("--admin", a, "http://127.0.0.1:9090")
				if err != nil {
					return err
				}
				admins = append(admins, u)
			}
			c, err := top.NewClient(strings.Join(admins, ","), token, nil)
			if err != nil {
				return err
			}
			return top.Run(cmd.Context(), c, o, cmd.InOrStdin(), cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&admin, "admin", "http://127.0.0.1:9090", "the node's admin listener: URL, or HOST:PORT as 'parley serve --admin' takes it; several comma-separated to merge a cluster's nodes")
	f.StringVar(&token, "token", "", "admin token, when the admin listener is not on loopback")
	f.StringVar(&sort, "sort", "mailbox", "sort sessions by: mailbox, in_rate, out_rate or queued")
	f.IntVar(&o.Limit, "limit", 0, "sessions to show (0: as many as fit the screen; 50 when not on a terminal)")
	f.BoolVar(&o.Once, "once", false, "print one reading and exit")
	f.BoolVar(&o.JSON, "json", false, "print readings as JSON")
	f.DurationVar(&o.Interval, "interval", time.Second, "time between refreshes")
	return cmd
}
