package main

// What the client commands (register, send, recv, chat, fetch) share: the profile
// directory, connecting with it, phone numbers, output helpers, and errors
// that tell the user what to do next.

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/parleyhq/parley/account"
	"github.com/parleyhq/parley/client"
	"github.com/parleyhq/parley/wire"
)

// exitTimeout is the exit status of send and recv when --timeout passes
// before they got what they waited for; 124 as timeout(1) uses, so scripts
// can tell "nothing came" from a failure (1).
const exitTimeout = 124

// statusError is an error with its own exit status (main's exitCoder).
type statusError struct {
	code int
	err  error
}

func (e *statusError) Error() string { return e.err.Error() }
func (e *statusError) Unwrap() error { return e.err }
func (e *statusError) ExitCode() int { return e.code }

// profileRoot is where profiles live by default: one directory per number.
func profileRoot() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("no user configuration directory (%v): give --profile DIR", err)
	}
	return filepath.Join(dir, "parley"), nil
}

// profileRootHelp names the default root in help texts.
func profileRootHelp() string {
	if root, err := profileRoot(); err == nil {
		return root
	}
	return "<user config dir>/parley"
}

// defaultProfileDir is register's default profile for phone.
func defaultProfileDir(phone string) (string, error) {
	root, err := profileRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, strings.TrimPrefix(phone, "+")), nil
}

// resolveProfileDir picks the profile for send, recv and chat: --profile if
// given, else the only profile under the default root.
func resolveProfileDir(dir string) (string, error) {
	if dir != "" {
		return dir, nil
	}
	root, err := profileRoot()
	if err != nil {
		return "", err
	}
	ents, err := os.ReadDir(root)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("look for profiles in %s: %w", root, err)
	}
	var found []string
	for _, e := range ents {
		if _, err := os.Stat(filepath.Join(root, e.Name(), client.ProfileFile)); err == nil {
			found = append(found, filepath.Join(root, e.Name()))
		}
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("no profile under %s: register this device first (parley register --phone NUMBER, then with --code), or give --profile DIR", root)
	case 1:
		return found[0], nil
	}
	return "", fmt.Errorf("several profiles under %s (%s): choose one with --profile DIR", root, strings.Join(found, ", "))
}

// profileFlags are the flags of every command that logs in.
type profileFlags struct {
	dir     string
	addrs   string
	verbose bool
}

func (pf *profileFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&pf.dir, "profile", "", "profile directory written by 'parley register' (default: the only profile under "+profileRootHelp()+")")
	f.StringVar(&pf.addrs, "addr", "", "the server's native address(es), HOST:PORT[,HOST:PORT...], instead of the profile's (a cluster's nodes: the client moves between them)")
	f.BoolVarP(&pf.verbose, "verbose", "v", false, "log connection events (reconnects, resends) to stderr")
}

// clientSession is a logged-in client and where it came from.
type clientSession struct {
	c       *client.Client
	profile client.Profile
	dir     string
}

// open loads the profile and logs in. reconnect keeps the client going
// through dropped connections (sends are resent with their ids).
func (pf *profileFlags) open(ctx context.Context, cmd *cobra.Command, reconnect bool) (*clientSession, error) {
	dir, err := resolveProfileDir(pf.dir)
	if err != nil {
		return nil, err
	}
	p, err := client.LoadProfile(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no profile in %s: register this device first: parley register --phone NUMBER --profile %s (then again with --code)", dir, dir)
	}
	if err != nil {
		return nil, err
	}
	level := slog.LevelWarn
	if pf.verbose {
		level = slog.LevelDebug
	}
	cfg := p.Config()
	if pf.addrs != "" {
		if cfg.Addrs, err = splitAddrs(pf.addrs); err != nil {
			return nil, err
		}
		cfg.Addr = ""
	}
	cfg.Agent = "parley-cli/1"
	cfg.Reconnect = reconnect
	cfg.MaxBackoff = 10 * time.Second // a person is waiting: retry often
	cfg.Log = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
	c, err := client.Dial(ctx, cfg)
	if err != nil {
		return nil, explainClientError(err, p, dir)
	}
	return &clientSession{c: c, profile: p, dir: dir}, nil
}

// explainClientError turns a failure to log in, or the end of a client
// (logged out, replaced), into what the user can do.
func explainClientError(err error, p client.Profile, dir string) error {
	reregister := fmt.Sprintf("parley register --server %s --phone %s --profile %s", p.Server, p.Phone, dir)
	var le *client.LoginError
	var ce *client.CloseError
	switch {
	case errors.As(err, &le) && le.Code == wire.Error_LOGIN_FAILED:
		return fmt.Errorf("cannot log in as %s: %w\nIf this number was registered on another device since, register this one again: %s", p.Phone, err, reregister)
	case errors.As(err, &ce) && ce.Code == wire.Error_REGISTERED_ELSEWHERE:
		return fmt.Errorf("logged out: %s was registered on another device, and this device's key no longer works: %w\nTo use this device again: %s", p.Phone, err, reregister)
	case errors.As(err, &ce) && ce.Code == wire.Error_REPLACED:
		return fmt.Errorf("logged out: another client logged in as %s (only one connection per account is served): %w", p.Phone, err)
	case errors.Is(err, client.ErrHandshake):
		return fmt.Errorf("cannot log in to %s: %w\nThe server's key may have changed (a new data directory?): register again to fetch it (%s), or check the profile's native_addr", p.NativeAddr, err, reregister)
	}
	return err
}

