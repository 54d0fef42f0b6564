package raftstore

import (
	"bytes"
	"sync/atomic"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/raftquota/raftquota/raftstore/state"
)

// fingerprintCacheSize is how many tokens' fingerprints a node keeps.
const fingerprintCacheSize = 4096

// fingerprints caches FingerprintOf, which the handler asks for on every
// request, so it computes an HMAC-SHA256 of a token's key under the
// cluster's secret once, not per request (BenchmarkHandler). The cache
// holds one secret's fingerprints; a new secret (set once, as a cluster
// starts) starts a new cache.
type fingerprints struct {
	cur atomic.Pointer[fingerprintCache]
}

type fingerprintCache struct {
	secret []byte
	ids    *lru.Cache[state.TokenKey, string]
}

func (f *fingerprints) of(secret []byte, key state.TokenKey) string {
	c := f.cur.Load()
	if c == nil || !bytes.Equal(c.secret, secret) {
		ids, _ := lru.New[state.TokenKey, string](fingerprintCacheSize) // errs only for a size ≤ 0
		c = &fingerprintCache{secret: secret, ids: ids}
		f.cur.Store(c) // a racing Store is as right: both hold this secret's ids
	}
	if id, ok := c.ids.Get(key); ok {
		return id
	}
	id := state.TokenIDOf(secret, key)
	c.ids.Add(key, id)
	return id
}
