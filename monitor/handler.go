package monitor

import (
	"cmp"
	"container/heap"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/parleyhq/parley/apierror"
)

// SortKey orders /admin/sessions.
type SortKey string

const (
	SortMailbox SortKey = "mailbox"  // longest mailbox first
	SortInRate  SortKey = "in_rate"  // most messages sent per second first
	SortOutRate SortKey = "out_rate" // most messages delivered per second first
	SortQueued  SortKey = "queued"   // largest offline queue first
)

// SortKeys lists the valid sort keys.
func SortKeys() []SortKey { return []SortKey{SortMailbox, SortInRate, SortOutRate, SortQueued} }

// ParseSortKey checks a sort key; the empty string means SortMailbox.
func ParseSortKey(s string) (SortKey, error) {
	if s == "" {
		return SortMailbox, nil
	}
	for _, k := range SortKeys() {
		if string(k) == s {
			return k, nil
		}
	}
	return "", fmt.Errorf("unknown sort %q: want mailbox, in_rate, out_rate or queued", s)
}

// DefaultSessionLimit is how many sessions /admin/sessions returns when no
// limit is given.
const DefaultSessionLimit = 100

// Sessions are the live sessions, sorted by key (ties by user, then
// connection), at most limit of them (limit <= 0: all), and how many there
// are in all. Each row's figures are read now, its rates are over the last
// sample's interval.
//
// It walks the sessions once, keeping only the limit first rows in a heap:
// a node with a million sessions answers `parley top` every second, and
// top shows a screenful. Connection names are formatted only for the rows
// kept.
func (m *Monitor) Sessions(by SortKey, limit int) (rows []Session, total int) {
	m.sampleMu.Lock() // the Rates are Sample's
	defer m.sampleMu.Unlock()
	dt, order := m.rateDT, SessionOrder(by)
	row := func(s SessionStat, r *Rates) Session {
		return Session{
			User: s.User, Node: m.node, MsgsIn: s.MsgsIn, MsgsOut: s.MsgsOut,
			InRate: perSecond(r.dIn, dt), OutRate: perSecond(r.dOut, dt),
			Mailbox: s.Mailbox, Inflight: s.Inflight, Queued: s.Queued,
		}
	}
	if limit <= 0 {
		m.src.EachSession(func(s SessionStat, r *Rates) {
			total++
			x := row(s, r)
			x.Conn = connName(s.Conn)
			rows = append(rows, x)
		})
		slices.SortFunc(rows, order)
		return nonNil(rows), total
	}
	h := &worstFirst{order: order, rows: make([]Session, 0, min(limit, 256))}
	m.src.EachSession(func(s SessionStat, r *Rates) {
		total++
		x := row(s, r)
		if len(h.rows) < limit {
			x.Conn = connName(s.Conn)
			heap.Push(h, x)
			return
		}
		// Most sessions do not make the cut, and are found out without
		// naming their connection: only the same user on two connections
		// can tie up to the name.
		c := order(x, h.rows[0])
		if c < 0 && x.User == h.rows[0].User {
			x.Conn = connName(s.Conn)
			c = order(x, h.rows[0])
		}
		if c < 0 {
			if x.Conn == "" {
				x.Conn = connName(s.Conn)
			}
			h.rows[0] = x
			heap.Fix(h, 0)
		}
	})
	slices.SortFunc(h.rows, order)
	return nonNil(h.rows), total
}

func connName(s fmt.Stringer) string {
	if s == nil {
		return ""
	}
	return s.String()
}

// SessionOrder compares sessions as /admin/sessions orders them: larger
// figure first, then by user, connection and node, so that equal rows keep
// a stable order between refreshes (and when merged from several nodes).
func SessionOrder(by SortKey) func(a, b Session) int {
	val := func(s *Session) float64 {
		switch by {
		case SortInRate:
			return s.InRate
		case SortOutRate:
			return s.OutRate
		case SortQueued:
			return float64(s.Queued)
		}
		return float64(s.Mailbox)
	}
	return func(a, b Session) int {
		if c := cmp.Compare(val(&b), val(&a)); c != 0 {
			return c
		}
		return cmp.Or(strings.Compare(a.User, b.User), strings.Compare(a.Conn, b.Conn), strings.Compare(a.Node, b.Node))
	}
}

// worstFirst is a heap whose root is the last of the rows kept.
type worstFirst struct {
	order func(a, b Session) int
	rows  []Session
}

