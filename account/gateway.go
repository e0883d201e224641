package account

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"
)

// Gateway delivers a verification code to a phone. Send returns once the
// provider has accepted the message (not once it is delivered); an error
// means the user will not get this code.
type Gateway interface {
	Send(ctx context.Context, phone, code string) error
}

// smsText is the message body gateways that talk to real providers send.
func smsText(code string) string { return "Your Parley code is " + code }

// ParseGateway turns the --sms flag value into a Gateway:
//
//	log        log each code (development default; never use in production)
//	file:PATH  append {"phone":...,"code":...} lines to PATH (tests, demos)
//	http       POST to an SMS provider configured by httpCfg
//
// log receives the log gateway's lines; nil means slog.Default(), so codes
// are never silently dropped.
func ParseGateway(spec string, httpCfg HTTPGatewayConfig, log *slog.Logger) (Gateway, error) {
	switch {
	case spec == "log":
		return NewLogGateway(log), nil
	case strings.HasPrefix(spec, "file:"):
		return NewFileGateway(strings.TrimPrefix(spec, "file:"))
	case spec == "http":
		return NewHTTPGateway(httpCfg)
	default:
		return nil, fmt.Errorf("unknown SMS gateway %q: want \"log\", \"file:PATH\" or \"http\"", spec)
	}
}

// LogGateway "sends" codes by logging them, so a developer can register
// without an SMS provider.
type LogGateway struct {
	log *slog.Logger
}

// NewLogGateway returns a gateway logging to log (nil: slog.Default()).
func NewLogGateway(log *slog.Logger) *LogGateway {
	if log == nil {
		log = slog.Default()
	}
	return &LogGateway{log: log}
}

// Send logs the code; it never fails.
func (g *LogGateway) Send(ctx context.Context, phone, code string) error {
	g.log.InfoContext(ctx, "sms verification code (log gateway)", "phone", phone, "code", code)
	return nil
}

// FileGateway appends one JSON line {"phone":"+E164","code":"123456"} per
// code to a file, so end-to-end tests and scripts can pick codes up.
type FileGateway struct {
	path string
	mu   sync.Mutex // one line at a time, so concurrent lines never interleave
}

// NewFileGateway returns a gateway appending to path. It creates the file
// (mode 0600: it holds live codes) now, so a bad path fails at startup
// rather than at the first registration.
func NewFileGateway(path string) (*FileGateway, error) {
	if path == "" {
		return nil, errors.New("file SMS gateway: empty path: want file:PATH")
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("file SMS gateway: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("file SMS gateway: %w", err)
	}
	return &FileGateway{path: path}, nil
}

// Send appends the line. The file is opened per code (codes are rare), so
// it may be truncated or rotated while the server runs.
func (g *FileGateway) Send(_ context.Context, phone, code string) error {
	line, err := json.Marshal(struct {
		Phone string `json:"phone"`
		Code  string `json:"code"`
	}{phone, code})
	if err != nil {
		return err
	}
	line = append(line, '\n')

	g.mu.Lock()
	defer g.mu.Unlock()
	f, err := os.OpenFile(g.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("file SMS gateway: %w", err)
	}
	_, werr := f.Write(line)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		return fmt.Errorf("file SMS gateway: %w", err)
	}
	return nil
}

// HTTPGatewayConfig configures the http gateway.
type HTTPGatewayConfig struct {
	// URL receives a POST with {"to":"+E164","message":"Your Parley code is 123456"}.
	URL string
	// Token, if set, is sent as "Authorization: Bearer TOKEN".
	Token string
	// User and Password, if User is set, are sent as basic auth. Token and
	// User are exclusive: both use the Authorization header.
	User     string
	Password string
	// Timeout bounds one send, connection included. Default 10s.
	Timeout time.Duration
	// Client sends the requests; nil means a client of its own.
	Client *http.Client
}

// HTTPGateway posts codes to an SMS provider's JSON API.
type HTTPGateway struct {
	cfg HTTPGatewayConfig
}

// maxSnippet bounds how much of a provider's error body goes into an error.
const maxSnippet = 256

// NewHTTPGateway checks cfg and returns the gateway.
func NewHTTPGateway(cfg HTTPGatewayConfig) (*HTTPGateway, error) {
	if cfg.URL == "" {
		return nil, errors.New("http SMS gateway: no URL configured")
	}
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("http SMS gateway: bad URL: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("http SMS gateway: URL %q: want http(s)://host/path", u.Redacted())
	}
	if cfg.Token != "" && cfg.User != "" {
		return nil, errors.New("http SMS gateway: set a token or a user/password, not both")
	}
	if cfg.Timeout < 0 {
		return nil, errors.New("http SMS gateway: negative timeout")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{}
	}
	return &HTTPGateway{cfg: cfg}, nil
}

// Send posts the code. Any non-2xx answer is an error carrying the status
// and the start of the body, which is usually where providers explain.
func (g *HTTPGateway) Send(ctx context.Context, phone, code string) error {
	body, err := json.Marshal(struct {
		To      string `json:"to"`
		Message string `json:"message"`
	}{phone, smsText(code)})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, g.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, g.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("http SMS gateway: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	switch {
	case g.cfg.Token != "":
		req.Header.Set("Authorization", "Bearer "+g.cfg.Token)
	case g.cfg.User != "":
		req.SetBasicAuth(g.cfg.User, g.cfg.Password)
	}
	resp, err := g.cfg.Client.Do(req)
	if err != nil {
		return fmt.Errorf("http SMS gateway: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode <= 299 {
		// Drain (bounded) so the connection can be reused.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return nil
	}
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, maxSnippet))
	// %q keeps control characters and invalid UTF-8 out of log lines.
	return fmt.Errorf("http SMS gateway: provider answered %s: %q", resp.Status, bytes.TrimSpace(snippet))
}
