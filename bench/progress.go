package bench

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// progress keeps one status line refreshed on w (a terminal's stderr) about
// once a second, rewriting it in place with '\r'.
type progress struct {
	w     io.Writer
	line  func() string
	stop  chan struct{}
	done  sync.WaitGroup
	width int
}

// startProgress shows line() every second until stop. A nil w (or
// io.Discard) shows nothing.
func startProgress(w io.Writer, line func() string) *progress {
	p := &progress{w: w, line: line, stop: make(chan struct{})}
	if w == nil || w == io.Discard {
		return p
	}
	p.done.Add(1)
	go func() {
		defer p.done.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
				p.show(p.line())
			}
		}
	}()
	return p
}

func (p *progress) show(s string) {
	pad := ""
	if n := p.width - len(s); n > 0 {
		pad = strings.Repeat(" ", n)
	}
	p.width = len(s)
	fmt.Fprintf(p.w, "\r%s%s", s, pad)
}

// end stops the refresh and leaves the final line (if any was shown).
func (p *progress) end() {
	select {
	case <-p.stop:
		return
	default:
	}
	close(p.stop)
	p.done.Wait()
	if p.width > 0 {
		p.show(p.line())
		fmt.Fprintln(p.w)
	}
}

// rate formats n per d seconds.
func rate(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}
