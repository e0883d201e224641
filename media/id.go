package media

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
)

// idBytes is the entropy of a media id: 128 bits, so that ids can be handed
// out as bearer capabilities (see the package doc) without anyone being able
// to guess or enumerate them.
const idBytes = 16

// idLen is the length of an id's text: base64url of idBytes, unpadded.
const idLen = (idBytes*8 + 5) / 6

// idEncoding rejects non-zero trailing bits, so that every id has exactly
// one spelling and two different strings never name the same blob.
var idEncoding = base64.RawURLEncoding.Strict()

// newID returns a fresh media id and its storage key. crypto/rand.Read
// does not fail (it crashes the program when the OS cannot provide
// randomness).
//
// An id never begins with '-' (one in 64 would): a command line would read
// it as a flag (`parley fetch ID`). Drawing again costs under 0.1 bit of
// the 128.
func newID() (id, key string) {
	var b [idBytes]byte
	for {
		rand.Read(b[:])
		if id = idEncoding.EncodeToString(b[:]); id[0] != '-' {
			return id, keyOf(b[:])
		}
	}
}

// parseID validates a media id by its form alone and returns the storage
// key it maps to. ok is false for anything that is not exactly the canonical
// text of idBytes random bytes; such a string never reaches the store.
//
// The key is a hash of the id, not the id: the blob directory then holds no
// download capability, so whoever can list it (a backup, a log of file
// names, an operator) cannot turn that listing into download URLs, and the
// time a filesystem lookup takes tells nothing about a guessed id.
func parseID(id string) (key string, ok bool) {
	if len(id) != idLen {
		return "", false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return "", false
		}
	}
	var b [idBytes]byte
	if n, err := idEncoding.Decode(b[:], []byte(id)); err != nil || n != idBytes {
		return "", false
	}
	return keyOf(b[:]), true
}

// keyOf derives the storage key of an id's bytes. The label keeps the hash
// apart from any other use of SHA-256 over the same bytes.
func keyOf(idb []byte) string {
	h := sha256.New()
	h.Write([]byte("parley media key v1\x00"))
	h.Write(idb)
	return hex.EncodeToString(h.Sum(nil))
}

// ValidKey reports whether key has the form of a BlobStore key: 64
// lowercase hex digits, as the Service derives them. Every BlobStore
// checks it again, so that it is safe on its own.
func ValidKey(key string) bool {
	if len(key) != 2*sha256.Size {
		return false
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
