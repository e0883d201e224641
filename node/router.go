package node

import (
	"hash/maphash"
	"sync"
)

// router finds the live connection of a user on this node. Every committed
// append asks it where the recipient is, so it is sharded: lookups of
// different users rarely meet on one lock.
//
// It holds an entry for every logged-in session, so its entries are kept
// small: a shard's map is keyed by a 64-bit hash of the user rather than by
// the user's name (16 bytes a slot instead of 24; the name is in the conn,
// and every hit is checked against it). Two users whose hashes collide
// (with a random seed, about one chance in 40 million among a million
// users) are still told apart: the one that finds its slot taken goes into
// a small overflow map keyed by name.
type router struct {
	hash   func(user string) uint64 // maphash with a seed of this router's; tests force collisions
	shards [64]routerShard
}

type routerShard struct {
	mu       sync.RWMutex
	m        map[uint64]*conn
	overflow map[string]*conn // users whose hash's slot holds another user; nil while none
}

func newRouter() *router {
	seed := maphash.MakeSeed()
	r := &router{hash: func(user string) uint64 { return maphash.String(seed, user) }}
	for i := range r.shards {
		r.shards[i].m = make(map[uint64]*conn)
	}
	return r
}

func (r *router) shard(user string) (*routerShard, uint64) {
	h := r.hash(user)
	return &r.shards[h%uint64(len(r.shards))], h
}

// userOf is the user c was registered for. It is set before register and
// never changes, so reading it under a shard's lock is safe.
func userOf(c *conn) string { return c.core.User() }

// register makes c the user's connection and returns the one it replaces.
// user must be c's user.
func (r *router) register(user string, c *conn) (prev *conn) {
	s, h := r.shard(user)
	s.mu.Lock()
	defer s.mu.Unlock()
	switch cur := s.m[h]; {
	case cur == nil:
		// The user may be in the overflow from when another user held
		// the slot: its one entry moves here.
		prev = s.overflow[user]
		delete(s.overflow, user)
		s.m[h] = c
	case userOf(cur) == user:
		prev = cur
		s.m[h] = c
	default: // another user's slot
		prev = s.overflow[user]
		if s.overflow == nil {
			s.overflow = make(map[string]*conn)
		}
		s.overflow[user] = c
	}
	return prev
}

// unregister removes c, unless a newer connection has replaced it.
func (r *router) unregister(user string, c *conn) {
	s, h := r.shard(user)
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.m[h] == c:
		delete(s.m, h)
	case s.overflow[user] == c:
		delete(s.overflow, user)
		if len(s.overflow) == 0 {
			s.overflow = nil
		}
	}
}

func (r *router) lookup(user string) *conn {
	s, h := r.shard(user)
	s.mu.RLock()
	defer s.mu.RUnlock()
	if c := s.m[h]; c != nil && userOf(c) == user {
		return c
	}
	return s.overflow[user]
}

// each calls f for every live connection (for shutdown and admin views),
// outside the shards' locks: f may take its time without holding up
// logins and deliveries.
func (r *router) each(f func(*conn)) {
	var cs []*conn // one shard's connections at a time
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.RLock()
		cs = cs[:0]
		for _, c := range s.m {
			cs = append(cs, c)
		}
		for _, c := range s.overflow {
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
		n += len(s.m) + len(s.overflow)
		s.mu.RUnlock()
	}
	return n
}
