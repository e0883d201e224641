package top

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/parleyhq/parley/apierror"
	"github.com/parleyhq/parley/monitor"
)

// Snapshot is one reading of a node: what `parley top --once --json`
// prints.
type Snapshot struct {
	Totals   monitor.Stats     `json:"totals"`
	Sessions []monitor.Session `json:"sessions"`
	// Total is the number of sessions on the node, of which Sessions are
	// the first by the sort.
	Total int `json:"total"`
}

// Client reads a node's admin listener.
type Client struct {
	base  *url.URL
	token string
	http  *http.Client
}

// NewClient makes a client for the admin listener at admin: a URL, or a
// bare host:port taken as http.
func NewClient(admin, token string, hc *http.Client) (*Client, error) {
	if admin == "" {
		return nil, errors.New("no admin listener given: pass --admin URL, e.g. --admin http://127.0.0.1:9090")
	}
	if !strings.Contains(admin, "://") {
		admin = "http://" + admin
	}
	u, err := url.Parse(admin)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--admin %q: want the admin listener's URL, e.g. http://127.0.0.1:9090", admin)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	if hc == nil {
		hc = &http.Client{Timeout: 5 * time.Second}
	}
	return &Client{base: u, token: token, http: hc}, nil
}

// URL is the admin listener's base URL.
func (c *Client) URL() string { return c.base.String() }

// Fetch reads the node's totals and its first limit sessions by sort.
func (c *Client) Fetch(ctx context.Context, sort monitor.SortKey, limit int) (Snapshot, error) {
	var s Snapshot
	if err := c.get(ctx, "/admin/stats", nil, &s.Totals); err != nil {
		return s, err
	}
	q := url.Values{"sort": {string(sort)}}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var r monitor.SessionsResponse
	if err := c.get(ctx, "/admin/sessions", q, &r); err != nil {
		return s, err
	}
	s.Sessions, s.Total = r.Sessions, r.Total
	if s.Sessions == nil {
		s.Sessions = []monitor.Session{}
	}
	return s, nil
}

func (c *Client) get(ctx context.Context, path string, q url.Values, v any) error {
	u := *c.base
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
		return fmt.Errorf("cannot reach admin listener at %s: is `parley serve` running? check --admin (%v)", c.base, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("admin listener at %s: reading %s: %w", c.base, path, err)
	}
	switch {
	case resp.StatusCode == http.StatusUnauthorized && c.token == "":
		return fmt.Errorf("the admin listener at %s wants the admin token: pass --token (or set PARLEY_TOKEN)", c.base)
	case resp.StatusCode == http.StatusUnauthorized:
		return fmt.Errorf("the admin listener at %s refused the token: check --token", c.base)
	case resp.StatusCode == http.StatusNotFound:
		return fmt.Errorf("%s answered 404 for %s: is this a Parley admin listener (the --admin address of `parley serve`)?", c.base, path)
	case resp.StatusCode != http.StatusOK:
		if d, ok := apierror.Parse(body); ok {
			return fmt.Errorf("admin listener at %s: %s", c.base, d.Message)
		}
		return fmt.Errorf("admin listener at %s: GET %s: %s", c.base, path, resp.Status)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("admin listener at %s: %s did not answer JSON (%v): is --admin the admin listener?", c.base, path, err)
	}
	return nil
}
