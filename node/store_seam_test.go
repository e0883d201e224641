package node

import (
	"github.com/parleyhq/parley/store"
	"github.com/parleyhq/parley/store/jetstream"
)

// Both stores fit the node's seam, so the cluster can hand a node the
// JetStream store in place of Pebble.
var (
	_ nodeStore = (*store.Pebble)(nil)
	_ nodeStore = (*jetstream.Store)(nil)
)
