package monitor_test

// A minimal Chrome DevTools Protocol client: just enough WebSocket (RFC
// 6455, client side) and CDP to open a page, evaluate JavaScript in it and
// take a screenshot, so the dashboard test needs no new dependency.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// wsConn is the client side of a WebSocket connection.
type wsConn struct {
	c  net.Conn
	br *bufio.Reader
}

func dialWebSocket(ctx context.Context, rawURL string) (*wsConn, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return nil, err
	}
	key := make([]byte, 16)
	rand.Read(key)
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n", u.RequestURI(), u.Host, base64.StdEncoding.EncodeToString(key))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		c.Close()
		return nil, fmt.Errorf("websocket upgrade: %s", resp.Status)
	}
	return &wsConn{c: c, br: br}, nil
}

// write sends one masked frame (clients must mask).
func (w *wsConn) write(op byte, p []byte) error {
	hdr := []byte{0x80 | op}
	switch n := len(p); {
	case n < 126:
		hdr = append(hdr, 0x80|byte(n))
	case n < 1<<16:
		hdr = append(hdr, 0x80|126, byte(n>>8), byte(n))
	default:
		hdr = append(hdr, 0x80|127)
		hdr = binary.BigEndian.AppendUint64(hdr, uint64(n))
	}
	mask := make([]byte, 4)
	rand.Read(mask)
	hdr = append(hdr, mask...)
	buf := append(hdr, p...)
	for i := range p {
		buf[len(hdr)+i] ^= mask[i%4]
	}
	_, err := w.c.Write(buf)
	return err
}

// read returns the next text or binary message, answering pings.
func (w *wsConn) read() ([]byte, error) {
	var msg []byte
	for {
		var h [2]byte
		if _, err := io.ReadFull(w.br, h[:]); err != nil {
			return nil, err
		}
		fin, op := h[0]&0x80 != 0, h[0]&0x0f
		n := uint64(h[1] & 0x7f)
		switch n {
		case 126:
			var b [2]byte
			if _, err := io.ReadFull(w.br, b[:]); err != nil {
				return nil, err
			}
			n = uint64(binary.BigEndian.Uint16(b[:]))
		case 127:
			var b [8]byte
			if _, err := io.ReadFull(w.br, b[:]); err != nil {
				return nil, err
			}
			n = binary.BigEndian.Uint64(b[:])
		}
		var mask []byte
		if h[1]&0x80 != 0 {
			mask = make([]byte, 4)
			if _, err := io.ReadFull(w.br, mask); err != nil {
				return nil, err
			}
		}
		if n > 256<<20 {
			return nil, fmt.Errorf("websocket frame of %d bytes", n)
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(w.br, p); err != nil {
			return nil, err
		}
		if mask != nil {
			for i := range p {
				p[i] ^= mask[i%4]
			}
		}
		switch op {
		case 0x8:
			return nil, errors.New("websocket closed by the browser")
		case 0x9:
			if err := w.write(0xA, p); err != nil {
				return nil, err
			}
			continue
		case 0xA:
			continue
		}
		msg = append(msg, p...)
		if fin {
			return msg, nil
		}
	}
}

// cdp sends DevTools commands one at a time and waits for each answer,
// skipping the events in between (the test polls; it needs none).
type cdp struct {
	ws *wsConn
	id int
}

func (c *cdp) call(ctx context.Context, session, method string, params any, result any) error {
	c.id++
	req := map[string]any{"id": c.id, "method": method}
	if params != nil {
		req["params"] = params
	}
	if session != "" {
		req["sessionId"] = session
	}
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.ws.c.SetDeadline(dl)
	}
	if err := c.ws.write(0x1, b); err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	for {
		msg, err := c.ws.read()
		if err != nil {
			return fmt.Errorf("%s: %w", method, err)
		}
		var resp struct {
			ID     int             `json:"id"`
			Result json.RawMessage `json:"result"`
			Error  *struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal(msg, &resp); err != nil {
			return fmt.Errorf("%s: %w", method, err)
		}
		if resp.ID != c.id {
			continue // an event, or a late answer
		}
		if resp.Error != nil {
			return fmt.Errorf("%s: %s (%d)", method, resp.Error.Message, resp.Error.Code)
		}
		if result != nil {
			return json.Unmarshal(resp.Result, result)
		}
		return nil
	}
}

// evaluate runs a JavaScript expression in the page and decodes its value.
func (c *cdp) evaluate(ctx context.Context, session, expr string, v any) error {
	var r struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text      string `json:"text"`
			Exception struct {
				Description string `json:"description"`
			} `json:"exception"`
		} `json:"exceptionDetails"`
	}
	if err := c.call(ctx, session, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true}, &r); err != nil {
		return err
	}
	if e := r.ExceptionDetails; e != nil {
		return fmt.Errorf("javascript: %s %s", e.Text, e.Exception.Description)
	}
	return json.Unmarshal(r.Result.Value, v)
}

