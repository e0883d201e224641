package monitor

import (
	"crypto/subtle"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// Guard is the admin listener's one access check; every admin endpoint but
// the health probe and the dashboard's static files goes through it.
//
// Two things are checked, in this order:
//
//  1. The request does not come from another site. A browser that visits
//     an attacker's page can be made to send requests to a loopback admin
//     listener (a form POST or a no-cors fetch: "simple requests" that
//     skip CORS preflight), or, through DNS rebinding, to read its answers
//     under the attacker's host name. So a request is refused when the
//     browser says it is cross-site (Sec-Fetch-Site other than same-origin
//     or none), when its Origin is not the listener itself, and, when no
//     token is set, when its Host is not a loopback name: with no token,
//     the only thing standing between a web page and the admin endpoints
//     is that they are reached as localhost. Scripts (curl, parley top,
//     Prometheus) send none of these headers and are not affected.
//  2. The admin token, when one is set, in an Authorization: Bearer header
//     only: a token in a URL ends up in logs, proxies and shell history.
//
// A token was not made mandatory on loopback because every local tool and
// the README's examples would need it for no gain against local users,
// who can read the data directory anyway; the cross-site checks close the
// browser's way in.
func (m *Monitor) Guard(h http.Handler) http.Handler {
	want := []byte(m.token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if msg := crossSite(r, m.needTok); msg != "" {
			m.metrics.AdminRefused.WithLabelValues("cross_site").Inc()
			writeError(w, http.StatusForbidden, "cross_site", msg)
			return
		}
		if !m.needTok {
			h.ServeHTTP(w, r)
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), want) != 1 {
			m.metrics.AdminRefused.WithLabelValues("token").Inc()
			w.Header().Set("WWW-Authenticate", `Bearer realm="parley admin"`)
			msg := "this admin listener needs the admin token: send it as Authorization: Bearer TOKEN (a token in the URL is not accepted)"
			if ok {
				msg = "wrong admin token: check the token the server was started with"
			}
			writeError(w, http.StatusUnauthorized, "unauthorized", msg)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// crossSite says why r must be refused as coming from another site, or "".
// Without a token (hasToken false) the listener relies on being reached as
// localhost.
func crossSite(r *http.Request, hasToken bool) string {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "", "same-origin", "none":
	default:
		return "cross-site requests to the admin listener are refused: open the dashboard from the admin listener itself, or call the API from a script"
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			return "requests from another origin (" + o + ") to the admin listener are refused"
		}
	}
	if !hasToken && !loopbackHost(r.Host) {
		return "this admin listener has no token, so it answers only requests addressed to localhost or a loopback address (Host: " + r.Host + "); set an admin token to reach it under another name"
	}
	return ""
}

// loopbackHost reports whether a Host header names this machine's loopback.
func loopbackHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
