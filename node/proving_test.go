package node

import (
	"net"
	"testing"
	"time"

	"github.com/parleyhq/parley/noise"
	"github.com/parleyhq/parley/wire"
)

// A login answered and then "proven" with a message that does not decrypt
// is refused, and forgotten: its entry among the logins waiting for their
// proof went with it. It stayed, holding the connection, for ever.
func TestAProofThatDoesNotDecryptLeavesNothing(t *testing.T) {
	const phone = "+15550006101"
	n, keys := startInternalNode(t, Config{}, phone)
	kp := keys[phone]
	login, err := (&wire.Login{Phone: phone, Version: 1}).MarshalVT()
	if err != nil {
		t.Fatal(err)
	}
	hs, first, err := noise.NewClient(kp, n.key.Public, login)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := net.Dial("tcp", n.NativeAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second)) // a bound
	if _, err := nc.Write(append(wire.AppendHeader(nil, len(first)), first...)); err != nil {
		t.Fatal(err)
	}
	reply, err := wire.ReadMessage(nc, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := hs.Finish(reply); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the login waiting for its proof", func() bool { return provingCount(n) == 1 })

	junk := make([]byte, 32) // sealed under no key
	if _, err := nc.Write(append(wire.AppendHeader(nil, len(junk)), junk...)); err != nil {
		t.Fatal(err)
	}
	if _, err := wire.ReadMessage(nc, nil); err == nil {
		t.Fatal("the server answered a proof that does not decrypt")
	}
	waitFor(t, "the refused login forgotten", func() bool { return provingCount(n) == 0 })
}

func provingCount(n *Node) int {
	k := 0
	n.proving.Range(func(any, any) bool { k++; return true })
	return k
}
