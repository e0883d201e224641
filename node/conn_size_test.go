package node

import (
	"testing"
	"unsafe"
)

// Every connection, idle or not, is one conn: it must stay within its
// budget, a malloc size class (the next one up is 16 bytes more on every
// connection). See the field order in conn.
func TestConnFitsItsSizeClass(t *testing.T) {
	if size := unsafe.Sizeof(conn{}); size > 224 {
		t.Errorf("conn is %d bytes, over its budget of 224", size)
	}
}
