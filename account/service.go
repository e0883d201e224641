// Package account registers phone numbers the way WhatsApp does: a client
// asks for a 6-digit code by SMS, proves it owns the number by sending the
// code back with its device's Curve25519 public key, and from then on that
// key is the account's identity until the number is registered again on
// another device.
//
// The package owns the HTTP/JSON registration API (Service.Handler), the
// short-lived state behind it (pending codes and rate limits, in memory:
// losing them on restart only means asking for a new code) and the SMS
// gateways. Accounts themselves live in the store.
package account

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/nyaruka/phonenumbers"
	"github.com/parleyhq/parley/store"
)

// Accounts is the part of the store registration needs; a *store.Pebble
// satisfies it.
type Accounts interface {
	// Account returns the account for an E.164 phone, or store.ErrNotFound.
	Account(phone string) (store.Account, error)
	// PutAccount creates or replaces an account, durably.
	PutAccount(store.Account) error
}

// Defaults for the zero values of Config.
const (
	DefaultCodeTTL     = 10 * time.Minute
	DefaultMaxAttempts = 5
)

// Default rate limits. Together with MaxAttempts they bound a brute force
// on one number to 3 codes x 5 guesses per 10 minutes, a 1 in 66,000
// chance per 10 minutes against a 6-digit code. (Functions, not variables:
// the package keeps no mutable state.)

// DefaultPerNumber is 3 code requests per number per 10 minutes, at least
// 30s apart.
func DefaultPerNumber() RateLimit {
	return RateLimit{Max: 3, Window: 10 * time.Minute, MinGap: 30 * time.Second}
}

// DefaultPerAddr is 20 code requests per client address per 10 minutes.
func DefaultPerAddr() RateLimit { return RateLimit{Max: 20, Window: 10 * time.Minute} }

// KeySize is the length of a device key (a Curve25519 public key) and of
// the server key.
const KeySize = 32

// Config configures a Service. Zero values mean the documented defaults.
type Config struct {
	// Accounts stores the accounts. Required.
	Accounts Accounts
	// SMS delivers codes. Required.
	SMS Gateway
	// Log receives the service's log lines (keys "phone", "err", "addr").
	// Default slog.Default().
	Log *slog.Logger

	// OnRegistered, if set, is called after Verify has durably bound a
	// phone to a key it was not bound to before:
	//   - first registration: old is the zero Account (old.Generation == 0);
	//   - re-registration on a new device: old is the previous account,
	//     new the one with the new key and Generation+1. The server closes
	//     the old device's live connection ("registered on another device").
	// It is not called when a device re-verifies with the key the account
	// already has: nothing moved. It is called synchronously, in order for
	// any one phone, with that phone's registration lock held: it must be
	// quick and must not call Verify.
	OnRegistered func(phone string, old, new store.Account)

	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Rand is the source of codes. Default crypto/rand.Reader.
	Rand io.Reader

	// DefaultRegion is the region ("US") assumed for numbers sent without
	// a country code; "" requires "+<country code>" on every number.
	DefaultRegion string
	// CodeTTL is how long a code can be used. Default 10 minutes.
	CodeTTL time.Duration
	// MaxAttempts is how many wrong codes one code survives; after that it
	// is dead and a new one must be requested. Default 5.
	MaxAttempts int
	// PerNumber limits code requests per phone number. Default
	// DefaultPerNumber: 3 per 10 minutes, at least 30s apart.
	PerNumber RateLimit
	// PerAddr limits code requests per client IP (per /64 for IPv6).
	// Default DefaultPerAddr: 20 per 10 minutes.
	PerAddr RateLimit
	// RateLimitKeys is the most numbers, and the most addresses, the rate
	// limits remember; past it the least recently seen is forgotten.
	// Default DefaultMaxKeys.
	RateLimitKeys int
	// TrustProxy takes the client address from the last X-Forwarded-For
	// entry (the one the proxy in front of us appended) instead of the
	// connection's. Set it only behind a proxy that sets the header:
	// otherwise any client can pick its own address and dodge PerAddr.
	TrustProxy bool

	// ServerKey is the server's 32-byte static public key and NativeAddr
	// the host:port of its native protocol listener; both are returned to
	// clients so they can pin the key. Required.
	ServerKey  []byte
	NativeAddr string
	// NativeAddrs, if set, lists every native address of the server (a
	// cluster's nodes), for clients to move between; nil means only
	// NativeAddr.
	NativeAddrs func(context.Context) []string
}

