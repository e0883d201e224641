package top

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/parleyhq/parley/apierror"
	"github.com/parleyhq/parley/monitor"
)

// Snapshot is one reading of a node, or of several nodes of a cluster
// merged: what `parley top --once --json` prints.
//
// Merged, Totals add up the nodes' figures, while the largest queue and
// mailbox, the loop lag and the latency quantiles are the worst node's;
// Sessions are the first of all the nodes' rows by the sort, each naming
// its node.
type Snapshot struct {
	Totals   monitor.Stats     `json:"totals"`
	Sessions []monitor.Session `json:"sessions"`
	// Total is the number of sessions on the nodes, of which Sessions are
	// the first by the sort.
	Total int `json:"total"`
	// Cluster is the cluster as the first admin listener's node sees it
	// (GET /admin/cluster); nil on a node alone.
	Cluster *monitor.ClusterStatus `json:"cluster,omitempty"`
	// ClusterError says why a node of a cluster did not tell its
	// cluster's status; the rest of the reading stands.
	ClusterError string `json:"cluster_error,omitempty"`
}

// Client reads the admin listener of a node, or those of several nodes
// of a cluster, whose readings it merges.
type Client struct {
	bases []*url.URL
	token string
	http  *http.Client
}

// NewClient makes a client for the admin listener at admin: a URL, or a
// bare host:port taken as http; or several of them, comma-separated, one
// per node of a cluster.
func NewClient(admin, token string, hc *http.Client) (*Client, error) {
	if strings.TrimSpace(admin) == "" {
		return nil, errors.New("no admin listener given: pass --admin URL, e.g. --admin http://127.0.0.1:9090")
	}
	c := &Client{token: token, http: hc}
	for a := range strings.SplitSeq(admin, ",") {
		a = strings.TrimSpace(a)
		if !strings.Contains(a, "://") {
			a = "http://" + a
		}
		u, err := url.Parse(a)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("--admin %q: want the admin listener's URL, e.g. http://127.0.0.1:9090, or several comma-separated", a)
		}
		u.Path = strings.TrimSuffix(u.Path, "/")
		c.bases = append(c.bases, u)
	}
	if c.http == nil {
		c.http = &http.Client{Timeout: 5 * time.Second}
	}
	return c, nil
}

// URL is the admin listener's base URL; with several, their URLs
// comma-separated.
func (c *Client) URL() string {
	s := make([]string, len(c.bases))
	for i, u := range c.bases {
		s[i] = u.String()
	}
	return strings.Join(s, ",")
}

// reading is one node's answer.
type reading struct {
	stats    monitor.Stats
	sessions monitor.SessionsResponse
	err      error
}

// Fetch reads the nodes' totals and their first limit sessions by sort,
// and the cluster's status when the first node is in one. The nodes are
// read at once, so a reading takes as long as the slowest answer (a
// cluster's status gathers its members' answers for half a second).
func (c *Client) Fetch(ctx context.Context, sort monitor.SortKey, limit int) (Snapshot, error) {
	rs := make([]reading, len(c.bases))
	var (
		cl    *monitor.ClusterStatus
		clErr error
		wg    sync.WaitGroup
	)
	for i, base := range c.bases {
		wg.Go(func() { rs[i] = c.read(ctx, base, sort, limit) })
	}
	wg.Go(func() { cl, clErr = c.cluster(ctx, c.bases[0]) })
	wg.Wait()

	s := Snapshot{Sessions: []monitor.Session{}, Cluster: cl}
	stats := make([]monitor.Stats, len(rs))
	for i, r := range rs {
		if r.err != nil {
			return Snapshot{}, r.err
		}
		stats[i] = r.stats
		s.Sessions = append(s.Sessions, r.sessions.Sessions...)
		s.Total += r.sessions.Total
	}
	if clErr != nil {
		if ctx.Err() != nil {
			return Snapshot{}, ctx.Err()
		}
		s.ClusterError = clErr.Error()
	}
	s.Totals = sumStats(stats)
	if len(rs) > 1 {
		slices.SortFunc(s.Sessions, monitor.SessionOrder(sort))
		if limit > 0 && len(s.Sessions) > limit {
			s.Sessions = s.Sessions[:limit]
		}
	}
	return s, nil
}

