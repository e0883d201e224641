package node

import (
	"math"

	"github.com/parleyhq/parley/store"
	"github.com/parleyhq/parley/wire"
)

// routes is where the node finds a user's session. A node alone keeps
// only its own sessions (*router); a node of a cluster also reaches the
// sessions of the other nodes (*clusterRouter, see route_cluster.go).
//
// register, unregister, lookup, each and len are about this node's own
// sessions. The rest reach the other nodes, and are no-ops alone.
type routes interface {
	// register makes c the user's connection on this node and returns
	// the one it replaces here.
	register(user string, c *conn) (prev *conn)
	// unregister removes c, unless a newer connection has replaced it.
	unregister(user string, c *conn)
	// lookup is the user's connection on this node, or nil.
	lookup(user string) *conn
	// each calls f for every connection on this node.
	each(f func(*conn))
	// len is the number of sessions on this node.
	len() int

	// elsewhere is told of every committed append (item seq, data, in
	// the user's queue) whose recipient has no session on this node, so
	// that a session on another node can be woken: with where the store
	// put it (loc, a store.Result.Locs; 0 if none) and the acks of the
	// batch that made it (a receipt's), for that node's store (see
	// storeNotes). It runs on the store's committer goroutine and must
	// not block.
	elsewhere(user string, seq, loc uint64, data []byte, acked []store.Ack)
	// kickElsewhere closes the user's sessions on the other nodes (a
	// re-registration). It must not block.
	kickElsewhere(user string, code wire.Error_Code, text string)
	// close stops the routing to other nodes; the node calls it once
	// its sessions are closed, before it closes its store.
	close()
}

// A node alone has nowhere else to route.
func (r *router) elsewhere(string, uint64, uint64, []byte, []store.Ack) {}
func (r *router) kickElsewhere(string, wire.Error_Code, string)         {}
func (r *router) close()                                                {}

// wakeSeq, pushed to a session, says "there may be items in your queue
// beyond what you have read": it is past every real item, so the session
// delivers nothing from the push itself and reads its queue instead.
const wakeSeq = math.MaxUint64
