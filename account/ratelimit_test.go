package account

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

func newTestLimiter(t *testing.T, r RateLimit, maxKeys int) *Limiter {
	t.Helper()
	l, err := NewLimiter(r, maxKeys)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestLimiterWindowAndGap(t *testing.T) {
	l := newTestLimiter(t, RateLimit{Max: 3, Window: 10 * time.Minute, MinGap: 30 * time.Second}, 0)
	steps := []struct {
		at   time.Duration
		ok   bool
		wait time.Duration
	}{
		{0, true, 0},
		{10 * time.Second, false, 20 * time.Second}, // the gap
		{30 * time.Second, true, 0},
		{60 * time.Second, true, 0},
		{90 * time.Second, false, 8*time.Minute + 30*time.Second}, // 3 in the window: wait for the first to leave
		{10 * time.Minute, true, 0},
	}
	for _, s := range steps {
		ok, wait := l.Allow("k", t0.Add(s.at))
		if ok != s.ok || wait != s.wait {
			t.Fatalf("at +%v: Allow = %v, %v; want %v, %v", s.at, ok, wait, s.ok, s.wait)
		}
	}
}

func TestLimiterUndo(t *testing.T) {
	l := newTestLimiter(t, RateLimit{Max: 1, Window: time.Minute}, 0)
	l.Allow("k", t0)
	l.Undo("k", t0)
	if ok, _ := l.Allow("k", t0); !ok || l.Len() != 1 {
		t.Fatalf("after Undo: Allow = %v, Len %d; want the hit forgotten", ok, l.Len())
	}
}

// TestLimiterMaxKeys: past maxKeys, a new key evicts the least recently
// used one, so the map never grows past maxKeys; keys in use stay limited.
func TestLimiterMaxKeys(t *testing.T) {
	const maxKeys = 100
	l := newTestLimiter(t, RateLimit{Max: 1, Window: time.Hour}, maxKeys)
	l.Allow("held", t0)
	for i := range 10 * maxKeys {
		now := t0.Add(time.Duration(i) * time.Millisecond)
		l.Allow(fmt.Sprint("flood", i), now)
		if i%10 == 0 {
			// A key that keeps trying stays remembered, and limited.
			if ok, _ := l.Allow("held", now); ok {
				t.Fatalf("after %d new keys the held key was forgotten", i+1)
			}
		}
		if n := l.Len(); n > maxKeys {
			t.Fatalf("after %d new keys Len = %d, over the %d allowed", i+1, n, maxKeys)
		}
	}
	// The oldest flood keys were evicted: they are allowed again.
	if ok, _ := l.Allow("flood0", t0.Add(time.Second)); !ok {
		t.Fatal("flood0 was not evicted")
	}
}

func TestLimiterSweep(t *testing.T) {
	l := newTestLimiter(t, RateLimit{Max: 2, Window: time.Minute, MinGap: 2 * time.Minute}, 0)
	for i := range 50 {
		l.Allow(fmt.Sprint(i), t0.Add(time.Duration(i)*time.Second))
	}
	l.Sweep(t0.Add(2*time.Minute + 10*time.Second)) // the gap outlasts the window
	if n := l.Len(); n != 39 {
		t.Fatalf("Len after Sweep = %d, want 39 (keys hit after +10s)", n)
	}
	l.Sweep(t0.Add(time.Hour))
	if n := l.Len(); n != 0 {
		t.Fatalf("Len after Sweep = %d, want 0", n)
	}
}

func TestLimiterConcurrent(t *testing.T) {
	l := newTestLimiter(t, RateLimit{Max: 5, Window: time.Minute}, 10)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 200 {
				l.Allow(fmt.Sprint(g, i%20), t0)
				if i%50 == 0 {
					l.Sweep(t0)
				}
			}
		})
	}
	wg.Wait()
	if n := l.Len(); n > 10 {
		t.Fatalf("Len = %d, over 10", n)
	}
}

func TestNewLimiterRefusesBadLimits(t *testing.T) {
	for _, r := range []RateLimit{{Max: 3}, {Window: -time.Second}, {MinGap: -time.Second}} {
		if _, err := NewLimiter(r, 0); err == nil {
			t.Errorf("NewLimiter(%+v) accepted it", r)
		}
	}
}
