package node

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/maphash"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	njs "github.com/nats-io/nats.go/jetstream"

	"github.com/parleyhq/parley/store"
	"github.com/parleyhq/parley/wire"
)

// clusterRouter reaches the sessions of a cluster's other nodes.
//
// Where a user is connected is a hint, in a replicated key-value bucket:
// user -> (node, epoch, token). The epoch names the node's run (a
// restarted node ignores what was meant for its previous run); the token
// names one login on that node. A hint may be stale or missing: a node
// killed leaves its hints behind, a failed write leaves none. That only
// delays delivery, never loses it, because every item is in the user's
// durable queue, which a session reads at its start, at every wake-up and
// whenever a push runs ahead of what it has read.
//
//   - A login (register) claims the hint with a compare-and-set on the
//     entry it read. The newest login wins, by the time its node proved
//     it (the entry's stamp), not by the order the claims reach the
//     bucket: claims are written off the login's path, so a loaded node
//     may write an older login's claim after a newer login's on another
//     node. A claim that finds an older login of another node replaces
//     it and kicks it (REPLACED); one that finds a newer login writes
//     nothing and kicks its own. Since every claim is a compare-and-set,
//     of racing logins on two nodes exactly one stays. Logins closer
//     together than the nodes' clocks differ may be ordered either way
//     (still exactly one stays): keep the clocks in step (NTP). Equal
//     stamps are ordered by node name. The kicked node stops routing to
//     its session, then wakes the winner, so that nothing it routed to
//     the loser is left unread. The winner is also woken once its claim
//     is written: an append committed elsewhere before the claim was
//     visible rang no bell, and this read finds it.
//   - A commit to a user with no session on this node (elsewhere) looks
//     up the hint (in a cache a watch of the bucket keeps current, see
//     route_cluster_hints.go) and rings that node's doorbell: one core
//     NATS subject per node, carrying the item, which the session there
//     delivers like a local push. A doorbell is at most once; a lost one
//     leaves the item for the session's next read. Its headers carry
//     what the other node's store would otherwise read: where the item
//     was put, and how far a receipt's batch erased its acker's queue.
//   - A logout (unregister) deletes the hint if it is still its own.
//
// Hint work for one user is done in order, by one of a few workers
// chosen by the user's hash, off the event loop and the committer: a
// login never waits for the bucket.
type clusterRouter struct {
	*router // this node's sessions
	n       *Node
	nc      *nats.Conn
	kv      njs.KeyValue
	node    string
	epoch   uint64
	timeout time.Duration
	// backoff and maxBackoff pace a refused claim's tries (retryClaim):
	// claimBackoff and maxClaimBackoff, shortened only by tests.
	backoff, maxBackoff time.Duration

	tokens atomic.Uint64
	seed   maphash.Seed
	shards []chan hintJob
	bells  chan bell
	hints  hintCache // route_cluster_hints.go
	subs   []*nats.Subscription
	beats  beats // route_cluster_beat.go

	ctx     context.Context
	cancel  context.CancelFunc
	stop    chan struct{}
	stopped atomic.Bool
	wg      sync.WaitGroup
}

// Sizes of the router's queues. Past them work is dropped (and logged):
// a dropped doorbell or hint only delays a delivery.
const (
	hintShards  = 8
	hintQueue   = 1024
	bellWorkers = 4
	bellQueue   = 4096
	kickTries   = 3
	kickTimeout = time.Second
	// A claim refused by the bucket is tried again after claimBackoff,
	// doubling up to maxClaimBackoff, for as long as its login lasts;
	// past claimTries a failing claim is logged once a minute.
	claimTries      = 14
	claimWarnEvery  = 12 // past claimTries, one warning a minute per login
	claimBackoff    = 125 * time.Millisecond
	maxClaimBackoff = 5 * time.Second
	maxDoorbell     = 1 << 20 // NATS's default max_payload
	routerDrainIn   = 3 * time.Second
)

type hintJobKind uint8

const (
	jobClaim hintJobKind = iota + 1
	jobRelease
	jobKicked // a kick from another node for a login of this one
)

type hintJob struct {
	kind  hintJobKind
	user  string
	c     *conn
	token uint64
	stamp int64 // jobClaim: when the login was proven, Unix nanoseconds
	code  wire.Error_Code
	from  hint // jobKicked: the node that kicked, to wake its session after
	tries int  // jobClaim: the times it was refused
}

