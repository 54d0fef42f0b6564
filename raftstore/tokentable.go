package raftstore

import (
	"encoding/binary"
	"encoding/hex"
	"time"
)

// tokenState is a token as the replicated state holds it: 112 bytes with
// one pointer, for the fields every token has; the rest (creator,
// metadata, expiry, renewal) sits in ext, nil for tokens without them.
// Times are unix nanoseconds. Token, the exported form, is built from it
// where a token leaves the FSM.
type tokenState struct {
	Key        TokenKey
	UsageLimit int64
	UsageCount int64
	BytesLimit int64
	BytesUsed  int64
	Generation uint64
	CreatedAt  int64
	UpdatedAt  int64
	id         tokenIDBits
	ext        *tokenExt
	Status     statusCode
}

// tokenExt holds what few tokens have. It is copied with its token (copy on
// write); Metadata maps are never changed in place, so they are shared.
type tokenExt struct {
	CreatedBy   string
	Metadata    map[string]string
	RenewEvery  Duration
	ExpiresAt   int64 // when hasExpiry
	WindowStart int64 // when hasWindow
	hasExpiry   bool
	hasWindow   bool
}

// tokenIDBits is a token id's 8 bytes (its 16 hex digits, decoded).
type tokenIDBits uint64

func parseTokenID(s string) (tokenIDBits, bool) {
	if !IsTokenID(s) {
		return 0, false
	}
	var b [8]byte
	hex.Decode(b[:], []byte(s))
	return tokenIDBits(binary.BigEndian.Uint64(b[:])), true
}

func (id tokenIDBits) String() string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(id))
	return hex.EncodeToString(b[:])
}

// statusCode is a Status in one byte; the values are written in snapshots.
type statusCode uint8

const (
	stActive statusCode = iota
	stExhausted
	stRevoked
)

var statusByCode = []Status{StatusActive, StatusExhausted, StatusRevoked}

func (s statusCode) status() Status { return statusByCode[s] }

func (t *tokenState) extW() *tokenExt {
	if t.ext == nil {
		t.ext = &tokenExt{}
	}
	return t.ext
}

func (t *tokenState) renewEvery() Duration {
	if t.ext == nil {
		return 0
	}
	return t.ext.RenewEvery
}

// windowStart is the start of the current renewal window, if it has one.
func (t *tokenState) windowStart() (int64, bool) {
	if t.ext == nil || !t.ext.hasWindow {
		return 0, false
	}
	return t.ext.WindowStart, true
}

// window is windowStart as charges record it: 0 when there is none.
func (t *tokenState) window() int64 {
	w, _ := t.windowStart()
	return w
}

func (t *tokenState) setWindowStart(ns int64) {
	e := t.extW()
	e.WindowStart, e.hasWindow = ns, true
}

func (t *tokenState) clearWindowStart() {
	if t.ext != nil {
		t.ext.WindowStart, t.ext.hasWindow = 0, false
	}
}

func (t *tokenState) expiresAt() (int64, bool) {
	if t.ext == nil || !t.ext.hasExpiry {
		return 0, false
	}
	return t.ext.ExpiresAt, true
}

// expired reports whether the token has expired at now.
func (t *tokenState) expired(now time.Time) bool {
	at, ok := t.expiresAt()
	return ok && now.UnixNano() >= at
}

func (t *tokenState) setExpiresAt(at *time.Time) {
	if at == nil {
		if t.ext != nil {
			t.ext.ExpiresAt, t.ext.hasExpiry = 0, false
		}
		return
	}
	e := t.extW()
	e.ExpiresAt, e.hasExpiry = at.UnixNano(), true
}

// clone returns a copy that shares nothing Apply changes in place.
func (t *tokenState) clone() *tokenState {
	c := *t
	if t.ext != nil {
		e := *t.ext
		c.ext = &e
	}
	return &c
}

func nsTime(ns int64) time.Time { return time.Unix(0, ns).UTC() }

// token is the exported form of t.
func (t *tokenState) token() *Token {
	out := &Token{
		ID:         t.id.String(),
		Key:        t.Key,
		UsageLimit: t.UsageLimit,
		UsageCount: t.UsageCount,
		BytesLimit: t.BytesLimit,
		BytesUsed:  t.BytesUsed,
		Status:     t.Status.status(),
		CreatedAt:  nsTime(t.CreatedAt),
		UpdatedAt:  nsTime(t.UpdatedAt),
		Generation: t.Generation,
	}
	if e := t.ext; e != nil {
		out.CreatedBy, out.Metadata, out.RenewEvery = e.CreatedBy, e.Metadata, e.RenewEvery
		if e.hasExpiry {
			at := nsTime(e.ExpiresAt)
			out.ExpiresAt = &at
		}
		if e.hasWindow {
			ws := nsTime(e.WindowStart)
			out.WindowStart = &ws
		}
	}
	return out
}

