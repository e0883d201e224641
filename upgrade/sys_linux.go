package upgrade

import (
	"net"

	"golang.org/x/sys/unix"
)

// peerPID is the process at the other end of uc (SO_PEERCRED).
func peerPID(uc *net.UnixConn) (int, error) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, cerr
	}
	return int(cred.Pid), nil
}

func dupTo(from, to int) error { return unix.Dup3(from, to, 0) }