type bell struct {
	user  string
	seq   uint64
	loc   uint64 // where the store put the item; 0 if it does not say
	data  []byte
	acked []store.Ack // the acks of the batch that made the item (the batch's own)
}

// A doorbell's headers carry what the ringing node's store learnt that the
// rung node's store would otherwise have to read (storeNotes): where the
// item is, and how far the batch that made it (a delivered receipt) erased
// its acker's queue. A node that does not know them ignores them.
const (
	hdrBellLoc   = "Parley-Loc"
	hdrBellAcked = "Parley-Acked" // "UPTO USER", one value per ack
)

// storeNotes is what a cluster store learns from other nodes' doorbells
// (jetstream.Store): where an item of one of this node's users was put,
// and how far another node erased a queue this node appends to.
type storeNotes interface {
	NoteItem(user string, seq, loc uint64)
	NoteAcked(user string, upTo uint64)
}

// hint is a user's entry: where the user logged in last, and when.
type hint struct {
	node  string
	epoch uint64
	token uint64
	stamp int64 // when the login was proven, Unix nanoseconds
}

// newer reports whether h is a later login than o (see clusterRouter).
func (h hint) newer(o hint) bool {
	if h.stamp != o.stamp {
		return h.stamp > o.stamp
	}
	return h.node > o.node
}

