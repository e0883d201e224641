package media

import (
	"net/http"
	"sync"
	"testing"
)

// Every refusal by a bound is reported through Config.OnLimit, so the node
// counts it with its other limit hits (and the limit alert sees it).
func TestRefusalsAreReportedAsLimitHits(t *testing.T) {
	var mu sync.Mutex
	hits := map[string]int{}
	onLimit := func(limit string) { mu.Lock(); hits[limit]++; mu.Unlock() }
	e := newEnv(t, func(c *Config) {
		c.UploadsPerMinute, c.QuotaBytes, c.MaxSize, c.OnLimit = 2, 8<<10, 6<<10, onLimit
	})
	const alice = "+14155550100"
	e.uploadOK(alice, make([]byte, 5<<10))
	if r := e.upload(e.token(alice), make([]byte, 4<<10)); r.status != http.StatusRequestEntityTooLarge {
		t.Fatalf("over quota: %d", r.status)
	}
	if r := e.upload(e.token(alice), make([]byte, 1)); r.status != http.StatusTooManyRequests {
		t.Fatalf("third upload in a minute: %d", r.status)
	}
	if r := e.upload(e.token("+14155550199"), make([]byte, 7<<10)); r.status != http.StatusRequestEntityTooLarge {
		t.Fatalf("over the size limit: %d", r.status)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, l := range []string{"media_quota", "media_uploads_per_minute", "media_max_size"} {
		if hits[l] != 1 {
			t.Errorf("limit hits %v: want media_quota, media_uploads_per_minute and media_max_size once each", hits)
			break
		}
	}
}
