package main

import (
	"fmt"
	"net"
	"net/url"
	"strings"
)

// listenerURL reads the address of one of a node's HTTP listeners as a
// command takes it (--admin, --server): a URL, or HOST:PORT as 'parley
// serve' takes the same flag (PARLEY_ADMIN means one thing to every
// command). HOST:PORT gets http:// in front, and a host that only makes
// sense to listen on (":9090", "0.0.0.0:9090", "[::]:9090") is dialled on
// loopback.
func listenerURL(flag, raw, example string) (string, error) {
	s := strings.TrimSpace(raw)
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		return "", fmt.Errorf("%s %q: want the listener's URL or HOST:PORT, e.g. %s or %s", flag, raw, example, strings.TrimPrefix(example, "http://"))
	}
	u.Path = strings.TrimRight(u.Path, "/")
	if host, port := u.Hostname(), u.Port(); port != "" {
		switch ip := net.ParseIP(host); {
		case host == "" || (ip != nil && ip.IsUnspecified() && ip.To4() != nil):
			u.Host = net.JoinHostPort("127.0.0.1", port)
		case ip != nil && ip.IsUnspecified():
			u.Host = net.JoinHostPort("::1", port)
		}
	}
	return u.String(), nil
}
