package node

import (
	"hash/maphash"
	"sync"
)

// router finds the live connection of a user on this node. Every committed
// append asks it where the recipient is, so it is sharded: lookups of
// different users rarely meet on one lock.
type router struct {
	seed   maphash.Seed
	shards [64]routerShard
}

type routerShard struct {
	mu sync.RWMutex
	m  map[string]*conn
}

func newRouter() *router {
	r := &router{seed: maphash.MakeSeed()}
	for i := range r.shards {
		r.shards[i].m = make(map[string]*conn)
	}
	return r
}

func (r *router) shard(user string) *routerShard {
	return &r.shards[maphash.String(r.seed, user)%uint64(len(r.shards))]
}

// register makes c the user's connection and returns the one it replaces.
func (r *router) register(user string, c *conn) (prev *conn) {
	s := r.shard(user)
	s.mu.Lock()
	prev = s.m[user]
	s.m[user] = c
	s.mu.Unlock()
	return prev
}

// unregister removes c, unless a newer connection has replaced it.
func (r *router) unregister(user string, c *conn) {
	s := r.shard(user)
	s.mu.Lock()
	if s.m[user] == c {
		delete(s.m, user)
	}
	s.mu.Unlock()
}

func (r *router) lookup(user string) *conn {
	s := r.shard(user)
	s.mu.RLock()
	c := s.m[user]
	s.mu.RUnlock()
	return c
}

// each calls f for every live connection (for shutdown and admin views).
func (r *router) each(f func(*conn)) {
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.RLock()
		cs := make([]*conn, 0, len(s.m))
		for _, c := range s.m {
			cs = append(cs, c)
		}
		s.mu.RUnlock()
		for _, c := range cs {
			f(c)
		}
	}
}

func (r *router) len() int {
	n := 0
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}
