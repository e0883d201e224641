package node_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parleyhq/parley/monitor"
	"github.com/parleyhq/parley/monitor/top"
	"github.com/parleyhq/parley/node"
	"github.com/parleyhq/parley/wire"
)

// webhookSink records the alert webhooks the node posts.
type webhookSink struct {
	mu     sync.Mutex
	alerts []monitor.Alert
}

func (s *webhookSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var a monitor.Alert
	if err := json.NewDecoder(r.Body).Decode(&a); err == nil {
		s.mu.Lock()
		s.alerts = append(s.alerts, a)
		s.mu.Unlock()
	}
}

func (s *webhookSink) has(name string, state monitor.AlertState, subject string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range s.alerts {
		if a.Name == name && a.State == state && a.Subject == subject {
			return true
		}
	}
	return false
}

// eventually polls cond (bounded) until it holds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func getText(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestSlowReceiverRaisesMailboxAlert is issue 4's acceptance story: flooding
// one receiver that does not keep up makes its mailbox alert fire — in
// /admin/alerts, /metrics, the webhook and parley top — and it clears once
// the receiver catches up.
func TestSlowReceiverRaisesMailboxAlert(t *testing.T) {
	t.Parallel()
	sink := &webhookSink{}
	hook := httptest.NewServer(sink)
	defer hook.Close()
	gw := &codeGateway{}
	n, err := node.Start(context.Background(), node.Config{
		DataDir: t.TempDir(), Listen: "127.0.0.1:0", HTTP: "127.0.0.1:0", Admin: "127.0.0.1:0",
		SMS: gw, Limits: node.Limits{Window: 8}, Log: testLogger(t),
		Alerts:       monitor.Thresholds{Mailbox: 50},
		AlertWebhook: hook.URL,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	aliceKey, _ := register(t, n.HTTPURL(), alicePhone, gw.code)
	bobKey, _ := register(t, n.HTTPURL(), bobPhone, gw.code)
	alice, err := dialLogin(n.NativeAddr(), n.PublicKey(), alicePhone, aliceKey)
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	bob, err := dialLogin(n.NativeAddr(), n.PublicKey(), bobPhone, bobKey)
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Close()

	// Alice floods Bob, who reads nothing: past his window of 8 the
	// messages wait for him.
	const flood = 100
	for id := uint64(1); id <= flood; id++ {
		if err := alice.send(id, bobPhone, []byte("flood")); err != nil {
			t.Fatal(err)
		}
	}
	for id := uint64(1); id <= flood; id++ {
		awaitSendAck(t, alice, id)
	}

	alerts := func() (firing, recent []monitor.Alert) {
		var v struct{ Firing, Recent []monitor.Alert }
		if err := json.Unmarshal([]byte(getText(t, n.AdminURL()+"/admin/alerts")), &v); err != nil {
			t.Fatal(err)
		}
		return v.Firing, v.Recent
	}
	isFiring := func() bool {
		firing, _ := alerts()
		for _, a := range firing {
			if a.Name == "mailbox_high" && a.Subject == bobPhone {
				return true
			}
		}
		return false
	}
	eventually(t, "mailbox_high to fire for bob", isFiring)
	if m := getText(t, n.AdminURL()+"/metrics"); !strings.Contains(m, `parley_alerts_firing{alert="mailbox_high"} 1`) {
		t.Errorf("/metrics does not show the firing alert:\n%s", grepLines(m, "parley_alerts_firing"))
	}
	eventually(t, "the firing webhook", func() bool { return sink.has("mailbox_high", monitor.Firing, bobPhone) })
	tc, err := top.NewClient(n.AdminURL(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := tc.Fetch(context.Background(), monitor.SortMailbox, 5)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Sessions) == 0 || snap.Sessions[0].User != bobPhone || snap.Sessions[0].Mailbox < 50 {
		t.Fatalf("top's first session by mailbox = %+v, want bob with >= 50", snap.Sessions)
	}

	// Bob catches up: he reads and acks everything.
	for got := 0; got < flood; {
		f, err := bob.readFrame(10 * time.Second)
		if err != nil {
			t.Fatalf("bob after %d deliveries: %v", got, err)
		}
		if d, ok := f.Kind.(*wire.Frame_Deliver); ok {
			got++
			if err := bob.ack(d.Deliver.Seq); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Alice, a well-behaved client too, takes her delivered receipts.
	for ids := 0; ids < flood; {
		f, err := alice.readFrame(10 * time.Second)
		if err != nil {
			t.Fatalf("alice after %d receipts: %v", ids, err)
		}
		if d, ok := f.Kind.(*wire.Frame_Deliver); ok {
			ids += len(d.Deliver.GetItem().GetReceipt().GetIds())
			if err := alice.ack(d.Deliver.Seq); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Other alerts may come and go meanwhile (loop_lag_high, on a machine
	// busy with other tests): only bob's mailbox_high is asked after.
	eventually(t, "mailbox_high to clear", func() bool { return !isFiring() })
	resolved := false
	_, recent := alerts()
	for _, a := range recent {
		resolved = resolved || (a.Name == "mailbox_high" && a.Subject == bobPhone && a.State == monitor.Resolved)
	}
	if !resolved {
		t.Errorf("recent alerts = %+v, want bob's resolved mailbox_high among them", recent)
	}
	eventually(t, "the resolving webhook", func() bool { return sink.has("mailbox_high", monitor.Resolved, bobPhone) })
	if m := getText(t, n.AdminURL()+"/metrics"); !strings.Contains(m, `parley_alerts_firing{alert="mailbox_high"} 0`) {
		t.Errorf("/metrics still shows the alert:\n%s", grepLines(m, "parley_alerts_firing"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