// Error is a registration failure a client can act on. The HTTP layer
// answers Status with {"error":{"code":Code,"message":Message}} and, when
// RetryAfter > 0, a Retry-After header.
type Error struct {
	Status     int
	Code       string
	Message    string
	RetryAfter time.Duration
	Err        error // the cause, for logs; never shown to clients
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Code + ": " + e.Message + ": " + e.Err.Error()
	}
	return e.Code + ": " + e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// Error codes, the stable part of an error a client switches on.
const (
	CodeBadRequest       = "bad_request"            // 400: malformed request (JSON, fields, code format)
	CodeInvalidPhone     = "invalid_phone"          // 400
	CodeInvalidKey       = "invalid_key"            // 400: key not base64 or not 32 bytes
	CodeRateLimited      = "rate_limited"           // 429 + Retry-After
	CodeInvalidCode      = "invalid_code"           // 403: wrong code; the message says how many tries are left
	CodeTooManyAttempts  = "too_many_attempts"      // 403: the code is dead; request a new one
	CodeCodeExpired      = "code_expired"           // 410: the code outlived CodeTTL
	CodeNoCode           = "no_code"                // 404: no code pending for the number
	CodeSMSFailed        = "sms_failed"             // 502: the SMS provider refused or failed
	CodeInternal         = "internal"               // 500
	CodeNotFound         = "not_found"              // 404: no such endpoint
	CodeMethodNotAllowed = "method_not_allowed"     // 405
	CodeTooLarge         = "request_too_large"      // 413
	CodeUnsupportedType  = "unsupported_media_type" // 415: a Content-Type other than application/json
)

// Why these statuses:
//   - invalid_code and too_many_attempts are 403, not 401: 401 means "HTTP
//     authentication missing" and requires a WWW-Authenticate challenge; a
//     wrong SMS code is a refused proof, not a missing credential. Not 429
//     for too_many_attempts either: waiting does not help, only a new
//     code does (and that request has its own 429).
//   - code_expired is 410 (there was a code; it is gone) and no_code 404
//     (there is none). An expired code becomes no_code once Sweep or a new
//     request has dropped it; both mean "request a new code".

// pending is a code waiting to be verified. Only a keyed hash of the code is
// kept, compared in constant time.
type pending struct {
	sum      [sha256.Size]byte
	expires  time.Time
	failures int // wrong codes so far; dead at MaxAttempts
}

// Service runs phone-number registration. It is safe for concurrent use.
type Service struct {
	cfg     Config
	log     *slog.Logger
	codeKey []byte // HMAC key for code hashes

	mu      sync.Mutex // guards codes
	codes   map[string]*pending
	perNum  *Limiter
	perAddr *Limiter

	// regLocks serialize the read-modify-write of one phone's account
	// (striped: bounded memory, and registrations are rare enough).
	regLocks [64]sync.Mutex
	seed     maphash.Seed
}

