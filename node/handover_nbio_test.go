//go:build unix

package node

import "testing"

// A live upgrade reads nbio's write queue through its fields (see
// nbioWriteQueue): an nbio without them fails here, not at an upgrade.
func TestNbioWriteQueueFound(t *testing.T) {
	if !findNbioWriteQueue().ok {
		t.Fatal("nbio.Conn's writeList (or toWrite's buf, offset, fd) is gone or changed: update nbioWriteQueue")
	}
}
