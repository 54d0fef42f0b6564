package state

import (
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// DefaultDedupSize is how many request ids the FSM remembers until the
// cluster sets another size (the memory an entry costs is measured by
// BenchmarkDedupMemory and given in BENCHMARKS.md).
const DefaultDedupSize = 1 << 20

// dedupEntry is the first outcome of a request id. Its fields are ordered
// and sized to keep the entry small: the table holds a million by default.
type dedupEntry struct {
	// Token is the id of the token charged (0: none). Its generation, Gen,
	// tells it from a later token that reuses the id.
	Token  tokenIDBits
	Units  int64
	Bytes  int64
	Window int64
	Gen    uint64
	// Pools are the pools an allowed charge took from (nil: none).
	Pools    *[]poolRef
	Op       Op
	Code     Code
	Reason   reasonCode
	Allowed  bool
	Refunded bool
}

// reasonCode is a Reason in one byte.
type reasonCode uint8

// Codes are written in snapshots: append only.
var reasons = []Reason{"", ReasonUnknown, ReasonRevoked, ReasonExpired, ReasonExhausted, ReasonBytesExhausted, ReasonRefunded, ReasonNoSuchUpload, ReasonTooManyUploads}

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
type Result struct {
	Token     *Token
	Pool      *Pool
	Err       error
	Decisions []Decision
}

// Machine is the quota state machine. Every method that changes state runs from
// Apply or Restore, and depends only on the state and the command, so all
// nodes that apply the same log hold the same state.
type Machine struct {
	mu     sync.RWMutex
	tokens *tokenTable
	dedup  *dedupTable
	// uploads is the multipart state (multipart.go).
	uploads *uploadTable
	// pools are the shared quotas (pool.go).
	pools *poolTable
	// events wait here for the leader to deliver them (events.go).
	events *outbox
	secret []byte
	// now is the latest leader timestamp applied. Time never moves backwards
	// in the FSM even if a new leader's clock is behind the old one's.
	now int64
	// generation counts token creations.
	generation uint64

	// applied is the index of the last command applied since the machine
	// was made or last restored a snapshot, 0 until then.
	applied atomic.Uint64

	logger *zap.Logger
}

// New returns an empty state machine. logger takes the few lines Apply
// writes (a limit lowered below usage).
func New(logger *zap.Logger) *Machine {
	f := &Machine{logger: logger}
	f.reset()
	return f
}

func (f *Machine) reset() {
	f.tokens = newTokenTable(0)
	f.dedup = newDedupTable(DefaultDedupSize)
	f.uploads = newUploadTable()
	f.pools = newPoolTable()
	f.events = &outbox{}
	f.secret = nil
	f.now = 0
	f.generation = 0
}

// Apply decodes the log entry at index and applies it. An entry this build
// cannot decode is an error (ErrUnknownCommand) and changes nothing: the
// caller must stop applying, since skipping it would let this replica
// diverge from the ones that understood it.
func (f *Machine) Apply(index uint64, data []byte) (*Result, error) {
	c, err := Decode(data)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	defer f.applied.Store(index)
	return f.apply(c), nil
}

// poolOps and uploadOps are the machine's faces for pool and multipart
// commands (pool.go, multipart.go).
func (f *Machine) poolOps() *poolOps     { return (*poolOps)(f) }
func (f *Machine) uploadOps() *uploadOps { return (*uploadOps)(f) }

// Applied is the index of the last command applied since the machine was
// made or last restored a snapshot, 0 until then. (raft's AppliedIndex
// counts entries handed to the FSM, not applied by it: a follower serving
// a read waits on this instead.)
func (f *Machine) Applied() uint64 { return f.applied.Load() }

// apply runs one command against the state. The caller holds f.mu.
func (f *Machine) apply(c *Command) *Result {
	if c.Time > f.now {
		f.now = c.Time
	}
	now := time.Unix(0, f.now).UTC()
	def := commands[c.Op]
	if !def.dedup {
		return def.apply(f, c, now)
	}
	if e, ok := f.dedup.Peek(c.ID); ok && !c.ID.IsZero() {
		return f.replay(c, e)
	}
	res := def.apply(f, c, now)
	if !c.ID.IsZero() {
		f.dedup.Add(c.ID, dedupEntry{Op: c.Op, Code: CodeOf(res.Err)})
	}
	return res
}

// replay answers a repeated admin command with its first outcome, and the
// token as it is now.
func (f *Machine) replay(c *Command, e dedupEntry) *Result {
	res := &Result{Err: ErrorFrom(e.Code, "")}
	if t := f.target(c); t != nil && res.Err == nil {
		res.Token = t.token()
	}
	return res
}

// target is the token an admin command names (by key, or by id), for
// reading; nil when there is none.
func (f *Machine) target(c *Command) *tokenState {
	if c.Key != nil {
		return f.tokens.get(*c.Key)
	}
	return f.tokens.byIDString(c.TokenID)
}

// mutTarget is target, for changing.
func (f *Machine) mutTarget(c *Command) *tokenState {
	if t := f.target(c); t != nil {
		return f.tokens.mut(t.Key)
	}
	return nil
}

func (f *Machine) applySetSecret(c *Command, _ time.Time) *Result {
	if f.secret == nil && len(c.Secret) > 0 {
		f.secret = slices.Clone(c.Secret)
	}
	return &Result{}
}

// applySetDedupSize changes how many request ids the cluster remembers.
// It is replicated, never read from a node's config, so every replica
// forgets the same ids.
func (f *Machine) applySetDedupSize(c *Command, _ time.Time) *Result {
	if c.DedupSize < MinDedupSize || c.DedupSize > MaxDedupSize {
		return &Result{Err: Invalidf("dedup size must be between %d and %d, got %d", MinDedupSize, MaxDedupSize, c.DedupSize)}
	}
	f.dedup.Resize(c.DedupSize)
	return &Result{}
}

func (f *Machine) applyConsumes(c *Command, now time.Time) *Result {
	out := make([]Decision, len(c.Consumes))
	for i := range c.Consumes {
		out[i] = f.consume(&c.Consumes[i], now)
	}
	return &Result{Decisions: out}
}

func (f *Machine) consume(r *ConsumeRequest, now time.Time) Decision {
	// A refunded charge's id may charge again: the client retries an upload
	// that failed, with the same idempotency key.
	if e, ok := f.dedup.Peek(r.ID); ok && !(e.Op == OpConsume && e.Refunded) {
		var d Decision
		if t := f.tokens.get(r.Key); t != nil {
			d = decisionFor(t)
		}
		d.Allowed, d.Reason, d.Duplicate = e.Allowed, e.Reason.reason(), true
		if e.Op == OpRefund {
			d.Allowed, d.Reason = false, ReasonRefunded
		}
		return d
	}
	if r.Validate() != nil {
		// Never reaches here from this package's own proposers; a forged
		// entry must still not charge.
		return Decision{Reason: ReasonUnknown}
	}
	t := f.tokens.mut(r.Key)
	if t != nil && renew(t, now) {
		t.UpdatedAt = now.UnixNano()
	}
	reason := decide(t, r.Units, r.Bytes, now)
	if reason == ReasonUnknown {
		// Remember nothing about tokens that do not exist: a flood of random
		// keys must not fill the table. A retry is decided afresh, which
		// cannot charge twice since this attempt charged nothing.
		return Decision{Reason: ReasonUnknown}
	}
	entry := dedupEntry{Op: OpConsume, Reason: codeOfReason(reason), Token: t.id}
	var refs []poolRef
	var tightest *poolState
	var denied *poolDenial
	if reason == "" && (len(t.pools()) > 0 || len(r.Pools) > 0) {
		// The token allows: the pools decide too, and are charged with it.
		refs, tightest, denied = f.poolOps().chargePools(t, t.pools(), r.Pools, r.SkipMissingPools, r.Units, r.Bytes, now)
		if denied != nil {
			reason = denied.reason
			entry.Reason = codeOfReason(reason)
		}
	}
	if reason == "" {
		t.UsageCount = addSat(t.UsageCount, r.Units)
		t.BytesUsed = addSat(t.BytesUsed, r.Bytes)
		settle(t)
		t.UpdatedAt = now.UnixNano()
		entry.Allowed, entry.Units, entry.Bytes = true, r.Units, r.Bytes
		entry.Gen = t.Generation
		entry.Window = t.window()
		f.noteToken(t, now)
		if len(refs) > 0 {
			entry.Pools = &refs
		}
	}
	f.dedup.Add(r.ID, entry)
	d := decisionFor(t)
	d.Allowed, d.Reason = entry.Allowed, reason
	switch {
	case denied != nil && denied.pool != nil:
		poolDecision(&d, denied.pool)
	case denied != nil:
		d.Quota = "pool:" + denied.name
	case tightest != nil && tighterThanToken(tightest, &d):
		poolDecision(&d, tightest)
	}
	return d
}

// decide says whether units and bytes may be charged to t at now. It does not
// change t; the caller charges on an allowed decision. t must already have
// been renewed for now.
func decide(t *tokenState, units, bytes int64, now time.Time) Reason {
	switch {
	case t == nil:
		return ReasonUnknown
	case t.Status == stRevoked:
		return ReasonRevoked
	case t.expired(now):
		return ReasonExpired
	}
	countFull := t.UsageLimit > 0 && (t.UsageCount > t.UsageLimit-units)
	bytesFull := t.BytesLimit > 0 && (t.BytesUsed > t.BytesLimit-bytes)
	if t.Status == stExhausted && !countFull && !bytesFull {
		// Exhausted by the other dimension, or by a zero-cost request.
		if t.BytesLimit > 0 && t.BytesUsed >= t.BytesLimit {
			return ReasonBytesExhausted
		}
		return ReasonExhausted
	}
	if countFull {
		return ReasonExhausted
	}
	if bytesFull {
		return ReasonBytesExhausted
	}
	return ""
}

// addSat adds without wrapping past the largest int64.
func addSat(a, b int64) int64 {
	if s := a + b; s >= a {
		return s
	}
	return 1<<63 - 1
}

func (f *Machine) applyCreate(c *Command, now time.Time) *Result {
	spec := c.Spec
	if spec == nil || c.Key == nil || c.Key.IsZero() {
		return &Result{Err: Invalidf("create needs a token spec and key")}
	}
	if err := spec.validateFields(); err != nil {
		return &Result{Err: err}
	}
	if f.tokens.get(*c.Key) != nil {
		return &Result{Err: ErrExists}
	}
	idText := TokenIDOf(f.secret, *c.Key)
	id, _ := parseTokenID(idText)
	if f.tokens.byID(id) != nil {
		// Two names whose ids collide (a 1 in 2^64 chance per pair).
		return &Result{Err: Invalidf("this name's id is taken by another token; choose another name")}
	}
	t := &tokenState{
		id:         id,
		Key:        *c.Key,
		UsageLimit: spec.UsageLimit,
		BytesLimit: spec.BytesLimit,
		Status:     stActive,
		CreatedAt:  now.UnixNano(),
		UpdatedAt:  now.UnixNano(),
	}
	pools, err := f.poolOps().tokenPools(spec.Pools)
	if err != nil {
		return &Result{Err: err}
	}
	cal, err := ParseCalendar(spec.RenewCalendar)
	if err != nil {
		return &Result{Err: err}
	}
	if spec.CreatedBy != "" || spec.Metadata != nil || spec.RenewEvery != 0 || !cal.IsZero() {
		t.ext = &tokenExt{CreatedBy: spec.CreatedBy, Metadata: spec.Metadata, RenewEvery: spec.RenewEvery, Cal: cal}
	}
	f.poolOps().setTokenPools(t, pools)
	if th, _ := validateThresholds(spec.NotifyAt); len(th) > 0 {
		t.extW().Notify = th
	}
	t.setExpiresAt(spec.ExpiresAt)
	if t.renewEvery() > 0 {
		t.setWindowStart(now.UnixNano())
	} else if !cal.IsZero() {
		t.setWindowStart(cal.start(now).UnixNano())
	}
	f.generation++
	t.Generation = f.generation
	f.tokens.put(t)
	return &Result{Token: t.token()}
}

// applyRefund gives back what one allowed consume took, at most once. A
// refund that arrives before its consume leaves a tombstone, so the consume,
// if it is ever applied, charges nothing. A refund is keyed by its
// consume's id and deduplicated there.
func (f *Machine) applyRefund(c *Command, now time.Time) *Result {
	id := c.ID
	if f.uploadOps().refundUploadCharge(id, now) {
		return &Result{}
	}
	e, ok := f.dedup.Peek(id)
	if !ok {
		f.dedup.Add(id, dedupEntry{Op: OpRefund, Refunded: true})
		return &Result{}
	}
	if e.Op != OpConsume || !e.Allowed || e.Refunded {
		return &Result{}
	}
	e.Refunded = true
	f.dedup.Add(id, e)
	if e.Pools != nil {
		f.poolOps().givePoolsBack(*e.Pools, e.Units, e.Bytes, now)
	}
	t := f.tokens.byID(e.Token)
	if t == nil || t.Generation != e.Gen {
		return &Result{}
	}
	t = f.tokens.mut(t.Key)
	renew(t, now)
	if t.window() != e.Window {
		// The window renewed since the charge; its usage is already gone.
		return &Result{Token: t.token()}
	}
	t.UsageCount = max(0, t.UsageCount-e.Units)
	t.BytesUsed = max(0, t.BytesUsed-e.Bytes)
	settle(t)
	t.UpdatedAt = now.UnixNano()
	return &Result{Token: t.token()}
}

func (f *Machine) applyUpdate(c *Command, now time.Time) *Result {
	t := f.mutTarget(c)
	if t == nil {
		return &Result{Err: ErrNotFound}
	}
	u := c.Update
	if u == nil {
		return &Result{Err: Invalidf("update needs fields")}
	}
	if err := u.Validate(); err != nil {
		return &Result{Err: err}
	}
	if u.Pools != nil {
		pools, err := f.poolOps().tokenPools(*u.Pools)
		if err != nil {
			return &Result{Err: err}
		}
		f.poolOps().setTokenPools(t, pools)
	}
	if u.UsageLimit != nil {
		t.UsageLimit = *u.UsageLimit
	}
	if u.BytesLimit != nil {
		t.BytesLimit = *u.BytesLimit
	}
	if u.ExpiresAt != nil {
		if u.ExpiresAt.IsZero() {
			t.setExpiresAt(nil)
		} else {
			t.setExpiresAt(u.ExpiresAt)
		}
	}
	if u.RenewEvery != nil {
		if *u.RenewEvery != 0 || t.ext != nil {
			t.extW().RenewEvery = *u.RenewEvery
		}
		if *u.RenewEvery > 0 && t.ext != nil {
			t.ext.Cal = Calendar{}
		}
		if _, has := t.windowStart(); *u.RenewEvery > 0 && !has {
			t.setWindowStart(now.UnixNano())
		} else if *u.RenewEvery == 0 && t.calendar().IsZero() {
			t.clearWindowStart()
		}
	}
	if u.RenewCalendar != nil {
		cal, _ := ParseCalendar(*u.RenewCalendar) // validated
		if !cal.IsZero() {
			e := t.extW()
			e.Cal, e.RenewEvery = cal, 0
			t.setWindowStart(cal.start(now).UnixNano())
		} else if t.ext != nil && !t.ext.Cal.IsZero() {
			t.ext.Cal = Calendar{}
			if t.renewEvery() == 0 {
				t.clearWindowStart()
			}
		}
	}
	if u.Metadata != nil {
		t.extW().Metadata = *u.Metadata
	}
	if u.NotifyAt != nil {
		th, _ := validateThresholds(*u.NotifyAt) // validated
		if len(th) > 0 || t.ext != nil {
			e := t.extW()
			e.Notify, e.Notified = th, crossed(th, t.UsageCount, t.UsageLimit, t.BytesUsed, t.BytesLimit)
		}
	}
	settle(t)
	t.UpdatedAt = now.UnixNano()
	f.warnIfOver(t)
	return &Result{Token: t.token()}
}

func (f *Machine) applyStatus(c *Command, now time.Time) *Result {
	t := f.mutTarget(c)
	if t == nil {
		return &Result{Err: ErrNotFound}
	}
	switch c.Op {
	case OpRevoke:
		t.Status = stRevoked
	case OpReactivate:
		t.Status = stActive
		settle(t)
	case OpReset:
		t.UsageCount, t.BytesUsed = 0, 0
		if t.ext != nil {
			t.ext.Notified = 0
		}
		if t.Status != stRevoked {
			t.Status = stActive
		}
		if t.renewEvery() > 0 {
			t.setWindowStart(now.UnixNano())
		} else if cal := t.calendar(); !cal.IsZero() {
			t.setWindowStart(cal.start(now).UnixNano())
		}
	}
	t.UpdatedAt = now.UnixNano()
	return &Result{Token: t.token()}
}

func (f *Machine) applyDelete(c *Command, _ time.Time) *Result {
	t := f.target(c)
	if t == nil {
		return &Result{Err: ErrNotFound}
	}
	f.poolOps().setTokenPools(f.tokens.mut(t.Key), nil)
	f.tokens.del(t.Key)
	return &Result{}
}

// warnIfOver logs a token whose usage stands above its limit. Consumes can
// never cause this; lowering a limit below current usage can.
func (f *Machine) warnIfOver(t *tokenState) {
	if !overLimit(t) {
		return
	}
	f.logger.Warn("quota usage above limit",
		zap.String("token_fingerprint", t.id.String()),
		zap.Int64("usage_count", t.UsageCount),
		zap.Int64("usage_limit", t.UsageLimit),
		zap.Int64("bytes_used", t.BytesUsed),
		zap.Int64("bytes_limit", t.BytesLimit))
}

// Check decides a consume without charging, at the time the leader would
// stamp now, raised to the FSM's latest stamp so time never goes back.
func (f *Machine) Check(r *ConsumeRequest, at time.Time) Decision {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.check(r, at)
}

// check is Check; the caller holds f.mu.
func (f *Machine) check(r *ConsumeRequest, at time.Time) Decision {
	now := at
	if stamped := time.Unix(0, f.now); stamped.After(now) {
		now = stamped
	}
	t := f.tokens.get(r.Key)
	if t == nil {
		return Decision{Reason: ReasonUnknown}
	}
	c := t.clone()
	renew(c, now)
	d := decisionFor(c)
	d.Reason = decide(c, r.Units, r.Bytes, now)
	if d.Reason == "" {
		f.poolOps().checkPools(&d, c.pools(), r, now)
	}
	d.Allowed = d.Reason == ""
	return d
}

func (f *Machine) Secret() []byte {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.secret
}

// dedupSize is the replicated number of request ids remembered.
func (f *Machine) DedupSize() int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.dedup.Cap()
}

