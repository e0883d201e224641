// Package buildinfo says which build of Parley is running: the version
// stamped at link time, or what the Go toolchain recorded in the binary.
//
// Release builds stamp the version:
//
//	go build -ldflags "-X github.com/parleyhq/parley/buildinfo.version=v1.4.0" ./cmd/parley
//
// Without a stamp the version is the module version Go recorded (a tag or
// a pseudo-version under `go install`), else the VCS revision of a build
// from a checkout ("devel+1a2b3c4d5e6f", with "-dirty" for uncommitted
// changes), else "devel".
package buildinfo

import (
	"runtime"
	"runtime/debug"
)

// version is set with -ldflags -X (see the package comment); it is a
// variable only because the linker can set nothing else.
var version string

// Info is what a running binary says about itself.
type Info struct {
	// Version is the build's version (see the package comment).
	Version string `json:"version"`
	// Go is the Go toolchain that built it (runtime.Version).
	Go string `json:"go"`
	// Revision is the VCS commit it was built from, when Go recorded one.
	Revision string `json:"revision,omitempty"`
}

// Get returns the running binary's build information.
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	return resolve(version, bi)
}

// resolve picks the version from the stamp, then the build information.
func resolve(stamp string, bi *debug.BuildInfo) Info {
	info := Info{Version: stamp, Go: runtime.Version()}
	if bi == nil {
		if info.Version == "" {
			info.Version = "devel"
		}
		return info
	}
	if bi.GoVersion != "" {
		info.Go = bi.GoVersion
	}
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Revision = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	switch {
	case info.Version != "":
	case bi.Main.Version != "" && bi.Main.Version != "(devel)":
		info.Version = bi.Main.Version
	case info.Revision != "":
		info.Version = "devel+" + info.Revision[:min(12, len(info.Revision))]
		if dirty {
			info.Version += "-dirty"
		}
	default:
		info.Version = "devel"
	}
	return info
}
