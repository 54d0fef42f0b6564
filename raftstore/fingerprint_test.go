package raftstore

import (
	"testing"

	"github.com/raftquota/raftquota/raftstore/state"
)

// The cache answers what TokenIDOf answers, for the secret it is asked
// with: before the cluster's secret is set, and after.
func TestFingerprintsFollowTheSecret(t *testing.T) {
	var f fingerprints
	key := state.KeyOf("a")
	for _, secret := range [][]byte{nil, []byte("one"), []byte("two"), []byte("one")} {
		for range 2 { // computed, then cached
			if got, want := f.of(secret, key), state.TokenIDOf(secret, key); got != want {
				t.Fatalf("secret %q: %s, want %s", secret, got, want)
			}
		}
	}
	if f.of([]byte("one"), key) == f.of([]byte("two"), key) {
		t.Fatal("two secrets gave one fingerprint")
	}
}
