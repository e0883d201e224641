package main

// Media through the CLI, in-process against a real node: send --file,
// recv showing the media, fetch.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/parleyhq/parley/client"
)

// parleyFetch runs the CLI like parley, with the fetch command added to
// the root should main.go not have it yet.
func parleyFetch(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	return runRoot(t, withFetch(newRootCmd()), stdin, args...)
}

func withFetch(root *cobra.Command) *cobra.Command {
	for _, c := range root.Commands() {
		if c.Name() == "fetch" {
			return root
		}
	}
	root.AddCommand(newFetchCmd())
	return root
}

func runRoot(t *testing.T, root *cobra.Command, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	var out, errb bytes.Buffer
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetIn(strings.NewReader(stdin))
	err := root.ExecuteContext(ctx)
	return result{out.String(), errb.String(), err}
}

// writePNG writes a w x h gradient picture to dir/name.
func writePNG(t *testing.T, dir, name string, w, h int) (string, []byte) {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.RGBA{R: uint8(255 * x / w), G: uint8(255 * y / h), B: 128, A: 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return p, buf.Bytes()
}

func wantErr(t *testing.T, r result, want string) {
	t.Helper()
	if r.err == nil {
		t.Fatalf("succeeded, want an error saying %q:\n%s", want, r.stdout)
	}
	if !strings.Contains(r.err.Error(), want) {
		t.Fatalf("error %q does not say %q", r.err, want)
	}
}

// The acceptance story: Alice sends a photo with a caption; Bob's recv
// shows the media with a thumbnail; fetch saves the same bytes, checked
// against the hash.
func TestSendRecvFetchMedia(t *testing.T) {
	e := startNode(t)
	aliceDir, bobDir := e.register(t, alicePhone), e.register(t, bobPhone)
	work := t.TempDir()
	photo, pic := writePNG(t, work, "photo.png", 640, 480)
	sum := sha256.Sum256(pic)
	sumHex := hex.EncodeToString(sum[:])

	r := parley(t, "", "send", "--profile", aliceDir, "--to", bobPhone, "--file", photo, "--caption", "the view", "--json").must(t)
	s := jsonLines(t, r.stdout)
	if len(s) != 1 || s[0]["status"] != "sent" || s[0]["to"] != bobPhone || s[0]["server_id"] == nil {
		t.Fatalf("send printed %v", s)
	}
	sm, _ := s[0]["media"].(map[string]any)
	url, _ := sm["url"].(string)
	id, _ := sm["id"].(string)
	if sm == nil || id == "" || !strings.HasSuffix(url, "/v1/media/"+id) || sm["mime"] != "image/png" ||
		sm["size"] != json.Number(fmt.Sprint(len(pic))) || sm["sha256"] != sumHex || sm["caption"] != "the view" {
		t.Fatalf("send printed media %v", sm)
	}
	if strings.Contains(r.stderr, "uploading") {
		t.Errorf("a small file showed progress: %q", r.stderr)
	}

	r = parley(t, "", "recv", "--profile", bobDir, "--count", "1", "--json", "--timeout", "15s").must(t)
	got := jsonLines(t, r.stdout)
	if len(got) != 1 || got[0]["type"] != "message" || got[0]["from"] != alicePhone || got[0]["text"] != "the view" ||
		got[0]["id"] != s[0]["id"] || got[0]["server_id"] != s[0]["server_id"] {
		t.Fatalf("recv printed %v", got)
	}
	rm, _ := got[0]["media"].(map[string]any)
	if rm == nil || rm["url"] != url || rm["id"] != id || rm["sha256"] != sumHex || rm["size"] != sm["size"] ||
		rm["mime"] != "image/png" || rm["caption"] != "the view" {
		t.Fatalf("recv printed media %v, send %v", rm, sm)
	}
	thumbB64, _ := rm["thumbnail"].(string)
	thumbBytes, err := base64.StdEncoding.DecodeString(thumbB64)
	if err != nil || len(thumbBytes) == 0 {
		t.Fatalf("thumbnail %q is not base64: %v", thumbB64, err)
	}
	thumb, err := jpeg.Decode(bytes.NewReader(thumbBytes))
	if err != nil {
		t.Fatalf("thumbnail is not a JPEG: %v", err)
	}
	if b := thumb.Bounds(); max(b.Dx(), b.Dy()) > 100 {
		t.Fatalf("thumbnail is %dx%d, over 100 px", b.Dx(), b.Dy())
	}
	recvLine := strings.TrimSpace(r.stdout)

	// fetch URL -o FILE --sha256 HEX
	outPath := filepath.Join(work, "out.png")
	r = parleyFetch(t, "", "fetch", "--profile", bobDir, url, "-o", outPath, "--sha256", sumHex).must(t)
	if b, err := os.ReadFile(outPath); err != nil || !bytes.Equal(b, pic) {
		t.Fatalf("fetched file differs from the upload (err %v)", err)
	}
	if !strings.Contains(r.stdout, outPath) || !strings.Contains(r.stdout, sumHex) || !strings.Contains(r.stdout, "verified") {
		t.Fatalf("fetch printed %q", r.stdout)
	}
	// It does not replace a file unasked.
	wantErr(t, parleyFetch(t, "", "fetch", "--profile", bobDir, url, "-o", outPath), "--force")
	parleyFetch(t, "", "fetch", "--profile", bobDir, url, "-o", outPath, "--force").must(t)

	// The line recv printed is enough to fetch and verify.
	fromJSON := filepath.Join(work, "from-json.png")
	r = parleyFetch(t, "", "fetch", "--profile", bobDir, "--from-json", recvLine, "-o", fromJSON, "--json").must(t)
	if f := jsonLines(t, r.stdout); len(f) != 1 || f[0]["verified"] != true || f[0]["sha256"] != sumHex || f[0]["path"] != fromJSON {
		t.Fatalf("fetch --from-json printed %v", f)
	}
	r = parleyFetch(t, recvLine+"\n", "fetch", "--profile", bobDir, "--from-json", "-", "-o", "-").must(t)
	if r.stdout != string(pic) || !strings.Contains(r.stderr, "verified") {
		t.Fatalf("fetch -o - wrote %d bytes, want %d; stderr %q", len(r.stdout), len(pic), r.stderr)
	}

	// By id, with the profile's server, to the default name: the id.
	t.Chdir(work)
	parleyFetch(t, "", "fetch", "--profile", bobDir, id).must(t)
	if b, err := os.ReadFile(filepath.Join(work, id)); err != nil || !bytes.Equal(b, pic) {
		t.Fatalf("fetch by id: file differs (err %v)", err)
	}

	// A hash other than the message's: an error, and no file left.
	bad := filepath.Join(work, "bad.png")
	wrong := strings.Repeat("0", 64)
	wantErr(t, parleyFetch(t, "", "fetch", "--profile", bobDir, url, "-o", bad, "--sha256", wrong), "download does not match the SHA-256 in the message")
	if ents, _ := filepath.Glob(filepath.Join(work, "*bad.png*")); len(ents) != 0 {
		t.Fatalf("a failed fetch left %v", ents)
	}

	// An unknown id, well formed.
	wantErr(t, parleyFetch(t, "", "fetch", "--profile", bobDir, strings.Repeat("A", len(id)), "-o", filepath.Join(work, "x")), "no such media, or it expired")
	wantErr(t, parleyFetch(t, "", "fetch", "--profile", bobDir, "../etc/passwd"), "neither a URL nor a media id")
	wantErr(t, parleyFetch(t, "", "fetch", "--profile", bobDir, "--sha256", "abc", url), "--sha256")

	// TEXT as the caption, and the human-readable line.
	parley(t, "", "send", "--profile", aliceDir, "--to", bobPhone, "--file", photo, "look", "at", "this").must(t)
	r = parley(t, "", "recv", "--profile", bobDir, "--count", "1", "--timeout", "15s").must(t)
	if !strings.Contains(r.stdout, alicePhone+": [image/png ") || !strings.Contains(r.stdout, "] look at this — http://") {
		t.Fatalf("recv printed %q", r.stdout)
	}
}

// A file over 1 MiB shows its upload progress on stderr.
func TestSendFileProgress(t *testing.T) {
	e := startNode(t)
	aliceDir, bobDir := e.register(t, alicePhone), e.register(t, bobPhone)
	data := make([]byte, 3<<19) // 1.5 MiB
	rand.Read(data)
	path := filepath.Join(t.TempDir(), "blob.bin")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	r := parley(t, "", "send", "--profile", aliceDir, "--to", bobPhone, "--file", path).must(t)
	if !strings.Contains(r.stderr, "uploading blob.bin: ") || !strings.Contains(r.stderr, "1.5 MiB of 1.5 MiB (100%)") {
		t.Fatalf("stderr %q shows no progress", r.stderr)
	}
	if !strings.Contains(r.stdout, "sent blob.bin (application/octet-stream, 1.5 MiB) to "+bobPhone) {
		t.Fatalf("send printed %q", r.stdout)
	}
	r = parley(t, "", "recv", "--profile", bobDir, "--count", "1", "--json", "--timeout", "15s").must(t)
	got := jsonLines(t, r.stdout)
	m, _ := got[0]["media"].(map[string]any)
	sum := sha256.Sum256(data)
	if m == nil || m["sha256"] != hex.EncodeToString(sum[:]) || m["thumbnail"] != nil || got[0]["text"] != "" {
		t.Fatalf("recv printed %v", got)
	}
}

func TestSendFileErrors(t *testing.T) {
	e := startNode(t)
	aliceDir := e.register(t, alicePhone)
	empty := t.TempDir()
	photo, _ := writePNG(t, t.TempDir(), "p.png", 8, 8)
	zero := filepath.Join(t.TempDir(), "zero")
	if err := os.WriteFile(zero, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		// The file is checked before connecting: with no profile at all,
		// the missing file is what is reported.
		{"missing file", []string{"send", "--profile", empty, "--to", bobPhone, "--file", filepath.Join(empty, "nope.png")}, "no such file"},
		{"directory", []string{"send", "--profile", aliceDir, "--to", bobPhone, "--file", empty}, "is a directory"},
		{"empty file", []string{"send", "--profile", aliceDir, "--to", bobPhone, "--file", zero}, "is empty"},
		{"two captions", []string{"send", "--profile", aliceDir, "--to", bobPhone, "--file", photo, "--caption", "a", "b"}, "two captions"},
		{"caption without file", []string{"send", "--profile", aliceDir, "--to", bobPhone, "--caption", "a", "b"}, "--caption goes with --file"},
		{"long caption", []string{"send", "--profile", aliceDir, "--to", bobPhone, "--file", photo, "--caption", strings.Repeat("x", 5000)}, "caption is 5000 bytes"},
		{"to nobody", []string{"send", "--profile", aliceDir, "--to", "+14155550109", "--file", photo}, "UNKNOWN_RECIPIENT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantErr(t, parley(t, "", tt.args...), tt.want)
		})
	}
	wantErr(t, parleyFetch(t, "", "fetch"), "what to fetch")
}

