package media

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"strings"
	"time"
)

// Errors of VerifyUploadToken. Their text is what a client is told.
var (
	ErrTokenInvalid = errors.New("upload token is not valid: ask for a new one")
	ErrTokenExpired = errors.New("upload token expired: ask for a new one")
)

// An upload token is
//
//	base64url(payload) "." base64url(HMAC-SHA256(Secret, purpose || payload))
//	payload = version(1) | expiry(8, Unix seconds, big endian) | account
//
// The purpose label is signed but not sent: a token minted with the same
// Secret for anything else (a download token, another package's token)
// never verifies as an upload token.
const (
	tokenVersion   = 1
	purposeUpload  = "parley media upload token v1\x00"
	maxAccountLen  = 255
	maxPayloadLen  = 1 + 8 + maxAccountLen
	tokenMACLen    = sha256.Size
	maxTokenLength = (maxPayloadLen*4+2)/3 + 1 + (tokenMACLen*4+2)/3
)

var tokenEncoding = base64.RawURLEncoding.Strict()

// IssueUploadToken returns a token that lets account upload media until
// expires (Config.TokenTTL from now, to the second). The token is bound to
// the account and signed; it can be used more than once until it expires,
// the per-account rate limit bounds how often. The account must be 1 to 255
// bytes (a phone number in E.164 is); a token for any other never verifies.
func (s *Service) IssueUploadToken(account string) (token string, expires time.Time) {
	if account == "" || len(account) > maxAccountLen {
		s.log.Error("upload token for an account that cannot verify", "user", account)
	}
	expires = time.Unix(s.cfg.Now().Add(s.cfg.TokenTTL).Unix(), 0)
	return s.sign(purposeUpload, expires, account), expires
}

// VerifyUploadToken returns the account a token was issued to, or
// ErrTokenInvalid (malformed, forged, minted for another purpose) or
// ErrTokenExpired.
func (s *Service) VerifyUploadToken(tok string) (account string, err error) {
	return s.verify(purposeUpload, tok)
}

func (s *Service) sign(purpose string, expires time.Time, account string) string {
	payload := make([]byte, 9, 9+len(account))
	payload[0] = tokenVersion
	binary.BigEndian.PutUint64(payload[1:], uint64(expires.Unix()))
	payload = append(payload, account...)
	return tokenEncoding.EncodeToString(payload) + "." + tokenEncoding.EncodeToString(s.mac(purpose, payload))
}

func (s *Service) mac(purpose string, payload []byte) []byte {
	m := hmac.New(sha256.New, s.cfg.Secret)
	m.Write([]byte(purpose))
	m.Write(payload)
	return m.Sum(nil)
}

func (s *Service) verify(purpose, tok string) (string, error) {
	// The length bound comes first so that no decoding work is spent on a
	// token that cannot be one.
	if len(tok) > maxTokenLength {
		return "", ErrTokenInvalid
	}
	p, m, ok := strings.Cut(tok, ".")
	if !ok {
		return "", ErrTokenInvalid
	}
	payload, err := tokenEncoding.DecodeString(p)
	if err != nil || len(payload) < 10 || len(payload) > maxPayloadLen || payload[0] != tokenVersion {
		return "", ErrTokenInvalid
	}
	sum, err := tokenEncoding.DecodeString(m)
	if err != nil || len(sum) != tokenMACLen {
		return "", ErrTokenInvalid
	}
	// The MAC is checked before the expiry, in constant time, so that a
	// forged token learns nothing, not even whether it would have expired.
	if !hmac.Equal(sum, s.mac(purpose, payload)) {
		return "", ErrTokenInvalid
	}
	exp := int64(binary.BigEndian.Uint64(payload[1:9]))
	if s.cfg.Now().Unix() >= exp {
		return "", ErrTokenExpired
	}
	return string(payload[9:]), nil
}
