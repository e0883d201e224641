//go:build race

package cluster_test

// raceEnabled: the test binary was built with -race, so building the
// server binary with it too reuses the packages already compiled.
const raceEnabled = true