// normalizePhone checks a number given on the command line and writes it in
// E.164, the one spelling accounts have.
func normalizePhone(flag, raw string) (string, error) {
	if raw == "" {
		return "", fmt.Errorf("%s is required: the phone number in international format, e.g. +14155550100", flag)
	}
	p, err := account.NormalizePhone(raw, "")
	if err != nil {
		return "", fmt.Errorf("%s %q: %w", flag, raw, err)
	}
	return p, nil
}

// printer serialises output lines from several goroutines (chat).
type printer struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *printer) line(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format+"\n", args...)
}

func (p *printer) json(v any) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return writeJSONLine(p.w, v)
}

// writeJSONLine writes v as one line of JSON. HTML escaping is off: the
// output is for programs and people, not for web pages.
func writeJSONLine(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// clock formats a server timestamp (unix nanoseconds) for a line of output.
func clock(ts int64) string {
	if ts == 0 {
		return "--:--:--"
	}
	return time.Unix(0, ts).Format("15:04:05")
}

// shortText cuts s to n runes for a tick line, on one line.
func shortText(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// textOf is a message body as text; bodies that are not UTF-8 (another
// client's binary payload) are shown escaped rather than garbling the
// terminal.
func textOf(body []byte) string {
	if utf8.Valid(body) {
		return string(body)
	}
	return fmt.Sprintf("%q", body)
}

// fixNativeAddr replaces an unspecified host in the server's native address
// ("0.0.0.0:5222", ":5222": a server listening on every interface) with the
// host the HTTP API was reached at, which is one the client can reach.
func fixNativeAddr(native, serverURL string) string {
	host, port, err := net.SplitHostPort(native)
	if err != nil {
		return native
	}
	if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
		return native
	}
	u := serverURL
	if i := strings.Index(u, "://"); i >= 0 {
		u = u[i+3:]
	}
	if i := strings.IndexAny(u, "/?#"); i >= 0 {
		u = u[:i]
	}
	h, _, err := net.SplitHostPort(u)
	if err != nil {
		h = strings.Trim(u, "[]")
	}
	if h == "" {
		return native
	}
	return net.JoinHostPort(h, port)
}

// fixNativeAddrs is fixNativeAddr of each address.
func fixNativeAddrs(native []string, serverURL string) []string {
	var out []string
	for _, a := range native {
		out = append(out, fixNativeAddr(a, serverURL))
	}
	return out
}

// splitAddrs reads --addr: HOST:PORT[,HOST:PORT...].
func splitAddrs(raw string) ([]string, error) {
	var out []string
	for a := range strings.SplitSeq(raw, ",") {
		a = strings.TrimSpace(a)
		if _, port, err := net.SplitHostPort(a); err != nil || port == "" {
			return nil, fmt.Errorf("--addr %q: want the native address(es) as HOST:PORT[,HOST:PORT...], e.g. 127.0.0.1:5222,127.0.0.1:5223", raw)
		}
		out = append(out, a)
	}
	return out, nil
}

// isTimeout reports whether err is ctx's deadline passing.
func isTimeout(ctx context.Context, err error) bool {
	return errors.Is(err, context.DeadlineExceeded) && errors.Is(ctx.Err(), context.DeadlineExceeded)
}

// withTimeout is ctx bounded by d, or ctx itself when d is 0.
func withTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// humanBytes writes a byte count the way a person reads it: "512 bytes",
// "1.5 MiB", "64 MiB".
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " bytes"
	}
	v, i := float64(n), 0
	for v >= unit && i < 4 {
		v /= unit
		i++
	}
	name := [...]string{"bytes", "KiB", "MiB", "GiB", "TiB"}[i]
	if v < 10 && math.Round(v) != v {
		return strconv.FormatFloat(math.Floor(v*10)/10, 'f', 1, 64) + " " + name
	}
	return strconv.FormatInt(int64(v), 10) + " " + name
}

// mediaType is a media's MIME type for a line of output.
func mediaType(m *wire.Media) string {
	if m.Mime == "" {
		return "file"
	}
	return printable(m.Mime)
}

// mediaSummary is a media message for a line of output:
// "[image/jpeg 2.1 MiB] caption — URL".
func mediaSummary(m *wire.Media) string {
	s := fmt.Sprintf("[%s %s]", mediaType(m), humanBytes(int64(m.Size)))
	if m.Caption != "" {
		s += " " + textOf([]byte(m.Caption))
	}
	return s + " — " + printable(m.Url)
}

// mediaJSON is a media's object in --json output; the thumbnail (standard
// base64 of a JPEG) only with thumb, and only when there is one.
func mediaJSON(m *wire.Media, thumb bool) map[string]any {
	obj := map[string]any{
		"url": m.Url, "id": m.Id, "size": m.Size, "mime": m.Mime,
		"sha256": hex.EncodeToString(m.Sha256), "caption": m.Caption,
	}
	if thumb && len(m.Thumbnail) > 0 {
		obj["thumbnail"] = base64.StdEncoding.EncodeToString(m.Thumbnail)
	}
	if len(m.Key) > 0 {
		obj["key"] = base64.StdEncoding.EncodeToString(m.Key)
	}
	return obj
}

// printable is s, or s quoted when it holds anything that is not printable
// text (another client's URL or type could carry terminal escapes).
func printable(s string) string {
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}
