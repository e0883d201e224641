package client

// tracker decides which deliveries reach the application and how far the
// server may be acknowledged. It is plain data with no I/O (the Client locks
// it), so its rules are tested on their own.
//
// Two things make this more than "ack what the app acks":
//
//   - Redeliveries. After a reconnect the server delivers every unacked
//     item again, from the same queue positions (seqs are never reused), so
//     a seq at or below the highest one already seen is a redelivery. It is
//     dropped; if the application had acked it, the ack was lost with the
//     connection and is sent again.
//   - Duplicate messages. The same message (same server id) at a new seq is
//     dropped and acknowledged silently — but acks are cumulative, so acking
//     it must not also erase an item the application holds unacked below it.
//     Such a duplicate waits in dups until nothing the application holds
//     lies below it.
type tracker struct {
	top   uint64   // highest seq seen (handed to the app or dropped)
	given uint64   // highest seq Recv returned; the app can ack no further
	level uint64   // everything <= level may be acked at the server
	open  []uint64 // seqs handed to the app and not acked by it, ascending
	dups  []uint64 // dropped duplicates above some open seq, ascending
	seen  recentSet
}

func newTracker(dedupSize int) tracker {
	return tracker{seen: newRecentSet(dedupSize)}
}

// deliver records delivery seq of a message with serverID (0 for a
// receipt) and reports whether the application gets it.
func (t *tracker) deliver(seq, serverID uint64) bool {
	if seq <= t.top {
		return false
	}
	t.top = seq
	if serverID != 0 && !t.seen.add(serverID) {
		t.dups = append(t.dups, seq)
		t.settle()
		return false
	}
	t.open = append(t.open, seq)
	return true
}

// give records that Recv returned seq.
func (t *tracker) give(seq uint64) { t.given = max(t.given, seq) }

// ack records the application's cumulative ack of seq. An ack beyond what
// Recv returned is cut down to it: the application cannot have handled
// items it has not seen.
func (t *tracker) ack(seq uint64) {
	seq = min(seq, t.given)
	i := 0
	for i < len(t.open) && t.open[i] <= seq {
		i++
	}
	t.open = t.open[i:]
	t.level = max(t.level, seq)
	t.settle()
}

// settle moves the ack level over dropped duplicates that no open item
// precedes.
func (t *tracker) settle() {
	for len(t.dups) > 0 && (len(t.open) == 0 || t.dups[0] < t.open[0]) {
		t.level = max(t.level, t.dups[0])
		t.dups = t.dups[1:]
	}
	if len(t.dups) == 0 {
		t.dups = nil
	}
	if len(t.open) == 0 {
		t.open = nil
	}
}

// recentSet remembers the last n server ids: enough to catch a message that
// comes again, without growing with the account's history. A duplicate can
// only follow its original by about the server's delivery window, far below
// any sensible n.
type recentSet struct {
	ring []uint64
	next int
	m    map[uint64]struct{}
}

func newRecentSet(n int) recentSet {
	n = max(n, 1)
	return recentSet{ring: make([]uint64, 0, n), m: make(map[uint64]struct{}, n)}
}

// add reports whether id is new, remembering it.
func (s *recentSet) add(id uint64) bool {
	if _, ok := s.m[id]; ok {
		return false
	}
	if len(s.ring) < cap(s.ring) {
		s.ring = append(s.ring, id)
	} else {
		delete(s.m, s.ring[s.next])
		s.ring[s.next] = id
		s.next = (s.next + 1) % len(s.ring)
	}
	s.m[id] = struct{}{}
	return true
}
