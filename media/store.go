package media

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ErrNotFound is what a BlobStore returns for a key it does not hold.
var ErrNotFound = errors.New("media: no such blob")

// Meta describes a stored blob; stores keep it beside the blob.
type Meta struct {
	Owner   string    `json:"owner"`  // account that uploaded it
	Size    int64     `json:"size"`   // bytes
	MIME    string    `json:"mime"`   // sniffed from the content
	SHA256  string    `json:"sha256"` // hex
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
}

// BlobStore holds blobs and their Meta under keys (64 lowercase hex digits,
// derived by the Service from a validated media id; never a client string).
// Implementations must be safe for concurrent use.
type BlobStore interface {
	// Create starts a blob under key. Nothing is visible until Commit; Abort
	// (or a crash) must leave nothing that Open, Stat or List would see.
	Create(ctx context.Context, key string) (BlobWriter, error)
	// Open returns the blob's content and Meta, or ErrNotFound.
	Open(ctx context.Context, key string) (io.ReadSeekCloser, Meta, error)
	// Stat returns the blob's Meta, or ErrNotFound.
	Stat(ctx context.Context, key string) (Meta, error)
	// Delete removes a blob, or returns ErrNotFound.
	Delete(ctx context.Context, key string) error
	// List calls fn for every committed blob, for the sweep and to count
	// each account's usage (at start and at each sweep); an error from fn
	// stops it.
	List(ctx context.Context, fn func(key string, m Meta) error) error
}

// BlobWriter receives one blob's content.
type BlobWriter interface {
	io.Writer
	// Commit makes the blob durable and visible with m.
	Commit(ctx context.Context, m Meta) error
	// Abort discards the blob; after Commit it does nothing. Safe to call
	// more than once, so callers can defer it.
	Abort() error
}

// FSStore is the default BlobStore: files under one directory,
//
//	<dir>/<key[:2]>/<key>.blob   content
//	<dir>/<key[:2]>/<key>.json   Meta; its presence is what makes a blob exist
//	<dir>/<key[:2]>/.tmp-*       uploads in progress
//
// The two-digit shards keep directories small. Every path is built from a
// key checked by ValidKey, so nothing from a client ever reaches one.
type FSStore struct {
	dir string
}

const (
	blobExt   = ".blob"
	metaExt   = ".json"
	tmpPrefix = ".tmp-"
	// maxMetaSize bounds what is read of a sidecar, which is ours and
	// small; a bigger one is damage, not data.
	maxMetaSize = 64 << 10
)

// NewFSStore returns a store under dir, creating it (mode 0700) if needed.
func NewFSStore(dir string) (*FSStore, error) {
	if dir == "" {
		return nil, errors.New("media store: empty directory")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("media store %s: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("media store: %w", err)
	}
	return &FSStore{dir: abs}, nil
}

func (s *FSStore) shard(key string) string { return filepath.Join(s.dir, key[:2]) }

func (s *FSStore) paths(key string) (blob, meta string) {
	d := s.shard(key)
	return filepath.Join(d, key+blobExt), filepath.Join(d, key+metaExt)
}

func checkKey(key string) error {
	if !ValidKey(key) {
		// Only a bug in the caller gets here: keys are derived, not received.
		return fmt.Errorf("media store: malformed key %q", key)
	}
	return nil
}

// Create implements BlobStore. The temporary file is in the blob's own
// directory so that Commit's rename is atomic.
func (s *FSStore) Create(ctx context.Context, key string) (BlobWriter, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := checkKey(key); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(s.shard(key), 0o700); err != nil {
		return nil, fmt.Errorf("media store: %w", err)
	}
	f, err := os.CreateTemp(s.shard(key), tmpPrefix+"*")
	if err != nil {
		return nil, fmt.Errorf("media store: %w", err)
	}
	return &fsWriter{s: s, key: key, f: f}, nil
}

type fsWriter struct {
	s    *FSStore
	key  string
	f    *os.File
	done bool // committed or aborted
}

func (w *fsWriter) Write(p []byte) (int, error) { return w.f.Write(p) }

// Commit writes the blob, then its sidecar, each by fsync and rename, then
// syncs the directory. The sidecar goes last because it is what makes the
// blob exist: a crash in between leaves a bare .blob that nothing sees and
// RemoveStale deletes.
func (w *fsWriter) Commit(ctx context.Context, m Meta) (err error) {
	if w.done {
		return errors.New("media store: commit after commit or abort")
	}
	defer func() {
		if err != nil {
			w.Abort()
		}
	}()
	if err := ctx.Err(); err != nil {
		return err
	}
	blob, meta := w.s.paths(w.key)
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("media store: sync blob: %w", err)
	}
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("media store: close blob: %w", err)
	}
	if err := os.Rename(w.f.Name(), blob); err != nil {
		return fmt.Errorf("media store: %w", err)
	}
	if err := writeFileAtomic(meta, m); err != nil {
		os.Remove(blob)
		return err
	}
	w.done = true
	if err := syncDir(w.s.shard(w.key)); err != nil {
		// The blob is complete and visible; only its survival of a power
		// cut is in doubt. Undo it rather than answer with an id that may
		// vanish.
		os.Remove(meta)
		os.Remove(blob)
		return err
	}
	return nil
}

func (w *fsWriter) Abort() error {
	if w.done {
		return nil
	}
	w.done = true
	w.f.Close()
	if err := os.Remove(w.f.Name()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("media store: %w", err)
	}
	return nil
}

