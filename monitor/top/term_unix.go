//go:build darwin || dragonfly || freebsd || linux || netbsd || openbsd

package top

import "golang.org/x/sys/unix"

// The terminal handling golang.org/x/term would give, done with
// golang.org/x/sys (already a dependency) rather than adding a module.

func isTerminal(fd int) bool {
	_, err := unix.IoctlGetTermios(fd, ioctlGetTermios)
	return err == nil
}

// rawInput makes the terminal deliver each key at once, unechoed, with
// Ctrl-C as a key rather than a signal, so top can restore the screen
// itself. Output processing is left on, so "\n" still starts a new line.
func rawInput(fd int) (restore func(), err error) {
	old, err := unix.IoctlGetTermios(fd, ioctlGetTermios)
	if err != nil {
		return nil, err
	}
	t := *old
	t.Lflag &^= unix.ICANON | unix.ECHO | unix.ISIG | unix.IEXTEN
	t.Iflag &^= unix.IXON | unix.ICRNL
	t.Cc[unix.VMIN] = 1
	t.Cc[unix.VTIME] = 0
	if err := unix.IoctlSetTermios(fd, ioctlSetTermios, &t); err != nil {
		return nil, err
	}
	return func() { unix.IoctlSetTermios(fd, ioctlSetTermios, old) }, nil
}

func termSize(fd int) (width, height int, ok bool) {
	ws, err := unix.IoctlGetWinsize(fd, unix.TIOCGWINSZ)
	if err != nil || ws.Col == 0 || ws.Row == 0 {
		return 0, 0, false
	}
	return int(ws.Col), int(ws.Row), true
}

// rawKeys says whether keys arrive one at a time.
const rawKeys = true