// Snapshots. Snapshot only captures handles: the token table freezes its
// map (Apply writes copies meanwhile) and the dedup table hands over its
// chunk list (Apply copies a chunk before changing it). Persist sorts and
// encodes from those handles while Apply goes on; Release folds the
// changes back. The encoding is deterministic: tokens in creation order,
// dedup entries oldest first, so two nodes with the same state write the
// same bytes.

type snapshotHeader struct {
	Secret    []byte
	Now       int64
	Gen       uint64
	DedupSize int
}

type Snapshot struct {
	f      *Machine
	header snapshotHeader
	tokens frozenTokens
	table  *tokenTable
	dedup  *dedupView
	dtable *dedupTable
	// uploads is a copy: the multipart state is small (bounded by
	// MaxOpenUploads and MaxOpenPartCharges).
	uploads []keyedUpload
	// pools are a copy, by id (see poolTable.copyOut).
	pools    []poolState
	poolNext poolID
	// events is a copy of the outbox (bounded by maxOutbox).
	events outbox
}

// Snapshot captures the state in O(1) for tokens and O(dedup chunks) for
// request ids; it never copies entries.
func (f *Machine) Snapshot() *Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokens.thaw() // a snapshot that failed before Release
	s := &Snapshot{
		f:        f,
		header:   snapshotHeader{Secret: f.secret, Now: f.now, Gen: f.generation, DedupSize: f.dedup.Cap()},
		tokens:   f.tokens.freeze(),
		table:    f.tokens,
		dedup:    f.dedup.capture(),
		dtable:   f.dedup,
		uploads:  f.uploads.copyOut(),
		pools:    f.pools.copyOut(),
		poolNext: f.pools.next,
		events:   outbox{events: slices.Clone(f.events.events), nextSeq: f.events.nextSeq, dropped: f.events.dropped},
	}
	return s
}

// Release ends copy-on-write, unless Restore replaced the tables meanwhile.
func (s *Snapshot) Release() {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if s.f.tokens == s.table {
		s.table.thaw()
	}
	if s.f.dedup == s.dtable {
		s.dtable.release()
	}
}

// Restore replaces the whole state with a snapshot's.
func (f *Machine) Restore(r io.Reader) error {
	n, err := ReadSnapshot(r)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokens, f.dedup, f.uploads, f.pools, f.events, f.secret, f.now, f.generation = n.tokens, n.dedup, n.uploads, n.pools, n.events, n.secret, n.now, n.generation
	f.applied.Store(0) // the snapshot's index is not known here
	return nil
}
