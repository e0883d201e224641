package node

import (
	"sync"
	"testing"

	"github.com/parleyhq/parley/store"
)

// Ids from many goroutines across several blocks are never handed out
// twice.
func TestIDsAreUniqueAcrossBlocks(t *testing.T) {
	st, err := store.OpenPebble(t.TempDir(), store.Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	g := &idGen{st: st}
	const workers, each = 8, idBlockSize / 2 // 4 blocks in all
	ids := make([][]uint64, workers)
	var wg sync.WaitGroup
	for w := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				ids[w] = append(ids[w], g.next())
			}
		}()
	}
	wg.Wait()
	seen := make(map[uint64]bool, workers*each)
	for _, l := range ids {
		for _, id := range l {
			if seen[id] {
				t.Fatalf("id %d handed out twice", id)
			}
			seen[id] = true
		}
	}
}
