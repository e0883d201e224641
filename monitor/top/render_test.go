package top

import (
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"

	"github.com/parleyhq/parley/monitor"
)

// TestRender draws the frames scripted in testdata/render: a node alone,
// a node of a cluster, rows merged from several nodes. Rewrite the
// expected frames after an intended change with
//
//	go test ./monitor/top -run TestRender -rewrite
//
// One command, render [sort=KEY] [width=N], whose input lines build the
// reading:
//
//	totals name=N ...               connections, sessions, backlog, queue_depth_total
//	member NODE conns=N             a member of the cluster (the cluster line appears)
//	problem TEXT...                 one of the cluster's problems
//	cluster-error TEXT...           the cluster's status could not be read
//	session USER [node=N] [conn=C] [name=N ...]   mailbox, inflight, queued, msgs_in, msgs_out
func TestRender(t *testing.T) {
	datadriven.RunTest(t, "testdata/render", func(t *testing.T, d *datadriven.TestData) string {
		if d.Cmd != "render" {
			t.Fatalf("%s: unknown command %q", d.Pos, d.Cmd)
		}
		v := View{Admin: "http://127.0.0.1:9090", Sort: monitor.SortMailbox}
		for _, a := range d.CmdArgs {
			switch a.Key {
			case "sort":
				v.Sort = monitor.SortKey(a.Vals[0])
			case "width":
				v.Width, _ = strconv.Atoi(a.Vals[0])
			default:
				t.Fatalf("%s: unknown argument %q", d.Pos, a.Key)
			}
		}
		s := scripted(t, d.Pos, d.Input)
		var b strings.Builder
		Render(&b, s, v)
		// The live view fits rows under the header by headerLines: it must
		// count what Render draws.
		lines := strings.Split(b.String(), "\n")
		if got := len(lines) - len(s.Sessions) - 1; got != headerLines(s) {
			t.Errorf("%s: %d lines above the rows, headerLines says %d", d.Pos, got, headerLines(s))
		}
		return b.String()
	})
}

// scripted builds a Snapshot from a render command's input.
func scripted(t *testing.T, pos, input string) Snapshot {
	s := Snapshot{Sessions: []monitor.Session{}}
	for l := range strings.Lines(input) {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		kv := map[string]string{}
		for _, a := range f[1:] {
			if k, v, ok := strings.Cut(a, "="); ok {
				kv[k] = v
			}
		}
		num := func(k string) int {
			if kv[k] == "" {
				return 0
			}
			n, err := strconv.Atoi(kv[k])
			if err != nil {
				t.Fatalf("%s: %s=%q: %v", pos, k, kv[k], err)
			}
			return n
		}
		cluster := func() *monitor.ClusterStatus {
			if s.Cluster == nil {
				s.Cluster = &monitor.ClusterStatus{Node: "n1"}
			}
			return s.Cluster
		}
		rest := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), f[0]))
		switch f[0] {
		case "totals":
			s.Totals.Connections, s.Totals.Sessions = num("connections"), num("sessions")
			s.Totals.Backlog, s.Totals.QueueDepthTotal = num("backlog"), int64(num("queue_depth_total"))
		case "member":
			c := cluster()
			c.Members = append(c.Members, monitor.ClusterMember{Node: f[1], Conns: int64(num("conns"))})
		case "problem":
			c := cluster()
			c.Problems = append(c.Problems, rest)
		case "cluster-error":
			s.ClusterError = rest
		case "session":
			s.Sessions = append(s.Sessions, monitor.Session{
				User: f[1], Node: kv["node"], Conn: kv["conn"],
				Mailbox: num("mailbox"), Inflight: num("inflight"), Queued: num("queued"),
				MsgsIn: uint64(num("msgs_in")), MsgsOut: uint64(num("msgs_out")),
			})
			s.Total++
		default:
			t.Fatalf("%s: unknown line %q", pos, l)
		}
	}
	return s
}
