package store

// GroupStats exposes the committer's counters to the external tests and
// benchmarks: how many groups (one fsync each) it has written and how many
// batches they held.
func GroupStats(p *Pebble) (groups, batches uint64) { return p.groupStats() }

// RawGet reads key from Pebble as it is now, visible but not necessarily
// durable: what a reader that did not wait for the sync would see.
func RawGet(p *Pebble, key []byte) bool {
	_, closer, err := p.db.Get(key)
	if err != nil {
		return false
	}
	closer.Close()
	return true
}

// QueueKey is the key of user's item seq.
func QueueKey(user string, seq uint64) []byte { return appendQueueKey(nil, user, seq) }

// QueueStates is how many queue states p keeps in memory, and how many
// times the committer has pruned them.
func QueueStates(p *Pebble) (states int, prunes uint64) {
	p.qmu.Lock()
	defer p.qmu.Unlock()
	return len(p.queues), p.prunes.Load()
}

// CachedAccounts is how many phones p remembers as registered.
func CachedAccounts(p *Pebble) int {
	p.acctMu.Lock()
	defer p.acctMu.Unlock()
	return p.accounts.len()
}

// RecvKey is the key of reader's record of having received from sender.
func RecvKey(reader, sender string) []byte {
	k := make([]byte, recvKeyLen(reader, sender))
	putRecvKey(k, reader, sender)
	return k
}

// RecvStamp is the timestamp on reader's record of having received from
// sender, and whether there is one.
func RecvStamp(p *Pebble, reader, sender string) (int64, bool) {
	ts, found, err := getRecv(p.db, RecvKey(reader, sender))
	return ts, found && err == nil
}

// WALBytes is how many bytes p has written to its write-ahead log.
func WALBytes(p *Pebble) uint64 { return p.db.Metrics().WAL.BytesIn }
