package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/parleyhq/parley/apierror"
	"github.com/parleyhq/parley/node"
)

// process is the server's answer to GET /admin/process: the node's own
// type, so the two cannot drift apart.
type process = node.ProcessStats

// admin talks to the node's admin listener (and, for setup, to its public
// HTTP API).
type admin struct {
	url string
	hc  *http.Client
}

func newAdmin(url string) *admin {
	return &admin{url: strings.TrimRight(url, "/"), hc: &http.Client{Timeout: 60 * time.Second}}
}

func unreachable(what, url string, err error) error {
	return fmt.Errorf("cannot reach %s at %s: %v: is `parley serve` running? check --%s", what, url, err, map[string]string{"admin listener": "admin", "HTTP API": "server"}[what])
}

// process reads the server's process figures; gc asks it to collect first.
func (a *admin) process(ctx context.Context, gc bool) (process, error) {
	if gc {
		return a.processQuery(ctx, "?gc=1")
	}
	return a.processQuery(ctx, "")
}

// processSched reads the server's process figures with its threads' wait
// for a CPU (a file read per thread, so only where a mode reports it).
func (a *admin) processSched(ctx context.Context) (process, error) {
	return a.processQuery(ctx, "?sched=1")
}

func (a *admin) processQuery(ctx context.Context, query string) (process, error) {
	u := a.url + "/admin/process" + query
	var p process
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return p, err
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		return p, unreachable("admin listener", a.url, err)
	}
	defer resp.Body.Close()
	if err := decodeResponse(resp, &p); err != nil {
		return p, fmt.Errorf("GET %s: %w", u, err)
	}
	return p, nil
}

// heapProfile writes the server's heap profile to file. The profile shows
// the heap as of the last completed collection, with the frees of the
// collection before it, so it asks for two: the second is exact.
func (a *admin) heapProfile(ctx context.Context, file string) error {
	u := a.url + "/debug/pprof/heap?gc=1"
	var body []byte
	for range 2 {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return err
		}
		resp, err := a.hc.Do(req)
		if err != nil {
			return unreachable("admin listener", a.url, err)
		}
		body, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return fmt.Errorf("GET %s: %w", u, err)
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s: %.200s", u, resp.Status, body)
		}
	}
	if err := os.WriteFile(file, body, 0o644); err != nil {
		return fmt.Errorf("heap profile: %w", err)
	}
	return nil
}

// bulkAccount is one account of POST /admin/accounts/bulk.
type bulkAccount struct {
	Phone string `json:"phone"`
	Key   string `json:"key"`
}

// createAccounts provisions users through the trusted bulk endpoint and
// returns how many are in place: created now, or already there with the
// same key (a repeated setup).
func (a *admin) createAccounts(ctx context.Context, us []*user) (int, error) {
	req := struct {
		Accounts []bulkAccount `json:"accounts"`
	}{Accounts: make([]bulkAccount, len(us))}
	for i, u := range us {
		req.Accounts[i] = bulkAccount{Phone: u.phone, Key: base64.StdEncoding.EncodeToString(u.key.Keypair().Public)}
	}
	body, err := json.Marshal(req)
	if err != nil {
		return 0, err
	}
	u := a.url + "/admin/accounts/bulk"
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	hr.Header.Set("Content-Type", "application/json")
	resp, err := a.hc.Do(hr)
	if err != nil {
		return 0, unreachable("admin listener", a.url, err)
	}
	defer resp.Body.Close()
	var out struct {
		Created  int `json:"created"`
		Existing int `json:"existing"`
	}
	if err := decodeResponse(resp, &out); err != nil {
		return 0, fmt.Errorf("POST %s: %w", u, err)
	}
	return out.Created + out.Existing, nil
}

// serverInfo is GET /v1/server on the public HTTP API.
type serverInfo struct {
	ServerKey   string   `json:"server_key"`
	NativeAddr  string   `json:"native_addr"`
	NativeAddrs []string `json:"native_addrs"`
}

