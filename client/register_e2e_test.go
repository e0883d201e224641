package client_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/parleyhq/parley/account"
	"github.com/parleyhq/parley/client"
	"github.com/parleyhq/parley/internal/nodetest"
	"github.com/parleyhq/parley/node"
)

// TestRegistrationAgainstServer: the SDK's registration calls against a
// real node (loopback HTTP, a Pebble directory), refusals included. The
// statuses and codes are the ones fakeAPI answers with, so TestAPIErrors
// tests the SDK against what the server really says.
func TestRegistrationAgainstServer(t *testing.T) {
	tn := nodetest.Start(t, func(c *node.Config) {
		// One code per number an hour, so that a second request is refused.
		c.PerNumber = account.RateLimit{Max: 1, Window: time.Hour}
	})
	ctx, url := testCtx(t), tn.HTTPURL()
	key := newKey(t)

	// refused checks that err is the server's refusal with status and code,
	// and that its text says what to do.
	refused := func(t *testing.T, err error, status int, code, text string) *client.APIError {
		t.Helper()
		var ae *client.APIError
		if !errors.As(err, &ae) {
			t.Fatalf("err = %v, want *APIError %d %s", err, status, code)
		}
		if ae.Status != status || ae.Code != code {
			t.Fatalf("APIError %d %q (%q), want %d %q", ae.Status, ae.Code, ae.Message, status, code)
		}
		if !strings.Contains(err.Error(), text) {
			t.Errorf("error %q does not say %q", err, text)
		}
		return ae
	}

	_, err := client.RequestCode(ctx, nil, url, "bogus")
	refused(t, err, 400, "invalid_phone", "country code in front")
	_, err = client.Verify(ctx, nil, url, alice, "123456", key.Public)
	refused(t, err, 404, "no_code", "request a code first")

	rr, err := client.RequestCode(ctx, nil, url, alice)
	if err != nil {
		t.Fatal(err)
	}
	if rr.Phone != alice || rr.ExpiresIn <= 0 {
		t.Fatalf("RequestCode = %+v", rr)
	}
	_, err = client.RequestCode(ctx, nil, url, alice)
	if ae := refused(t, err, 429, "rate_limited", "try again"); ae.RetryAfter <= 0 {
		t.Errorf("rate limited without a Retry-After: %+v", ae)
	}

	code := tn.Codes.Code(t, alice)
	wrong := "000000"
	if code == wrong {
		wrong = "111111"
	}
	_, err = client.Verify(ctx, nil, url, alice, wrong, key.Public)
	refused(t, err, 403, "invalid_code", "tries left")

	reg, err := client.Verify(ctx, nil, url, alice, code, key.Public)
	if err != nil {
		t.Fatal(err)
	}
	if reg.Phone != alice || reg.Generation != 1 || !bytes.Equal(reg.ServerKey, tn.PublicKey()) || reg.NativeAddr != tn.NativeAddr() {
		t.Fatalf("Verify = %+v; the node's key is %x at %s", reg, tn.PublicKey(), tn.NativeAddr())
	}
	info, err := client.ServerInfo(ctx, nil, url)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(info.Key, reg.ServerKey) || info.NativeAddr != reg.NativeAddr {
		t.Fatalf("ServerInfo = %+v, Verify said %+v", info, reg)
	}

	// The registered key is the account's credential now.
	c, err := client.Dial(ctx, client.Config{Addr: reg.NativeAddr, ServerKey: reg.ServerKey, Phone: reg.Phone, Key: key})
	if err != nil {
		t.Fatalf("log in with the registered key: %v", err)
	}
	c.Close()
}
