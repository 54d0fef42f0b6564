package state

import (
	"encoding/binary"
	"encoding/hex"
	"hash/maphash"
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
	// Pools are the pools the token belongs to (never changed in place).
	Pools []poolID
	// Cal is a calendar renewal (instead of RenewEvery).
	Cal Calendar
	// Notify are the thresholds (percent, ascending) events are made for;
	// Notified how many of them the current window has crossed.
	Notify    []uint8
	Notified  uint8
	hasExpiry bool
	hasWindow bool
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

// String is the id as clients see it. Every decision carries it: one
// allocation, the string's.
func (id tokenIDBits) String() string {
	var b [8]byte
	var out [16]byte
	binary.BigEndian.PutUint64(b[:], uint64(id))
	hex.Encode(out[:], b[:])
	return string(out[:])
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

// calendar is t's calendar renewal, if it has one.
func (t *tokenState) calendar() Calendar {
	if t.ext == nil {
		return Calendar{}
	}
	return t.ext.Cal
}

// pools are the pools t belongs to.
func (t *tokenState) pools() []poolID {
	if t.ext == nil {
		return nil
	}
	return t.ext.Pools
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
		for _, id := range e.Pools {
			out.Pools = append(out.Pools, id.String())
		}
		out.RenewCalendar = e.Cal.String()
		for i, th := range e.Notify {
			out.NotifyAt = append(out.NotifyAt, int(th))
			if i < int(e.Notified) {
				out.ThresholdsReached = append(out.ThresholdsReached, int(th))
			}
		}
		if end := windowEnd(e.RenewEvery, e.Cal, e.WindowStart, e.hasWindow); end > 0 {
			at := nsTime(end)
			out.ResetsAt = &at
		}
	}
	return out
}

// tokenTable holds the tokens by key, with an index by id.
//
// A million tokens must fit in a node's memory with room to spare: both
// indexes are ptrTables keyed by a seeded hash of the key (or id), a
// fraction of what Go maps cost an entry (BENCHMARKS.md).
//
// While a snapshot is being persisted, base is frozen: the snapshot reads
// it concurrently with Apply, and Apply writes copies into over instead
// (copy on write). Releasing the snapshot folds the overlay back, which
// costs only what changed meanwhile. The id index always points at a
// token's current copy; a snapshot never reads it.
type tokenTable struct {
	base   *ptrTable[tokenState]
	over   map[TokenKey]*tokenState // a nil value: deleted since the freeze
	frozen bool
	ids    *ptrTable[tokenState]
	seed   maphash.Seed
}

func newTokenTable(size int) *tokenTable {
	seed := maphash.MakeSeed()
	return &tokenTable{
		base: newPtrTable(size, func(t *tokenState) uint64 { return maphash.Comparable(seed, t.Key) }),
		ids:  newPtrTable(size, func(t *tokenState) uint64 { return maphash.Comparable(seed, t.id) }),
		seed: seed,
	}
}

// findKey returns key's slot in base.
func (tt *tokenTable) findKey(key TokenKey) (int, bool) {
	return tt.base.find(maphash.Comparable(tt.seed, key), func(t *tokenState) bool { return t.Key == key })
}

// findID returns id's slot in ids.
func (tt *tokenTable) findID(id tokenIDBits) (int, bool) {
	return tt.ids.find(maphash.Comparable(tt.seed, id), func(t *tokenState) bool { return t.id == id })
}

// stored returns the token with key from base.
func (tt *tokenTable) stored(key TokenKey) *tokenState {
	if i, ok := tt.findKey(key); ok {
		return tt.base.get(i)
	}
	return nil
}

// store puts t into base, replacing the token with its key; never while
// frozen.
func (tt *tokenTable) store(t *tokenState) {
	if i, ok := tt.findKey(t.Key); ok {
		tt.base.replace(i, t)
		return
	}
	tt.base.insert(t)
}

// unstore removes the token with key from base; never while frozen.
func (tt *tokenTable) unstore(key TokenKey) {
	if i, ok := tt.findKey(key); ok {
		tt.base.remove(i)
	}
}

// index points the id index at t, t's current copy.
func (tt *tokenTable) index(t *tokenState) {
	if i, ok := tt.findID(t.id); ok {
		tt.ids.replace(i, t)
		return
	}
	tt.ids.insert(t)
}

// putNew adds t, unfrozen, unless a token with its key or id is there
// (restoring a snapshot: a valid one holds each once).
func (tt *tokenTable) putNew(t *tokenState) bool {
	if !tt.base.insertNew(t, maphash.Comparable(tt.seed, t.Key), func(o *tokenState) bool { return o.Key == t.Key }) {
		return false
	}
	if !tt.ids.insertNew(t, maphash.Comparable(tt.seed, t.id), func(o *tokenState) bool { return o.id == t.id }) {
		tt.unstore(t.Key)
		return false
	}
	return true
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
func (tt *tokenTable) byID(id tokenIDBits) *tokenState {
	if i, ok := tt.findID(id); ok {
		return tt.ids.get(i)
	}
	return nil
}

// byIDString is byID for an id as clients write it.
func (tt *tokenTable) byIDString(id string) *tokenState {
	b, ok := parseTokenID(id)
	if !ok {
		return nil
	}
	return tt.byID(b)
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
	tt.index(c)
	return c
}

func (tt *tokenTable) put(t *tokenState) {
	tt.index(t)
	if tt.frozen {
		tt.over[t.Key] = t
		return
	}
	tt.store(t)
}

func (tt *tokenTable) del(key TokenKey) {
	if t := tt.get(key); t != nil {
		if i, ok := tt.findID(t.id); ok {
			tt.ids.remove(i)
		}
	}
	if tt.frozen {
		tt.over[key] = nil
		return
	}
	tt.unstore(key)
}

// len is how many tokens there are.
func (tt *tokenTable) len() int { return tt.ids.len() }

// each calls fn for every token, in no particular order.
func (tt *tokenTable) each(fn func(*tokenState)) { tt.ids.each(fn) }

// frozenTokens is a snapshot's view of the table.
type frozenTokens struct{ base *ptrTable[tokenState] }

func (v frozenTokens) len() int                  { return v.base.len() }
func (v frozenTokens) each(fn func(*tokenState)) { v.base.each(fn) }

// freeze returns base, which stays unchanged until thaw.
func (tt *tokenTable) freeze() frozenTokens {
	tt.frozen = true
	tt.over = make(map[TokenKey]*tokenState)
	return frozenTokens{tt.base}
}

// thaw folds the overlay into base.
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
