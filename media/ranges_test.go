package media

import (
	"bytes"
	"fmt"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestNormalizeRange(t *testing.T) {
	const size = 100
	for _, tc := range []struct{ in, want string }{
		{"bytes=0-0", "bytes=0-0"},
		{"bytes=10-", "bytes=10-99"},
		{"bytes=-10", "bytes=90-99"},
		{"bytes=-1000", "bytes=0-99"},
		{"bytes=90-1000", "bytes=90-99"},
		{"bytes= 1-2 , 5-6,", "bytes=1-2,5-6"},
		{"bytes=-0", "bytes=100-"},         // unsatisfiable: 416
		{"bytes=100-", "bytes=100-"},       // starts at the end: 416
		{"bytes=100-200,-0", "bytes=100-"}, // none satisfiable: 416
		{"bytes=-0,0-4", "bytes=0-4"},      // the satisfiable one
		{"bytes=0-0,1-1,2-2,3-3,4-4,5-5,6-6,7-7", "bytes=0-0,1-1,2-2,3-3,4-4,5-5,6-6,7-7"},
		{"bytes=0-0,1-1,2-2,3-3,4-4,5-5,6-6,7-7,8-8", ""}, // 9: the whole file
		{"bytes=5-4", ""},   // malformed: ignored
		{"bytes=+0-+0", ""}, // ParseInt would take the signs
		{"bytes=abc", ""},
		{"bytes=", ""},
		{"bytes=,", ""},
		{"items=0-1", ""},
		{"bytes=99999999999999999999-", ""},
	} {
		if got := normalizeRange(tc.in, size); got != tc.want {
			t.Errorf("%q: %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestDownloadRanges asks the real handler for ranges of a 23211-byte
// file, the size from the report that found the bugs.
func TestDownloadRanges(t *testing.T) {
	e := newEnv(t, nil)
	file := bytes.Repeat([]byte("0123456789abcdef"), 23211/16+1)[:23211]
	u := e.uploadOK("+14155550100", file)
	many := make([]string, 400)
	for i := range many {
		many[i] = fmt.Sprintf("%d-%d", 2*i, 2*i)
	}
	for _, tc := range []struct {
		name         string
		header       map[string]string
		status       int
		contentRange string
		parts        int // of a multipart answer
	}{
		{"suffix of 0", map[string]string{"Range": "bytes=-0"}, 416, "bytes */23211", 0},
		{"past the end", map[string]string{"Range": "bytes=23211-"}, 416, "bytes */23211", 0},
		{"one byte", map[string]string{"Range": "bytes=0-0"}, 206, "bytes 0-0/23211", 0},
		{"the last byte", map[string]string{"Range": "bytes=-1"}, 206, "bytes 23210-23210/23211", 0},
		{"three ranges", map[string]string{"Range": "bytes=0-0,10-19,-5"}, 206, "", 3},
		{"400 ranges", map[string]string{"Range": "bytes=" + strings.Join(many, ",")}, 200, "", 0},
		{"malformed", map[string]string{"Range": "bytes=5-4"}, 200, "", 0},
		{"stale If-Range", map[string]string{"Range": "bytes=-0", "If-Range": `"stale"`}, 200, "", 0},
		{"If-None-Match first", map[string]string{"Range": "bytes=-0", "If-None-Match": `"` + u.SHA256 + `"`}, 304, "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.get(u.ID, tc.header)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d (%s)", r.status, tc.status, r.header.Get("Content-Range"))
			}
			if got := r.header.Get("Content-Range"); got != tc.contentRange {
				t.Errorf("Content-Range %q, want %q", got, tc.contentRange)
			}
			switch {
			case tc.status == 200 && !bytes.Equal(r.body, file):
				t.Errorf("got %d bytes, want the whole file", len(r.body))
			case tc.parts > 0:
				if n := countParts(t, r); n != tc.parts {
					t.Errorf("%d parts, want %d", n, tc.parts)
				}
			}
		})
	}
}

func countParts(t *testing.T, r reply) int {
	t.Helper()
	_, params, err := mime.ParseMediaType(r.header.Get("Content-Type"))
	if err != nil {
		t.Fatal(err)
	}
	mr := multipart.NewReader(bytes.NewReader(r.body), params["boundary"])
	n := 0
	for {
		if _, err := mr.NextPart(); err != nil {
			return n
		}
		n++
	}
}

// FuzzNormalizeRange checks that whatever Range header arrives, what
// http.ServeContent then answers is sound: 200 with the whole file, 206
// with at most maxRanges parts each of which is the bytes its
// Content-Range names, or 416 saying the size.
func FuzzNormalizeRange(f *testing.F) {
	for _, seed := range []string{"bytes=-0", "bytes=0-0", "bytes=-5", "bytes=3-", "bytes=0-0,2-3,-1", "bytes=5-4", "bytes=+1-2", "bytes= 1 - 2 ,,", "bytes=0-0,1-1,2-2,3-3,4-4,5-5,6-6,7-7,8-8", "bytes=16-", "bytes=99999999999999999999-1", "items=1-2", "bytes=-"} {
		f.Add(seed, uint8(16))
	}
	f.Fuzz(func(t *testing.T, h string, size uint8) {
		file := bytes.Repeat([]byte{'a', 'b', 'c', 'd', 'e'}, 52)[:size]
		got := normalizeRange(h, int64(size))
		if again := normalizeRange(got, int64(size)); got != "" && again != got {
			t.Fatalf("%q -> %q -> %q: not stable", h, got, again)
		}
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		if got != "" {
			req.Header.Set("Range", got)
		}
		w := httptest.NewRecorder()
		http.ServeContent(w, req, "", time.Time{}, bytes.NewReader(file))
		resp := w.Result()
		body := w.Body.Bytes()
		cr := resp.Header.Get("Content-Range")
		switch resp.StatusCode {
		case http.StatusOK:
			if !bytes.Equal(body, file) {
				t.Fatalf("%q: 200 with %d bytes of %d", h, len(body), size)
			}
		case http.StatusRequestedRangeNotSatisfiable:
			if want := "bytes */" + strconv.Itoa(int(size)); cr != want {
				t.Fatalf("%q: 416 with Content-Range %q, want %q", h, cr, want)
			}
		case http.StatusPartialContent:
			if cr != "" {
				checkPart(t, h, cr, body, file)
				return
			}
			_, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
			if err != nil {
				t.Fatal(err)
			}
			mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
			n := 0
			for ; ; n++ {
				p, err := mr.NextPart()
				if err != nil {
					break
				}
				var b bytes.Buffer
				b.ReadFrom(p)
				checkPart(t, h, p.Header.Get("Content-Range"), b.Bytes(), file)
			}
			if n < 2 || n > maxRanges {
				t.Fatalf("%q: %d parts", h, n)
			}
		default:
			t.Fatalf("%q (as %q): status %d", h, got, resp.StatusCode)
		}
	})
}

func checkPart(t *testing.T, h, cr string, body, file []byte) {
	t.Helper()
	var first, last, total int
	if _, err := fmt.Sscanf(cr, "bytes %d-%d/%d", &first, &last, &total); err != nil {
		t.Fatalf("%q: Content-Range %q: %v", h, cr, err)
	}
	if total != len(file) || first > last || last >= total || !bytes.Equal(body, file[first:last+1]) {
		t.Fatalf("%q: Content-Range %q over %d bytes with %d bytes", h, cr, len(file), len(body))
	}
}