func newClusterRouter(n *Node, local *router, cc *ClusterConfig, kv njs.KeyValue) (*clusterRouter, error) {
	r := &clusterRouter{
		router:  local,
		n:       n,
		nc:      cc.Conn,
		kv:      kv,
		node:    cc.Node,
		epoch:   uint64(time.Now().UnixNano()),
		timeout: cc.Timeout,
		seed:    maphash.MakeSeed(),
		bells:   make(chan bell, bellQueue),
		stop:    make(chan struct{}),

		backoff:    claimBackoff,
		maxBackoff: maxClaimBackoff,
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	bellSub, err := r.nc.Subscribe(bellSubject(r.node), r.onBell)
	if err != nil {
		return nil, err
	}
	kickSub, err := r.nc.Subscribe(kickSubject(r.node), r.onKick)
	if err != nil {
		bellSub.Unsubscribe()
		return nil, err
	}
	allSub, err := r.nc.Subscribe(kickAllSubject, r.onKickAll)
	if err != nil {
		bellSub.Unsubscribe()
		kickSub.Unsubscribe()
		return nil, err
	}
	statusSub, err := r.nc.Subscribe(statusSubject, r.onStatus)
	if err != nil {
		bellSub.Unsubscribe()
		kickSub.Unsubscribe()
		allSub.Unsubscribe()
		return nil, err
	}
	r.subs = []*nats.Subscription{bellSub, kickSub, allSub, statusSub}
	for _, sub := range []struct {
		subj string
		cb   nats.MsgHandler
	}{{beatSubject, r.onBeat}, {bellAllSubject, r.onBellAll}} {
		s, err := r.nc.Subscribe(sub.subj, sub.cb)
		if err != nil {
			for _, s := range r.subs {
				s.Unsubscribe()
			}
			return nil, err
		}
		r.subs = append(r.subs, s)
	}
	r.beats.seen = make(map[string]time.Time)
	r.wg.Add(1)
	go r.beatLoop()
	for range hintShards {
		ch := make(chan hintJob, hintQueue)
		r.shards = append(r.shards, ch)
		r.wg.Add(1)
		go r.hintWorker(ch)
	}
	for range bellWorkers {
		r.wg.Add(1)
		go r.bellWorker()
	}
	r.hints.m, r.hints.ttl = make(map[string]cachedHint), hintCacheTTL
	r.wg.Add(1)
	go r.watchHints()
	// Flush the subscriptions, so that no node can find a hint of this
	// one before its doorbell listens.
	if err := r.nc.FlushTimeout(r.timeout); err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

func bellSubject(node string) string { return "parley.node." + node + ".bell" }
func kickSubject(node string) string { return "parley.node." + node + ".kick" }

// kickAllSubject reaches every node: kicks of a re-registration.
const kickAllSubject = "parley.kick"

// hintKey is the bucket key of user: E.164 numbers as "p" and their
// digits; anything else hex-encoded, since a key takes few characters.
func hintKey(user string) string {
	if d, ok := strings.CutPrefix(user, "+"); ok && d != "" && strings.Trim(d, "0123456789") == "" {
		return "p" + d
	}
	return "x" + hex.EncodeToString([]byte(user))
}

func (h hint) encode() []byte {
	b := binary.BigEndian.AppendUint64(nil, h.epoch)
	b = binary.BigEndian.AppendUint64(b, h.token)
	b = binary.BigEndian.AppendUint64(b, uint64(h.stamp))
	return append(b, h.node...)
}

func decodeHint(b []byte) (hint, bool) {
	if len(b) < 25 {
		return hint{}, false
	}
	return hint{
		epoch: binary.BigEndian.Uint64(b),
		token: binary.BigEndian.Uint64(b[8:]),
		stamp: int64(binary.BigEndian.Uint64(b[16:])),
		node:  string(b[24:]),
	}, true
}

func (r *clusterRouter) self() hint { return hint{node: r.node, epoch: r.epoch} }

// enqueue hands a job to the user's worker without blocking, unless wait
// is set (then for up to a second); it reports whether the job was taken.
func (r *clusterRouter) enqueue(j hintJob, wait bool) bool {
	if r.stopped.Load() {
		return false
	}
	ch := r.shards[maphash.String(r.seed, j.user)%hintShards]
	select {
	case ch <- j:
		return true
	default:
	}
	if wait {
		t := time.NewTimer(time.Second)
		defer t.Stop()
		select {
		case ch <- j:
			return true
		case <-t.C:
		case <-r.stop:
		}
	}
	r.n.log.Warn("cluster: hint work dropped: the bucket is slow or unreachable", "user", j.user, "job", j.kind)
	return false
}

func (r *clusterRouter) register(user string, c *conn) *conn {
	prev := r.router.register(user, c)
	r.enqueue(hintJob{kind: jobClaim, user: user, c: c, token: r.tokens.Add(1), stamp: time.Now().UnixNano()}, false)
	return prev
}

func (r *clusterRouter) unregister(user string, c *conn) {
	r.router.unregister(user, c)
	r.enqueue(hintJob{kind: jobRelease, user: user, c: c}, false)
}

func (r *clusterRouter) elsewhere(user string, seq, loc uint64, data []byte, acked []store.Ack) {
	if r.stopped.Load() || len(data) > maxDoorbell-256-64*len(acked) {
		return // too big to ring with: the session's next read finds it
	}
	select {
	case r.bells <- bell{user: user, seq: seq, loc: loc, data: data, acked: acked}:
	default:
		// Behind: this item waits for the session's next read.
	}
}

// kickElsewhere tells every other node to close the user's session, not
// only the node its hint names: the hint of a login made a moment ago may
// not be written yet. It returns once the kick has left this node (a
// second at most), before the new device is answered, so the kick is
// ahead of the new device's login and never closes it. A login still
// being proven when the kick lands checks the account itself (see
// conn.prove).
func (r *clusterRouter) kickElsewhere(user string, code wire.Error_Code, _ string) {
	if r.stopped.Load() {
		return
	}
	b := binary.BigEndian.AppendUint32(nil, uint32(code))
	b = append(b, byte(len(r.node)))
	b = append(b, r.node...)
	b = append(b, user...)
	err := r.nc.Publish(kickAllSubject, b)
	if err == nil {
		err = r.nc.FlushTimeout(kickTimeout)
	}
	if err != nil {
		r.n.log.Warn("cluster: could not tell the other nodes to close a re-registered device's session", "user", user, "err", err)
		r.publishFailed()
	}
}

// onKickAll takes a kick for every node (see kickElsewhere).
func (r *clusterRouter) onKickAll(m *nats.Msg) {
	b := m.Data
	if len(b) < 5 || len(b) < 5+int(b[4]) {
		return
	}
	code := wire.Error_Code(binary.BigEndian.Uint32(b))
	from, user := string(b[5:5+int(b[4])]), string(b[5+int(b[4]):])
	if from == r.node {
		return // the node that sent it kicked its own
	}
	if c := r.router.lookup(user); c != nil {
		c.post(r.n.pool, event{kind: evKick, code: code, text: kickText(code)})
	}
}

func kickText(code wire.Error_Code) string {
	if code == wire.Error_REGISTERED_ELSEWHERE {
		return "this number was registered on another device"
	}
	return "this account logged in on a newer connection"
}

func (r *clusterRouter) close() {
	if r.stopped.Swap(true) {
		return
	}
	for _, s := range r.subs {
		_ = s.Unsubscribe()
	}
	close(r.stop)
	finished := make(chan struct{})
	go func() { r.wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(routerDrainIn):
		r.cancel() // abandon what is still waiting for the bucket
		<-finished
	}
	r.cancel()
}

// hintWorker does one shard's hint work in order. It owns held: the
// logins of this node whose claims it wrote, by user.
func (r *clusterRouter) hintWorker(ch chan hintJob) {
	defer r.wg.Done()
	held := make(map[string]heldHint)
	for {
		select {
		case j := <-ch:
			r.do(held, j)
		case <-r.stop:
			for { // finish what was queued before the stop (releases, mostly)
				select {
				case j := <-ch:
					r.do(held, j)
				default:
					return
				}
			}
		}
	}
}

type heldHint struct {
	c     *conn
	token uint64
	rev   uint64
}

func (r *clusterRouter) reqCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.ctx, r.timeout)
}

