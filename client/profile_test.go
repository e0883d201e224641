package client_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"

	"github.com/parleyhq/parley/client"
	"github.com/parleyhq/parley/noise"
)

func testProfile(t *testing.T) client.Profile {
	t.Helper()
	dev, err := noise.GenerateKeypair(nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := noise.GenerateKeypair(nil)
	if err != nil {
		t.Fatal(err)
	}
	return client.Profile{
		Phone:       "+14155550101",
		Server:      "http://127.0.0.1:8080",
		NativeAddr:  "127.0.0.1:5222",
		NativeAddrs: []string{"127.0.0.1:5222", "127.0.0.1:5223"},
		ServerKey:   srv.Public,
		PrivateKey:  dev.Private,
		PublicKey:   dev.Public,
		Generation:  3,
	}
}

func TestProfileRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "parley", "14155550101")
	want := testProfile(t)
	if err := client.SaveProfile(dir, want); err != nil {
		t.Fatal(err)
	}
	got, err := client.LoadProfile(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.Phone != want.Phone || got.Server != want.Server || got.NativeAddr != want.NativeAddr || !slices.Equal(got.NativeAddrs, want.NativeAddrs) || got.Generation != want.Generation ||
		!bytes.Equal(got.ServerKey, want.ServerKey) || !bytes.Equal(got.PrivateKey, want.PrivateKey) || !bytes.Equal(got.PublicKey, want.PublicKey) {
		t.Fatalf("loaded %+v, saved %+v", got, want)
	}
	cfg := got.Config()
	if cfg.Phone != want.Phone || cfg.Addr != want.NativeAddr || !slices.Equal(cfg.Addrs, want.NativeAddrs) || !bytes.Equal(cfg.Key.Private, want.PrivateKey) {
		t.Fatalf("Config() = %+v", cfg)
	}

	// Saving again replaces the profile and leaves no temporary files.
	want.Generation = 4
	if err := client.SaveProfile(dir, want); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != client.ProfileFile {
		t.Fatalf("profile directory holds %v, want only %s", ents, client.ProfileFile)
	}
	if got, _ := client.LoadProfile(dir); got.Generation != 4 {
		t.Fatalf("generation after resave = %d, want 4", got.Generation)
	}
}

func TestProfilePermissions(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no Unix permissions")
	}
	dir := filepath.Join(t.TempDir(), "new")
	if err := client.SaveProfile(dir, testProfile(t)); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, client.ProfileFile): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s has mode %v, want %v", path, got, want)
		}
	}
}

func TestLoadProfileErrors(t *testing.T) {
	t.Run("missing", func(t *testing.T) {
		_, err := client.LoadProfile(t.TempDir())
		if !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("err = %v, want os.ErrNotExist", err)
		}
	})
	for name, body := range map[string]string{
		"not JSON":   "{",
		"no key":     `{"phone":"+14155550101","native_addr":"x:1"}`,
		"short key":  `{"phone":"+14155550101","native_addr":"x:1","private_key":"AAAA","public_key":"AAAA"}`,
		"no phone":   `{}`,
		"bad base64": `{"phone":"+14155550101","server_key":"!!"}`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, client.ProfileFile), []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := client.LoadProfile(dir); err == nil {
				t.Fatal("loaded a broken profile")
			}
		})
	}
}
