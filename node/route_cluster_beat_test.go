package node

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// The members a node sees change when one stops beating for beatLost or
// one (a new run of a node included) starts: each change is reported
// once.
func TestBeatsReportEachChangeOnce(t *testing.T) {
	b := beats{seen: map[string]time.Time{}}
	t0 := time.Unix(1_700_000_000, 0)
	b.seen["n2 1"], b.seen["n3 1"] = t0, t0
	lost, joined, changed := b.check(t0)
	if !changed || len(lost) != 0 || !slices.Equal(joined, []string{"n2 1", "n3 1"}) {
		t.Fatalf("first check: lost %v joined %v changed %v; want both joined", lost, joined, changed)
	}
	b.seen["n2 1"] = t0.Add(beatLost)
	if lost, joined, changed = b.check(t0.Add(beatLost)); changed {
		t.Fatalf("both beating: lost %v joined %v", lost, joined)
	}
	// n3 stops beating.
	b.seen["n2 1"] = t0.Add(beatLost + time.Second)
	lost, joined, changed = b.check(t0.Add(beatLost + time.Second))
	if !changed || !slices.Equal(lost, []string{"n3 1"}) || len(joined) != 0 {
		t.Fatalf("n3 silent: lost %v joined %v changed %v; want n3 lost", lost, joined, changed)
	}
	if _, _, changed = b.check(t0.Add(beatLost + time.Second)); changed {
		t.Fatal("the same loss reported twice")
	}
	if got := b.silent(t0.Add(beatLost + 2*time.Second)); len(got) != 1 || !strings.HasPrefix(got[0], "node n3 stopped beating") {
		t.Fatalf("silent members: %q; want n3", got)
	}
	// n3 comes back as a new run.
	b.seen["n3 2"] = t0.Add(beatLost + 2*time.Second)
	b.seen["n2 1"] = t0.Add(beatLost + 2*time.Second)
	lost, joined, changed = b.check(t0.Add(beatLost + 2*time.Second))
	if !changed || len(lost) != 0 || !slices.Equal(joined, []string{"n3 2"}) {
		t.Fatalf("n3 back: lost %v joined %v changed %v; want n3's new run joined", lost, joined, changed)
	}
	if got := b.silent(t0.Add(beatLost + 2*time.Second)); len(got) != 0 {
		t.Fatalf("silent members after n3 came back: %q", got)
	}
}
