package node

import (
	"encoding/json"
	"net/http"
	"runtime"
	"testing"
	"time"
)

// GET /admin/process says how the node is scheduled: an operator checks
// there that the pollers got Ps of their own (parley serve) and what the
// workers are.
func TestProcessSaysHowTheNodeIsScheduled(t *testing.T) {
	n, _ := startInternalNode(t, Config{Pollers: 3, Workers: 5})
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(n.AdminURL() + "/admin/process")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st ProcessStats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	if st.Pollers != 3 || st.Workers != 5 || st.GoMaxProcs != runtime.GOMAXPROCS(0) {
		t.Fatalf("process says pollers %d, workers %d, gomaxprocs %d; want 3, 5, %d", st.Pollers, st.Workers, st.GoMaxProcs, runtime.GOMAXPROCS(0))
	}
}
