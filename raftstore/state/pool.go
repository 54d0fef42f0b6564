package state

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// poolOps is the machine as the pool commands see it: a face of the same
// data, with the pool ops' handlers and the charging of pools.
type poolOps Machine

func (f *poolOps) m() *Machine { return (*Machine)(f) }

// Pools are quotas that many tokens draw on together: a customer's plan,
// a team, a bucket, a global daily cap. A token belongs to up to
// MaxTokenPools pools; a consume may also name pools (the handler's pool
// placeholders). The charge to the token and to every pool is one
// decision inside one log entry: all of them are charged, or none. The
// dedup entry of an allowed charge remembers each pool's window, so a
// refund gives back to every pool once, and a retry charges none again.
//
// Pool ids come from a replicated counter and are never reused, so a
// refund can never credit a pool that took a deleted one's name.

// MaxTokenPools is how many pools a token may belong to, and how many a
// request may name besides.
const MaxTokenPools = 4

// MaxPools bounds the pools a cluster holds, and maxPoolID the ids it
// ever hands out (the table is a slice indexed by id).
const (
	MaxPools  = 1 << 20
	maxPoolID = 1 << 26
)

// Pool is a shared quota, as the admin API shows it.
type Pool struct {
	ID         string     `json:"id"`
	Name       string     `json:"name"`
	UsageLimit int64      `json:"usage_limit"`
	UsageCount int64      `json:"usage_count"`
	BytesLimit int64      `json:"bytes_limit"`
	BytesUsed  int64      `json:"bytes_used"`
	Status     Status     `json:"status"`
	ExpiresAt  *time.Time `json:"expires_at,omitempty"`
	RenewEvery Duration   `json:"renew_every,omitempty"`
	// RenewCalendar is a calendar renewal ("monthly on 1 at 00:00"), UTC.
	RenewCalendar string     `json:"renew_calendar,omitempty"`
	WindowStart   *time.Time `json:"window_start,omitempty"`
	// ResetsAt is when usage next returns to zero (renewing pools only).
	ResetsAt *time.Time `json:"resets_at,omitempty"`
	// NotifyAt and ThresholdsReached are as a token's.
	NotifyAt          []int `json:"notify_at,omitempty"`
	ThresholdsReached []int `json:"thresholds_reached,omitempty"`
	// Tokens is how many tokens belong to the pool.
	Tokens    int64     `json:"tokens"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Remaining returns the uploads left, or -1 when the count is unlimited.
func (p *Pool) Remaining() int64 { return remaining(p.UsageLimit, p.UsageCount) }

// BytesRemaining returns the bytes left, or -1 when bytes are unlimited.
func (p *Pool) BytesRemaining() int64 { return remaining(p.BytesLimit, p.BytesUsed) }

// PoolSpec is what a caller gives to create a pool.
type PoolSpec struct {
	Name       string     `json:"name"`
	UsageLimit int64      `json:"usage_limit"`
	BytesLimit int64      `json:"bytes_limit"`
	ExpiresAt  *time.Time `json:"expires_at,omitempty"`
	RenewEvery Duration   `json:"renew_every,omitempty"`
	// RenewCalendar renews on the UTC calendar, as a token's does.
	RenewCalendar string `json:"renew_calendar,omitempty"`
	// NotifyAt are thresholds events are made for, as a token's.
	NotifyAt []int `json:"notify_at,omitempty"`
}

// Validate reports the first thing wrong with the spec.
func (s *PoolSpec) Validate() error {
	if err := ValidatePoolName(s.Name); err != nil {
		return err
	}
	ts := TokenSpec{UsageLimit: s.UsageLimit, BytesLimit: s.BytesLimit, RenewEvery: s.RenewEvery, RenewCalendar: s.RenewCalendar, NotifyAt: s.NotifyAt}
	return ts.validateFields()
}

// PoolUpdate changes a pool's limits, window or expiry; nil fields are
// left alone.
type PoolUpdate struct {
	UsageLimit    *int64     `json:"usage_limit,omitempty"`
	BytesLimit    *int64     `json:"bytes_limit,omitempty"`
	ExpiresAt     *time.Time `json:"expires_at,omitempty"`
	RenewEvery    *Duration  `json:"renew_every,omitempty"`
	RenewCalendar *string    `json:"renew_calendar,omitempty"`
	NotifyAt      *[]int     `json:"notify_at,omitempty"`
}

// Validate reports the first thing wrong with the update.
func (u *PoolUpdate) Validate() error {
	if u.UsageLimit == nil && u.BytesLimit == nil && u.ExpiresAt == nil && u.RenewEvery == nil && u.RenewCalendar == nil && u.NotifyAt == nil {
		return Invalidf("nothing to update: give usage_limit, bytes_limit, expires_at, renew_every, renew_calendar or notify_at")
	}
	lu := LimitUpdate{UsageLimit: u.UsageLimit, BytesLimit: u.BytesLimit, RenewEvery: u.RenewEvery, RenewCalendar: u.RenewCalendar, NotifyAt: u.NotifyAt}
	return lu.Validate()
}

// ValidatePoolName checks a pool name: 1-128 of A-Z a-z 0-9 _ - . : @.
// A pool's name is not a secret (it may be a bucket's or a customer's).
func ValidatePoolName(name string) error {
	if name == "" {
		return Invalidf("pool name is empty")
	}
	if len(name) > MaxNameLength {
		return Invalidf("pool name is longer than %d characters", MaxNameLength)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !nameByte(c) && c != ':' && c != '@' {
			return Invalidf("pool name %q may only hold A-Z a-z 0-9 _ - . : @", name)
		}
	}
	return nil
}

// poolID is a pool's number; its text form is "p" and the number.
type poolID uint64

func (id poolID) String() string { return "p" + strconv.FormatUint(uint64(id), 10) }

// parsePoolID reads a pool id ("p12").
func parsePoolID(s string) (poolID, bool) {
	rest, ok := strings.CutPrefix(s, "p")
	if !ok || rest == "" || rest[0] == '0' {
		return 0, false
	}
	n, err := strconv.ParseUint(rest, 10, 64)
	return poolID(n), err == nil
}

// IsPoolID reports whether s is a pool id's form.
func IsPoolID(s string) bool { _, ok := parsePoolID(s); return ok }

// poolState is a pool in the replicated state. Times are unix nanoseconds.
type poolState struct {
	id          poolID
	Name        string
	UsageLimit  int64
	UsageCount  int64
	BytesLimit  int64
	BytesUsed   int64
	RenewEvery  Duration
	Cal         Calendar
	Notify      []uint8 // thresholds, percent, ascending
	Notified    uint8   // how many the current window crossed
	WindowStart int64   // when hasWindow
	ExpiresAt   int64   // when hasExpiry
	CreatedAt   int64
	UpdatedAt   int64
	tokens      int64 // derived: tokens that belong to it
	Status      statusCode
	hasWindow   bool
	hasExpiry   bool
}

func (p *poolState) pool() *Pool {
	out := &Pool{
		ID: p.id.String(), Name: p.Name,
		UsageLimit: p.UsageLimit, UsageCount: p.UsageCount, BytesLimit: p.BytesLimit, BytesUsed: p.BytesUsed,
		Status: p.Status.status(), RenewEvery: p.RenewEvery, Tokens: p.tokens,
		CreatedAt: nsTime(p.CreatedAt), UpdatedAt: nsTime(p.UpdatedAt),
	}
	if p.hasExpiry {
		at := nsTime(p.ExpiresAt)
		out.ExpiresAt = &at
	}
	if p.hasWindow {
		ws := nsTime(p.WindowStart)
		out.WindowStart = &ws
	}
	out.RenewCalendar = p.Cal.String()
	for i, th := range p.Notify {
		out.NotifyAt = append(out.NotifyAt, int(th))
		if i < int(p.Notified) {
			out.ThresholdsReached = append(out.ThresholdsReached, int(th))
		}
	}
	if end := windowEnd(p.RenewEvery, p.Cal, p.WindowStart, p.hasWindow); end > 0 {
		at := nsTime(end)
		out.ResetsAt = &at
	}
	return out
}

// window is the start of the pool's current window, as charges record
// it: 0 when it does not renew.
func (p *poolState) window() int64 {
	if !p.hasWindow {
		return 0
	}
	return p.WindowStart
}

// renewPool moves a pool's window forward past now, as renew does for a
// token: aligned to the first window's start.
func renewPool(p *poolState, now time.Time) bool {
	if !p.Cal.IsZero() {
		ws, reset := p.Cal.windowAt(p.WindowStart, p.hasWindow, now)
		p.WindowStart, p.hasWindow = ws, true
		if reset {
			p.UsageCount, p.BytesUsed, p.Status, p.Notified = 0, 0, stActive, 0
		}
		return reset
	}
	period := int64(p.RenewEvery)
	if period <= 0 {
		return false
	}
	if !p.hasWindow {
		p.WindowStart, p.hasWindow = now.UnixNano(), true
		return false
	}
	elapsed := now.UnixNano() - p.WindowStart
	if elapsed < period {
		return false
	}
	p.WindowStart += elapsed / period * period
	p.UsageCount, p.BytesUsed, p.Notified = 0, 0, 0
	p.Status = stActive
	return true
}

// decidePool says whether units and bytes fit p at now (renewed
// already). A multipart upload's parts (no units) are judged on bytes
// only: they still fit a pool whose count the upload's own reserve filled.
func decidePool(p *poolState, units, bytes int64, now time.Time) Reason {
	if p.hasExpiry && now.UnixNano() >= p.ExpiresAt {
		return ReasonExpired
	}
	if units > 0 && p.UsageLimit > 0 && p.UsageCount > p.UsageLimit-units {
		return ReasonExhausted
	}
	if bytes > 0 && p.BytesLimit > 0 && p.BytesUsed > p.BytesLimit-bytes {
		return ReasonBytesExhausted
	}
	if units > 0 && p.BytesLimit > 0 && p.BytesUsed >= p.BytesLimit {
		// As for a token: a new upload needs room in both dimensions.
		return ReasonBytesExhausted
	}
	return ""
}

func settlePool(p *poolState) {
	if (p.UsageLimit > 0 && p.UsageCount >= p.UsageLimit) || (p.BytesLimit > 0 && p.BytesUsed >= p.BytesLimit) {
		p.Status = stExhausted
	} else {
		p.Status = stActive
	}
}

// poolRef is what one allowed charge took from one pool: enough to give it
// back (the amounts are the charge's own).
type poolRef struct {
	Pool   poolID
	Window int64
}

// poolTable holds the pools by id and by name. Ids are never reused, so
// the pools sit in a slice indexed by id (a deleted pool leaves a nil),
// smaller than a map.
type poolTable struct {
	byID   []*poolState
	byName map[string]poolID
	count  int
	// next is the id the next pool gets.
	next poolID
}

func newPoolTable() *poolTable {
	return &poolTable{byID: []*poolState{nil}, byName: map[string]poolID{}, next: 1}
}

// get is the pool with id, or nil.
func (pt *poolTable) get(id poolID) *poolState {
	if uint64(id) < uint64(len(pt.byID)) {
		return pt.byID[id]
	}
	return nil
}

func (pt *poolTable) named(name string) *poolState {
	if id, ok := pt.byName[name]; ok {
		return pt.get(id)
	}
	return nil
}

func (pt *poolTable) put(p *poolState) {
	for uint64(len(pt.byID)) <= uint64(p.id) {
		pt.byID = append(pt.byID, nil)
	}
	if pt.byID[p.id] == nil {
		pt.count++
	}
	pt.byID[p.id] = p
	pt.byName[p.Name] = p.id
}

func (pt *poolTable) remove(p *poolState) {
	pt.byID[p.id] = nil
	delete(pt.byName, p.Name)
	pt.count--
}

// sorted is every pool, by id.
func (pt *poolTable) sorted() []*poolState {
	out := make([]*poolState, 0, pt.count)
	for _, p := range pt.byID {
		if p != nil {
			out = append(out, p)
		}
	}
	return out
}

// copyOut is a deep copy for a snapshot: the pools are few next to the
// tokens, so they are copied rather than frozen.
func (pt *poolTable) copyOut() []poolState {
	all := pt.sorted()
	out := make([]poolState, len(all))
	for i, p := range all {
		out[i] = *p
	}
	return out
}

// poolDenial names a pool that refused a charge.
type poolDenial struct {
	reason Reason
	pool   *poolState
	name   string // a named pool that does not exist
}

// chargePools decides a charge of units and bytes on the pools ids and
// names (the token's and the request's), and when all allow, charges them
// and returns what it took. Nothing is charged on a denial.
func (f *poolOps) chargePools(t *tokenState, ids []poolID, names []string, skipMissing bool, units, bytes int64, now time.Time) ([]poolRef, *poolState, *poolDenial) {
	ps, deny := f.poolsOf(ids, names, skipMissing)
	if deny != nil {
		return nil, nil, deny
	}
	var tightest *poolState
	for _, p := range ps {
		if renewPool(p, now) {
			p.UpdatedAt = now.UnixNano()
		}
		if r := decidePool(p, units, bytes, now); r != "" {
			return nil, nil, &poolDenial{reason: r, pool: p}
		}
	}
	refs := make([]poolRef, 0, len(ps))
	for _, p := range ps {
		p.UsageCount = addSat(p.UsageCount, units)
		p.BytesUsed = addSat(p.BytesUsed, bytes)
		settlePool(p)
		p.UpdatedAt = now.UnixNano()
		f.m().notePool(p, t, now)
		refs = append(refs, poolRef{Pool: p.id, Window: p.window()})
		if tightest == nil || tighter(p, tightest) {
			tightest = p
		}
	}
	return refs, tightest, nil
}

// poolsOf resolves pool ids and names to the pools, each once.
func (f *poolOps) poolsOf(ids []poolID, names []string, skipMissing bool) ([]*poolState, *poolDenial) {
	ps := make([]*poolState, 0, len(ids)+len(names))
	add := func(p *poolState) {
		if !slices.Contains(ps, p) {
			ps = append(ps, p)
		}
	}
	for _, id := range ids {
		if p := f.pools.get(id); p != nil {
			add(p)
		}
	}
	for _, n := range names {
		p := f.pools.named(n)
		if p == nil {
			if skipMissing {
				continue
			}
			return nil, &poolDenial{reason: ReasonUnknown, name: n}
		}
		add(p)
	}
	return ps, nil
}

// tighter reports whether a has fewer uploads left than b (then fewer
// bytes).
func tighter(a, b *poolState) bool {
	ra, rb := remaining(a.UsageLimit, a.UsageCount), remaining(b.UsageLimit, b.UsageCount)
	if ra != rb {
		return rb < 0 || (ra >= 0 && ra < rb)
	}
	ba, bb := remaining(a.BytesLimit, a.BytesUsed), remaining(b.BytesLimit, b.BytesUsed)
	return bb < 0 && ba >= 0 || ba >= 0 && ba < bb
}

// givePoolsBack refunds units and bytes to the pools refs charged, where
// the pool still exists and its window has not renewed since.
func (f *poolOps) givePoolsBack(refs []poolRef, units, bytes int64, now time.Time) {
	for _, r := range refs {
		p := f.pools.get(r.Pool)
		if p == nil {
			continue
		}
		renewPool(p, now)
		if p.window() != r.Window {
			continue
		}
		p.UsageCount = max(0, p.UsageCount-units)
		p.BytesUsed = max(0, p.BytesUsed-bytes)
		settlePool(p)
		p.UpdatedAt = now.UnixNano()
	}
}

// poolDecision fills d from the quota that decided it: the refusing
// pool, or, when the token allowed and a pool is tighter, that pool.
func poolDecision(d *Decision, p *poolState) {
	d.Quota = "pool:" + p.Name
	d.UsageLimit, d.UsageCount, d.BytesLimit, d.BytesUsed = p.UsageLimit, p.UsageCount, p.BytesLimit, p.BytesUsed
	d.RenewEvery, d.ResetAt = p.RenewEvery, windowEnd(p.RenewEvery, p.Cal, p.WindowStart, p.hasWindow)
	if !p.Cal.IsZero() && d.ResetAt > 0 {
		d.RenewEvery = Duration(d.ResetAt - p.WindowStart)
	}
}

// tighterThanToken reports whether pool p has fewer uploads (then bytes)
// left than the token's numbers in d.
func tighterThanToken(p *poolState, d *Decision) bool {
	t := &poolState{UsageLimit: d.UsageLimit, UsageCount: d.UsageCount, BytesLimit: d.BytesLimit, BytesUsed: d.BytesUsed}
	return tighter(p, t)
}

// checkPools decides, without charging, what the pools of a charge would
// say: copies of them are renewed and decided.
func (f *poolOps) checkPools(d *Decision, ids []poolID, r *ConsumeRequest, now time.Time) {
	ps, deny := f.poolsOf(ids, r.Pools, r.SkipMissingPools)
	if deny != nil {
		d.Reason, d.Quota = deny.reason, "pool:"+deny.name
		return
	}
	var tightest *poolState
	for _, live := range ps {
		p := *live
		renewPool(&p, now)
		if reason := decidePool(&p, r.Units, r.Bytes, now); reason != "" {
			d.Reason = reason
			poolDecision(d, &p)
			return
		}
		if tightest == nil || tighter(&p, tightest) {
			cp := p
			tightest = &cp
		}
	}
	if tightest != nil && tighterThanToken(tightest, d) {
		poolDecision(d, tightest)
	}
}

// Admin commands on pools.

func (f *poolOps) applyCreatePool(c *Command, now time.Time) *Result {
	spec := c.Pool
	if spec == nil {
		return &Result{Err: Invalidf("create_pool needs a pool spec")}
	}
	if err := spec.Validate(); err != nil {
		return &Result{Err: err}
	}
	if f.pools.named(spec.Name) != nil {
		return &Result{Err: errPoolExists}
	}
	if f.pools.count >= MaxPools || f.pools.next >= maxPoolID {
		return &Result{Err: Invalidf("the cluster holds %d pools, as many as it keeps", MaxPools)}
	}
	p := &poolState{id: f.pools.next, Name: spec.Name, UsageLimit: spec.UsageLimit, BytesLimit: spec.BytesLimit,
		RenewEvery: spec.RenewEvery, CreatedAt: now.UnixNano(), UpdatedAt: now.UnixNano()}
	if spec.ExpiresAt != nil {
		p.ExpiresAt, p.hasExpiry = spec.ExpiresAt.UnixNano(), true
	}
	p.Cal, _ = ParseCalendar(spec.RenewCalendar) // validated
	p.Notify, _ = validateThresholds(spec.NotifyAt)
	if p.RenewEvery > 0 {
		p.WindowStart, p.hasWindow = now.UnixNano(), true
	} else if !p.Cal.IsZero() {
		p.WindowStart, p.hasWindow = p.Cal.start(now).UnixNano(), true
	}
	f.pools.next++
	f.pools.put(p)
	return &Result{Pool: p.pool()}
}

// targetPool is the pool an admin command names by id.
func (f *poolOps) targetPool(c *Command) *poolState {
	id, ok := parsePoolID(c.PoolID)
	if !ok {
		return nil
	}
	return f.pools.get(id)
}

func (f *poolOps) applyUpdatePool(c *Command, now time.Time) *Result {
	p := f.targetPool(c)
	if p == nil {
		return &Result{Err: ErrPoolNotFound}
	}
	u := c.PoolUpdate
	if u == nil {
		return &Result{Err: Invalidf("update_pool needs fields")}
	}
	if err := u.Validate(); err != nil {
		return &Result{Err: err}
	}
	if u.UsageLimit != nil {
		p.UsageLimit = *u.UsageLimit
	}
	if u.BytesLimit != nil {
		p.BytesLimit = *u.BytesLimit
	}
	if u.ExpiresAt != nil {
		p.ExpiresAt, p.hasExpiry = u.ExpiresAt.UnixNano(), !u.ExpiresAt.IsZero()
	}
	if u.RenewEvery != nil {
		p.RenewEvery = *u.RenewEvery
		if p.RenewEvery > 0 {
			p.Cal = Calendar{}
		}
		if p.RenewEvery > 0 && !p.hasWindow {
			p.WindowStart, p.hasWindow = now.UnixNano(), true
		} else if p.RenewEvery == 0 && p.Cal.IsZero() {
			p.WindowStart, p.hasWindow = 0, false
		}
	}
	if u.NotifyAt != nil {
		p.Notify, _ = validateThresholds(*u.NotifyAt) // validated
		p.Notified = crossed(p.Notify, p.UsageCount, p.UsageLimit, p.BytesUsed, p.BytesLimit)
	}
	if u.RenewCalendar != nil {
		p.Cal, _ = ParseCalendar(*u.RenewCalendar) // validated
		if !p.Cal.IsZero() {
			p.RenewEvery = 0
			p.WindowStart, p.hasWindow = p.Cal.start(now).UnixNano(), true
		} else if p.RenewEvery == 0 {
			p.WindowStart, p.hasWindow = 0, false
		}
	}
	settlePool(p)
	p.UpdatedAt = now.UnixNano()
	return &Result{Pool: p.pool()}
}

func (f *poolOps) applyResetPool(c *Command, now time.Time) *Result {
	p := f.targetPool(c)
	if p == nil {
		return &Result{Err: ErrPoolNotFound}
	}
	p.UsageCount, p.BytesUsed, p.Status, p.Notified = 0, 0, stActive, 0
	if p.RenewEvery > 0 {
		p.WindowStart, p.hasWindow = now.UnixNano(), true
	} else if !p.Cal.IsZero() {
		p.WindowStart, p.hasWindow = p.Cal.start(now).UnixNano(), true
	}
	p.UpdatedAt = now.UnixNano()
	return &Result{Pool: p.pool()}
}

func (f *poolOps) applyDeletePool(c *Command, _ time.Time) *Result {
	p := f.targetPool(c)
	if p == nil {
		return &Result{Err: ErrPoolNotFound}
	}
	if p.tokens > 0 {
		return &Result{Err: &codedError{base: ErrExists, msg: fmt.Sprintf("pool %s still has %d tokens; remove them from it first", p.Name, p.tokens)}}
	}
	f.pools.remove(p)
	return &Result{}
}

// tokenPools resolves a token spec's or update's pool ids, each once.
func (f *poolOps) tokenPools(ids []string) ([]poolID, error) {
	if len(ids) > MaxTokenPools {
		return nil, Invalidf("a token belongs to at most %d pools, got %d", MaxTokenPools, len(ids))
	}
	out := make([]poolID, 0, len(ids))
	for _, s := range ids {
		id, ok := parsePoolID(s)
		if !ok || f.pools.get(id) == nil {
			return nil, Invalidf("no pool with id %q", s)
		}
		if !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out, nil
}

// setTokenPools moves t into the pools ids, keeping the pools' counts.
func (f *poolOps) setTokenPools(t *tokenState, ids []poolID) {
	for _, id := range t.pools() {
		if p := f.pools.get(id); p != nil {
			p.tokens--
		}
	}
	for _, id := range ids {
		f.pools.get(id).tokens++
	}
	if len(ids) > 0 || t.ext != nil {
		t.extW().Pools = ids
	}
}

// Errors of pool commands.
var (
	ErrPoolNotFound = &codedError{base: ErrNotFound, msg: "pool not found"}
	errPoolExists   = &codedError{base: ErrExists, msg: "a pool with this name already exists"}
)