func (h *worstFirst) Len() int           { return len(h.rows) }
func (h *worstFirst) Less(i, j int) bool { return h.order(h.rows[i], h.rows[j]) > 0 }
func (h *worstFirst) Swap(i, j int)      { h.rows[i], h.rows[j] = h.rows[j], h.rows[i] }
func (h *worstFirst) Push(x any)         { h.rows = append(h.rows, x.(Session)) }
func (h *worstFirst) Pop() any {
	r := h.rows[len(h.rows)-1]
	h.rows = h.rows[:len(h.rows)-1]
	return r
}

// nonNil makes an empty list encode as [] rather than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// SessionsResponse is the body of GET /admin/sessions.
type SessionsResponse struct {
	Sort     SortKey   `json:"sort"`
	Total    int       `json:"total"` // live sessions, before the limit
	Sessions []Session `json:"sessions"`
}

// AlertsResponse is the body of GET /admin/alerts.
type AlertsResponse struct {
	Firing []Alert `json:"firing"`
	// Recent are up to 100 resolved alerts, newest first.
	Recent []Alert `json:"recent"`
}

// HistoryResponse is the body of GET /admin/stats/history.
type HistoryResponse struct {
	IntervalSeconds float64 `json:"interval_seconds"`
	Stats           []Stats `json:"stats"` // oldest first
}

// Handler serves the admin listener's monitoring endpoints:
//
//	GET /                      the live dashboard (and its assets under /dashboard/)
//	GET /metrics               Prometheus metrics
//	GET /admin/stats           node totals and rates (JSON Stats)
//	GET /admin/stats/history   the last samples, for charts (?n=, default all kept)
//	GET /admin/sessions        ?sort=mailbox|in_rate|out_rate|queued&limit=N
//	GET /admin/alerts          firing and recently resolved alerts
//
// Each but the dashboard's page and assets, which hold no data, goes
// through Guard: no cross-site requests, and the admin token when
// RequireToken is set.
func (m *Monitor) Handler() http.Handler {
	mux := http.NewServeMux()
	guard := func(h http.HandlerFunc) http.Handler { return m.Guard(h) }

	mux.Handle("GET /metrics", m.Guard(promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(m.log.Handler(), slog.LevelError),
		ErrorHandling: promhttp.ContinueOnError,
	})))
	mux.Handle("GET /admin/stats", guard(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, m.Stats())
	}))
	mux.Handle("GET /admin/stats/history", guard(func(w http.ResponseWriter, r *http.Request) {
		n := historyLen
		if s := r.URL.Query().Get("n"); s != "" {
			v, err := strconv.Atoi(s)
			if err != nil || v < 1 {
				writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("n=%q: want a positive number of samples", s))
				return
			}
			n = v
		}
		writeJSON(w, http.StatusOK, HistoryResponse{IntervalSeconds: m.interval.Seconds(), Stats: m.History(n)})
	}))
	mux.Handle("GET /admin/sessions", guard(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		by, err := ParseSortKey(q.Get("sort"))
		if err != nil {
			writeError(w, http.StatusBadRequest, "bad_request", err.Error())
			return
		}
		limit := DefaultSessionLimit
		if s := q.Get("limit"); s != "" {
			v, err := strconv.Atoi(s)
			if err != nil || v < 1 {
				writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("limit=%q: want a positive number of sessions", s))
				return
			}
			limit = v
		}
		rows, total := m.Sessions(by, limit)
		writeJSON(w, http.StatusOK, SessionsResponse{Sort: by, Total: total, Sessions: rows})
	}))
	mux.Handle("GET /admin/alerts", guard(func(w http.ResponseWriter, r *http.Request) {
		firing, recent := m.Alerts()
		writeJSON(w, http.StatusOK, AlertsResponse{Firing: firing, Recent: recent})
	}))

	assets := dashboardAssets()
	// The page holds no data (it fetches it with the token, which it
	// takes from the URL's fragment, never sent to the server), so a
	// browser can open it without a header.
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		http.ServeFileFS(w, r, assets, "index.html")
	})
	mux.Handle("GET /dashboard/", http.StripPrefix("/dashboard/", http.FileServerFS(assets)))
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) { apierror.WriteJSON(w, status, v) }

// writeError answers status with Parley's JSON error (see apierror): its
// code, and a sentence that says what to do.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	apierror.Write(w, status, code, msg, 0)
}

// dashboardAssets are the dashboard's files, embedded in the binary so the
// page works on a machine with no internet access.
func dashboardAssets() fs.FS {
	sub, err := fs.Sub(dashboardFS, "dashboard")
	if err != nil {
		panic(err) // the embed directive guarantees the directory
	}
	return sub
}
