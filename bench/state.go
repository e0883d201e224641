package bench

import (
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/parleyhq/parley/noise"
)

// MaxUsers is how many users one state can name: the phone numbers are
// +1555 and seven digits.
const MaxUsers = 10_000_000

// State is what setup leaves for the other modes: enough to recreate every
// user's phone number and key, and the server key to pin.
type State struct {
	Version    int    `json:"version"`
	Seed       string `json:"seed"` // base64 of 32 random bytes
	Users      int    `json:"users"`
	ServerKey  string `json:"server_key"` // base64
	NativeAddr string `json:"native_addr,omitempty"`
	// NativeAddrs are every node's native listeners, as a cluster node
	// advertises them (one address for a single node).
	NativeAddrs []string  `json:"native_addrs,omitempty"`
	Admin       string    `json:"admin,omitempty"`
	Created     time.Time `json:"created"`

	seed      []byte
	serverKey []byte
}

// user is one test account.
type user struct {
	index int
	phone string
	key   *noise.Static // pinned to the server's key
	// resume is the resumption ticket of the user's last login in this
	// process, for its next one.
	resume atomic.Pointer[noise.Resumption]
}

// Phone is the phone number of test user i.
func Phone(i int) string { return fmt.Sprintf("+1555%07d", i) }

// userKey derives the device key of user i from the seed.
func userKey(seed []byte, i int) (noise.Keypair, error) {
	h := sha256.New()
	h.Write([]byte("parley-bench/v1 device key"))
	h.Write(seed)
	var ib [8]byte
	binary.BigEndian.PutUint64(ib[:], uint64(i))
	h.Write(ib[:])
	priv := h.Sum(nil)
	k, err := ecdh.X25519().NewPrivateKey(priv)
	if err != nil {
		return noise.Keypair{}, err
	}
	return noise.Keypair{Private: priv, Public: k.PublicKey().Bytes()}, nil
}

// users derives users [from, from+n) in parallel, their keys pinned to the
// server's (so that a login costs the client one DH less, as with the SDK).
func (s *State) users(from, n int) ([]*user, error) {
	us := make([]*user, n)
	errs := make([]error, n)
	parallel(n, func(i int) {
		us[i], errs[i] = s.user(from + i)
	})
	return us, errors.Join(errs...)
}

func (s *State) user(i int) (*user, error) {
	kp, err := userKey(s.seed, i)
	if err != nil {
		return nil, err
	}
	st, err := noise.NewStatic(kp)
	if err != nil {
		return nil, fmt.Errorf("bench user %d: %w", i, err)
	}
	// An unusable server key is not an error here: setup needs only the
	// public keys, and a login with it fails with the handshake's error.
	_ = st.Pin(s.serverKey)
	return &user{index: i, phone: Phone(i), key: st}, nil
}

// parallel runs f(0..n-1) on one goroutine per CPU.
func parallel(n int, f func(i int)) {
	var wg sync.WaitGroup
	workers := min(runtime.GOMAXPROCS(0), max(n, 1))
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				f(i)
			}
		}()
	}
	wg.Wait()
}

// DefaultStatePath is where setup keeps the state for an admin URL: the
// user's cache directory, one file per server.
func DefaultStatePath(admin string) string {
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = os.TempDir()
	}
	host := admin
	if u, err := url.Parse(admin); err == nil && u.Host != "" {
		host = u.Host
	}
	host = strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-':
			return r
		}
		return '_'
	}, host)
	return filepath.Join(dir, "parley", "bench-"+host+".json")
}

func newSeed() ([]byte, error) {
	seed := make([]byte, 32)
	_, err := rand.Read(seed)
	return seed, err
}

// loadState reads the state file at path.
func loadState(path string) (*State, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no bench state at %s: run `parley bench setup --users N` first (with the same --admin, or give --state)", path)
	}
	if err != nil {
		return nil, fmt.Errorf("read bench state: %w", err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("bench state %s does not decode (%v): run `parley bench setup` again", path, err)
	}
	if s.seed, err = base64.StdEncoding.DecodeString(s.Seed); err != nil || len(s.seed) != 32 {
		return nil, fmt.Errorf("bench state %s has a bad seed: run `parley bench setup` again", path)
	}
	if s.serverKey, err = base64.StdEncoding.DecodeString(s.ServerKey); err != nil || len(s.serverKey) != noise.KeyLen {
		return nil, fmt.Errorf("bench state %s has a bad server key: run `parley bench setup` again", path)
	}
	return &s, nil
}

// save writes the state atomically (temporary file, then rename).
func (s *State) save(path string) error {
	s.Version = 1
	s.Seed = base64.StdEncoding.EncodeToString(s.seed)
	s.ServerKey = base64.StdEncoding.EncodeToString(s.serverKey)
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".bench-state-*")
	if err != nil {
		return fmt.Errorf("write bench state: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write bench state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write bench state: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write bench state: %w", err)
	}
	return nil
}

// needUsers checks the state has users [offset, offset+n).
func (s *State) needUsers(offset, n int, what string) error {
	if offset < 0 {
		return fmt.Errorf("--offset %d: must be 0 or more", offset)
	}
	if offset+n > s.Users {
		return fmt.Errorf("%s needs users %d..%d but setup made %d: run `parley bench setup --users %d`", what, offset, offset+n-1, s.Users, offset+n)
	}
	return nil
}
