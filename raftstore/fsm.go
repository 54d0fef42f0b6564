package raftstore

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/hashicorp/raft"
	"go.uber.org/zap"
)

// DefaultDedupSize is how many request ids the FSM remembers. Each entry costs
// about 165 bytes (see BenchmarkDedupMemory), so the default holds about
// 170 MB at most per node.
const DefaultDedupSize = 1 << 20

// dedupEntry is the first outcome of a request id. Its fields are ordered
// and sized to keep the entry small: the table holds a million by default.
type dedupEntry struct {
	Token    string // shares the token's own string
	Units    int64
	Bytes    int64
	Window   int64
	Gen      uint64
	Op       op
	Code     errCode
	Reason   reasonCode
	Allowed  bool
	Refunded bool
}

// reasonCode is a Reason in one byte.
type reasonCode uint8

var reasons = []Reason{"", ReasonUnknown, ReasonRevoked, ReasonExpired, ReasonExhausted, ReasonBytesExhausted, ReasonRefunded}

func codeOfReason(r Reason) reasonCode {
	for i, x := range reasons {
		if x == r {
			return reasonCode(i)
		}
	}
	return 0
}

func (c reasonCode) reason() Reason {
	if int(c) < len(reasons) {
		return reasons[c]
	}
	return ReasonUnknown
}

// applyResult is what Apply returns to the leader that proposed the command.
type applyResult struct {
	Token     *Token
	Err       error
	Decisions []Decision
}

// fsm is the quota state machine. Every method that changes state runs from
// Apply or Restore, and depends only on the state and the command, so all
// nodes that apply the same log hold the same state.
type fsm struct {
	mu        sync.RWMutex
	tokens    map[string]*Token
	dedup     *simplelru.LRU[RequestID, dedupEntry]
	dedupSize int
	secret    []byte
	// now is the latest leader timestamp applied. Time never moves backwards
	// in the FSM even if a new leader's clock is behind the old one's.
	now int64
	// generation counts token creations.
	generation uint64

	logger *zap.Logger
}

func newFSM(dedupSize int, logger *zap.Logger) *fsm {
	if dedupSize <= 0 {
		dedupSize = DefaultDedupSize
	}
	f := &fsm{dedupSize: dedupSize, logger: logger}
	f.reset()
	return f
}

func (f *fsm) reset() {
	f.tokens = make(map[string]*Token)
	f.dedup, _ = simplelru.NewLRU[RequestID, dedupEntry](f.dedupSize, nil)
	f.secret = nil
	f.now = 0
	f.generation = 0
}

