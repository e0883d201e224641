package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// Cluster flags without a cluster name are a mistake, not a node alone;
// no cluster flags at all is a node alone (nil, as before).
func TestClusterFlagsNeedAName(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // "" for a node alone
	}{
		{nil, ""},
		{[]string{"--peers", "127.0.0.1:6222"}, "--cluster NAME"},
		{[]string{"--node", "n1"}, "--cluster NAME"},
		{[]string{"--replicas", "3"}, "--cluster NAME"},
	} {
		var f clusterFlags
		fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
		f.register(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		c, cc, err := f.join(context.Background(), t.TempDir(), slog.New(slog.DiscardHandler), io.Discard)
		if tc.want == "" {
			if c != nil || cc != nil || err != nil {
				t.Errorf("%v: %v %v %v, want a node alone", tc.args, c, cc, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error naming %s", tc.args, err, tc.want)
		}
	}
}

// Every cluster flag can come from the environment (PARLEY_*).
func TestClusterFlagsFromEnv(t *testing.T) {
	var f clusterFlags
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	f.register(fs)
	env := map[string]string{
		"PARLEY_CLUSTER": "demo", "PARLEY_NODE": "n2", "PARLEY_CLUSTER_LISTEN": "127.0.0.1:6222",
		"PARLEY_PEERS": "127.0.0.1:6221,127.0.0.1:6222", "PARLEY_NATS_LISTEN": "127.0.0.1:4223",
		"PARLEY_REPLICAS": "1", "PARLEY_PARTITIONS": "8",
	}
	if err := flagsFromEnv(fs, func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	if f.name != "demo" || f.node != "n2" || f.listen != "127.0.0.1:6222" || len(f.peers) != 2 || f.natsListen != "127.0.0.1:4223" || f.replicas != 1 || f.partitions != 8 {
		t.Fatalf("flags from the environment: %+v", f)
	}
}

// The three-machine example's settings are all flags of parley serve,
// with values it accepts: a renamed flag breaks this test, not a
// deployment.
func TestClusterDeployExampleSettingsAreFlags(t *testing.T) {
	b, err := os.ReadFile("../../deploy/cluster/parley.env")
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	var commented []string // settings shown commented out: names checked too
	for i, line := range strings.Split(string(b), "\n") {
		if k, _, ok := strings.Cut(strings.TrimPrefix(strings.TrimSpace(line), "#"), "="); ok && strings.HasPrefix(line, "#PARLEY_") {
			commented = append(commented, k)
			continue
		}
		if line = strings.TrimSpace(line); line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || !strings.HasPrefix(k, "PARLEY_") || strings.Contains(v, "#") {
			t.Fatalf("line %d %q: want PARLEY_NAME=value, comments on their own lines (systemd keeps a trailing # in the value)", i+1, line)
		}
		env[k] = v
	}
	fs := newServeCmd().Flags()
	for _, k := range commented {
		name := strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(k, "PARLEY_")), "_", "-")
		if fs.Lookup(name) == nil {
			t.Errorf("commented-out setting %s: no flag --%s of parley serve", k, name)
		}
	}
	if err := flagsFromEnv(fs, func(k string) (string, bool) { v, ok := env[k]; delete(env, k); return v, ok }); err != nil {
		t.Fatal(err)
	}
	if len(env) > 0 {
		t.Fatalf("settings that are no flag of parley serve: %v", env)
	}
}
