package node

import (
	"encoding/json"
	"net/http"
	"os"
	"runtime"
	"testing"
	"time"
)

// GET /admin/process says how the node is scheduled: an operator checks
// there that the pollers got Ps of their own (parley serve) and what the
// workers are.
func TestProcessSaysHowTheNodeIsScheduled(t *testing.T) {
	n, _ := startInternalNode(t, Config{Pollers: 3, Workers: 5})
	st := readProcess(t, n, "")
	if st.Pollers != 3 || st.Workers != 5 || st.GoMaxProcs != runtime.GOMAXPROCS(0) {
		t.Fatalf("process says pollers %d, workers %d, gomaxprocs %d; want 3, 5, %d", st.Pollers, st.Workers, st.GoMaxProcs, runtime.GOMAXPROCS(0))
	}
}

// GET /admin/process splits the node's CPU into the kernel's share and the
// rest, and says how long its threads waited for a CPU: a bench reads
// them to tell the machine's costs from Parley's own.
func TestProcessSplitsTheKernelsShareAndTheWaitForACPU(t *testing.T) {
	n, _ := startInternalNode(t, Config{})
	before := readProcess(t, n, "?sched=1")
	// Work in the kernel (this test is the node's process): syscalls
	// until the system time has moved by at least one tick.
	f, err := os.Open("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 512)
	for deadline := time.Now().Add(10 * time.Second); ; {
		for range 1000 {
			_, _ = f.ReadAt(buf, 0)
		}
		if ps, _ := readProcSelf(); ps.sys > before.SysCPUSeconds || time.Now().After(deadline) {
			break
		}
	}
	after := readProcess(t, n, "?sched=1")
	if after.SysCPUSeconds <= before.SysCPUSeconds {
		t.Fatalf("sys_cpu_seconds %v -> %v after a burst of syscalls, want it to grow", before.SysCPUSeconds, after.SysCPUSeconds)
	}
	if after.SysCPUSeconds > after.CPUSeconds {
		t.Fatalf("sys_cpu_seconds %v > cpu_seconds %v: the kernel's share is part of the whole", after.SysCPUSeconds, after.CPUSeconds)
	}
	if _, err := os.Stat("/proc/self/schedstat"); err == nil {
		// (Not compared between readings: a thread that exits takes its
		// wait with it.)
		if after.RunqueueWaitSeconds == nil {
			t.Fatal("runqueue_wait_seconds absent with ?sched=1 on a kernel that keeps schedstat")
		}
		if plain := readProcess(t, n, ""); plain.RunqueueWaitSeconds != nil {
			t.Fatal("runqueue_wait_seconds read without ?sched=1: a file per thread on every poll")
		}
	}
}

// readProcess is n's answer to GET /admin/process with query.
func readProcess(t *testing.T, n *Node, query string) ProcessStats {
	t.Helper()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(n.AdminURL() + "/admin/process" + query)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st ProcessStats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}