func fetchServerInfo(ctx context.Context, hc *http.Client, base string) (serverInfo, []byte, error) {
	base = strings.TrimRight(base, "/")
	var si serverInfo
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/server", nil)
	if err != nil {
		return si, nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return si, nil, unreachable("HTTP API", base, err)
	}
	defer resp.Body.Close()
	if err := decodeResponse(resp, &si); err != nil {
		return si, nil, fmt.Errorf("GET %s/v1/server: %w", base, err)
	}
	key, err := base64.StdEncoding.DecodeString(si.ServerKey)
	if err != nil || len(key) != 32 {
		return si, nil, fmt.Errorf("GET %s/v1/server: server_key %q is not base64 of 32 bytes: is --server a Parley HTTP API?", base, si.ServerKey)
	}
	return si, key, nil
}

func decodeResponse(resp *http.Response, v any) error {
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		if d, ok := apierror.Parse(b); ok {
			return fmt.Errorf("%s: %s (%s)", resp.Status, d.Message, d.Code)
		}
		if resp.StatusCode == http.StatusNotFound {
			return fmt.Errorf("%s: this server has no such endpoint (an older parley, or not the admin listener?)", resp.Status)
		}
		return fmt.Errorf("%s: %.200s", resp.Status, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("answer does not decode: %w", err)
	}
	return nil
}

// kernelMem is a snapshot of the machine-wide kernel memory that sockets
// use: slab objects and TCP socket buffer pages.
type kernelMem struct {
	SlabBytes   int64
	TCPMemBytes int64
	TCPInuse    int64
	// ProcBytes is what /proc inodes hold in Slab: each one's inode
	// (proc_inode_cache), its dentry and, where a security module keeps
	// one, its blob (lsm_inode_cache), from /proc/slabinfo (readable by
	// root only; 0 otherwise). Listing /proc/PID/fd makes one per open
	// file, and a process watcher that counts open files does exactly
	// that: inside Slab it grows with the connections without being their
	// memory (it is reclaimable, and the server never lists its fds).
	ProcBytes int64
}

// readKernelMem reads /proc/meminfo and /proc/net/sockstat (Linux). On
// other systems it returns ok=false and the kernel figure is left out.
func readKernelMem() (k kernelMem, ok bool) {
	mi, err := os.Open("/proc/meminfo")
	if err != nil {
		return k, false
	}
	defer mi.Close()
	sc := bufio.NewScanner(mi)
	found := false
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "Slab:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			k.SlabBytes, found = kb<<10, true
		}
	}
	ss, err := os.ReadFile("/proc/net/sockstat")
	if err != nil || !found {
		return k, false
	}
	for _, line := range strings.Split(string(ss), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "TCP:" {
			continue
		}
		for i := 1; i+1 < len(f); i += 2 {
			v, _ := strconv.ParseInt(f[i+1], 10, 64)
			switch f[i] {
			case "mem":
				k.TCPMemBytes = v * int64(os.Getpagesize())
			case "inuse":
				k.TCPInuse = v
			}
		}
	}
	k.ProcBytes = procInodeBytes()
	return k, true
}

// procInodeBytes is the Slab held by /proc inodes: their count times what
// each costs (inode, dentry, security blob), or 0 when /proc/slabinfo
// cannot be read.
func procInodeBytes() int64 {
	b, err := os.ReadFile("/proc/slabinfo")
	if err != nil {
		return 0
	}
	var inodes, inodeSize, dentrySize, lsmSize int64
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		active, _ := strconv.ParseInt(f[1], 10, 64)
		size, _ := strconv.ParseInt(f[3], 10, 64)
		switch f[0] {
		case "proc_inode_cache":
			inodes, inodeSize = active, size
		case "dentry":
			dentrySize = size
		case "lsm_inode_cache":
			lsmSize = size
		}
	}
	return inodes * (inodeSize + dentrySize + lsmSize)
}
