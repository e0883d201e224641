package client_test

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parleyhq/parley/client"
	"github.com/parleyhq/parley/wire"
)

// A client replaced by a newer login of its account while it is sending
// learns REPLACED, even when its next write fails because the server has
// closed the connection, and so never reconnects to throw the newer one
// out. It fails if REPLACED does not end a reconnecting client. The race
// the attack found (the client closing its socket on a write error before
// reading the server's Close frame) did not show here in 8 runs with the
// old close put back, so this guards the outcome, not that window.
func TestE2EReplacedWhileSending(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	key := newKey(t)
	tn.register(t, alice, key)
	tn.register(t, bob, newKey(t))
	for round := range 5 {
		cfg := tn.config(t, alice, key)
		cfg.Reconnect = true
		old := dial(t, cfg)
		stop := make(chan struct{})
		var sent atomic.Int64
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() { // keeps the old client writing when the server closes it
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					case <-old.Done():
						return
					default:
					}
					if _, err := old.Send(testCtx(t), bob, []byte("while replaced")); err == nil {
						sent.Add(1)
					}
				}
			}()
		}
		for deadline := time.Now().Add(guard); sent.Load() < 8; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: the old client's sends are not acknowledged", round)
			}
		}
		newer := dial(t, tn.config(t, alice, key))
		select {
		case <-old.Done():
		case <-time.After(guard):
			t.Fatalf("round %d: the replaced client did not end", round)
		}
		close(stop)
		wg.Wait()
		var ce *client.CloseError
		if err := old.Err(); !errors.As(err, &ce) || ce.Code != wire.Error_REPLACED {
			t.Fatalf("round %d: the replaced client ended with %v, want CloseError REPLACED", round, err)
		}
		if err := newer.Ping(testCtx(t)); err != nil {
			t.Fatalf("round %d: the newer client: %v", round, err)
		}
		newer.Close()
	}
}