// chromiumBinary finds a Chromium to drive, or skips the test.
func chromiumBinary(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome", "headless_shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("no Chromium found (looked for chromium, chromium-browser, google-chrome, headless_shell): install it (Debian: apt-get install chromium) to test the dashboard in a real browser")
	return ""
}

// browser is a headless Chromium driven over the DevTools protocol.
type browser struct {
	cmd    *exec.Cmd
	cdp    *cdp
	stderr *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

var devtoolsURL = regexp.MustCompile(`DevTools listening on (ws://\S+)`)

func startBrowser(ctx context.Context, t *testing.T, bin string, width, height int) *browser {
	t.Helper()
	// Not t.TempDir: Chromium's helper processes write to the profile until
	// they are gone, so the directory is removed after the whole process
	// group is killed, below.
	profile, err := os.MkdirTemp("", "parley-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
		"--user-data-dir="+profile,
		"--remote-debugging-port=0",
		fmt.Sprintf("--window-size=%d,%d", width, height),
		"about:blank")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its own group, to kill the helpers too
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(profile)
		t.Fatalf("start %s: %v", bin, err)
	}
	b := &browser{cmd: cmd, stderr: &lockedBuffer{}}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		// A helper may still be exiting: retry briefly, then leave it.
		for i := 0; i < 20 && os.RemoveAll(profile) != nil; i++ {
			time.Sleep(50 * time.Millisecond)
		}
	})
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			b.stderr.Write([]byte(line + "\n"))
			if m := devtoolsURL.FindStringSubmatch(line); m != nil {
				select {
				case found <- m[1]:
				default:
				}
			}
		}
	}()
	var wsURL string
	select {
	case wsURL = <-found:
	case <-ctx.Done():
		t.Fatalf("%s did not open its DevTools port; its output:\n%s", bin, b.stderr.String())
	}
	ws, err := dialWebSocket(ctx, wsURL)
	if err != nil {
		t.Fatalf("connect to DevTools at %s: %v", wsURL, err)
	}
	t.Cleanup(func() { ws.c.Close() })
	b.cdp = &cdp{ws: ws}
	return b
}

// open makes a new tab at pageURL and returns its CDP session.
func (b *browser) open(ctx context.Context, t *testing.T, pageURL string, width, height int) string {
	t.Helper()
	var target struct {
		TargetID string `json:"targetId"`
	}
	if err := b.cdp.call(ctx, "", "Target.createTarget", map[string]any{"url": "about:blank"}, &target); err != nil {
		t.Fatal(err)
	}
	var att struct {
		SessionID string `json:"sessionId"`
	}
	if err := b.cdp.call(ctx, "", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &att); err != nil {
		t.Fatal(err)
	}
	s := att.SessionID
	if err := b.cdp.call(ctx, s, "Emulation.setDeviceMetricsOverride",
		map[string]any{"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}, nil); err != nil {
		t.Fatal(err)
	}
	if err := b.cdp.call(ctx, s, "Page.navigate", map[string]any{"url": pageURL}, nil); err != nil {
		t.Fatal(err)
	}
	return s
}

func (b *browser) screenshot(ctx context.Context, t *testing.T, session string) []byte {
	t.Helper()
	var shot struct {
		Data string `json:"data"`
	}
	if err := b.cdp.call(ctx, session, "Page.captureScreenshot", map[string]any{"format": "png"}, &shot); err != nil {
		t.Fatal(err)
	}
	png, err := base64.StdEncoding.DecodeString(shot.Data)
	if err != nil {
		t.Fatal(err)
	}
	return png
}

// poll evaluates expr until ok accepts its value or ctx ends.
func poll[T any](ctx context.Context, t *testing.T, b *browser, session, expr string, ok func(T) bool) T {
	t.Helper()
	var last T
	var lastErr error
	for {
		var v T
		if err := b.cdp.evaluate(ctx, session, expr, &v); err != nil {
			lastErr = err
		} else {
			last = v
			if ok(v) {
				return v
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("page never reached the expected state; last value %+v, last error %v", last, lastErr)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
