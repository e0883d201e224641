package node

import (
	"encoding/json"
	"net/http"
)

// adminHandler serves the admin listener: health now; metrics, sessions and
// alerts build on it.
func (n *Node) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"status":   "ok",
			"sessions": n.router.len(),
			"accepted": n.metrics.accepted.Load(),
			"logins":   n.metrics.logins.Load(),
			"commits":  n.metrics.commits.Load(),
			"backlog":  n.pool.backlog(),
		})
	})
	return mux
}
