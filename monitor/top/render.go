package top

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/parleyhq/parley/monitor"
)

// View is how a frame is drawn.
type View struct {
	Admin string          // shown in the title line
	Sort  monitor.SortKey // the column the sessions are sorted by
	Width int             // terminal columns; 0: no truncation
	ANSI  bool            // highlight the header (live view); false for plain text
	Err   error           // the last fetch's error, shown above the sessions
	Keys  bool            // show the key help line
}

// headerLines is how many lines Render writes before the session rows.
func headerLines(s Snapshot) int {
	if s.Cluster != nil || s.ClusterError != "" {
		return 9
	}
	return 8
}

// Render writes one frame: node totals at the top (and the cluster's
// members, on a node of one), then sessions in the order given, with a
// NODE column when they are on named nodes.
func Render(w io.Writer, s Snapshot, v View) {
	var b strings.Builder
	line := func(format string, args ...any) {
		l := fmt.Sprintf(format, args...)
		if v.Width > 0 {
			l = clip(l, v.Width)
		}
		b.WriteString(l)
		b.WriteByte('\n')
	}
	t := s.Totals
	ts := ""
	if !t.Time.IsZero() {
		ts = t.Time.Local().Format(time.TimeOnly)
	}
	line("parley top  %s  %s  sorted by %s", v.Admin, ts, sortTitle(v.Sort))
	switch {
	case s.Cluster != nil:
		line("%s", clusterLine(s.Cluster))
	case s.ClusterError != "":
		line("cluster: not read: %s", s.ClusterError)
	}
	line("connections %d  sessions %d  msgs/s in %s  out %s  backlog %d  loop lag %s",
		t.Connections, t.Sessions, rate(t.InRate), rate(t.OutRate), t.Backlog, seconds(t.LoopLagSeconds))
	line("offline queues %d items (largest %s)  mailboxes %d events (longest %s)  inflight %d",
		t.QueueDepthTotal, who(t.QueueDepthMaxUser, t.QueueDepthMax), t.MailboxTotal, who(t.MailboxMaxUser, t.MailboxMax), t.InflightTotal)
	line("latency send→deliver p50 %s p99 %s  deliver→ack p50 %s p99 %s",
		quant(t.SendToDeliver, false), quant(t.SendToDeliver, true), quant(t.DeliverToAck, false), quant(t.DeliverToAck, true))
	if len(t.Firing) == 0 {
		line("alerts: none firing")
	} else {
		parts := make([]string, 0, len(t.Firing))
		for _, a := range t.Firing {
			p := a.Name
			if a.Subject != "" {
				p += " " + a.Subject
			}
			parts = append(parts, fmt.Sprintf("%s (%s ≥ %s)", p, alertValue(a, a.Value), alertValue(a, a.Threshold)))
		}
		line("alerts: %d FIRING: %s", len(t.Firing), strings.Join(parts, ", "))
	}
	switch {
	case v.Err != nil:
		line("! %v", v.Err)
	case v.Keys:
		line("keys: m mailbox  i in/s  o out/s  q queued  x quit    (%d of %d sessions)", len(s.Sessions), s.Total)
	default:
		line("%d of %d sessions", len(s.Sessions), s.Total)
	}
	line("")

	// The NODE column only when the rows name nodes: a node alone looks
	// as it always did.
	nodeW := 0
	for _, r := range s.Sessions {
		nodeW = max(nodeW, utf8.RuneCountInString(r.Node))
	}
	if nodeW > 0 {
		nodeW = min(max(nodeW, len("NODE")), 16)
	}
	node := func(name string) string {
		if nodeW == 0 {
			return ""
		}
		return fmt.Sprintf(" %-*s", nodeW, clip(name, nodeW))
	}
	hdr := fmt.Sprintf("%-16s%s %-21s %8s %8s %8s %9s %9s %10s %10s",
		"USER", node("NODE"), "CONN", col("MAILBOX", v.Sort == monitor.SortMailbox), "INFLIGHT", col("QUEUED", v.Sort == monitor.SortQueued),
		col("IN/s", v.Sort == monitor.SortInRate), col("OUT/s", v.Sort == monitor.SortOutRate), "MSGS IN", "MSGS OUT")
	if v.Width > 0 {
		hdr = clip(hdr, v.Width)
	}
	if v.ANSI {
		hdr = "\x1b[7m" + padRight(hdr, v.Width) + "\x1b[0m"
	}
	b.WriteString(hdr)
	b.WriteByte('\n')
	for _, r := range s.Sessions {
		line("%-16s%s %-21s %8d %8d %8d %9s %9s %10d %10d",
			clip(r.User, 16), node(r.Node), clip(r.Conn, 21), r.Mailbox, r.Inflight, r.Queued, rate(r.InRate), rate(r.OutRate), r.MsgsIn, r.MsgsOut)
	}
	io.WriteString(w, b.String())
}

// clusterLine names the cluster's members with their connections, and its
// problems: "cluster: n1 3 conns, n2 1 conn; no problems".
func clusterLine(c *monitor.ClusterStatus) string {
	members := make([]string, len(c.Members))
	for i, m := range c.Members {
		members[i] = m.Node + " " + plural(int(m.Conns), "conn")
	}
	l := "cluster: " + strings.Join(members, ", ")
	if len(c.Members) == 0 {
		l = "cluster: no member answered"
	}
	if len(c.Problems) == 0 {
		return l + "; no problems"
	}
	return fmt.Sprintf("%s; %s: %s", l, strings.ToUpper(plural(len(c.Problems), "problem")), strings.Join(c.Problems, "; "))
}

// plural is "1 conn", "2 conns".
func plural(n int, unit string) string {
	if n == 1 {
		return "1 " + unit
	}
	return strconv.Itoa(n) + " " + unit + "s"
}

func sortTitle(k monitor.SortKey) string {
	switch k {
	case monitor.SortInRate:
		return "msgs/s in"
	case monitor.SortOutRate:
		return "msgs/s out"
	case monitor.SortQueued:
		return "offline queue"
	}
	return "mailbox"
}

// col marks the sorted column's header.
func col(name string, sorted bool) string {
	if sorted {
		return name + "▼"
	}
	return name
}

func who(user string, n int) string {
	if user == "" || n == 0 {
		return strconv.Itoa(n)
	}
	return fmt.Sprintf("%s: %d", user, n)
}

func rate(v float64) string {
	if v >= 1000 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}

func seconds(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(time.Microsecond).String()
}

func quant(l monitor.Latency, p99 bool) string {
	if l.Count == 0 {
		return "-"
	}
	if p99 {
		return seconds(l.P99)
	}
	return seconds(l.P50)
}

func alertValue(a monitor.Alert, v float64) string {
	if a.Name == monitor.AlertLoopLag {
		return seconds(v)
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}

// clip shortens s to n runes, marking the cut.
func clip(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	if n <= 1 {
		return string([]rune(s)[:max(n, 0)])
	}
	return string([]rune(s)[:n-1]) + "…"
}

func padRight(s string, n int) string {
	if c := utf8.RuneCountInString(s); c < n {
		return s + strings.Repeat(" ", n-c)
	}
	return s
}
