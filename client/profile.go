package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/parleyhq/parley/noise"
)

// ProfileFile is the name of the profile inside its directory.
const ProfileFile = "profile.json"

// Profile is what a device keeps between runs: who it is, where its server
// is, and its key. The private key makes the file a credential, hence mode
// 0600 in a 0700 directory. Byte fields are base64 (standard encoding) in the
// JSON.
type Profile struct {
	// Phone is the account's number in E.164.
	Phone string `json:"phone"`
	// Server is the HTTP API's base URL (registration).
	Server string `json:"server"`
	// NativeAddr is the native protocol's host:port.
	NativeAddr string `json:"native_addr"`
	// NativeAddrs are the native addresses of all the server's nodes (a
	// cluster), as registration listed them; the client moves between
	// them and NativeAddr (see Config.Addrs).
	NativeAddrs []string `json:"native_addrs,omitempty"`
	// ServerKey is the server's pinned static public key.
	ServerKey []byte `json:"server_key"`
	// PrivateKey and PublicKey are the device's static key pair.
	PrivateKey []byte `json:"private_key"`
	PublicKey  []byte `json:"public_key"`
	// Generation is the registration this key belongs to (informational).
	Generation uint64 `json:"generation,omitempty"`
}

// Keypair returns the device key pair.
func (p Profile) Keypair() noise.Keypair {
	return noise.Keypair{Private: p.PrivateKey, Public: p.PublicKey}
}

// Config returns a client configuration for this profile; the caller sets
// the rest (Reconnect, Log, ...).
func (p Profile) Config() Config {
	return Config{Addr: p.NativeAddr, Addrs: p.NativeAddrs, ServerKey: p.ServerKey, Phone: p.Phone, Key: p.Keypair()}
}

// Check reports what a profile lacks to log in.
func (p Profile) Check() error {
	switch {
	case p.Phone == "":
		return errors.New("no phone number")
	case len(p.PrivateKey) != noise.KeyLen || len(p.PublicKey) != noise.KeyLen:
		return fmt.Errorf("device key pair is %d+%d bytes, want %d+%d", len(p.PrivateKey), len(p.PublicKey), noise.KeyLen, noise.KeyLen)
	case p.NativeAddr == "":
		return errors.New("no server address (native_addr)")
	case len(p.ServerKey) != noise.KeyLen:
		return fmt.Errorf("server key is %d bytes, want %d", len(p.ServerKey), noise.KeyLen)
	}
	return nil
}

// LoadProfile reads dir/profile.json and checks it is complete. A missing
// profile is an error matching os.ErrNotExist.
func LoadProfile(dir string) (Profile, error) {
	path := filepath.Join(dir, ProfileFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return Profile{}, fmt.Errorf("load profile: %w", err)
	}
	var p Profile
	if err := json.Unmarshal(b, &p); err != nil {
		return Profile{}, fmt.Errorf("profile %s is not valid JSON: %w (register again to rewrite it)", path, err)
	}
	if err := p.Check(); err != nil {
		return Profile{}, fmt.Errorf("profile %s is incomplete: %w (register again to rewrite it)", path, err)
	}
	return p, nil
}

// SaveProfile writes p to dir/profile.json, creating dir (mode 0700) if
// needed. The file is written whole to a temporary name, synced and renamed,
// so a crash leaves either the old profile or the new one, never a torn key.
func SaveProfile(dir string, p Profile) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("save profile: %w", err)
	}
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return fmt.Errorf("save profile: %w", err)
	}
	b = append(b, '\n')
	f, err := os.CreateTemp(dir, ".profile-*.json")
	if err != nil {
		return fmt.Errorf("save profile: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // fails harmlessly once renamed
	// CreateTemp makes the file 0600 already; Chmod states it, and holds
	// even where a umask or a platform did otherwise.
	err = errors.Join(f.Chmod(0o600), writeAll(f, b), f.Sync(), f.Close())
	if err != nil {
		return fmt.Errorf("save profile: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, ProfileFile)); err != nil {
		return fmt.Errorf("save profile: %w", err)
	}
	return nil
}

func writeAll(f *os.File, b []byte) error {
	_, err := f.Write(b)
	return err
}
