package bench

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// prepareAll makes a first handshake message for every user, on every CPU.
func (e *env) prepareAll(us []*user) ([]hello, error) {
	hs := make([]hello, len(us))
	errs := make([]error, len(us))
	parallel(len(us), func(i int) { hs[i], errs[i] = e.d.prepare(us[i]) })
	return hs, errors.Join(errs...)
}

// loginStats counts a loginAll as it goes, for the progress line.
type loginStats struct {
	done    atomic.Int64
	retries atomic.Int64
	shed    atomic.Int64 // tries the server reset unread (its accept rate), tried again
	resumed atomic.Int64 // done with a resumption ticket, not a full handshake
	errs    tally
}

// loginAll logs every user in, at most cfg.Concurrency at a time, using
// the prepared hellos (consumed). A connection that fails for a reason other
// than a refused login is tried again, up to 3 times, with a fresh
// handshake; one the server sheds (reset unread: its accept rate) is tried
// again after a jittered, growing wait for up to shedGiveUp, as the SDK
// does, and counted in st.shed. Failed users have a nil conn.
func (e *env) loginAll(ctx context.Context, us []*user, hellos []hello, rbuf int, st *loginStats) []*conn {
	conns := make([]*conn, len(us))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(e.cfg.Concurrency, len(us)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(us) || ctx.Err() != nil {
					return
				}
				var h hello
				if hellos != nil {
					h, hellos[i] = hellos[i], hello{}
				}
				var shedSince time.Time
				for attempt := 0; ; attempt++ {
					c, err := e.d.dial(ctx, us[i], h, rbuf)
					if err == nil {
						conns[i] = c
						st.done.Add(1)
						if c.resumed {
							st.resumed.Add(1)
						}
						break
					}
					var shed *errShed
					if errors.As(err, &shed) && ctx.Err() == nil {
						if shedSince.IsZero() {
							shedSince = time.Now()
						}
						if time.Since(shedSince) < shedGiveUp {
							st.shed.Add(1)
							h = hello{}
							d := min(50*time.Millisecond<<min(attempt, 5), time.Second)
							time.Sleep(d/2 + rand.N(d/2+1))
							attempt--
							continue
						}
					}
					var le *errLogin
					if attempt == 3 || ctx.Err() != nil || errors.As(err, &le) || shed != nil {
						st.errs.add(err)
						break
					}
					st.retries.Add(1)
					h = hello{}
					time.Sleep(time.Duration(10<<attempt) * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	return conns
}

// shedGiveUp bounds how long a login the server keeps shedding is tried.
const shedGiveUp = time.Minute

// interruptOnDone unblocks every read and write on conns when ctx ends
// (Ctrl-C), since a blocked net.Conn sees no context; call the result to
// stop watching.
func interruptOnDone(ctx context.Context, conns ...*conn) (stop func() bool) {
	return context.AfterFunc(ctx, func() {
		for _, c := range conns {
			if c != nil {
				c.nc.SetDeadline(time.Now())
			}
		}
	})
}

func closeAll(conns []*conn) {
	parallel(len(conns), func(i int) {
		if conns[i] != nil {
			conns[i].close()
		}
	})
}
