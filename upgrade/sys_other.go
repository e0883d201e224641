//go:build unix && !linux

package upgrade

import (
	"errors"
	"net"

	"golang.org/x/sys/unix"
)

// peerPID cannot be read here: the socket's mode (0600, in the data
// directory) is the only check.
func peerPID(*net.UnixConn) (int, error) { return 0, errors.ErrUnsupported }

func dupTo(from, to int) error { return unix.Dup2(from, to) }
