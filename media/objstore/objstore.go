// Package objstore is a media.BlobStore kept in a NATS JetStream object
// store bucket, so that every node of a cluster serves every node's media
// and losing a node loses none of them: the bucket's stream is replicated
// like the message streams (store/jetstream).
//
// # Layout
//
// One object per blob, named by its key (64 hex digits, checked by
// media.ValidKey before any request). The blob's media.Meta is kept with
// the object, as JSON in its metadata under "parley-meta", so one read
// (the object's info) answers Stat, and a blob and its Meta are written
// and deleted together.
//
// # The contract, and how it is kept
//
//   - Nothing is visible until Commit: an upload is spooled to a temporary
//     file under Options.SpoolDir, and Commit puts the whole file into the
//     bucket. An object store writes the chunks first and the object's info
//     last, and only the info makes an object exist, so a failed or
//     interrupted Put leaves nothing that Open, Stat or List sees. Abort,
//     or a crash before Commit, leaves only the spool file (removed by
//     Abort, or by RemoveStale, which the media sweep calls).
//   - Open reads the whole blob before it returns: into memory when it is
//     at most Options.MemoryMax bytes (1 MiB by default: a thumbnail, a
//     voice note), else into a temporary file under SpoolDir, unlinked at
//     once so that nothing is left when it is closed or the process dies.
//     Why not stream: range requests (media/ranges.go, http.ServeContent)
//     seek, and an object's chunks are read in order from the first; and
//     the object's SHA-256 digest can only be checked once the last chunk
//     is in, so a damaged blob is refused before its first byte is served.
//     What it costs: a download starts once the node has the whole blob
//     (64 MiB at most by default), and each download in progress holds a
//     copy in memory or on the node's disk.
//   - Every read goes to the bucket stream's leader (the stream is made
//     with direct gets off, as the cluster's key-value buckets are), so a
//     blob committed on one node is seen at once by every other. Open
//     reads the chunks itself, one MSG.GET each, not with nats.go's Get,
//     which makes an ordered consumer per read: consumers are created by
//     the cluster's meta leader, and right after a node was killed a
//     download waited for it (see copyContent).
//
// Every request is bounded: Options.Timeout for each metadata request and
// each chunk read; moving a blob's content (Commit's Put, Open's reads)
// as long as it takes at Options.MinRate, plus Timeout; one List,
// Options.ListTimeout. A request that reaches a stream whose leader has
// just died is not answered at all (the new leader does not answer the
// old one's requests), so these bounds are what ends it: a download
// during an election is refused within Timeout, and the client tries
// again.
//
// What is not guaranteed: a Commit that fails after its deadline may yet
// have stored the blob (the object's info was sent and lands later); the
// store then deletes it if it can see it, and otherwise it stays until
// its Meta's expiry, when the media sweep deletes it like any other. A
// process killed in the middle of a Put leaves chunks without an info:
// invisible, but their bytes stay in the stream (nothing here collects
// them).
package objstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	njs "github.com/nats-io/nats.go/jetstream"

	"github.com/parleyhq/parley/media"
	"github.com/parleyhq/parley/store/jetstream"
)

// Defaults of the Options fields left zero.
const (
	DefaultBucket      = "parley_media"
	DefaultMemoryMax   = 1 << 20
	DefaultTimeout     = 2 * time.Second
	DefaultMinRate     = 1 << 20 // bytes a second
	DefaultListTimeout = time.Minute
)

// metaKey names the object metadata entry that holds the blob's Meta.
const metaKey = "parley-meta"

// Spool file name prefixes: what RemoveStale may remove.
const (
	uploadPrefix   = "upload-"
	downloadPrefix = "download-"
)

// Options configures a Store. Zero fields take the defaults above.
type Options struct {
	// Bucket is the object store bucket's name.
	Bucket string
	// Replicas is the bucket stream's replication factor: the cluster's
	// --replicas. Default 1.
	Replicas int
	// SpoolDir holds uploads until they are committed and downloads too
	// large for memory; on the node's own disk. Required.
	SpoolDir string
	// MemoryMax is the largest blob Open reads into memory; larger ones
	// are spooled to a file. < 0: spool every blob.
	MemoryMax int64
	// Timeout bounds each metadata request (a blob's info, a delete, one
	// try at making the bucket).
	Timeout time.Duration
	// MinRate is the slowest, in bytes a second, that a blob's content
	// may move (Commit's Put, Open's Get): a blob of n bytes is given
	// Timeout + n/MinRate. The default, 1 MiB/s, gives the largest upload
	// by default (64 MiB) 66 s.
	MinRate int64
	// ListTimeout bounds one List of the whole bucket.
	ListTimeout time.Duration
}

