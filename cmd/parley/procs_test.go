package main

import "testing"

func TestPollersGetPsBeyondTheCPUs(t *testing.T) {
	for _, c := range []struct{ cpus, asked, pollers, procs int }{
		{1, 0, 1, 2},
		{2, 0, 1, 3},
		{3, 0, 1, 4},
		{16, 0, 8, 24},
		{2, 4, 4, 6}, // --pollers 4
	} {
		p, procs := pollerProcs(c.cpus, c.asked)
		if p != c.pollers || procs != c.procs {
			t.Errorf("%d CPUs, %d pollers asked: got %d pollers, GOMAXPROCS %d; want %d, %d", c.cpus, c.asked, p, procs, c.pollers, c.procs)
		}
	}
}
