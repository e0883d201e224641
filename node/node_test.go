package node_test

import (
	"context"
	"net"
	"strings"
	"testing"

	"github.com/parleyhq/parley/node"
)

// A node that cannot start says why, and cleans up what it had started
// (it used to panic while cleaning up).
func TestStartFailsCleanlyWhenTheAddressIsTaken(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for _, cfg := range []node.Config{
		{Listen: taken.Addr().String(), HTTP: "127.0.0.1:0", Admin: "127.0.0.1:0"},
		{Listen: "127.0.0.1:0", HTTP: taken.Addr().String(), Admin: "127.0.0.1:0"},
		{Listen: "127.0.0.1:0", HTTP: "127.0.0.1:0", Admin: taken.Addr().String()},
	} {
		cfg.DataDir, cfg.Log = t.TempDir(), testLogger(t)
		n, err := node.Start(context.Background(), cfg)
		if err == nil {
			n.Close()
			t.Fatalf("Start with a taken address succeeded: %+v", cfg)
		}
		if !strings.Contains(err.Error(), "address already in use") {
			t.Errorf("error does not say what is wrong: %v", err)
		}
	}
}

func TestAdminOffLoopbackNeedsAToken(t *testing.T) {
	_, err := node.Start(context.Background(), node.Config{
		DataDir: t.TempDir(), Listen: "127.0.0.1:0", HTTP: "127.0.0.1:0", Admin: "0.0.0.0:0", Log: testLogger(t),
	})
	if err == nil || !strings.Contains(err.Error(), "--admin-token") {
		t.Fatalf("Start with a public admin listener and no token: err = %v", err)
	}
}