// tokenTable holds the tokens by key, with an index by id.
//
// A million tokens must fit in a node's memory with room to spare, and a
// Go map keyed by the 32-byte key costs about 100 bytes an entry (measured
// at 1M entries), one keyed by a uint64 about 38. So tokens are found by
// their key's first 8 bytes (keys are SHA-256 outputs), the token's full
// key checked; the rare token whose 8 bytes another token already holds is
// kept in spill, by its full key. Lookups are exact either way.
//
// While a snapshot is being persisted, base and spill are frozen: the
// snapshot reads them concurrently with Apply, and Apply writes copies into
// over instead (copy on write). Releasing the snapshot folds the overlay
// back, which costs only what changed meanwhile. The id index always
// points at a token's current copy; a snapshot never reads it.
type tokenTable struct {
	base   map[uint64]*tokenState
	spill  map[TokenKey]*tokenState
	over   map[TokenKey]*tokenState // a nil value: deleted since the freeze
	frozen bool
	ids    map[tokenIDBits]*tokenState
}

func newTokenTable(size int) *tokenTable {
	return &tokenTable{base: make(map[uint64]*tokenState, size), spill: map[TokenKey]*tokenState{}, ids: make(map[tokenIDBits]*tokenState, size)}
}

func keyBits(k TokenKey) uint64 { return binary.LittleEndian.Uint64(k[:8]) }

// stored returns the token with key from base and spill.
func (tt *tokenTable) stored(key TokenKey) *tokenState {
	if t := tt.base[keyBits(key)]; t != nil && t.Key == key {
		return t
	}
	if len(tt.spill) > 0 {
		return tt.spill[key]
	}
	return nil
}

// store puts t into base or spill; never while frozen. A key is in one of
// the two, never both.
func (tt *tokenTable) store(t *tokenState) {
	if _, ok := tt.spill[t.Key]; ok {
		tt.spill[t.Key] = t
		return
	}
	b := keyBits(t.Key)
	if cur := tt.base[b]; cur == nil || cur.Key == t.Key {
		tt.base[b] = t
		return
	}
	tt.spill[t.Key] = t
}

// unstore removes the token with key from base or spill; never while frozen.
func (tt *tokenTable) unstore(key TokenKey) {
	b := keyBits(key)
	if cur := tt.base[b]; cur != nil && cur.Key == key {
		delete(tt.base, b)
		return
	}
	delete(tt.spill, key)
}

// get returns the token for reading only.
func (tt *tokenTable) get(key TokenKey) *tokenState {
	if tt.frozen {
		if t, ok := tt.over[key]; ok {
			return t
		}
	}
	return tt.stored(key)
}

// byID returns the token with id, for reading only.
func (tt *tokenTable) byID(id tokenIDBits) *tokenState { return tt.ids[id] }

// byIDString is byID for an id as clients write it.
func (tt *tokenTable) byIDString(id string) *tokenState {
	b, ok := parseTokenID(id)
	if !ok {
		return nil
	}
	return tt.ids[b]
}

// mut returns the token for changing in place.
func (tt *tokenTable) mut(key TokenKey) *tokenState {
	if !tt.frozen {
		return tt.stored(key)
	}
	if t, ok := tt.over[key]; ok {
		return t
	}
	t := tt.stored(key)
	if t == nil {
		return nil
	}
	c := t.clone()
	tt.over[key] = c
	tt.ids[c.id] = c
	return c
}

func (tt *tokenTable) put(t *tokenState) {
	tt.ids[t.id] = t
	if tt.frozen {
		tt.over[t.Key] = t
		return
	}
	tt.store(t)
}

func (tt *tokenTable) del(key TokenKey) {
	if t := tt.get(key); t != nil {
		delete(tt.ids, t.id)
	}
	if tt.frozen {
		tt.over[key] = nil
		return
	}
	tt.unstore(key)
}

// len is how many tokens there are.
func (tt *tokenTable) len() int { return len(tt.ids) }

// each calls fn for every token, in no particular order.
func (tt *tokenTable) each(fn func(*tokenState)) {
	for _, t := range tt.ids {
		fn(t)
	}
}

// frozenTokens is a snapshot's view of the table.
type frozenTokens struct {
	base  map[uint64]*tokenState
	spill map[TokenKey]*tokenState
}

func (v frozenTokens) len() int { return len(v.base) + len(v.spill) }

func (v frozenTokens) each(fn func(*tokenState)) {
	for _, t := range v.base {
		fn(t)
	}
	for _, t := range v.spill {
		fn(t)
	}
}

// freeze returns base and spill, which stay unchanged until thaw.
func (tt *tokenTable) freeze() frozenTokens {
	tt.frozen = true
	tt.over = make(map[TokenKey]*tokenState)
	return frozenTokens{tt.base, tt.spill}
}

// thaw folds the overlay into base and spill.
func (tt *tokenTable) thaw() {
	if !tt.frozen {
		return
	}
	tt.frozen = false
	for key, t := range tt.over {
		if t == nil {
			tt.unstore(key)
		} else {
			tt.store(t)
		}
	}
	tt.over = nil
}
