package store

// GroupStats exposes the committer's counters to the external tests and
// benchmarks: how many groups (one fsync each) it has written and how many
// batches they held.
func GroupStats(p *Pebble) (groups, batches uint64) { return p.groupStats() }
