package media

import (
	"strings"
	"testing"
)

func TestMediaID(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		id, key := newID()
		if len(id) != 22 {
			t.Fatalf("id %q is %d chars, want 22", id, len(id))
		}
		if got, ok := parseID(id); !ok || got != key || !ValidKey(key) {
			t.Fatalf("parseID(%q) = %q, %t; want %q", id, got, ok, key)
		}
		if seen[id] {
			t.Fatalf("id %q issued twice", id)
		}
		seen[id] = true
	}
	id, _ := newID()
	for _, bad := range []string{
		"", id[:21], id + "A", id[:21] + "=", strings.Repeat(".", 22), "../../../../../../etc/p",
		"/" + id[1:], id[:10] + "+" + id[11:], id[:10] + "/" + id[11:], id[:10] + "%" + id[11:],
		id[:21] + "B", // trailing bits set: a second spelling of another id
	} {
		if key, ok := parseID(bad); ok {
			t.Errorf("parseID(%q) accepted, key %q", bad, key)
		}
	}
}

// No id begins with '-', which a command line would take for a flag
// (parley fetch ID). Without the redraw, one id in 64 would: 10,000 ids
// would all miss it with a chance of about 10^-68.
func TestMediaIDNeverLooksLikeAFlag(t *testing.T) {
	for range 10_000 {
		if id, _ := newID(); strings.HasPrefix(id, "-") {
			t.Fatalf("id %q begins with '-'", id)
		}
	}
}