// NewService checks cfg, fills in defaults and returns the service.
func NewService(cfg Config) (*Service, error) {
	if cfg.Accounts == nil {
		return nil, errors.New("account: Config.Accounts is required")
	}
	if cfg.SMS == nil {
		return nil, errors.New("account: Config.SMS is required")
	}
	if len(cfg.ServerKey) != KeySize {
		return nil, fmt.Errorf("account: Config.ServerKey must be %d bytes, got %d", KeySize, len(cfg.ServerKey))
	}
	if cfg.NativeAddr == "" {
		return nil, errors.New("account: Config.NativeAddr is required")
	}
	cfg.ServerKey = bytes.Clone(cfg.ServerKey)
	if cfg.DefaultRegion != "" {
		cfg.DefaultRegion = strings.ToUpper(cfg.DefaultRegion)
		if !phonenumbers.GetSupportedRegions()[cfg.DefaultRegion] {
			return nil, fmt.Errorf("account: unknown Config.DefaultRegion %q", cfg.DefaultRegion)
		}
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	switch {
	case cfg.CodeTTL < 0:
		return nil, errors.New("account: negative Config.CodeTTL")
	case cfg.CodeTTL == 0:
		cfg.CodeTTL = DefaultCodeTTL
	}
	switch {
	case cfg.MaxAttempts < 0:
		return nil, errors.New("account: negative Config.MaxAttempts")
	case cfg.MaxAttempts == 0:
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.PerNumber == (RateLimit{}) {
		cfg.PerNumber = DefaultPerNumber()
	}
	if cfg.PerAddr == (RateLimit{}) {
		cfg.PerAddr = DefaultPerAddr()
	}
	if err := cfg.PerNumber.check("account: Config.PerNumber"); err != nil {
		return nil, err
	}
	if err := cfg.PerAddr.check("account: Config.PerAddr"); err != nil {
		return nil, err
	}
	perNum, err := NewLimiter(cfg.PerNumber, cfg.RateLimitKeys)
	if err != nil {
		return nil, err
	}
	perAddr, err := NewLimiter(cfg.PerAddr, cfg.RateLimitKeys)
	if err != nil {
		return nil, err
	}
	key := make([]byte, 32)
	if _, err := io.ReadFull(cfg.Rand, key); err != nil {
		return nil, fmt.Errorf("account: reading Config.Rand: %w", err)
	}
	return &Service{
		cfg:     cfg,
		log:     cfg.Log,
		codeKey: key,
		codes:   make(map[string]*pending),
		perNum:  perNum,
		perAddr: perAddr,
		seed:    maphash.MakeSeed(),
	}, nil
}

// RequestCode sends a new code to rawPhone, replacing any pending one, and
// returns the normalised phone and how long the code is good for.
// clientAddr is the client's IP, for the per-address limit.
//
// A code the gateway failed to send is not kept and does not count against
// the number's limit (the user got nothing and should be able to retry);
// it does count against the address's.
func (s *Service) RequestCode(ctx context.Context, rawPhone, clientAddr string) (phone string, expiresIn time.Duration, err error) {
	now := s.cfg.Now()
	akey := addrKey(clientAddr)

	ok, wait := s.perAddr.Allow(akey, now)
	if !ok {
		s.log.InfoContext(ctx, "code request rate limited by address", "addr", akey, "retry_after", wait)
		return "", 0, rateLimited(wait, "too many code requests from your network")
	}

	phone, err = NormalizePhone(rawPhone, s.cfg.DefaultRegion)
	if err != nil {
		return "", 0, invalidPhone(err)
	}

	ok, wait = s.perNum.Allow(phone, now)
	if !ok {
		s.log.InfoContext(ctx, "code request rate limited by number", "phone", phone, "retry_after", wait)
		return "", 0, rateLimited(wait, "too many codes requested for this number")
	}

	code, err := randomCode(s.cfg.Rand)
	if err != nil {
		s.undoNumber(phone, now)
		s.log.ErrorContext(ctx, "generating code", "phone", phone, "err", err)
		return "", 0, internal(err)
	}
	// Send before installing: until the provider has accepted it, the
	// previous code (if any) stays the valid one.
	if err := s.cfg.SMS.Send(ctx, phone, code); err != nil {
		s.undoNumber(phone, now)
		s.log.WarnContext(ctx, "sending code failed", "phone", phone, "err", err)
		return "", 0, &Error{Status: http.StatusBadGateway, Code: CodeSMSFailed,
			Message: "could not send the SMS; try again in a minute", Err: err}
	}

	p := &pending{sum: s.sum(phone, code), expires: now.Add(s.cfg.CodeTTL)}
	s.mu.Lock()
	s.codes[phone] = p
	s.mu.Unlock()
	s.log.InfoContext(ctx, "code sent", "phone", phone, "addr", akey)
	return phone, s.cfg.CodeTTL, nil
}

func (s *Service) undoNumber(phone string, at time.Time) { s.perNum.Undo(phone, at) }

// Verify checks code for rawPhone and binds the phone to key, a 32-byte
// Curve25519 public key:
//   - no account yet: creates it with Generation 1;
//   - another key: moves the account to key, Generation+1, Created kept,
//     Updated now, and calls OnRegistered so the old device is dropped;
//   - the same key (a device repeating its registration): keeps Generation,
//     sets Updated to now, does not call OnRegistered.
//
// A code works once. Each wrong code uses up one of MaxAttempts tries;
// after the last the code is dead even for the right digits.
func (s *Service) Verify(ctx context.Context, rawPhone, code string, key []byte) (store.Account, error) {
	if err := ctx.Err(); err != nil {
		return store.Account{}, err
	}
	phone, err := NormalizePhone(rawPhone, s.cfg.DefaultRegion)
	if err != nil {
		return store.Account{}, invalidPhone(err)
	}
	if err := checkKey(key); err != nil {
		return store.Account{}, err
	}
	code, ok := cleanCode(code)
	if !ok {
		return store.Account{}, &Error{Status: http.StatusBadRequest, Code: CodeBadRequest,
			Message: "code must be the 6 digits from the SMS"}
	}
	if err := s.checkCode(ctx, phone, code); err != nil {
		return store.Account{}, err
	}

	lock := &s.regLocks[maphash.String(s.seed, phone)%uint64(len(s.regLocks))]
	lock.Lock()
	defer lock.Unlock()

	now := s.cfg.Now()
	old, err := s.cfg.Accounts.Account(phone)
	switch {
	case errors.Is(err, store.ErrNotFound):
		old = store.Account{}
	case err != nil:
		s.log.ErrorContext(ctx, "reading account", "phone", phone, "err", err)
		return store.Account{}, internal(err)
	}
	acct := old
	acct.Phone = phone
	acct.Updated = now
	moved := !bytes.Equal(old.Key, key) || old.Generation == 0
	if moved {
		acct.Key = bytes.Clone(key)
		acct.Generation = old.Generation + 1
		if old.Generation == 0 {
			acct.Created = now
		}
	}
	if err := s.cfg.Accounts.PutAccount(acct); err != nil {
		// The code is spent; the client asks for a new one. Rare enough
		// not to warrant putting it back.
		s.log.ErrorContext(ctx, "saving account", "phone", phone, "err", err)
		return store.Account{}, internal(err)
	}
	s.log.InfoContext(ctx, "phone registered", "phone", phone, "generation", acct.Generation, "new_device", moved)
	if moved && s.cfg.OnRegistered != nil {
		s.cfg.OnRegistered(phone, old, acct)
	}
	return acct, nil
}

// checkCode consumes phone's pending code if code matches it, or counts a
// failure.
func (s *Service) checkCode(ctx context.Context, phone, code string) error {
	now := s.cfg.Now()
	sum := s.sum(phone, code)

	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.codes[phone]
	switch {
	case p == nil:
		return &Error{Status: http.StatusNotFound, Code: CodeNoCode,
			Message: "no code is pending for this number; request a code first"}
	case !now.Before(p.expires):
		delete(s.codes, phone)
		return &Error{Status: http.StatusGone, Code: CodeCodeExpired,
			Message: "the code has expired; request a new code"}
	case p.failures >= s.cfg.MaxAttempts:
		return &Error{Status: http.StatusForbidden, Code: CodeTooManyAttempts,
			Message: "too many wrong codes; this code no longer works: request a new code"}
	case !hmac.Equal(p.sum[:], sum[:]):
		p.failures++
		left := s.cfg.MaxAttempts - p.failures
		s.log.InfoContext(ctx, "wrong code", "phone", phone, "tries_left", left)
		msg := fmt.Sprintf("wrong code; %d tries left", left)
		switch left {
		case 0:
			msg = "wrong code; no tries left: request a new code"
		case 1:
			msg = "wrong code; 1 try left"
		}
		return &Error{Status: http.StatusForbidden, Code: CodeInvalidCode, Message: msg}
	}
	delete(s.codes, phone) // single use
	return nil
}

// Sweep drops expired codes and rate-limit entries that no longer matter,
// bounding memory; the server calls it every minute or so. Expired entries
// are also dropped when touched, so Sweep is only about the untouched ones.
func (s *Service) Sweep(now time.Time) {
	s.mu.Lock()
	for phone, p := range s.codes {
		if !now.Before(p.expires) {
			delete(s.codes, phone)
		}
	}
	s.mu.Unlock()
	s.perNum.Sweep(now)
	s.perAddr.Sweep(now)
}

// sum is the stored form of a code: HMAC-SHA-256 under a per-process key,
// bound to the phone. A plain hash of 6 digits would be reversed by trying
// all million; the key keeps a memory dump or a log of the map useless.
func (s *Service) sum(phone, code string) [sha256.Size]byte {
	m := hmac.New(sha256.New, s.codeKey)
	m.Write([]byte(phone))
	m.Write([]byte{0})
	m.Write([]byte(code))
	var out [sha256.Size]byte
	m.Sum(out[:0])
	return out
}

// randomCode returns 6 uniform random digits. Values of 4 random bytes past
// the last whole multiple of 10^6 are rejected, so there is no modulo bias.
func randomCode(r io.Reader) (string, error) {
	const n = 1_000_000
	const limit = (1 << 32) / n * n
	var b [4]byte
	for range 100 { // each try fails with p = 0.0002; 100 failures means a broken source
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return "", fmt.Errorf("reading random source: %w", err)
		}
		if v := binary.BigEndian.Uint32(b[:]); v < limit {
			return fmt.Sprintf("%06d", v%n), nil
		}
	}
	return "", errors.New("random source keeps returning out-of-range values")
}

// cleanCode accepts the code as users copy it ("123456", "123-456",
// "123 456") and returns the 6 digits.
func cleanCode(code string) (string, bool) {
	code = strings.NewReplacer(" ", "", "-", "").Replace(code)
	if len(code) != 6 {
		return "", false
	}
	for i := range len(code) {
		if code[i] < '0' || code[i] > '9' {
			return "", false
		}
	}
	return code, true
}

func checkKey(key []byte) error {
	if len(key) != KeySize {
		return &Error{Status: http.StatusBadRequest, Code: CodeInvalidKey,
			Message: fmt.Sprintf("key must be a %d-byte Curve25519 public key, got %d bytes", KeySize, len(key))}
	}
	var zero [KeySize]byte
	if bytes.Equal(key, zero[:]) {
		return &Error{Status: http.StatusBadRequest, Code: CodeInvalidKey,
			Message: "key is all zeros; send the device's Curve25519 public key"}
	}
	return nil
}

// invalidPhone answers NormalizePhone's error, whose message already says
// what to do.
func invalidPhone(err error) *Error {
	return &Error{Status: http.StatusBadRequest, Code: CodeInvalidPhone, Message: err.Error()}
}

func rateLimited(wait time.Duration, what string) *Error {
	// Whole seconds (Retry-After has no finer unit), rounded up so a client
	// that waits exactly that long is not refused again.
	wait = max(time.Second, (wait + time.Second - 1).Truncate(time.Second))
	return &Error{Status: http.StatusTooManyRequests, Code: CodeRateLimited, RetryAfter: wait,
		Message: fmt.Sprintf("%s; wait %s and try again", what, wait)}
}

func internal(err error) *Error {
	return &Error{Status: http.StatusInternalServerError, Code: CodeInternal,
		Message: "internal error; try again later", Err: err}
}
