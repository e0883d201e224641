package node

import (
	"context"
	"log/slog"
	"testing"

	"github.com/parleyhq/parley/noise"
	"github.com/parleyhq/parley/store"
)

// startInternalNode starts a node for this package's own tests: cfg with a
// temporary data directory, loopback listeners on free ports and no log,
// and an account with a fresh key for each of phones. Close is a cleanup.
func startInternalNode(t *testing.T, cfg Config, phones ...string) (*Node, map[string]noise.Keypair) {
	t.Helper()
	cfg.DataDir, cfg.Listen, cfg.HTTP, cfg.Admin = t.TempDir(), "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Log = slog.New(slog.DiscardHandler)
	n, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	keys := map[string]noise.Keypair{}
	for _, phone := range phones {
		kp, err := noise.GenerateKeypair(nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := n.store.PutAccount(store.Account{Phone: phone, Key: kp.Public, Generation: 1}); err != nil {
			t.Fatal(err)
		}
		keys[phone] = kp
	}
	return n, keys
}
