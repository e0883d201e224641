package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/parleyhq/parley/client"
)

func newFetchCmd() *cobra.Command {
	var (
		profileDir string
		out        string
		sumHex     string
		fromJSON   string
		force      bool
		anyHost    bool
		asJSON     bool
		timeout    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "fetch [flags] URL-OR-ID",
		Short: "Download a file someone sent",
		Long: `Download the file of a media message: by its URL as 'parley recv' shows it,
or by its id (the URL is then this profile's server + /v1/media/ + ID). The
URL is the key to the file: no login is needed, and anyone who has it may
download the file until it expires.

A URL must be on the profile's server (same scheme, host and port): a
link in a message could point anywhere, and fetching it would tell that
host your address and that you opened it. --any-host fetches from any
host all the same.

The file is written to -o FILE (default: the id, in the current directory;
"-" writes to stdout). An existing file is not replaced unless --force. The
download goes to a temporary file beside FILE and takes FILE's name only
once complete and, with --sha256, verified: a failed or corrupt download
leaves nothing.

--sha256 HEX checks the file against the hash the message carried ('parley
recv --json' prints it as media.sha256). --from-json LINE takes the URL and
the hash from one line of 'parley recv --json' output ("-": read the line
from stdin).

A server of this version gives out no id that begins with '-'; an older
id that does goes after '--' (parley fetch -- -ID), or it reads as a flag.

Prints the path, size and SHA-256, or with --json one object:
  {"path":"..","url":"..","size":..,"sha256":"<hex>","verified":true|false}`,
		Example: `  parley fetch http://chat.example.com:8080/v1/media/3q2-7wEBAgMEBQYHCAkKCw
  parley fetch --profile ~/bob 3q2-7wEBAgMEBQYHCAkKCw -o photo.jpg
  parley fetch URL -o photo.jpg --sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
  parley recv --count 1 --json | parley fetch --from-json - -o photo.jpg`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var (
				target  string
				mediaID string
				want    []byte
				err     error
			)
			switch {
			case fromJSON != "" && len(args) > 0:
				return errors.New("give the file either as URL-OR-ID or with --from-json, not both")
			case fromJSON != "":
				line := fromJSON
				if line == "-" {
					if line, err = readLine(cmd.InOrStdin()); err != nil {
						return fmt.Errorf("--from-json -: %w", err)
					}
				}
				var fromSum string
				if target, fromSum, err = parseMediaLine(line); err != nil {
					return err
				}
				if fromSum != "" {
					if sumHex != "" && !strings.EqualFold(sumHex, fromSum) {
						return errors.New("--sha256 and the hash in --from-json differ: give one of them")
					}
					sumHex = fromSum
				}
			case len(args) == 0:
				return errors.New("what to fetch? Give the URL (or id) that 'parley recv' showed, e.g. parley fetch http://host:8080/v1/media/ID")
			default:
				target = args[0]
			}
			if sumHex != "" {
				if want, err = hex.DecodeString(strings.TrimSpace(sumHex)); err != nil || len(want) != sha256.Size {
					return fmt.Errorf("--sha256 %q: want the %d hex digits of a SHA-256 (media.sha256 in 'parley recv --json')", sumHex, 2*sha256.Size)
				}
			}
			if target, mediaID, err = mediaURL(target, profileDir, anyHost); err != nil {
				return err
			}
			if out == "" {
				if mediaID == "" {
					return fmt.Errorf("cannot name the file after %s: give -o FILE", target)
				}
				out = mediaID
			}
			ctx, cancel := withTimeout(cmd.Context(), timeout)
			defer cancel()

			var n int64
			var sum []byte
			if out == "-" {
				n, sum, err = client.Download(ctx, nil, target, cmd.OutOrStdout())
				if err == nil && want != nil {
					err = client.VerifySHA256(sum, want)
				}
			} else {
				n, sum, err = downloadToFile(ctx, target, out, force, want)
			}
			if err != nil {
				if isTimeout(ctx, err) {
					return &statusError{exitTimeout, fmt.Errorf("the download did not finish within %s: try again, with a longer --timeout", timeout)}
				}
				return explainFetchError(err, target, out)
			}
			info := cmd.OutOrStdout()
			if out == "-" {
				info = cmd.ErrOrStderr()
			}
			if asJSON {
				return writeJSONLine(info, map[string]any{"path": out, "url": target, "size": n, "sha256": hex.EncodeToString(sum), "verified": want != nil})
			}
			verified := "not verified: give --sha256 to check it against the message"
			if want != nil {
				verified = "verified"
			}
			name := out
			if out == "-" {
				name = "stdout"
			}
			fmt.Fprintf(info, "saved %s (%s, SHA-256 %x, %s)\n", name, humanBytes(n), sum, verified)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&profileDir, "profile", "", "profile directory, for its server URL when fetching by id (default: the only profile under "+profileRootHelp()+")")
	f.StringVarP(&out, "output", "o", "", "write the file here (default: the media id; - for stdout)")
	f.StringVar(&sumHex, "sha256", "", "the SHA-256 (hex) the file must have, from the message")
	f.StringVar(&fromJSON, "from-json", "", "take URL and SHA-256 from this line of 'parley recv --json' (- reads it from stdin)")
	f.BoolVar(&force, "force", false, "replace FILE if it exists")
	f.BoolVar(&anyHost, "any-host", false, "fetch a URL even if it is not on the profile's server")
	f.BoolVar(&asJSON, "json", false, "print the result as one JSON object")
	f.DurationVar(&timeout, "timeout", 0, "give up after this long (0: never)")
	return cmd
}

