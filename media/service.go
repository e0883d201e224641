package media

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of the Config fields left zero.
const (
	DefaultMaxSize  = 64 << 20
	DefaultTTL      = 30 * 24 * time.Hour
	DefaultTokenTTL = 5 * time.Minute
	DefaultThumbMax = 100
	// DefaultMaxPixels: 50 megapixels, more than any phone camera takes.
	DefaultMaxPixels = 50_000_000
	// DefaultMaxDecodeBytes: enough for a 48-megapixel baseline JPEG as
	// phones take them (4:2:0, 1.5 bytes a pixel), a 12-megapixel
	// progressive one, or a 32-megapixel 8-bit RGBA PNG.
	DefaultMaxDecodeBytes = 128 << 20
	DefaultMaxDecodes     = 2
	// DefaultDecodeMemory: two decodes of DefaultMaxDecodeBytes.
	DefaultDecodeMemory     = 2 * DefaultMaxDecodeBytes
	DefaultDecodeWait       = 5 * time.Second
	DefaultUploadsPerMinute = 30
	DefaultQuotaBytes       = 1 << 30
)

const (
	// sweepInterval is how often Run sweeps. Expired media already answer
	// 404 before they are swept (downloads check Meta.Expires), so the
	// sweep only reclaims disk and quota and need not be prompt.
	sweepInterval = 10 * time.Minute
	// staleAfter is how old an abandoned temporary file must be before the
	// sweep removes it: far longer than any upload under the server's
	// timeouts takes, so an upload in progress is never cut.
	staleAfter = time.Hour
	// rateWindow is the window of Config.UploadsPerMinute.
	rateWindow = time.Minute
	// minSecret is the least HMAC key length: the full strength of SHA-256.
	minSecret = 32
)

// Config configures a Service. Zero fields take the defaults above.
type Config struct {
	// Dir is where the default filesystem store keeps blobs. Required
	// unless Store is set.
	Dir string
	// Store replaces the filesystem store (an object store, a test spy).
	Store BlobStore
	// Secret is the HMAC-SHA256 key of upload tokens, at least 32 bytes.
	// Tokens survive a restart only if it does.
	Secret []byte
	// MaxSize is the largest upload in bytes.
	MaxSize int64
	// TTL is how long media are kept after upload.
	TTL time.Duration
	// TokenTTL is how long an upload token is valid.
	TokenTTL time.Duration
	// ThumbMax is the longest side of a thumbnail in pixels.
	ThumbMax int
	// MaxPixels is the largest image (width x height) that gets a
	// thumbnail; larger ones are stored without one.
	MaxPixels int
	// MaxDecodeBytes is the most memory one thumbnail's decode may
	// allocate, estimated from the image's header before any pixel is
	// decoded: width x height x bytes per pixel of the decoded image
	// (8 for 16-bit RGBA PNG, 1.5 for a 4:2:0 JPEG, more for progressive
	// JPEG and interlaced PNG). Larger images are stored without a
	// thumbnail. Pixels alone do not bound memory: a 7000x7000 16-bit
	// RGBA PNG is under MaxPixels, compresses to 381 KB, and decodes to
	// 392 MB.
	MaxDecodeBytes int64
	// MaxDecodes bounds how many thumbnails are decoded at once (CPU).
	MaxDecodes int
	// DecodeMemory bounds the memory all decodes running at once may
	// allocate together, by the same estimate; at least MaxDecodeBytes.
	// A decode that does not fit waits its turn (first come, first
	// served) for up to DecodeWait.
	DecodeMemory int64
	// DecodeWait is how long an upload waits for a decode to fit under
	// MaxDecodes and DecodeMemory before it is stored without a
	// thumbnail (the upload itself succeeds; the message goes without a
	// preview). < 0: never wait.
	DecodeWait time.Duration
	// UploadsPerMinute is how many uploads one account may start per
	// minute (sliding window); < 0 lifts the limit. Every attempt with a
	// valid token counts, refused ones included, since they cost too.
	UploadsPerMinute int
	// QuotaBytes is how much one account may have stored at once; < 0
	// lifts the limit.
	QuotaBytes int64
	// BaseURL is the public HTTP base of the Handler, e.g.
	// "https://media.example.com", used to build download URLs. Empty:
	// URLs are absolute paths ("/v1/media/{id}").
	BaseURL string
	// Now is the clock; nil: time.Now. Tests inject one to move time.
	Now func() time.Time
	// Log receives operational events; nil: discarded.
	Log *slog.Logger
	// OnLimit, if set, is told each time a bound refuses something:
	// "media_uploads_per_minute", "media_max_size", "media_quota", or
	// "media_decode_memory" (a thumbnail skipped because decodes were at
	// their bound). The node counts them with its other limit hits.
	OnLimit func(limit string)
}

