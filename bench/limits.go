package bench

import (
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"syscall"
)

// MaxFiles is the most files one bench process opens: the reference machine
// allows 20,000 per process, and the server on the same machine needs as
// many for its side of the connections.
const MaxFiles = 20000

// spareFiles is room for what else the process opens (HTTP to the admin
// listener, the profile, stdio).
const spareFiles = 32

// checkFiles refuses a run needing conns sockets when the process cannot
// open that many files, raising the soft limit first if the hard one allows.
func checkFiles(conns, offset int, what string) error {
	open := 0
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		open = len(ents)
	}
	need := conns + open + spareFiles
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return nil // no limit to check against
	}
	if uint64(need) > rl.Cur && rl.Cur < rl.Max {
		want := rl
		want.Cur = min(rl.Max, uint64(max(need, MaxFiles)))
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want) == nil {
			rl = want
		}
	}
	limit := min(int(min(rl.Cur, uint64(1<<31))), MaxFiles)
	if need > limit {
		half := (conns + 1) / 2
		return fmt.Errorf("%s needs about %d open files (%d connections, %d already open, %d spare) but one bench process may open at most %d: "+
			"split the load over bench processes run at once with disjoint user ranges, e.g. --conns %d --offset %d and --conns %d --offset %d",
			what, need, conns, open, spareFiles, limit, half, offset, conns-half, offset+half)
	}
	return nil
}

// connsPerSource is how many connections AutoSrc puts on one source
// address.
const connsPerSource = 2000

// autoSources picks source addresses for n connections to addr: none (the
// kernel's choice) unless addr is an IPv4 loopback address on Linux and n
// needs more than one.
func autoSources(addr string, n int) []netip.Addr {
	if runtime.GOOS != "linux" || n <= connsPerSource {
		return nil
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().Is4() || !ap.Addr().IsLoopback() {
		return nil
	}
	count := min((n+connsPerSource-1)/connsPerSource, 250)
	out := make([]netip.Addr, 0, count)
	for a := netip.AddrFrom4([4]byte{127, 0, 0, 2}); len(out) < count; a = a.Next() {
		out = append(out, a)
	}
	return out
}

// ParseSources parses --src: one address, a range "127.0.0.2-127.0.0.20",
// or a comma-separated list of either.
func ParseSources(s string) ([]netip.Addr, error) {
	var out []netip.Addr
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := netip.ParseAddr(strings.TrimSpace(lo))
		if err != nil {
			return nil, fmt.Errorf("--src %q: %q is not an IP address", s, lo)
		}
		if !isRange {
			out = append(out, a)
			continue
		}
		b, err := netip.ParseAddr(strings.TrimSpace(hi))
		if err != nil {
			return nil, fmt.Errorf("--src %q: %q is not an IP address", s, hi)
		}
		if b.Less(a) || a.Is4() != b.Is4() {
			return nil, fmt.Errorf("--src %q: a range goes from the lower address to the higher one", s)
		}
		for x := a; ; x = x.Next() {
			out = append(out, x)
			if len(out) > 4096 {
				return nil, fmt.Errorf("--src %q: more than 4096 addresses", s)
			}
			if x == b {
				break
			}
		}
	}
	return out, nil
}
