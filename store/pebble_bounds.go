package store

// The store's in-memory maps grow with the users it sees, so both are
// bounded (Options.MaxQueueStates, Options.AccountCache): a server that has
// seen more users than the bound forgets some of what it remembered and
// reads it from Pebble again when it is next needed. Neither map holds
// anything that is not also on disk.

// Defaults of the bounds.
const (
	defaultMaxQueueStates = 1 << 20
	defaultAccountCache   = 1 << 20
)

// pruneStates drops queue states the committer can reload from Pebble
// exactly as they are, once the map has reached its bound: first those of
// empty queues, then, if that was not enough, every state whose appends are
// all durable. It runs on the committer between groups, when no batch is
// being decided, so every state it keeps or drops is settled; a state whose
// appends wait for their sync (durable < tail) is never dropped, since its
// reload would show the unsynced items as durable.
//
// An empty queue's state reloads with its tail at its lease (see
// queueState.lease), so its next seq jumps ahead by at most tailLease; seqs
// still never repeat. The scan is O(states) and runs only when the map has
// doubled since the last one, so its cost per commit is constant.
func (c *committer) pruneStates() {
	p := c.p
	if len(p.queues) < c.pruneAt {
		return
	}
	p.qmu.Lock()
	for user, st := range p.queues {
		if st.head > st.tail && st.durable == st.tail {
			delete(p.queues, user)
		}
	}
	if len(p.queues) >= p.opts.MaxQueueStates {
		for user, st := range p.queues {
			if st.durable == st.tail {
				delete(p.queues, user)
			}
		}
	}
	c.pruneAt = max(p.opts.MaxQueueStates, 2*len(p.queues))
	p.qmu.Unlock()
	p.prunes.Add(1)
}

// accountSet remembers phones known to have an account, in two generations
// of at most half the bound each: when the current one fills up it becomes
// the previous one and the older is dropped, so the set holds the phones
// most recently looked up and never more than the bound. A phone found
// only in the previous generation moves to the current one.
type accountSet struct {
	half      int
	cur, prev map[string]struct{}
}

func newAccountSet(bound int) accountSet {
	half := max(bound/2, 1)
	return accountSet{half: half, cur: make(map[string]struct{})}
}

func (s *accountSet) has(phone string) bool {
	if _, ok := s.cur[phone]; ok {
		return true
	}
	if _, ok := s.prev[phone]; ok {
		s.add(phone)
		return true
	}
	return false
}

func (s *accountSet) add(phone string) {
	if len(s.cur) >= s.half {
		s.prev, s.cur = s.cur, make(map[string]struct{}, s.half/4)
	}
	s.cur[phone] = struct{}{}
}

func (s *accountSet) len() int { return len(s.cur) + len(s.prev) }
