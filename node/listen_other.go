//go:build !unix

package node

import "net"

func wrapListener(ln net.Listener) net.Listener { return ln }