func (r *clusterRouter) do(held map[string]heldHint, j hintJob) {
	switch j.kind {
	case jobClaim:
		r.claim(held, j)
	case jobRelease:
		h, ok := held[j.user]
		if !ok || h.c != j.c {
			return
		}
		delete(held, j.user)
		ctx, cancel := r.reqCtx()
		defer cancel()
		// Only if it is still this login's: a newer login's entry stays.
		err := r.kv.Delete(ctx, hintKey(j.user), njs.LastRevision(h.rev))
		if err != nil && !errors.Is(err, njs.ErrKeyExists) && !isWrongLastSeq(err) {
			r.n.log.Debug("cluster: release hint", "user", j.user, "err", err)
		}
	case jobKicked:
		h, ok := held[j.user]
		if !ok || (j.token != 0 && h.token != j.token) {
			return // that login is gone already
		}
		delete(held, j.user)
		r.drop(j.user, h.c, j.code, j.from)
	}
}

// drop ends a login of this node that lost to winner's (on another node;
// none if winner.node is empty): it stops routing to the loser before
// waking the winner, so that whatever was routed here is in the queue the
// winner's wake-up reads.
func (r *clusterRouter) drop(user string, c *conn, code wire.Error_Code, winner hint) {
	r.router.unregister(user, c)
	c.post(r.n.pool, event{kind: evKick, code: code, text: kickText(code)})
	if winner.node != "" {
		r.ring(winner, bell{user: user, seq: wakeSeq})
	}
}

// claim writes the hint for a login of this node, and kicks the login
// whose entry it replaced if that one is on another node.
func (r *clusterRouter) claim(held map[string]heldHint, j hintJob) {
	if r.router.lookup(j.user) != j.c {
		return // replaced here or gone already
	}
	key := hintKey(j.user)
	mine := hint{node: r.node, epoch: r.epoch, token: j.token, stamp: j.stamp}
	val := mine.encode()
	for range 5 {
		ctx, cancel := r.reqCtx()
		var (
			prev    hint
			hasPrev bool
			rev     uint64
			err     error
		)
		e, err := r.kv.Get(ctx, key)
		switch {
		case errors.Is(err, njs.ErrKeyNotFound):
			rev, err = r.kv.Create(ctx, key, val)
		case err == nil:
			prev, hasPrev = decodeHint(e.Value())
			if hasPrev && prev.node != r.node && prev.newer(mine) {
				cancel()
				r.yield(j, prev)
				return
			}
			rev, err = r.kv.Update(ctx, key, val, e.Revision())
		}
		cancel()
		if errors.Is(err, njs.ErrKeyExists) || isWrongLastSeq(err) {
			continue // another login wrote meanwhile: read it and go again
		}
		if err != nil {
			r.retryClaim(j, err)
			return
		}
		held[j.user] = heldHint{c: j.c, token: j.token, rev: rev}
		if hasPrev && (prev.node != r.node || prev.epoch != r.epoch) {
			r.kick(prev, j.user, wire.Error_REPLACED, prev.token, mine)
		}
		j.c.post(r.n.pool, event{kind: evPush, seq: wakeSeq})
		// And once more when no node can still hold a hint from before
		// this claim (hintCacheTTL): a doorbell rung within a watch's
		// delay went to where the user was, and its item waits for a
		// read (see hintCache).
		c := j.c
		time.AfterFunc(hintCacheTTL+time.Second, func() {
			if r.router.lookup(j.user) == c {
				c.post(r.n.pool, event{kind: evPush, seq: wakeSeq})
			}
		})
		return
	}
	// Five logins in a row won the race for the entry: try again later,
	// as for a refusal.
	r.retryClaim(j, errors.New("too many logins of this user at once"))
}

