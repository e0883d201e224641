package node

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/parleyhq/parley/session"
)

// The router answers like a map from user to connection, whatever the
// hashes do: with the real hash, and with hashes forced to collide (every
// user in one slot, or a few).
func TestRouterIsAMapOfUsers(t *testing.T) {
	cfg := &session.Config{}
	for _, tc := range []struct {
		name string
		hash func(string) uint64
	}{
		{"maphash", nil},
		{"all collide", func(string) uint64 { return 42 }},
		{"some collide", func(u string) uint64 { return uint64(u[len(u)-1] % 3) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRouter()
			if tc.hash != nil {
				r.hash = tc.hash
			}
			want := map[string]*conn{}
			rng := rand.New(rand.NewPCG(1, 2))
			users := make([]string, 40)
			for i := range users {
				users[i] = fmt.Sprintf("+1555000%04d", i)
			}
			check := func(step int) {
				t.Helper()
				for _, u := range users {
					if got := r.lookup(u); got != want[u] {
						t.Fatalf("step %d: lookup(%s) = %p, want %p", step, u, got, want[u])
					}
				}
				if r.len() != len(want) {
					t.Fatalf("step %d: len = %d, want %d", step, r.len(), len(want))
				}
				seen := map[*conn]bool{}
				r.each(func(c *conn) { seen[c] = true })
				if len(seen) != len(want) {
					t.Fatalf("step %d: each saw %d connections, want %d", step, len(seen), len(want))
				}
				for _, c := range want {
					if !seen[c] {
						t.Fatalf("step %d: each missed %s", step, c.core.User())
					}
				}
			}
			var old []*conn // replaced connections, whose late unregister must do nothing
			for step := range 2000 {
				u := users[rng.IntN(len(users))]
				switch rng.IntN(3) {
				case 0, 1:
					c := &conn{}
					c.core.Init(u, cfg)
					if prev := r.register(u, c); prev != want[u] {
						t.Fatalf("step %d: register(%s) replaced %p, want %p", step, u, prev, want[u])
					}
					if want[u] != nil {
						old = append(old, want[u])
					}
					want[u] = c
				case 2:
					if c := want[u]; c != nil && rng.IntN(2) == 0 {
						r.unregister(u, c)
						delete(want, u)
					} else if len(old) > 0 {
						c := old[rng.IntN(len(old))]
						r.unregister(c.core.User(), c)
					}
				}
				check(step)
			}
		})
	}
}