// mediaURL turns the argument into a download URL, and the media id when
// it can tell (for the default file name). A URL must be on the profile's
// server unless anyHost.
func mediaURL(arg, profileDir string, anyHost bool) (target, id string, err error) {
	arg = strings.TrimSpace(arg)
	if strings.Contains(arg, "://") {
		u, err := url.Parse(arg)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return "", "", fmt.Errorf("%q is not an http(s) URL: give the URL 'parley recv' showed, or the media id", arg)
		}
		if !anyHost {
			server, dir, err := profileServer(profileDir)
			if err != nil {
				return "", "", fmt.Errorf("cannot tell whether %s is your server: %w; or fetch from any host with --any-host", u.Host, err)
			}
			if !sameOrigin(u, server) {
				return "", "", fmt.Errorf("%s is not on your server %s (profile %s): the link may come from anyone; fetch it anyway with --any-host", arg, server.Redacted(), dir)
			}
		}
		if base := path.Base(u.Path); isMediaID(base) {
			id = base
		}
		return arg, id, nil
	}
	if !isMediaID(arg) {
		return "", "", fmt.Errorf("%q is neither a URL nor a media id: give the URL 'parley recv' showed (http://.../v1/media/ID), or the ID", arg)
	}
	server, _, err := profileServer(profileDir)
	if err != nil {
		return "", "", fmt.Errorf("fetching by id needs the server's URL from a profile: %w (or give the whole URL)", err)
	}
	return strings.TrimRight(server.String(), "/") + "/v1/media/" + arg, arg, nil
}

// profileServer returns the server URL of the profile in profileDir (or
// the only profile), and the profile's directory.
func profileServer(profileDir string) (*url.URL, string, error) {
	dir, err := resolveProfileDir(profileDir)
	if err != nil {
		return nil, "", err
	}
	p, err := client.LoadProfile(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, dir, fmt.Errorf("no profile in %s: give --profile DIR", dir)
	}
	if err != nil {
		return nil, dir, err
	}
	if p.Server == "" {
		return nil, dir, fmt.Errorf("profile %s names no server URL", dir)
	}
	u, err := url.Parse(p.Server)
	if err != nil || u.Host == "" {
		return nil, dir, fmt.Errorf("profile %s: server %q is not a URL", dir, p.Server)
	}
	return u, dir, nil
}