// AcceptBaseURLs makes CheckRef accept links built on these base URLs as
// well as on Config.BaseURL: those of other Services that share this
// one's BlobStore (a cluster's nodes, each with its own public URL), so
// a link uploaded through one node may be sent through any. It replaces
// the previous list; bases that are not http(s) URLs are skipped.
func (s *Service) AcceptBaseURLs(bases []string) {
	var ok []string
	for _, b := range bases {
		b = strings.TrimSuffix(b, "/")
		if u, err := url.Parse(b); err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" && b != s.baseURL {
			ok = append(ok, b)
		}
	}
	s.peerBases.Store(&ok)
}

func (s *Service) limitHit(limit string) {
	if s.cfg.OnLimit != nil {
		s.cfg.OnLimit(limit)
	}
}

// Service uploads, serves and expires media. It is safe for concurrent use.
type Service struct {
	cfg     Config
	store   BlobStore
	log     *slog.Logger
	baseURL string
	// peerBases are the other Services' base URLs whose links CheckRef
	// accepts too (AcceptBaseURLs): the nodes of a cluster, which share
	// one BlobStore.
	peerBases atomic.Pointer[[]string]
	// decodes bounds image decodes (Config.MaxDecodes, DecodeMemory).
	decodes *decodeGate
	// bufs holds copy buffers for uploads, so that a busy server does not
	// allocate one per request.
	bufs sync.Pool

	mu    sync.Mutex
	usage map[string]int64 // bytes stored or being stored, per account
	// pending is the part of usage reserved by uploads not yet committed
	// (so not yet listed by the store): what Sweep's recount adds to what
	// it lists.
	pending map[string]int64
	hits    map[string][]time.Time // upload starts within rateWindow, per account, ascending
}

