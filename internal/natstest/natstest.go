// Package natstest runs an embedded NATS server with JetStream for the
// tests of other packages: one place to start the real server the stores
// (store/jetstream, media/objstore) and the node's cluster code are
// tested against.
package natstest

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
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

// FreeAddrs returns n loopback addresses whose ports were free a moment
// ago, for servers that must know each other's ports before they start
// (cluster routes). It picks them below the kernel's ephemeral range: a
// port from that range can be taken between the check and the server's
// bind, as the source port of any outgoing connection on the machine
// (CI's parallel packages make thousands), and a route port lost that way
// failed a cluster test.
func FreeAddrs(t testing.TB, n int) []string {
	t.Helper()
	lo := ephemeralLow()
	seen := make(map[int]bool)
	var out []string
	for try := 0; len(out) < n; try++ {
		if try == 1000 {
			t.Fatalf("no %d free loopback ports below %d in 1000 tries", n, lo)
		}
		port := lo/2 + rand.IntN(lo/2)
		if seen[port] {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue // taken
		}
		seen[port] = true
		out = append(out, l.Addr().String())
		l.Close()
	}
	return out
}

// ephemeralLow is the lowest port the kernel hands out as a source port
// (Linux's net.ipv4.ip_local_port_range; 32768 where it cannot be read).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if lo, err := strconv.Atoi(f[0]); err == nil && lo >= 2048 {
				return lo
			}
		}
	}
	return 32768
}
