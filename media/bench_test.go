package media

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"testing"
)

// BenchmarkUpload1MiB measures a whole upload over loopback HTTP: stream,
// hash, sniff, fsync, rename and answer. Each blob is deleted, off the
// clock, so that the disk does not fill.
func BenchmarkUpload1MiB(b *testing.B) {
	e := newEnv(b, func(c *Config) { c.UploadsPerMinute = -1; c.QuotaBytes = -1 })
	data := make([]byte, 1<<20)
	rand.Read(data)
	tok := e.token("+14155550100")
	client := e.srv.Client()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/v1/media", bytes.NewReader(data))
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		var u uploadResponse
		err = json.NewDecoder(resp.Body).Decode(&u)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusCreated {
			b.Fatalf("upload: %d %v", resp.StatusCode, err)
		}
		b.StopTimer()
		key, _ := parseID(u.ID)
		if err := e.svc.store.Delete(b.Context(), key); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkThumbnailPhoto measures the thumbnail of a 3-megapixel JPEG,
// the size of a photo a phone sends after its own downscaling.
func BenchmarkThumbnailPhoto(b *testing.B) {
	data := encodeJPEG(b, photo(2048, 1536))
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Thumbnail(bytes.NewReader(data), 100, 0, 0); err != nil {
			b.Fatal(err)
		}
	}
}