// New checks cfg, fills in defaults, opens the store and counts what each
// account has stored (a walk over the store's metadata, so it takes a
// while on a large store).
func New(cfg Config) (*Service, error) {
	if len(cfg.Secret) < minSecret {
		return nil, fmt.Errorf("media: Secret is %d bytes, want at least %d", len(cfg.Secret), minSecret)
	}
	cfg.Secret = append([]byte(nil), cfg.Secret...)
	switch {
	case cfg.MaxSize < 0:
		return nil, fmt.Errorf("media: negative MaxSize %d", cfg.MaxSize)
	case cfg.TTL < 0 || cfg.TokenTTL < 0:
		return nil, errors.New("media: negative TTL or TokenTTL")
	case cfg.ThumbMax < 0 || cfg.MaxPixels < 0 || cfg.MaxDecodes < 0:
		return nil, errors.New("media: negative ThumbMax, MaxPixels or MaxDecodes")
	case cfg.MaxDecodeBytes < 0 || cfg.DecodeMemory < 0:
		return nil, errors.New("media: negative MaxDecodeBytes or DecodeMemory")
	}
	setDefault(&cfg.MaxSize, DefaultMaxSize)
	setDefault(&cfg.TTL, DefaultTTL)
	setDefault(&cfg.TokenTTL, DefaultTokenTTL)
	setDefault(&cfg.ThumbMax, DefaultThumbMax)
	setDefault(&cfg.MaxPixels, DefaultMaxPixels)
	setDefault(&cfg.MaxDecodes, DefaultMaxDecodes)
	setDefault(&cfg.MaxDecodeBytes, DefaultMaxDecodeBytes)
	setDefault(&cfg.DecodeMemory, max(DefaultDecodeMemory, cfg.MaxDecodeBytes))
	setDefault(&cfg.DecodeWait, DefaultDecodeWait)
	if cfg.DecodeMemory < cfg.MaxDecodeBytes {
		return nil, fmt.Errorf("media: DecodeMemory %d is under MaxDecodeBytes %d: no decode that large could ever run; raise DecodeMemory or lower MaxDecodeBytes", cfg.DecodeMemory, cfg.MaxDecodeBytes)
	}
	setDefault(&cfg.UploadsPerMinute, DefaultUploadsPerMinute)
	setDefault(&cfg.QuotaBytes, DefaultQuotaBytes)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	base := strings.TrimSuffix(cfg.BaseURL, "/")
	if base != "" {
		u, err := url.Parse(base)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			return nil, fmt.Errorf("media: BaseURL %q is not an http(s) URL like https://media.example.com", cfg.BaseURL)
		}
	}
	store := cfg.Store
	if store == nil {
		fs, err := NewFSStore(cfg.Dir)
		if err != nil {
			return nil, err
		}
		store = fs
	}
	s := &Service{
		cfg:     cfg,
		store:   store,
		log:     cfg.Log,
		baseURL: base,
		decodes: newDecodeGate(cfg.MaxDecodes, cfg.DecodeMemory),
		usage:   make(map[string]int64),
		pending: make(map[string]int64),
		hits:    make(map[string][]time.Time),
	}
	s.bufs.New = func() any { return new([copyBufSize]byte) }
	err := store.List(context.Background(), func(_ string, m Meta) error {
		s.usage[m.Owner] += m.Size
		return nil
	})
	if err != nil {
		// Usage of the blobs that could not be read is not counted; better
		// a slightly generous quota than no media service.
		s.log.Warn("media: counting stored media", "err", err)
	}
	return s, nil
}

func setDefault[T comparable](p *T, def T) {
	var zero T
	if *p == zero {
		*p = def
	}
}

