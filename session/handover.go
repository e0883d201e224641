package session

// State is a session's state between events: what a live upgrade carries
// to the process that takes the connection over (see node/handover.go),
// as plain data.
type State struct {
	// Next is the next queue seq to deliver.
	Next uint64
	// Inflight are the deliveries awaiting their ack, in seq order.
	Inflight []Delivery
}

// Delivery is one delivered, unacknowledged item: what its ack needs to
// write the delivered receipt.
type Delivery struct {
	Seq uint64
	At  int64 // when it was delivered (unix nanoseconds)
	// ID and ServerID are the message's ids; From its sender. From is
	// empty for a receipt, which gets no receipt of its own.
	ID, ServerID uint64
	From         string
}

// State returns the session's state. ok is false unless the session is
// between events with nothing outstanding: a write awaiting its commit, a
// read awaiting its items, a read receipt awaiting its check, or a Ready
// not yet advanced cannot move to another process.
func (c *Core) State() (st State, ok bool) {
	if !c.started || c.closed || c.loading() {
		return State{}, false
	}
	st.Next = c.next
	if w := c.work; w != nil {
		if len(w.pending) > 0 || len(w.checks) > 0 || len(w.rd.Frames) > 0 || len(w.rd.Writes) > 0 || w.rd.Load != nil || w.rd.Check != nil || w.rd.Close != nil {
			return State{}, false
		}
		st.Inflight = make([]Delivery, len(w.inflight))
		for i, f := range w.inflight {
			st.Inflight[i] = Delivery{Seq: f.seq, At: f.at, ID: f.id, ServerID: f.serverID, From: string(f.sender())}
		}
	}
	return st, true
}

// Restore makes c the Core of user's session as another process left it
// (see State): started, with st's deliveries awaiting their acks. The
// caller then steps Start, which reads the queue from st.Next.
func (c *Core) Restore(user string, cfg *Config, st State) {
	*c = Core{cfg: cfg, user: user, next: st.Next, started: true}
	if len(st.Inflight) == 0 {
		return
	}
	w := c.w()
	w.inflight = make([]inflight, len(st.Inflight))
	for i, d := range st.Inflight {
		f := &w.inflight[i]
		f.seq, f.at, f.id, f.serverID = d.Seq, d.At, d.ID, d.ServerID
		f.fromLen = uint8(copy(f.from[:], d.From))
	}
}
