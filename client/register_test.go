package client_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/parleyhq/parley/client"
)

// fakeAPI answers the registration endpoints with the statuses, codes and
// messages the server sends (account/service.go), so the SDK's side of the
// HTTP API, answers no server can be made to give on demand included (a
// 500, a proxy's page), is tested without a server.
// TestRegistrationAgainstServer checks the same calls against a real node.
func fakeAPI(t *testing.T, serverKey []byte) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/register/request", func(w http.ResponseWriter, r *http.Request) {
		var in struct{ Phone string }
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
			http.Error(w, "bad json", http.StatusBadRequest)
			return
		}
		switch in.Phone {
		case "+14155550199":
			w.Header().Set("Retry-After", "42")
			w.WriteHeader(http.StatusTooManyRequests)
			w.Write([]byte(`{"error":{"code":"rate_limited","message":"too many codes for this number"}}`))
		case "+14155550198":
			w.Header().Set("Retry-After", "322")
			w.WriteHeader(http.StatusTooManyRequests)
			w.Write([]byte(`{"error":{"code":"rate_limited","message":"too many codes for this number; wait 5m22s and try again"}}`))
		case "+14155550197":
			w.WriteHeader(http.StatusInternalServerError)
			w.Write([]byte(`{"error":{"code":"internal","message":"internal error; try again later"}}`))
		case "bogus":
			w.WriteHeader(http.StatusBadRequest)
			w.Write([]byte(`{"error":{"code":"invalid_phone","message":"phone number contains 'b': write only digits, with + and the country code in front (spaces, dashes, dots and parentheses may separate them), e.g. +14155550100"}}`))
		default:
			json.NewEncoder(w).Encode(map[string]any{"phone": in.Phone, "expires_in": 600})
		}
	})
	mux.HandleFunc("POST /v1/register/verify", func(w http.ResponseWriter, r *http.Request) {
		var in struct{ Phone, Code, Key string }
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
			http.Error(w, "bad json", http.StatusBadRequest)
			return
		}
		if in.Code != "123456" {
			w.WriteHeader(http.StatusForbidden)
			w.Write([]byte(`{"error":{"code":"invalid_code","message":"wrong code; no tries left: request a new code"}}`))
			return
		}
		if k, err := base64.StdEncoding.DecodeString(in.Key); err != nil || len(k) != 32 {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		json.NewEncoder(w).Encode(map[string]any{
			"phone": in.Phone, "generation": 2,
			"server_key": base64.StdEncoding.EncodeToString(serverKey), "native_addr": "127.0.0.1:5222",
		})
	})
	mux.HandleFunc("GET /v1/server", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{"server_key": base64.StdEncoding.EncodeToString(serverKey), "native_addr": "127.0.0.1:5222"})
	})
	mux.HandleFunc("/broken/", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadGateway)
		w.Write([]byte("<html>upstream down</html>"))
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func TestRegistrationAPI(t *testing.T) {
	ctx := context.Background()
	key := bytes.Repeat([]byte{7}, 32)
	srv := fakeAPI(t, key)

	rr, err := client.RequestCode(ctx, srv.Client(), srv.URL+"/", "+14155550101")
	if err != nil {
		t.Fatal(err)
	}
	if rr.Phone != "+14155550101" || rr.ExpiresIn != 10*time.Minute {
		t.Fatalf("RequestCode = %+v", rr)
	}
	reg, err := client.Verify(ctx, nil, srv.URL, "+14155550101", "123456", bytes.Repeat([]byte{1}, 32))
	if err != nil {
		t.Fatal(err)
	}
	if reg.Phone != "+14155550101" || reg.Generation != 2 || !bytes.Equal(reg.ServerKey, key) || reg.NativeAddr != "127.0.0.1:5222" {
		t.Fatalf("Verify = %+v", reg)
	}
	info, err := client.ServerInfo(ctx, nil, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(info.Key, key) || info.NativeAddr != "127.0.0.1:5222" {
		t.Fatalf("ServerInfo = %+v", info)
	}
}

func TestAPIErrors(t *testing.T) {
	ctx := context.Background()
	srv := fakeAPI(t, bytes.Repeat([]byte{7}, 32))
	tests := []struct {
		name string
		call func() error
		want client.APIError
		text string // a part of Error() that tells the user what to do
		once string // a part of Error() that must not repeat
	}{
		{
			name: "rate limited",
			call: func() error { _, err := client.RequestCode(ctx, nil, srv.URL, "+14155550199"); return err },
			want: client.APIError{Status: 429, Code: "rate_limited", Message: "too many codes for this number", RetryAfter: 42 * time.Second},
			text: "try again in 42s",
		},
		{
			name: "rate limited, the wait in the message",
			call: func() error { _, err := client.RequestCode(ctx, nil, srv.URL, "+14155550198"); return err },
			want: client.APIError{Status: 429, Code: "rate_limited", Message: "too many codes for this number; wait 5m22s and try again", RetryAfter: 322 * time.Second},
			text: "wait 5m22s and try again",
			once: "5m22s",
		},
		{
			name: "internal error",
			call: func() error { _, err := client.RequestCode(ctx, nil, srv.URL, "+14155550197"); return err },
			want: client.APIError{Status: 500, Code: "internal", Message: "internal error; try again later"},
			text: "try again later",
			once: "try again",
		},
		{
			name: "bad request",
			call: func() error { _, err := client.RequestCode(ctx, nil, srv.URL, "bogus"); return err },
			want: client.APIError{Status: 400, Code: "invalid_phone", Message: "phone number contains 'b': write only digits, with + and the country code in front (spaces, dashes, dots and parentheses may separate them), e.g. +14155550100"},
			text: "country code in front",
		},
		{
			name: "wrong code",
			call: func() error {
				_, err := client.Verify(ctx, nil, srv.URL, "+14155550101", "000000", bytes.Repeat([]byte{1}, 32))
				return err
			},
			want: client.APIError{Status: 403, Code: "invalid_code", Message: "wrong code; no tries left: request a new code"},
			text: "request a new code",
		},
		{
			name: "not a Parley server",
			call: func() error { _, err := client.ServerInfo(ctx, nil, srv.URL+"/broken"); return err },
			want: client.APIError{Status: 502, Message: `"<html>upstream down</html>"`},
			text: "try again later",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			var ae *client.APIError
			if !errors.As(err, &ae) {
				t.Fatalf("err = %v, want *APIError", err)
			}
			if *ae != tt.want {
				t.Errorf("APIError = %+v, want %+v", *ae, tt.want)
			}
			if !strings.Contains(err.Error(), tt.text) {
				t.Errorf("error %q does not say %q", err, tt.text)
			}
			if tt.once != "" && strings.Count(err.Error(), tt.once) != 1 {
				t.Errorf("error %q says %q more than once", err, tt.once)
			}
		})
	}
}

func TestAPIUnreachable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	_, err := client.RequestCode(context.Background(), nil, url, "+14155550101")
	if err == nil || !strings.Contains(err.Error(), "is the server running") {
		t.Fatalf("err = %v, want a hint that the server is not running", err)
	}
}