// fetch takes a URL only from the profile's server unless --any-host: a
// link in a message may point anywhere.
func TestFetchRefusesOtherHosts(t *testing.T) {
	file := []byte("from elsewhere")
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(file) }))
	defer other.Close()
	mine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(file) }))
	defer mine.Close()
	dir := t.TempDir()
	if err := client.SaveProfile(dir, client.Profile{
		Phone: bobPhone, Server: mine.URL + "/", NativeAddr: "127.0.0.1:1",
		ServerKey: make([]byte, 32), PrivateKey: make([]byte, 32), PublicKey: make([]byte, 32),
	}); err != nil {
		t.Fatal(err)
	}
	id := strings.Repeat("A", 22)
	out := filepath.Join(t.TempDir(), "x")
	for _, u := range []string{
		other.URL + "/v1/media/" + id,
		strings.Replace(mine.URL, "http://", "https://", 1) + "/v1/media/" + id,
		mine.URL + "@" + strings.TrimPrefix(other.URL, "http://") + "/v1/media/" + id, // mine as userinfo, then another host
	} {
		wantErr(t, parleyFetch(t, "", "fetch", "--profile", dir, u, "-o", out), "--any-host")
		wantErr(t, parleyFetch(t, "", "fetch", "--profile", dir, "--from-json", `{"media":{"url":"`+u+`"}}`, "-o", out), "--any-host")
	}
	if _, err := os.Stat(out); err == nil {
		t.Fatal("a refused fetch wrote the file")
	}
	// No profile to tell: refused, saying what to do.
	wantErr(t, parleyFetch(t, "", "fetch", "--profile", t.TempDir(), other.URL+"/v1/media/"+id, "-o", out), "--any-host")

	// The profile's own server.
	parleyFetch(t, "", "fetch", "--profile", dir, mine.URL+"/v1/media/"+id, "-o", out).must(t)
	os.Remove(out)
	// Anywhere, when asked.
	parleyFetch(t, "", "fetch", "--any-host", other.URL+"/v1/media/"+id, "-o", out).must(t)
	if b, err := os.ReadFile(out); err != nil || !bytes.Equal(b, file) {
		t.Fatalf("fetch --any-host: %q, %v", b, err)
	}
}