// Apply decodes a log entry and applies it. A command that cannot be decoded
// is logged and skipped on every node alike.
func (f *fsm) Apply(l *raft.Log) any {
	c, err := decodeCommand(l.Data)
	if err != nil {
		f.logger.Error("skipping undecodable log entry", zap.Uint64("index", l.Index), zap.Error(err))
		return &applyResult{Err: err}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.apply(c)
}

// apply runs one command against the state. The caller holds f.mu.
func (f *fsm) apply(c *command) *applyResult {
	if c.Time > f.now {
		f.now = c.Time
	}
	now := time.Unix(0, f.now).UTC()
	if c.Op == opConsume {
		return &applyResult{Decisions: f.applyConsumes(c.Consumes, now)}
	}
	if c.Op == opSetSecret {
		if f.secret == nil && len(c.Secret) > 0 {
			f.secret = slices.Clone(c.Secret)
		}
		return &applyResult{}
	}
	if c.Op == opRefund {
		// A refund is keyed by its consume's id and deduplicated there.
		return f.applyRefund(c.ID, now)
	}
	if e, ok := f.dedup.Peek(c.ID); ok && !c.ID.IsZero() {
		return f.replay(c, e)
	}
	var res *applyResult
	switch c.Op {
	case opCreate:
		res = f.applyCreate(c.Spec, now)
	case opUpdate:
		res = f.applyUpdate(c.Name, c.Update, now)
	case opRevoke, opReactivate, opReset:
		res = f.applyStatus(c.Op, c.Name, now)
	case opDelete:
		res = f.applyDelete(c.Name)
	default:
		res = &applyResult{Err: fmt.Errorf("unknown op %s", c.Op)}
	}
	if !c.ID.IsZero() {
		f.dedup.Add(c.ID, dedupEntry{Op: c.Op, Code: codeOf(res.Err)})
	}
	return res
}

// replay answers a repeated admin command with its first outcome, and the
// token as it is now.
func (f *fsm) replay(c *command, e dedupEntry) *applyResult {
	res := &applyResult{Err: errorFrom(e.Code, "")}
	name := c.Name
	if c.Spec != nil {
		name = c.Spec.Name
	}
	if t := f.tokens[name]; t != nil && res.Err == nil {
		res.Token = t.clone()
	}
	return res
}

func (f *fsm) applyConsumes(reqs []ConsumeRequest, now time.Time) []Decision {
	out := make([]Decision, len(reqs))
	for i := range reqs {
		out[i] = f.consume(&reqs[i], now)
	}
	return out
}

func (f *fsm) consume(r *ConsumeRequest, now time.Time) Decision {
	t := f.tokens[r.Token]
	// A refunded charge's id may charge again: the client retries an upload
	// that failed, with the same idempotency key.
	if e, ok := f.dedup.Peek(r.ID); ok && !(e.Op == opConsume && e.Refunded) {
		var d Decision
		if t != nil {
			d = decisionFor(t)
		}
		d.Allowed, d.Reason, d.Duplicate = e.Allowed, e.Reason.reason(), true
		if e.Op == opRefund {
			d.Allowed, d.Reason = false, ReasonRefunded
		}
		return d
	}
	if r.Validate() != nil {
		// Never reaches here from this package's own proposers; a forged
		// entry must still not charge.
		return Decision{Reason: ReasonUnknown}
	}
	if t != nil && renew(t, now) {
		t.UpdatedAt = now
	}
	reason := decide(t, r.Units, r.Bytes, now)
	if reason == ReasonUnknown {
		// Remember nothing about tokens that do not exist: a flood of random
		// keys must not fill the table. A retry is decided afresh, which
		// cannot charge twice since this attempt charged nothing.
		return Decision{Reason: ReasonUnknown}
	}
	entry := dedupEntry{Op: opConsume, Reason: codeOfReason(reason), Token: r.Token}
	if reason == "" {
		t.UsageCount = addSat(t.UsageCount, r.Units)
		t.BytesUsed = addSat(t.BytesUsed, r.Bytes)
		settle(t)
		t.UpdatedAt = now
		entry.Allowed, entry.Units, entry.Bytes = true, r.Units, r.Bytes
		entry.Token = t.Name // share the token's string rather than hold a copy
		entry.Gen = t.Generation
		if t.WindowStart != nil {
			entry.Window = t.WindowStart.UnixNano()
		}
	}
	f.dedup.Add(r.ID, entry)
	var d Decision
	if t != nil {
		d = decisionFor(t)
	}
	d.Allowed, d.Reason = entry.Allowed, reason
	return d
}

// addSat adds without wrapping past the largest int64.
func addSat(a, b int64) int64 {
	if s := a + b; s >= a {
		return s
	}
	return 1<<63 - 1
}

func (f *fsm) applyCreate(spec *TokenSpec, now time.Time) *applyResult {
	if spec == nil {
		return &applyResult{Err: invalidf("create needs a token spec")}
	}
	if err := spec.Validate(); err != nil {
		return &applyResult{Err: err}
	}
	if _, ok := f.tokens[spec.Name]; ok {
		return &applyResult{Err: ErrExists}
	}
	t := &Token{
		Name:       spec.Name,
		UsageLimit: spec.UsageLimit,
		BytesLimit: spec.BytesLimit,
		Status:     StatusActive,
		CreatedBy:  spec.CreatedBy,
		Metadata:   spec.Metadata,
		RenewEvery: spec.RenewEvery,
		CreatedAt:  now,
		UpdatedAt:  now,
	}
	if spec.ExpiresAt != nil {
		e := spec.ExpiresAt.UTC()
		t.ExpiresAt = &e
	}
	if t.RenewEvery > 0 {
		ws := now
		t.WindowStart = &ws
	}
	f.generation++
	t.Generation = f.generation
	f.tokens[t.Name] = t
	return &applyResult{Token: t.clone()}
}

// applyRefund gives back what one allowed consume took, at most once. A
// refund that arrives before its consume leaves a tombstone, so the consume,
// if it is ever applied, charges nothing.
func (f *fsm) applyRefund(id RequestID, now time.Time) *applyResult {
	e, ok := f.dedup.Peek(id)
	if !ok {
		f.dedup.Add(id, dedupEntry{Op: opRefund, Refunded: true})
		return &applyResult{}
	}
	if e.Op != opConsume || !e.Allowed || e.Refunded {
		return &applyResult{}
	}
	e.Refunded = true
	f.dedup.Add(id, e)
	t := f.tokens[e.Token]
	if t == nil || t.Generation != e.Gen {
		return &applyResult{}
	}
	renew(t, now)
	var window int64
	if t.WindowStart != nil {
		window = t.WindowStart.UnixNano()
	}
	if window != e.Window {
		// The window renewed since the charge; its usage is already gone.
		return &applyResult{Token: t.clone()}
	}
	t.UsageCount = max(0, t.UsageCount-e.Units)
	t.BytesUsed = max(0, t.BytesUsed-e.Bytes)
	settle(t)
	t.UpdatedAt = now
	return &applyResult{Token: t.clone()}
}

func (f *fsm) applyUpdate(name string, u *LimitUpdate, now time.Time) *applyResult {
	t := f.tokens[name]
	if t == nil {
		return &applyResult{Err: ErrNotFound}
	}
	if u == nil {
		return &applyResult{Err: invalidf("update needs fields")}
	}
	if err := u.Validate(); err != nil {
		return &applyResult{Err: err}
	}
	if u.UsageLimit != nil {
		t.UsageLimit = *u.UsageLimit
	}
	if u.BytesLimit != nil {
		t.BytesLimit = *u.BytesLimit
	}
	if u.ExpiresAt != nil {
		if u.ExpiresAt.IsZero() {
			t.ExpiresAt = nil
		} else {
			e := u.ExpiresAt.UTC()
			t.ExpiresAt = &e
		}
	}
	if u.RenewEvery != nil {
		t.RenewEvery = *u.RenewEvery
		if t.RenewEvery > 0 && t.WindowStart == nil {
			ws := now
			t.WindowStart = &ws
		} else if t.RenewEvery == 0 {
			t.WindowStart = nil
		}
	}
	if u.Metadata != nil {
		t.Metadata = *u.Metadata
	}
	settle(t)
	t.UpdatedAt = now
	f.warnIfOver(t)
	return &applyResult{Token: t.clone()}
}

func (f *fsm) applyStatus(o op, name string, now time.Time) *applyResult {
	t := f.tokens[name]
	if t == nil {
		return &applyResult{Err: ErrNotFound}
	}
	switch o {
	case opRevoke:
		t.Status = StatusRevoked
	case opReactivate:
		t.Status = StatusActive
		settle(t)
	case opReset:
		t.UsageCount, t.BytesUsed = 0, 0
		if t.Status != StatusRevoked {
			t.Status = StatusActive
		}
		if t.RenewEvery > 0 {
			ws := now
			t.WindowStart = &ws
		}
	}
	t.UpdatedAt = now
	return &applyResult{Token: t.clone()}
}

func (f *fsm) applyDelete(name string) *applyResult {
	if _, ok := f.tokens[name]; !ok {
		return &applyResult{Err: ErrNotFound}
	}
	delete(f.tokens, name)
	return &applyResult{}
}

// warnIfOver logs a token whose usage stands above its limit. Consumes can
// never cause this; lowering a limit below current usage can.
func (f *fsm) warnIfOver(t *Token) {
	if !overLimit(t) {
		return
	}
	f.logger.Warn("quota usage above limit",
		zap.String("token_fingerprint", fingerprint(f.secret, t.Name)),
		zap.Int64("usage_count", t.UsageCount),
		zap.Int64("usage_limit", t.UsageLimit),
		zap.Int64("bytes_used", t.BytesUsed),
		zap.Int64("bytes_limit", t.BytesLimit))
}

// Reads. These look at the local state only; the Store makes them
// linearizable by waiting for a read barrier first.

func (f *fsm) token(name string) (*Token, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	t, ok := f.tokens[name]
	if !ok {
		return nil, false
	}
	return t.clone(), true
}

func (f *fsm) list() []Token {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]Token, 0, len(f.tokens))
	for _, t := range f.tokens {
		out = append(out, *t)
	}
	slices.SortFunc(out, func(a, b Token) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// check decides a consume without charging, at the time the leader would
// stamp now, raised to the FSM's latest stamp so time never goes back.
func (f *fsm) check(r *ConsumeRequest, at time.Time) Decision {
	f.mu.RLock()
	defer f.mu.RUnlock()
	now := at
	if stamped := time.Unix(0, f.now); stamped.After(now) {
		now = stamped
	}
	t := f.tokens[r.Token]
	if t == nil {
		return Decision{Reason: ReasonUnknown}
	}
	c := t.clone()
	renew(c, now)
	d := decisionFor(c)
	d.Reason = decide(c, r.Units, r.Bytes, now)
	d.Allowed = d.Reason == ""
	return d
}

func (f *fsm) secretKey() []byte {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.secret
}

// Snapshots. Snapshot copies the state under the lock (quick); Persist
// encodes the copy while Apply goes on (snapshot.go has the format). The
// encoding is deterministic: tokens in creation order, dedup entries oldest first, so
// two nodes with the same state write the same bytes.

type snapshotHeader struct {
	Secret []byte
	Now    int64
	Gen    uint64
}

type snapshotDedup struct {
	ID RequestID
	E  dedupEntry
}

type fsmSnapshot struct {
	header snapshotHeader
	tokens []Token
	dedup  []snapshotDedup
}

// Snapshot copies the state; it runs with Apply stopped, so it only copies.
// Sorting and encoding happen in Persist, concurrently with Apply.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s := &fsmSnapshot{header: snapshotHeader{Secret: f.secret, Now: f.now, Gen: f.generation}}
	s.tokens = make([]Token, 0, len(f.tokens))
	for _, t := range f.tokens {
		s.tokens = append(s.tokens, *t)
	}
	keys := f.dedup.Keys() // oldest first
	s.dedup = make([]snapshotDedup, len(keys))
	for i, k := range keys {
		e, _ := f.dedup.Peek(k)
		s.dedup[i] = snapshotDedup{ID: k, E: e}
	}
	return s, nil
}

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := s.write(sink); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}

// Restore replaces the whole state with a snapshot's.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	n, err := readSnapshot(rc, f.dedupSize)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokens, f.dedup, f.secret, f.now, f.generation = n.tokens, n.dedup, n.secret, n.now, n.generation
	return nil
}
