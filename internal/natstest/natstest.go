// Package natstest runs an embedded NATS server with JetStream for the
// tests of other packages: one place to start the real server the stores
// (store/jetstream, media/objstore) and the node's cluster code are
// tested against.
package natstest

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// readyGuard bounds how long a server may take to accept connections; a
// hang guard, not a performance check.
const readyGuard = 30 * time.Second

// StartServer runs a one-node NATS server with JetStream kept in dir
// (t.TempDir() if dir is empty) on a free loopback port. It is shut down
// when the test ends, or before by the caller's Shutdown.
func StartServer(t testing.TB, dir string) *server.Server {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	ns, err := server.NewServer(&server.Options{
		JetStream: true,
		StoreDir:  dir,
		Host:      "127.0.0.1",
		Port:      -1,
		NoLog:     true,
		NoSigs:    true,
	})
	if err != nil {
		t.Fatalf("nats server: %v", err)
	}
	go ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(readyGuard) {
		ns.Shutdown()
		t.Fatalf("nats server not ready after %s", readyGuard)
	}
	return ns
}

// Connect returns an in-process connection to ns, closed when the test
// ends.
func Connect(t testing.TB, ns *server.Server) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect("", nats.InProcessServer(ns))
	if err != nil {
		t.Fatalf("connect to nats server: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}
