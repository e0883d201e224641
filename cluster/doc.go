// Package cluster puts a Parley node in a cluster of nodes that share
// their state through NATS JetStream: it embeds a NATS server with
// JetStream in the node (the nodes' servers form one NATS cluster over
// their route ports) or connects to an external NATS system, and hands
// the node the connection its store (store/jetstream) and its router use.
//
// Consensus is JetStream's (Raft per stream); nothing here is home-made.
//
// # What a cluster with Replicas 3 promises, and what it does not
//
// A message is acknowledged to its sender (SendAck) only once JetStream
// has acknowledged the write, that is once the stream's leader and a
// majority of its replicas hold it. So with Replicas 3, losing any one
// node (killed, its machine gone, its disk gone) loses no acknowledged
// message: the others elect a new leader within seconds and serve it.
//
// JetStream does not fsync each write: it syncs on its own schedule
// (every two minutes by default). Replication is the durability, not the
// disk. A correlated power loss of every replica at once (all the nodes
// on one power feed, say) can lose the writes of the last moments: that
// is outside the promise. Put the replicas where they do not fail
// together. A one-node cluster, or Replicas 1, promises nothing beyond
// the one server's page cache: for one machine, use the default
// single-node mode (Pebble, which fsyncs every commit) instead.
package cluster
