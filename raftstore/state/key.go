package state

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"fmt"
	"strings"
)

// A token's name is a bearer secret. The replicated state never holds it:
// tokens are stored under the SHA-256 of their name (their key, as Tyk's
// hash_keys does), and addressed by a short non-secret id. The name is seen
// only where a client or an operator hands it in: the handler, the lookup
// and the create call, which hash it on the node that received it.

// TokenKey is the SHA-256 of a token's name, under which the state keeps it.
type TokenKey [32]byte

// KeyOf returns the key of a token name.
func KeyOf(name string) TokenKey {
	h := sha256.New()
	h.Write([]byte("raftquota token v1\x00"))
	h.Write([]byte(name))
	var k TokenKey
	copy(k[:], h.Sum(nil))
	return k
}

// IsZero reports whether the key was never set.
func (k TokenKey) IsZero() bool { return k == TokenKey{} }

// MarshalText writes the key as hex.
func (k TokenKey) MarshalText() ([]byte, error) {
	return []byte(hex.EncodeToString(k[:])), nil
}

// UnmarshalText reads 64 hex digits.
func (k *TokenKey) UnmarshalText(b []byte) error {
	if len(b) != 64 {
		return fmt.Errorf("token key must be 64 hex digits")
	}
	_, err := hex.Decode(k[:], b)
	return err
}

// keyOfStored is KeyOf for a name read from an old log entry or snapshot,
// where an empty name means no token.
func keyOfStored(name string) TokenKey {
	if name == "" {
		return TokenKey{}
	}
	return KeyOf(name)
}

var defaultFingerprintKey = []byte("raftquota fingerprint key before the cluster secret is set")

// tokenID is a token's id, which logs print as token_fingerprint: 16 hex
// digits of an HMAC of its key under the cluster's secret, so a log reader
// cannot test guessed names against it. A token keeps the id it was given
// at creation.
func TokenIDOf(secret []byte, key TokenKey) string {
	if secret == nil {
		secret = defaultFingerprintKey
	}
	m := hmac.New(sha256.New, secret)
	m.Write(key[:])
	return hex.EncodeToString(m.Sum(nil)[:8])
}

// IsTokenID reports whether s has the form of a token id.
func IsTokenID(s string) bool {
	if len(s) != 16 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}

// GenerateName returns a new high-entropy token name: "rq_" and 160 random
// bits in base32.
func GenerateName() string {
	b := make([]byte, 20)
	if _, err := rand.Read(b); err != nil {
		panic("raftstore: no randomness: " + err.Error())
	}
	return "rq_" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))
}
