package node

import "net"

// adoptingListener hands nbio connections that adopt has already
// converted (see listen_unix.go).
type adoptingListener struct{ net.Listener }

func (l adoptingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return adopt(c)
}
