package media

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The BlobStore contract itself is checked by the conformance suite
// (store_conformance_test.go); these tests check what FSStore leaves on
// disk.

func TestFSStoreDeleteLeavesNoFiles(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	s, err := NewFSStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, key := newID()
	w, err := s.Create(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, "hello")
	if err := w.Commit(ctx, Meta{Size: 5, Created: t0, Expires: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if f := files(t, dir); len(f) != 2 {
		t.Errorf("after Commit: %v, want the blob and its sidecar", f)
	}
	if err := s.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	if f := files(t, dir); len(f) != 0 {
		t.Errorf("files left: %v", f)
	}
}

func TestFSStoreAbortLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	s, _ := NewFSStore(dir)
	_, key := newID()
	w, err := s.Create(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, "half a file")
	if f := files(t, dir); len(f) != 1 {
		t.Errorf("while writing: %v, want one temporary file", f)
	}
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(); err != nil {
		t.Errorf("second Abort: %v", err)
	}
	if err := w.Commit(t.Context(), Meta{}); err == nil {
		t.Error("Commit after Abort succeeded")
	}
	if f := files(t, dir); len(f) != 0 {
		t.Errorf("files left: %v", f)
	}
}

func TestFSStoreRefusesMalformedKeys(t *testing.T) {
	root := t.TempDir()
	s, _ := NewFSStore(filepath.Join(root, "media"))
	ctx := t.Context()
	for _, key := range []string{"", "../secret", "/etc/passwd", "ab", "0000000000000000000000000000000000000000000000000000000000000/..",
		"000000000000000000000000000000000000000000000000000000000000000G"} {
		if _, err := s.Create(ctx, key); err == nil {
			t.Errorf("Create(%q) accepted", key)
		}
		if _, _, err := s.Open(ctx, key); err == nil || errors.Is(err, ErrNotFound) {
			t.Errorf("Open(%q): %v, want a malformed-key error", key, err)
		}
		if err := s.Delete(ctx, key); err == nil || errors.Is(err, ErrNotFound) {
			t.Errorf("Delete(%q): %v, want a malformed-key error", key, err)
		}
	}
	if f := files(t, root); len(f) != 0 {
		t.Errorf("files: %v", f)
	}
}

func TestFSStoreListSkipsDamage(t *testing.T) {
	dir := t.TempDir()
	s, _ := NewFSStore(dir)
	ctx := t.Context()
	_, good := newID()
	w, _ := s.Create(ctx, good)
	w.Write([]byte("x"))
	if err := w.Commit(ctx, Meta{Size: 1}); err != nil {
		t.Fatal(err)
	}
	_, bad := newID()
	os.MkdirAll(filepath.Join(dir, bad[:2]), 0o700)
	os.WriteFile(filepath.Join(dir, bad[:2], bad+metaExt), []byte("{not json"), 0o600)

	var listed []string
	err := s.List(ctx, func(k string, _ Meta) error { listed = append(listed, k); return nil })
	if err == nil {
		t.Error("damaged sidecar not reported")
	}
	if len(listed) != 1 || listed[0] != good {
		t.Errorf("listed %v, want only %s", listed, good)
	}
}