// sameOrigin reports whether a and b have the same scheme, host and port
// (a missing port is the scheme's default; host names are not case
// sensitive).
func sameOrigin(a, b *url.URL) bool {
	port := func(u *url.URL) string {
		if p := u.Port(); p != "" {
			return p
		}
		if strings.EqualFold(u.Scheme, "https") {
			return "443"
		}
		return "80"
	}
	return strings.EqualFold(a.Scheme, b.Scheme) && strings.EqualFold(a.Hostname(), b.Hostname()) && port(a) == port(b)
}

// isMediaID reports whether s looks like a media id (base64url): safe as
// a path segment and as a file name.
func isMediaID(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// parseMediaLine reads a line of 'parley recv --json' (or just its media
// object) for the URL and the hex SHA-256.
func parseMediaLine(line string) (url, sum string, err error) {
	type mediaObj struct {
		URL    string `json:"url"`
		SHA256 string `json:"sha256"`
	}
	var v struct {
		mediaObj
		Media *mediaObj `json:"media"`
	}
	if err := json.Unmarshal([]byte(line), &v); err != nil {
		return "", "", fmt.Errorf("--from-json: not a line of 'parley recv --json' output: %w", err)
	}
	m := v.mediaObj
	if v.Media != nil {
		m = *v.Media
	}
	if m.URL == "" {
		return "", "", errors.New("--from-json: the line carries no media (is it a text message or a receipt?)")
	}
	return m.URL, m.SHA256, nil
}

// readLine reads the first non-empty line of r.
func readLine(r io.Reader) (string, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			return l, nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", errors.New("no line on stdin")
}

// downloadToFile downloads into a temporary file beside dst and gives it
// dst's name only once complete and verified.
func downloadToFile(ctx context.Context, target, dst string, force bool, want []byte) (int64, []byte, error) {
	if !force {
		if _, err := os.Lstat(dst); err == nil {
			return 0, nil, fmt.Errorf("%s exists: choose another name with -o FILE, or replace it with --force", dst)
		}
	}
	dir := filepath.Dir(dst)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(dst)+".part-*")
	if err != nil {
		return 0, nil, fmt.Errorf("cannot write in %s: %w", dir, err)
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName) // fails harmlessly once renamed
	n, sum, err := client.Download(ctx, nil, target, tmp)
	if err == nil && want != nil {
		err = client.VerifySHA256(sum, want)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return n, sum, err
	}
	if force {
		return n, sum, os.Rename(tmpName, dst)
	}
	// A hard link fails if dst appeared meanwhile, where a rename would
	// replace it; a file system without links falls back to the check
	// above and a rename.
	switch err := os.Link(tmpName, dst); {
	case err == nil:
		return n, sum, nil
	case errors.Is(err, os.ErrExist):
		return n, sum, fmt.Errorf("%s exists: choose another name with -o FILE, or replace it with --force", dst)
	}
	return n, sum, os.Rename(tmpName, dst)
}

// explainFetchError says what a failed download means and what to do.
func explainFetchError(err error, target, out string) error {
	var ae *client.APIError
	switch {
	case errors.Is(err, client.ErrSHA256Mismatch):
		if out == "-" {
			return fmt.Errorf("%w: do not use what was written to stdout; ask the sender to send it again", err)
		}
		return fmt.Errorf("%w: nothing was saved to %s; ask the sender to send it again", err, out)
	case errors.As(err, &ae) && ae.Status == http.StatusNotFound:
		return fmt.Errorf("no such media, or it expired (%s): check the link, or ask the sender to send it again", target)
	case errors.As(err, &ae):
		return fmt.Errorf("download failed: %w", err)
	case errors.As(err, new(*url.Error)):
		return fmt.Errorf("%w (check the link, and that its server is reachable from here; then try again)", err)
	}
	return err
}