// Store is a media.BlobStore in a JetStream object store bucket. It is
// safe for concurrent use.
type Store struct {
	obs    njs.ObjectStore
	stream njs.Stream // the bucket's, for reading chunks (see copyContent)
	opts   Options
}

var _ media.BlobStore = (*Store)(nil)

// Open makes the bucket if it does not exist (or updates its replicas to
// opts.Replicas) and returns the store. ctx bounds the whole open; a
// cluster that cannot place the bucket's replicas yet (fewer nodes up
// than replicas) is tried again until ctx ends.
func Open(ctx context.Context, js njs.JetStream, opts Options) (*Store, error) {
	if opts.SpoolDir == "" {
		return nil, errors.New("media objstore: no spool directory")
	}
	if opts.Bucket == "" {
		opts.Bucket = DefaultBucket
	}
	if opts.Replicas <= 0 {
		opts.Replicas = 1
	}
	if opts.MemoryMax == 0 {
		opts.MemoryMax = DefaultMemoryMax
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.MinRate <= 0 {
		opts.MinRate = DefaultMinRate
	}
	if opts.ListTimeout <= 0 {
		opts.ListTimeout = DefaultListTimeout
	}
	if err := os.MkdirAll(opts.SpoolDir, 0o700); err != nil {
		return nil, fmt.Errorf("media objstore: spool directory: %w", err)
	}
	// The stream an object store bucket is kept in, as nats.go makes it
	// (CreateObjectStore), but with direct gets off: a direct get may be
	// answered by a replica that has not yet applied the latest write, and
	// a link sent in a message must work on every node at once.
	// EnsureStream tries again while nodes started together race to make
	// it.
	stream, err := jetstream.EnsureStream(ctx, js, njs.StreamConfig{
		Name:        "OBJ_" + opts.Bucket,
		Description: "Parley media",
		Subjects:    []string{"$O." + opts.Bucket + ".C.>", "$O." + opts.Bucket + ".M.>"},
		MaxBytes:    -1,
		Storage:     njs.FileStorage,
		Replicas:    opts.Replicas,
		Discard:     njs.DiscardNew,
		AllowRollup: true,
		AllowDirect: false,
	}, opts.Timeout)
	if err != nil {
		return nil, fmt.Errorf("media objstore: bucket %s: %w", opts.Bucket, err)
	}
	obs, err := js.ObjectStore(ctx, opts.Bucket)
	if err != nil {
		return nil, fmt.Errorf("media objstore: bucket %s: %w", opts.Bucket, err)
	}
	return &Store{obs: obs, stream: stream, opts: opts}, nil
}

// transfer is how long moving n bytes of content may take.
func (s *Store) transfer(n int64) time.Duration {
	return s.opts.Timeout + time.Duration(float64(n)/float64(s.opts.MinRate)*float64(time.Second))
}

func checkKey(key string) error {
	if !media.ValidKey(key) {
		// Only a bug in the caller gets here: keys are derived, not received.
		return fmt.Errorf("media objstore: malformed key %q", key)
	}
	return nil
}

// metaOf reads the Meta kept with an object.
func metaOf(info *njs.ObjectInfo) (media.Meta, error) {
	var m media.Meta
	raw, ok := info.Metadata[metaKey]
	if !ok {
		return m, fmt.Errorf("media objstore: blob %s has no %s", info.Name, metaKey)
	}
	if err := json.Unmarshal([]byte(raw), &m); err != nil {
		return m, fmt.Errorf("media objstore: blob %s: %s: %w", info.Name, metaKey, err)
	}
	if m.Size < 0 || uint64(m.Size) != info.Size {
		return m, fmt.Errorf("media objstore: blob %s is %d bytes, its Meta says %d", info.Name, info.Size, m.Size)
	}
	return m, nil
}

// Create implements media.BlobStore: the upload is spooled to a file until
// Commit.
func (s *Store) Create(ctx context.Context, key string) (media.BlobWriter, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := checkKey(key); err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(s.opts.SpoolDir, uploadPrefix+"*")
	if err != nil {
		return nil, fmt.Errorf("media objstore: spool upload %s: %w", key, err)
	}
	return &writer{s: s, key: key, f: f}, nil
}

type writer struct {
	s    *Store
	key  string
	f    *os.File
	n    int64 // bytes written
	done bool  // committed or aborted
}

func (w *writer) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.n += int64(n)
	return n, err
}

