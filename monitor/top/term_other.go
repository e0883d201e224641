//go:build !(darwin || dragonfly || freebsd || linux || netbsd || openbsd)

package top

import "errors"

// Elsewhere top does without raw keys: keys arrive when Enter is pressed.

func isTerminal(int) bool { return false }

func rawInput(int) (func(), error) { return nil, errors.New("raw terminal input not supported here") }

func termSize(int) (int, int, bool) { return 0, 0, false }

const rawKeys = false
