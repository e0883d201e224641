package node_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/parleyhq/parley/client"
	"github.com/parleyhq/parley/internal/nodetest"
)

// A node alone lists only itself among the native addresses.
func TestServerInfoAlone(t *testing.T) {
	n := nodetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	si, err := client.ServerInfo(ctx, nil, n.HTTPURL())
	if err != nil {
		t.Fatal(err)
	}
	if si.NativeAddr != n.NativeAddr() || !slices.Equal(si.NativeAddrs, []string{n.NativeAddr()}) {
		t.Fatalf("GET /v1/server: native_addr %s, native_addrs %v; want %s in both", si.NativeAddr, si.NativeAddrs, n.NativeAddr())
	}
}
