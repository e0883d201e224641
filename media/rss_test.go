package media

import (
	"bufio"
	"bytes"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// BenchmarkDecodeMemoryRSS measures the worst memory an attacker can make
// the thumbnailer use with the default limits: 16 accounts upload at once
// through the real handler, over loopback, images made to cost as much as
// a decode may (a 4000x4000 16-bit RGBA PNG, 128 MB decoded, just under
// MaxDecodeBytes) and, as a second case, the 7000x7000 bomb the limit
// refuses. It reports the process's peak RSS (VmHWM) and its RSS before
// the uploads. Run each case alone, in a fresh process, so that the peak
// is this case's:
//
//	go test -run '^$' -bench 'DecodeMemoryRSS/under' -benchtime 1x ./media
func BenchmarkDecodeMemoryRSS(b *testing.B) {
	for _, tc := range []struct {
		name string
		w, h int
	}{
		{"under_the_limit_4000x4000", 4000, 4000},
		{"bomb_7000x7000", 7000, 7000},
	} {
		b.Run(tc.name, func(b *testing.B) {
			const uploaders = 16
			data := pngBomb(b, tc.w, tc.h)
			e := newEnv(b, nil)
			toks := make([]string, uploaders)
			for i := range toks {
				toks[i] = e.token(fmt.Sprintf("+1415555%04d", i))
			}
			before := procStatus(b, "VmRSS")
			thumbs := 0
			for b.Loop() {
				var wg sync.WaitGroup
				var mu sync.Mutex
				for _, tok := range toks {
					wg.Go(func() {
						r := e.upload(tok, data)
						if r.status != http.StatusCreated {
							b.Errorf("upload: %d %s", r.status, r.body)
						}
						if bytes.Contains(r.body, []byte(`"thumbnail"`)) {
							mu.Lock()
							thumbs++
							mu.Unlock()
						}
					})
				}
				wg.Wait()
			}
			b.ReportMetric(float64(before)/(1<<20), "MiB-RSS-before")
			b.ReportMetric(float64(procStatus(b, "VmHWM"))/(1<<20), "MiB-peak-RSS")
			b.ReportMetric(float64(thumbs)/float64(b.N), "thumbnails/op")
		})
	}
}

// procStatus reads a kB figure of /proc/self/status, in bytes.
func procStatus(b *testing.B, field string) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		b.Skipf("no /proc/self/status: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				b.Fatalf("%s: %q", field, v)
			}
			return kb << 10
		}
	}
	b.Fatalf("no %s in /proc/self/status", field)
	return 0
}
