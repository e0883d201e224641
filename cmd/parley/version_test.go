package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/parleyhq/parley/buildinfo"
)

func TestVersion(t *testing.T) {
	want := buildinfo.Get()
	if out := parley(t, "", "version").must(t).stdout; out != "parley "+want.Version+" ("+want.Go+")\n" {
		t.Errorf("parley version printed %q", out)
	}
	var got buildinfo.Info
	out := parley(t, "", "version", "--json").must(t).stdout
	if err := json.Unmarshal([]byte(out), &got); err != nil || got != want {
		t.Errorf("parley version --json printed %q (%v), want %+v", strings.TrimSpace(out), err, want)
	}
}