// Commit puts the spooled upload into the bucket with m.
func (w *writer) Commit(ctx context.Context, m media.Meta) (err error) {
	if w.done {
		return errors.New("media objstore: commit after commit or abort")
	}
	defer func() {
		if err != nil {
			w.Abort()
		}
	}()
	if err := ctx.Err(); err != nil {
		return err
	}
	if m.Size != w.n {
		return fmt.Errorf("media objstore: blob %s: its Meta says %d bytes, %d were written", w.key, m.Size, w.n)
	}
	meta, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("media objstore: blob %s: %w", w.key, err)
	}
	if _, err := w.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("media objstore: spool of %s: %w", w.key, err)
	}
	pctx, cancel := context.WithTimeout(ctx, w.s.transfer(w.n))
	defer cancel()
	_, err = w.s.obs.Put(pctx, njs.ObjectMeta{Name: w.key, Metadata: map[string]string{metaKey: string(meta)}}, w.f)
	if err != nil {
		w.s.undo(w.key)
		return fmt.Errorf("media objstore: put %s (%d bytes): %w", w.key, w.n, err)
	}
	w.done = true
	w.f.Close()
	os.Remove(w.f.Name())
	return nil
}

// undo deletes a blob whose Put failed, in case its info landed all the
// same (see the package doc); best effort.
func (s *Store) undo(key string) {
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.Timeout)
	defer cancel()
	if _, err := s.obs.GetInfo(ctx, key); err == nil {
		s.obs.Delete(ctx, key)
	}
}

func (w *writer) Abort() error {
	if w.done {
		return nil
	}
	w.done = true
	w.f.Close()
	if err := os.Remove(w.f.Name()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("media objstore: %w", err)
	}
	return nil
}

// Open implements media.BlobStore. The whole blob is read, and its digest
// checked, before Open returns (see the package doc).
func (s *Store) Open(ctx context.Context, key string) (io.ReadSeekCloser, media.Meta, error) {
	if err := ctx.Err(); err != nil {
		return nil, media.Meta{}, err
	}
	if err := checkKey(key); err != nil {
		return nil, media.Meta{}, err
	}
	info, err := s.info(ctx, key)
	if err != nil {
		return nil, media.Meta{}, err
	}
	m, err := metaOf(info)
	if err != nil {
		return nil, media.Meta{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.transfer(m.Size))
	defer cancel()
	if s.opts.MemoryMax >= 0 && m.Size <= s.opts.MemoryMax {
		var b bytes.Buffer
		b.Grow(int(m.Size))
		if err := s.copyContent(ctx, info, &b); err != nil {
			return nil, media.Meta{}, err
		}
		return nopCloser{bytes.NewReader(b.Bytes())}, m, nil
	}
	f, err := os.CreateTemp(s.opts.SpoolDir, downloadPrefix+"*")
	if err != nil {
		return nil, media.Meta{}, fmt.Errorf("media objstore: spool %s: %w", key, err)
	}
	// Unlinked at once: the open file is all there is, and it goes with
	// Close or with the process.
	os.Remove(f.Name())
	err = s.copyContent(ctx, info, f)
	if err == nil {
		if _, err = f.Seek(0, io.SeekStart); err != nil {
			err = fmt.Errorf("media objstore: spool %s: %w", key, err)
		}
	}
	if err != nil {
		f.Close()
		return nil, media.Meta{}, err
	}
	return f, m, nil
}

// copyContent writes an object's content to w and checks it against the
// object's size and digest. It reads the chunks one MSG.GET at a time
// (the next message on the object's chunk subject), each answered by the
// stream's leader and bounded by Timeout. nats.go's own Get makes an
// ordered consumer per read instead, which the cluster's meta leader must
// create: right after a node is killed that waited out the whole
// transfer's bound, and a consumer per download is work for the meta
// leader that a read does not need.
func (s *Store) copyContent(ctx context.Context, info *njs.ObjectInfo, w io.Writer) error {
	subj := "$O." + s.opts.Bucket + ".C." + info.NUID
	h := sha256.New()
	var got uint64
	for seq := uint64(1); got < info.Size; {
		rctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
		msg, err := s.stream.GetMsg(rctx, seq, njs.WithGetMsgSubject(subj))
		cancel()
		if errors.Is(err, njs.ErrMsgNotFound) {
			// Deleted while it was read: the chunks are purged after
			// the info is marked deleted.
			return fmt.Errorf("media objstore: read %s: chunks gone at byte %d: %w", info.Name, got, media.ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("media objstore: read %s at byte %d: %w", info.Name, got, err)
		}
		if got += uint64(len(msg.Data)); got > info.Size {
			return fmt.Errorf("media objstore: read %s: more than its %d bytes", info.Name, info.Size)
		}
		h.Write(msg.Data)
		if _, err := w.Write(msg.Data); err != nil {
			return fmt.Errorf("media objstore: read %s: %w", info.Name, err)
		}
		seq = msg.Sequence + 1
	}
	want, err := njs.DecodeObjectDigest(info.Digest)
	if err != nil {
		return fmt.Errorf("media objstore: read %s: digest %q: %w", info.Name, info.Digest, err)
	}
	if !bytes.Equal(h.Sum(nil), want) {
		return fmt.Errorf("media objstore: read %s: its content does not match its digest", info.Name)
	}
	return nil
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }

// Stat implements media.BlobStore: one read of the object's info.
func (s *Store) Stat(ctx context.Context, key string) (media.Meta, error) {
	if err := ctx.Err(); err != nil {
		return media.Meta{}, err
	}
	if err := checkKey(key); err != nil {
		return media.Meta{}, err
	}
	info, err := s.info(ctx, key)
	if err != nil {
		return media.Meta{}, err
	}
	return metaOf(info)
}

// info reads an object's info from the stream's leader, under Timeout.
func (s *Store) info(ctx context.Context, key string) (*njs.ObjectInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	info, err := s.obs.GetInfo(ctx, key)
	if errors.Is(err, njs.ErrObjectNotFound) {
		return nil, media.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("media objstore: info of %s: %w", key, err)
	}
	return info, nil
}

// Delete implements media.BlobStore. The object store's own Delete of a
// deleted object succeeds (it marks it deleted again), so the object's
// info is read first: ErrNotFound when there is none. Two deletes at the
// same moment, from two nodes, may both succeed.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkKey(key); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	if _, err := s.obs.GetInfo(ctx, key); err != nil {
		if errors.Is(err, njs.ErrObjectNotFound) {
			return media.ErrNotFound
		}
		return fmt.Errorf("media objstore: delete %s: %w", key, err)
	}
	if err := s.obs.Delete(ctx, key); err != nil {
		if errors.Is(err, njs.ErrObjectNotFound) {
			return media.ErrNotFound
		}
		return fmt.Errorf("media objstore: delete %s: %w", key, err)
	}
	return nil
}