// read reads one node's totals and sessions.
func (c *Client) read(ctx context.Context, base *url.URL, sort monitor.SortKey, limit int) (r reading) {
	if r.err = c.get(ctx, base, "/admin/stats", nil, &r.stats); r.err != nil {
		return r
	}
	q := url.Values{"sort": {string(sort)}}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	r.err = c.get(ctx, base, "/admin/sessions", q, &r.sessions)
	return r
}

// cluster reads the cluster's status from one node: nil, and no error,
// from a node alone.
func (c *Client) cluster(ctx context.Context, base *url.URL) (*monitor.ClusterStatus, error) {
	var st monitor.ClusterStatus
	err := c.get(ctx, base, "/admin/cluster", nil, &st)
	var he *httpError
	if errors.As(err, &he) && he.status == http.StatusNotFound {
		return nil, nil // a node alone (or one from before clusters)
	}
	if err != nil {
		return nil, err
	}
	return &st, nil
}

// sumStats merges the nodes' totals: sums, except the maxima and the
// latency quantiles, which are the worst node's.
func sumStats(ss []monitor.Stats) monitor.Stats {
	t := ss[0]
	if len(ss) == 1 {
		return t
	}
	t.Firing = slices.Clone(t.Firing)
	for _, s := range ss[1:] {
		if s.Time.After(t.Time) {
			t.Time = s.Time
		}
		t.IntervalSeconds = max(t.IntervalSeconds, s.IntervalSeconds)
		t.Connections += s.Connections
		t.Sessions += s.Sessions
		t.MsgsIn += s.MsgsIn
		t.MsgsOut += s.MsgsOut
		t.InRate += s.InRate
		t.OutRate += s.OutRate
		t.Backlog += s.Backlog
		t.QueueDepthTotal += s.QueueDepthTotal
		if s.QueueDepthMax > t.QueueDepthMax {
			t.QueueDepthMax, t.QueueDepthMaxUser = s.QueueDepthMax, s.QueueDepthMaxUser
		}
		t.MailboxTotal += s.MailboxTotal
		if s.MailboxMax > t.MailboxMax {
			t.MailboxMax, t.MailboxMaxUser = s.MailboxMax, s.MailboxMaxUser
		}
		t.InflightTotal += s.InflightTotal
		t.LoopLagSeconds = max(t.LoopLagSeconds, s.LoopLagSeconds)
		t.SendToDeliver = worse(t.SendToDeliver, s.SendToDeliver)
		t.DeliverToAck = worse(t.DeliverToAck, s.DeliverToAck)
		t.AlertsFiring += s.AlertsFiring
		t.Firing = append(t.Firing, s.Firing...)
	}
	return t
}

func worse(a, b monitor.Latency) monitor.Latency {
	return monitor.Latency{Count: a.Count + b.Count, P50: max(a.P50, b.P50), P99: max(a.P99, b.P99)}
}

// httpError is an admin listener's answer other than 200, as a sentence
// that says what to do.
type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func (c *Client) get(ctx context.Context, base *url.URL, path string, q url.Values, v any) error {
	u := *base
	u.Path += path
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("cannot reach admin listener at %s: is `parley serve` running? check --admin (%v)", base, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("admin listener at %s: reading %s: %w", base, path, err)
	}
	fail := func(format string, args ...any) error {
		return &httpError{status: resp.StatusCode, msg: fmt.Sprintf(format, args...)}
	}
	switch {
	case resp.StatusCode == http.StatusUnauthorized && c.token == "":
		return fail("the admin listener at %s wants the admin token: pass --token (or set PARLEY_TOKEN)", base)
	case resp.StatusCode == http.StatusUnauthorized:
		return fail("the admin listener at %s refused the token: check --token", base)
	case resp.StatusCode == http.StatusNotFound:
		return fail("%s answered 404 for %s: is this a Parley admin listener (the --admin address of `parley serve`)?", base, path)
	case resp.StatusCode != http.StatusOK:
		if d, ok := apierror.Parse(body); ok {
			return fail("admin listener at %s: %s", base, d.Message)
		}
		return fail("admin listener at %s: GET %s: %s", base, path, resp.Status)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("admin listener at %s: %s did not answer JSON (%v): is --admin the admin listener?", base, path, err)
	}
	return nil
}
