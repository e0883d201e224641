package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

// SetupResult is what Setup reports.
type SetupResult struct {
	Mode         string   `json:"mode"`
	Users        int      `json:"users"`
	Created      int      `json:"created"`
	Seconds      float64  `json:"seconds"`
	AccountsPerS float64  `json:"accounts_per_s"`
	State        string   `json:"state"`
	ServerKey    string   `json:"server_key"`
	NativeAddr   string   `json:"native_addr"`
	NativeAddrs  []string `json:"native_addrs,omitempty"`
}

// Rows implements Result.
func (r *SetupResult) Rows() []Row {
	native := strings.Join(r.NativeAddrs, ",")
	if native == "" {
		native = r.NativeAddr
	}
	return []Row{
		{Name: "users", Value: fmtInt(int64(r.Users)), Note: fmt.Sprintf("%s .. %s", Phone(0), Phone(max(r.Users-1, 0)))},
		{Name: "created", Value: fmtInt(int64(r.Created))},
		{Name: "seconds", Value: fmtF(r.Seconds, 2)},
		{Name: "accounts_per_s", Value: fmtF(r.AccountsPerS, 0)},
		{Name: "state", Value: r.State},
		{Name: "native_addr", Value: native, Note: "as the server advertises it (a cluster: every node's); --addr defaults to it"},
	}
}

// Setup provisions cfg.Users test accounts through the admin bulk endpoint,
// cfg.Chunk at a time, and writes the state file. An existing state keeps
// its seed (so users keep their keys) unless cfg.Fresh.
func Setup(ctx context.Context, cfg Config, progress io.Writer) (*SetupResult, error) {
	cfg.setDefaults()
	if cfg.Users <= 0 || cfg.Users > MaxUsers {
		return nil, fmt.Errorf("--users %d: give 1 to %d", cfg.Users, MaxUsers)
	}
	if cfg.Chunk <= 0 {
		cfg.Chunk = 5000
	}
	hc := &http.Client{Timeout: 30 * time.Second}
	si, key, err := fetchServerInfo(ctx, hc, cfg.Server)
	if err != nil {
		return nil, err
	}
	st := &State{Users: cfg.Users, serverKey: key, NativeAddr: si.NativeAddr, NativeAddrs: si.NativeAddrs, Admin: cfg.Admin, Created: time.Now().UTC()}
	if old, err := loadState(cfg.State); err == nil && !cfg.Fresh {
		st.seed = old.seed
	} else if err != nil {
		if _, statErr := os.Stat(cfg.State); statErr == nil && !cfg.Fresh {
			return nil, fmt.Errorf("%w (or give --fresh to replace it)", err)
		}
	}
	if st.seed == nil {
		if st.seed, err = newSeed(); err != nil {
			return nil, err
		}
	}
	a := newAdmin(splitList(cfg.Admin)[0]) // accounts are cluster-wide
	if _, err := a.process(ctx, false); err != nil {
		return nil, err
	}
	var created atomic.Int64
	start := time.Now()
	pr := startProgress(progress, func() string {
		c := created.Load()
		return fmt.Sprintf("setup: %s/%s accounts  %.0f/s", fmtInt(c), fmtInt(int64(cfg.Users)), rate(c, time.Since(start)))
	})
	defer pr.end()
	for from := 0; from < cfg.Users; from += cfg.Chunk {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		n := min(cfg.Chunk, cfg.Users-from)
		us, err := st.users(from, n)
		if err != nil {
			return nil, err
		}
		c, err := a.createAccounts(ctx, us)
		if err != nil {
			if strings.Contains(err.Error(), "account_exists") {
				err = fmt.Errorf("%w: the server holds these bench numbers with other keys (from another state file, or --fresh): use that state file, or start the server on a new --data", err)
			}
			return nil, fmt.Errorf("provision users %d..%d: %w", from, from+n-1, err)
		}
		if c != n {
			return nil, errors.New("the server created fewer accounts than asked: see its log")
		}
		created.Add(int64(c))
	}
	elapsed := time.Since(start)
	if err := st.save(cfg.State); err != nil {
		return nil, err
	}
	pr.end()
	return &SetupResult{
		Mode: "setup", Users: cfg.Users, Created: int(created.Load()),
		Seconds: elapsed.Seconds(), AccountsPerS: rate(created.Load(), elapsed),
		State: cfg.State, ServerKey: st.ServerKey, NativeAddr: si.NativeAddr, NativeAddrs: si.NativeAddrs,
	}, nil
}