// yield ends a login of this node whose claim found a newer login of
// another node (winner) in the bucket, as a kick from the winner's node
// would.
func (r *clusterRouter) yield(j hintJob, winner hint) {
	if r.router.lookup(j.user) == j.c {
		r.drop(j.user, j.c, wire.Error_REPLACED, winner)
	}
}

// retryClaim tries a claim the bucket refused again later (a new leader
// being elected, say), with a growing delay, for as long as its login
// lasts (claim returns at once for a login that is gone): until it is
// written, doorbells from other nodes do not find the session, so what
// they send waits for its next read, which the claim's success makes.
// Giving up would leave a live session deaf to other nodes for good.
func (r *clusterRouter) retryClaim(j hintJob, err error) {
	if r.stopped.Load() || r.router.lookup(j.user) != j.c {
		return // the router stopped, or the login is gone
	}
	if j.tries >= claimTries && (j.tries-claimTries)%claimWarnEvery == 0 {
		r.n.log.Warn("cluster: could not record where a user is connected; deliveries from other nodes wait until it is, trying again", "user", j.user, "tries", j.tries, "err", err)
	} else {
		r.n.log.Debug("cluster: claim refused, will try again", "user", j.user, "err", err)
	}
	wait := min(r.backoff<<min(j.tries, 10), r.maxBackoff)
	j.tries++
	time.AfterFunc(wait, func() {
		if !r.enqueue(j, false) {
			r.retryClaim(j, errors.New("the hint queue is full"))
		}
	})
}

func isWrongLastSeq(err error) bool {
	var apiErr *njs.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == njs.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == njs.JSErrCodeStreamWrongLastSequenceConstant)
}

// kick asks node to: close the user's login token (any login if 0) with
// code, then wake the login named by from, if any.
func (r *clusterRouter) kick(to hint, user string, code wire.Error_Code, token uint64, from hint) {
	if to.node == r.node && to.epoch != r.epoch {
		return // this node's previous run: nothing of it is left
	}
	b := binary.BigEndian.AppendUint64(nil, to.epoch)
	b = binary.BigEndian.AppendUint64(b, token)
	b = binary.BigEndian.AppendUint32(b, uint32(code))
	b = binary.BigEndian.AppendUint64(b, from.epoch)
	b = append(b, byte(len(from.node)))
	b = append(b, from.node...)
	b = append(b, user...)
	for try := range kickTries {
		ctx, cancel := context.WithTimeout(r.ctx, kickTimeout)
		_, err := r.nc.RequestWithContext(ctx, kickSubject(to.node), b)
		cancel()
		if err == nil || errors.Is(err, nats.ErrNoResponders) || r.ctx.Err() != nil {
			return // taken; or that node is gone, and its sessions with it
		}
		r.n.log.Warn("cluster: kick not answered", "user", user, "node", to.node, "try", try+1, "err", err)
		r.publishFailed()
	}
}

// onKick takes a kick from another node (see kick).
func (r *clusterRouter) onKick(m *nats.Msg) {
	b := m.Data
	if len(b) < 29 {
		return
	}
	epoch, token := binary.BigEndian.Uint64(b), binary.BigEndian.Uint64(b[8:])
	code := wire.Error_Code(binary.BigEndian.Uint32(b[16:]))
	from := hint{epoch: binary.BigEndian.Uint64(b[20:])}
	nl := int(b[28])
	if len(b) < 29+nl {
		return
	}
	from.node = string(b[29 : 29+nl])
	user := string(b[29+nl:])
	if epoch == r.epoch {
		r.enqueue(hintJob{kind: jobKicked, user: user, token: token, code: code, from: from}, true)
	}
	_ = m.Respond(nil) // taken (or meant for a run of this node that is over)
}

// publishFailed counts a message this node could not send to the cluster.
func (r *clusterRouter) publishFailed() {
	if m := r.n.clusterMx; m != nil {
		m.publishErrors.Inc()
	}
}

