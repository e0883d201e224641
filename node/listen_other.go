//go:build !unix

package node

import (
	"net"

	"github.com/lesismal/nbio"
)

// adopt leaves an accepted connection to nbio's own conversion (where nbio
// runs on the standard library); OnOpen admits it and gives it its conn.
func (n *Node) adopt(c net.Conn) (net.Conn, error) { return c, nil }

// nbioAddrs has nothing to trim where nbio keeps no Conn of its own.
type nbioAddrs struct{}

func findNbioAddrs() nbioAddrs { return nbioAddrs{} }

func (nbioAddrs) trim(*nbio.Conn, net.Addr, net.Addr) {}