// List implements media.BlobStore, in the order the objects were last
// written. It reads the bucket's object infos as they stream in (a
// watcher over the infos, with the deleted left out), not all at once,
// so a large bucket does not have to fit in memory. An object whose Meta
// cannot be read is skipped and reported in the error returned at the
// end, so that one damaged object does not stop the sweep; objects whose
// names are not keys are not Parley's and are skipped.
func (s *Store) List(ctx context.Context, fn func(key string, m media.Meta) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, s.opts.ListTimeout)
	defer cancel()
	w, err := s.obs.Watch(ctx, njs.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("media objstore: list %s: %w", s.opts.Bucket, err)
	}
	defer s.stopWatch(w)
	var errs []error
	for {
		var info *njs.ObjectInfo
		select {
		case i, ok := <-w.Updates():
			if !ok {
				return fmt.Errorf("media objstore: list %s: the watcher stopped early", s.opts.Bucket)
			}
			if i == nil { // every object so far has been delivered
				return errors.Join(errs...)
			}
			info = i
		case <-ctx.Done():
			return fmt.Errorf("media objstore: list %s: %w", s.opts.Bucket, ctx.Err())
		}
		if !media.ValidKey(info.Name) {
			continue
		}
		m, err := metaOf(info)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := fn(info.Name, m); err != nil {
			return err
		}
	}
}

// stopWatch stops w and drains what it still delivers: nats.go's watcher
// hands each info to its channel from the subscription's goroutine, which
// would otherwise stay blocked on a full channel after the subscription
// ends. The channel is closed once that goroutine is done.
func (s *Store) stopWatch(w njs.ObjectWatcher) {
	w.Stop()
	t := time.NewTimer(s.opts.Timeout)
	defer t.Stop()
	for {
		select {
		case _, ok := <-w.Updates():
			if !ok {
				return
			}
		case <-t.C:
			return
		}
	}
}

// RemoveStale removes spool files last modified before before: uploads
// that a crash interrupted (downloads are unlinked when opened). The
// media sweep calls it (see media.Service.Sweep); an upload in progress
// writes to its file and so keeps it fresh.
func (s *Store) RemoveStale(ctx context.Context, before time.Time) (removed int, err error) {
	ents, err := os.ReadDir(s.opts.SpoolDir)
	if err != nil {
		return 0, fmt.Errorf("media objstore: spool directory: %w", err)
	}
	var errs []error
	for _, e := range ents {
		if ctx.Err() != nil {
			return removed, ctx.Err()
		}
		name := e.Name()
		if !e.Type().IsRegular() || !(strings.HasPrefix(name, uploadPrefix) || strings.HasPrefix(name, downloadPrefix)) {
			continue
		}
		fi, err := e.Info()
		if err != nil || !fi.ModTime().Before(before) {
			continue
		}
		if err := os.Remove(filepath.Join(s.opts.SpoolDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("media objstore: %w", err))
			continue
		}
		removed++
	}
	return removed, errors.Join(errs...)
}
