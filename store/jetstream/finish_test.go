package jetstream

import (
	"slices"
	"testing"

	"github.com/parleyhq/parley/store"
)

// Requests are answered in commit order whatever groups decide them in:
// a request decided again in a later group (twice, for d) holds back every
// request committed after it, and only those.
func TestFinishAnswersInCommitOrder(t *testing.T) {
	c := &committer{}
	var got []string
	req := func(name string) request {
		return request{done: func(store.Result) { got = append(got, name) }}
	}
	// group runs one group: names of its requests, and which of them are
	// requeued (decided again in the next group).
	group := func(rs []request, requeued ...int) []request {
		c.number(rs)
		c.requeued = make([]bool, len(rs))
		var again []request
		for _, i := range requeued {
			c.requeued[i] = true
			again = append(again, rs[i])
		}
		c.finish(rs)
		return again
	}
	again := group([]request{req("a"), req("b"), req("c"), req("d"), req("e")}, 1, 3)
	if !slices.Equal(got, []string{"a"}) {
		t.Fatalf("after group 1: %v; want a (b is decided again, c d e wait)", got)
	}
	again = group(append(again, req("f")), 1) // b done, d again
	if !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("after group 2: %v; want a b c (d decided again, e f wait)", got)
	}
	group(append(again, req("g")))
	if want := []string{"a", "b", "c", "d", "e", "f", "g"}; !slices.Equal(got, want) {
		t.Fatalf("after group 3: %v; want %v", got, want)
	}
	if len(c.answers) != 0 {
		t.Fatalf("%d answers left", len(c.answers))
	}
}
