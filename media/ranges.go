package media

import (
	"strconv"
	"strings"
)

// maxRanges is the most byte ranges a download serves in one answer. A
// request for more gets the whole file (200), as net/http answers ranges
// that add up to more than the file: a multipart answer of hundreds of
// tiny parts is mostly part headers (400 one-byte ranges of a 23 KB file
// made a 52 KB answer), and no client needs it.
const maxRanges = 8

// normalizeRange checks a download's Range header before http.ServeContent
// sees it, and returns what it should see instead ("" for no range):
//
//   - a header that is not a well-formed "bytes=" range set is ignored,
//     as RFC 9110 (14.2) allows, and the whole file is served;
//   - ranges that cannot be satisfied (a first byte at or past the end,
//     a suffix of length 0) are dropped; if none is left, the answer is
//     416 with "Content-Range: bytes */size" (net/http alone answered
//     "bytes=-0" with 206 and "Content-Range: bytes 23211-23210/23211");
//   - more than maxRanges satisfiable ranges: the whole file;
//   - otherwise the ranges, clipped to the file, as first-last pairs.
//
// The 416 is left to ServeContent (it is handed a range that starts at
// the end of the file), so that preconditions still come first: a
// matching If-None-Match still answers 304, a stale If-Range the whole
// file.
func normalizeRange(h string, size int64) string {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok {
		return ""
	}
	var out []byte
	n, specs := 0, 0
	for ra := range strings.SplitSeq(spec, ",") {
		ra = strings.Trim(ra, " \t")
		if ra == "" {
			continue
		}
		specs++
		first, last, ok := strings.Cut(ra, "-")
		if !ok {
			return ""
		}
		first, last = strings.Trim(first, " \t"), strings.Trim(last, " \t")
		var start, end int64 // inclusive
		if first == "" {
			suffix, ok := parseDigits(last)
			if !ok {
				return ""
			}
			if suffix == 0 || size == 0 {
				continue // unsatisfiable
			}
			start, end = max(0, size-suffix), size-1
		} else {
			s, ok := parseDigits(first)
			if !ok {
				return ""
			}
			e := int64(-1)
			if last != "" {
				if e, ok = parseDigits(last); !ok || e < s {
					return ""
				}
			}
			if s >= size {
				continue // unsatisfiable
			}
			start, end = s, size-1
			if e >= 0 {
				end = min(e, size-1)
			}
		}
		if n++; n > maxRanges {
			return ""
		}
		if len(out) > 0 {
			out = append(out, ',')
		}
		out = strconv.AppendInt(out, start, 10)
		out = append(out, '-')
		out = strconv.AppendInt(out, end, 10)
	}
	switch {
	case specs == 0:
		return "" // "bytes=" alone is malformed
	case n == 0:
		return "bytes=" + strconv.FormatInt(size, 10) + "-"
	}
	return "bytes=" + string(out)
}

// parseDigits parses a non-negative decimal of at most 18 digits (no
// sign, unlike strconv.ParseInt, so that no spelling slips past).
func parseDigits(s string) (int64, bool) {
	if s == "" || len(s) > 18 {
		return 0, false
	}
	var v int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int64(c-'0')
	}
	return v, true
}
