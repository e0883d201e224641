//go:build !unix

package node

import (
	"errors"

	"github.com/lesismal/nbio"
)

// Without Unix descriptors a node hands over nothing but what a restart
// would: connections cannot move.
type nbioWriteQueue struct{ ok bool }

func findNbioWriteQueue() nbioWriteQueue { return nbioWriteQueue{} }

func (nbioWriteQueue) pending(*nbio.Conn) ([]byte, error) { return nil, errors.ErrUnsupported }

func connFromFD(int, nbioConnType) (*nbio.Conn, error) { return nil, errors.ErrUnsupported }

type nbioConnType struct{ ok bool }

func findNbioConnType() nbioConnType { return nbioConnType{} }

type pollerGate struct {
	nc      *nbio.Conn
	peer    int
	parked  chan struct{}
	release chan struct{}
}

func (*pollerGate) onData() {}

func (*Node) newGates(int) ([]*pollerGate, []*pollerGate, error) {
	return nil, nil, errors.ErrUnsupported
}