// bellWorker rings the doorbells of the nodes where the recipients of
// this node's commits are.
func (r *clusterRouter) bellWorker() {
	defer r.wg.Done()
	for {
		select {
		case b := <-r.bells:
			h, ok, err := r.lookupHint(b.user)
			if err != nil {
				// The bucket does not answer (its stream between leaders):
				// ring every node rather than leave the item to a read
				// that a quiet session may not make for a long time.
				r.ringAll(b)
				continue
			}
			if ok && h.node != r.node {
				r.ring(h, b)
			}
			// Not connected anywhere: the next login reads it.
		case <-r.stop:
			return
		}
	}
}

// ring publishes a doorbell: seq of user's queue (wakeSeq: read the
// queue), with the item's data.
func (r *clusterRouter) ring(to hint, b bell) {
	r.publishBell(bellSubject(to.node), to.epoch, b)
}

// bellAllSubject reaches every node: a doorbell for a user whose hint
// could not be read.
const bellAllSubject = "parley.bell.all"

// ringAll rings every node's doorbell for user: a node where the user has
// a session pushes the item to it, the others drop it.
func (r *clusterRouter) ringAll(b bell) {
	r.publishBell(bellAllSubject, 0, b) // no epoch: whoever holds the user
}

func (r *clusterRouter) publishBell(subject string, epoch uint64, b bell) {
	if len(b.user) > 255 {
		return
	}
	m := &nats.Msg{Subject: subject, Data: make([]byte, 0, 17+len(b.user)+len(b.data))}
	m.Data = binary.BigEndian.AppendUint64(m.Data, epoch)
	m.Data = binary.BigEndian.AppendUint64(m.Data, b.seq)
	m.Data = append(m.Data, byte(len(b.user)))
	m.Data = append(m.Data, b.user...)
	m.Data = append(m.Data, b.data...)
	if b.loc != 0 || len(b.acked) > 0 {
		m.Header = make(nats.Header, 2)
		if b.loc != 0 {
			m.Header.Set(hdrBellLoc, strconv.FormatUint(b.loc, 10))
		}
		for _, a := range b.acked {
			m.Header.Add(hdrBellAcked, strconv.FormatUint(a.UpTo, 10)+" "+a.User)
		}
	}
	if err := r.nc.PublishMsg(m); err != nil {
		r.n.log.Debug("cluster: doorbell", "user", b.user, "subject", subject, "err", err)
		r.publishFailed()
	}
}

// noteBell tells this node's store what a doorbell's headers say (see
// hdrBellLoc), before the item is pushed: the session's ack of it comes
// after.
func (r *clusterRouter) noteBell(m *nats.Msg, user string, seq uint64) {
	if len(m.Header) == 0 {
		return
	}
	sn, ok := r.n.store.(storeNotes)
	if !ok {
		return
	}
	if v := m.Header.Get(hdrBellLoc); v != "" && seq != wakeSeq {
		if loc, err := strconv.ParseUint(v, 10, 64); err == nil {
			sn.NoteItem(user, seq, loc)
		}
	}
	for _, v := range m.Header.Values(hdrBellAcked) {
		n, u, ok := strings.Cut(v, " ")
		if upTo, err := strconv.ParseUint(n, 10, 64); ok && err == nil {
			sn.NoteAcked(u, upTo)
		}
	}
}

// onBellAll is onBell for a doorbell rung to every node.
func (r *clusterRouter) onBellAll(m *nats.Msg) {
	if len(m.Data) < 17 || binary.BigEndian.Uint64(m.Data) != 0 {
		return
	}
	binary.BigEndian.PutUint64(m.Data, r.epoch)
	r.onBell(m)
}

// onBell takes a doorbell from another node: it reaches the user's
// session here as a push, exactly like a commit made here.
func (r *clusterRouter) onBell(m *nats.Msg) {
	b := m.Data
	if len(b) < 17 || binary.BigEndian.Uint64(b) != r.epoch {
		return
	}
	seq := binary.BigEndian.Uint64(b[8:])
	ul := int(b[16])
	if len(b) < 17+ul {
		return
	}
	user, data := string(b[17:17+ul]), b[17+ul:]
	r.noteBell(m, user, seq)
	if seq != wakeSeq && len(data) == 0 {
		seq = wakeSeq // no item to deliver from: read it
	}
	if seq == wakeSeq {
		data = nil
	}
	if c := r.router.lookup(user); c != nil {
		c.post(r.n.pool, event{kind: evPush, seq: seq, data: data})
	}
}
