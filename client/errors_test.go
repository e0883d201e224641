package client

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/parleyhq/parley/wire"
)

// Retryable is true for the server's refusals that may pass later, however
// the error was wrapped, and for nothing else.
func TestRetryable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&ServerError{Code: wire.Error_UNAVAILABLE}, true},
		{fmt.Errorf("send to +1: %w", &ServerError{Code: wire.Error_UNAVAILABLE}), true},
		{&ServerError{Code: wire.Error_SHUTTING_DOWN}, true},
		{&ServerError{Code: wire.Error_INTERNAL}, true},
		{&ServerError{Code: wire.Error_QUEUE_FULL}, true},
		{&ServerError{Code: wire.Error_UNKNOWN_RECIPIENT}, false},
		{&ServerError{Code: wire.Error_TOO_LARGE}, false},
		{&ServerError{Code: wire.Error_BAD_REQUEST}, false},
		{&CloseError{Code: wire.Error_UNAVAILABLE}, false},
		{context.DeadlineExceeded, false},
		{ErrClosed, false},
		{errors.New("unavailable"), false},
		{nil, false},
	} {
		if got := Retryable(tc.err); got != tc.want {
			t.Errorf("Retryable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