func writeFileAtomic(path string, m Meta) (err error) {
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("media store: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), tmpPrefix+"*")
	if err != nil {
		return fmt.Errorf("media store: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err := f.Write(b); err != nil {
		return fmt.Errorf("media store: write meta: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("media store: sync meta: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("media store: close meta: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("media store: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("media store: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("media store: sync %s: %w", dir, err)
	}
	return nil
}

func readMeta(path string) (Meta, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Meta{}, ErrNotFound
	}
	if err != nil {
		return Meta{}, fmt.Errorf("media store: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxMetaSize+1))
	if err != nil {
		return Meta{}, fmt.Errorf("media store: read %s: %w", path, err)
	}
	var m Meta
	if len(b) > maxMetaSize {
		return Meta{}, fmt.Errorf("media store: %s: sidecar over %d bytes", path, maxMetaSize)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return Meta{}, fmt.Errorf("media store: %s: %w", path, err)
	}
	return m, nil
}

// Open implements BlobStore.
func (s *FSStore) Open(ctx context.Context, key string) (io.ReadSeekCloser, Meta, error) {
	if err := ctx.Err(); err != nil {
		return nil, Meta{}, err
	}
	if err := checkKey(key); err != nil {
		return nil, Meta{}, err
	}
	blob, meta := s.paths(key)
	m, err := readMeta(meta)
	if err != nil {
		return nil, Meta{}, err
	}
	f, err := os.Open(blob)
	if errors.Is(err, fs.ErrNotExist) {
		// Deleted between the two reads: Delete removes the sidecar first.
		return nil, Meta{}, ErrNotFound
	}
	if err != nil {
		return nil, Meta{}, fmt.Errorf("media store: %w", err)
	}
	if fi, err := f.Stat(); err != nil || fi.Size() != m.Size {
		f.Close()
		return nil, Meta{}, fmt.Errorf("media store: blob %s does not match its sidecar", key)
	}
	return f, m, nil
}

// Stat implements BlobStore.
func (s *FSStore) Stat(ctx context.Context, key string) (Meta, error) {
	if err := ctx.Err(); err != nil {
		return Meta{}, err
	}
	if err := checkKey(key); err != nil {
		return Meta{}, err
	}
	_, meta := s.paths(key)
	return readMeta(meta)
}

// Delete implements BlobStore. The sidecar goes first, so the blob stops
// existing at once and a crash leaves only a bare .blob for RemoveStale.
func (s *FSStore) Delete(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkKey(key); err != nil {
		return err
	}
	blob, meta := s.paths(key)
	if err := os.Remove(meta); errors.Is(err, fs.ErrNotExist) {
		return ErrNotFound
	} else if err != nil {
		return fmt.Errorf("media store: %w", err)
	}
	if err := os.Remove(blob); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("media store: %w", err)
	}
	return nil
}

// shards lists the shard directories, ignoring anything else in dir.
func (s *FSStore) shards() ([]string, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("media store: %w", err)
	}
	var out []string
	for _, e := range ents {
		if n := e.Name(); e.IsDir() && len(n) == 2 && validHex(n) {
			out = append(out, n)
		}
	}
	return out, nil
}

func validHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// List implements BlobStore, in key order. A sidecar that cannot be read
// is skipped and reported in the error returned at the end, so that one
// damaged file does not stop the sweep.
func (s *FSStore) List(ctx context.Context, fn func(key string, m Meta) error) error {
	shards, err := s.shards()
	if err != nil {
		return err
	}
	var errs []error
	for _, sh := range shards {
		if err := ctx.Err(); err != nil {
			return err
		}
		ents, err := os.ReadDir(filepath.Join(s.dir, sh))
		if err != nil {
			errs = append(errs, fmt.Errorf("media store: %w", err))
			continue
		}
		for _, e := range ents {
			key, ok := strings.CutSuffix(e.Name(), metaExt)
			if !ok || !ValidKey(key) || key[:2] != sh {
				continue
			}
			m, err := readMeta(filepath.Join(s.dir, sh, e.Name()))
			if errors.Is(err, ErrNotFound) {
				continue // deleted meanwhile
			}
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if err := fn(key, m); err != nil {
				return err
			}
		}
	}
	return errors.Join(errs...)
}

// RemoveStale deletes what a crash can leave behind and no one will
// finish: temporary files and sidecar-less blobs last modified before
// before. An upload in progress writes to its temporary file and so keeps
// it fresh; before should be well in the past (the Service uses an hour).
func (s *FSStore) RemoveStale(ctx context.Context, before time.Time) (removed int, err error) {
	shards, err := s.shards()
	if err != nil {
		return 0, err
	}
	var errs []error
	for _, sh := range shards {
		if err := ctx.Err(); err != nil {
			return removed, err
		}
		d := filepath.Join(s.dir, sh)
		ents, err := os.ReadDir(d)
		if err != nil {
			errs = append(errs, fmt.Errorf("media store: %w", err))
			continue
		}
		for _, e := range ents {
			name := e.Name()
			stale := strings.HasPrefix(name, tmpPrefix)
			if key, ok := strings.CutSuffix(name, blobExt); ok && ValidKey(key) {
				_, err := os.Lstat(filepath.Join(d, key+metaExt))
				stale = errors.Is(err, fs.ErrNotExist)
			}
			if !stale || !e.Type().IsRegular() {
				continue
			}
			fi, err := e.Info()
			if err != nil || !fi.ModTime().Before(before) {
				continue
			}
			if err := os.Remove(filepath.Join(d, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("media store: %w", err))
				continue
			}
			removed++
		}
	}
	return removed, errors.Join(errs...)
}
