package node

import (
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/parleyhq/parley/buildinfo"
)

// Version is what GET /admin/version answers: the running build and the
// process serving, so that an operator (or a test) can see an upgrade take
// effect.
type Version struct {
	buildinfo.Info
	PID     int       `json:"pid"`
	Started time.Time `json:"started"` // when this process's node started
}

// Version returns the running build and process.
func (n *Node) Version() Version {
	return Version{Info: buildinfo.Get(), PID: os.Getpid(), Started: n.started}
}

func (n *Node) handleVersion(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, n.Version())
}

// registerBuildInfo exports parley_build_info{version,go} = 1, the usual
// Prometheus shape for what a process runs (a dashboard joins on it; an
// upgrade shows as the series changing).
func registerBuildInfo(reg prometheus.Registerer) error {
	bi := buildinfo.Get()
	return reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "parley_build_info",
		Help:        "The running build: always 1, labelled with the version and the Go toolchain.",
		ConstLabels: prometheus.Labels{"version": bi.Version, "go": bi.Go},
	}, func() float64 { return 1 }))
}