// takeUpload records an upload start for account at now, or, over the
// rate limit, records nothing and says how long until one more fits.
func (s *Service) takeUpload(account string, now time.Time) (bool, time.Duration) {
	limit := s.cfg.UploadsPerMinute
	if limit < 0 {
		return true, 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ts := pruneHits(s.hits[account], now)
	if len(ts) >= limit {
		s.hits[account] = ts
		return false, ts[len(ts)-limit].Add(rateWindow).Sub(now)
	}
	s.hits[account] = append(ts, now)
	return true, 0
}

// pruneHits drops the times that have left the window.
func pruneHits(ts []time.Time, now time.Time) []time.Time {
	cut := now.Add(-rateWindow)
	i := 0
	for i < len(ts) && !ts[i].After(cut) {
		i++
	}
	return ts[i:]
}

// used returns what account has stored.
func (s *Service) used(account string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.usage[account]
}

// reserve adds n bytes to account's usage if they fit in its quota, and
// otherwise reports what it has stored. This, under the lock, is the one
// place the quota is enforced, so concurrent uploads cannot overrun it
// together; earlier checks only fail fast.
func (s *Service) reserve(account string, n int64) (ok bool, used int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	used = s.usage[account]
	if s.cfg.QuotaBytes >= 0 && used+n > s.cfg.QuotaBytes {
		return false, used
	}
	s.usage[account] = used + n
	s.pending[account] += n
	return true, used
}

// committed says that n bytes reserved for account are now stored: the
// store lists them from now on.
func (s *Service) committed(account string, n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	addTo(s.pending, account, -n)
}

// unreserve gives back a reservation whose upload was not stored.
func (s *Service) unreserve(account string, n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	addTo(s.usage, account, -n)
	addTo(s.pending, account, -n)
}

// release takes n bytes of stored media off account's usage.
func (s *Service) release(account string, n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	addTo(s.usage, account, -n)
}

// addTo adds n to m[k], dropping the entry at zero or below.
func addTo(m map[string]int64, k string, n int64) {
	if v := m[k] + n; v > 0 {
		m[k] = v
	} else {
		delete(m, k)
	}
}

// Run sweeps expired media now and then every few minutes, until ctx is
// done; then it returns nil. Start it once, in its own goroutine.
func (s *Service) Run(ctx context.Context) error {
	t := time.NewTicker(sweepInterval)
	defer t.Stop()
	for {
		if _, err := s.Sweep(ctx, s.cfg.Now()); err != nil && ctx.Err() == nil {
			s.log.Error("media: sweep", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// staleRemover is what a store may offer to clean up after crashes (the
// FSStore does): temporary files and half-committed blobs.
type staleRemover interface {
	RemoveStale(ctx context.Context, before time.Time) (int, error)
}

// Sweep deletes the media that have expired at now and frees their quota;
// it also forgets rate-limit history older than the window and, where the
// store offers it, removes files abandoned by crashes. It returns how many
// media it deleted. Run calls it; tests call it with a chosen now.
//
// After a complete listing it also counts each account's usage again:
// what the store lists and keeps, plus what uploads in progress have
// reserved. A store shared by several Services (the nodes of a cluster,
// media/objstore) changes under each of them: media another node took,
// deleted or swept are counted rightly from the next sweep on, so that
// the quota holds across the nodes, within a sweep's interval. An upload
// committed, or media deleted, while the listing ran may be counted
// wrongly until the next sweep.
func (s *Service) Sweep(ctx context.Context, now time.Time) (removed int, err error) {
	type victim struct {
		key   string
		owner string
		size  int64
	}
	var expired []victim
	kept := make(map[string]int64) // listed and not expired, per account
	listErr := s.store.List(ctx, func(key string, m Meta) error {
		if !now.Before(m.Expires) {
			expired = append(expired, victim{key, m.Owner, m.Size})
		} else {
			kept[m.Owner] += m.Size
		}
		return nil
	})
	var errs []error
	if listErr != nil {
		errs = append(errs, listErr)
	}
	for _, v := range expired {
		err := s.store.Delete(ctx, v.key)
		switch {
		case errors.Is(err, ErrNotFound):
			// Deleted by its owner meanwhile, who freed the quota.
		case err != nil:
			errs = append(errs, err)
			kept[v.owner] += v.size // still stored
		default:
			s.release(v.owner, v.size)
			removed++
		}
		if ctx.Err() != nil {
			break
		}
	}

	s.mu.Lock()
	if listErr == nil && ctx.Err() == nil {
		for a, n := range s.pending {
			kept[a] += n
		}
		s.usage = kept
	}
	for a, ts := range s.hits {
		if ts = pruneHits(ts, now); len(ts) == 0 {
			delete(s.hits, a)
		} else {
			s.hits[a] = ts
		}
	}
	s.mu.Unlock()

	if sr, ok := s.store.(staleRemover); ok && ctx.Err() == nil {
		n, err := sr.RemoveStale(ctx, now.Add(-staleAfter))
		if err != nil {
			errs = append(errs, err)
		}
		if n > 0 {
			s.log.Info("media: removed abandoned files", "count", n)
		}
	}
	if removed > 0 {
		s.log.Info("media: swept expired media", "count", removed)
	}
	return removed, errors.Join(errs...)
}

// Limits are the bounds in force (the defaults filled in), as the admin
// listener's GET /admin/limits shows them.
func (s *Service) Limits() map[string]any {
	c := &s.cfg
	return map[string]any{
		"max_size":           c.MaxSize,
		"ttl":                c.TTL.String(),
		"max_pixels":         c.MaxPixels,
		"max_decode_bytes":   c.MaxDecodeBytes,
		"max_decodes":        c.MaxDecodes,
		"decode_memory":      c.DecodeMemory,
		"decode_wait":        c.DecodeWait.String(),
		"uploads_per_minute": c.UploadsPerMinute,
		"quota_bytes":        c.QuotaBytes,
	}
}
