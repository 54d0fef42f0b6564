package state

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"time"
)

// uploadOps is the machine as the multipart commands see it: a face of
// the same data, with the upload ops' handlers and their helpers.
type uploadOps Machine

func (f *uploadOps) m() *Machine { return (*Machine)(f) }

// Multipart uploads (S3's CreateMultipartUpload, UploadPart,
// CompleteMultipartUpload, AbortMultipartUpload) charge one object as one
// unit however many requests it takes, and its bytes part by part. The
// state that makes this exact is replicated like the tokens:
//
//   - reserve_upload charges the unit when the upload is created (so the
//     token's last unit is not handed to two uploads at once) and records a
//     pending upload under the reserving request's id;
//   - bind_upload gives it the storage backend's upload id once the backend
//     answered; charge_part charges each part's bytes to the upload's token;
//   - complete_begin marks an upload completing (no more parts, no abort);
//     complete_end either keeps the charges of the parts the object is made
//     of, refunding every other attempt, or reopens the upload;
//   - abort_upload and expire_uploads give back the unit and every part's
//     bytes of an upload that will never become an object.
//
// Every refund an upload owes is computed from its own record, never from
// the dedup table (which forgets), and each is made once: the record goes
// away with it. Times come from the leader's stamps, so every replica
// expires the same uploads at the same index.

// UploadKey names one multipart upload: a hash of where it is stored and the
// storage backend's upload id, so neither reaches the log.
type UploadKey [16]byte

// UploadKeyOf returns the key of the upload with the backend's id uploadID
// of object (bucket and key, as the client addressed them).
func UploadKeyOf(object, uploadID string) UploadKey {
	h := sha256.New()
	h.Write([]byte("raftquota upload v1\x00"))
	h.Write([]byte(object))
	h.Write([]byte{0})
	h.Write([]byte(uploadID))
	var k UploadKey
	copy(k[:], h.Sum(nil))
	return k
}

// IsZero reports whether the key was never set.
func (k UploadKey) IsZero() bool { return k == UploadKey{} }

func (k UploadKey) String() string { return hex.EncodeToString(k[:]) }

// MarshalText writes the key as 32 hex digits.
func (k UploadKey) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText reads 32 hex digits.
func (k *UploadKey) UnmarshalText(b []byte) error {
	if len(b) != 32 {
		return fmt.Errorf("upload key must be 32 hex digits, got %d characters", len(b))
	}
	_, err := hex.Decode(k[:], b)
	return err
}

// Bounds of the replicated upload state. S3 allows 10,000 parts per upload;
// retries of a part are charged apart until the upload completes.
const (
	MaxOpenUploads       = 100_000
	MaxChargesPerUpload  = 20_000
	MaxOpenPartCharges   = 1 << 20
	DefaultUploadExpiry  = 24 * time.Hour
	DefaultCompleteLimit = time.Hour
)

// Multipart denial reasons.
const (
	// ReasonNoSuchUpload: the upload is not one this cluster reserved (never
	// created through the gate, expired, aborted, completed, or another
	// token's).
	ReasonNoSuchUpload Reason = "no_such_upload"
	// ReasonTooManyUploads: the cluster holds as many open uploads, or part
	// charges, as it keeps.
	ReasonTooManyUploads Reason = "too_many_uploads"
)

type uploadState uint8

const (
	uploadPending    uploadState = 1 // reserved; the backend has not answered yet
	uploadOpen       uploadState = 2 // parts may be added
	uploadCompleting uploadState = 3 // complete was forwarded
)

// charge is one allowed charge an upload may give back: enough to refund it
// without the dedup table.
type charge struct {
	ID     RequestID
	Part   int32
	Units  int64
	Bytes  int64
	Gen    uint64
	Window int64
	// Pools are the pools the charge took from too.
	Pools []poolRef
}

// multipartUpload is the replicated record of one upload.
type multipartUpload struct {
	Token   TokenKey
	Reserve charge // the unit
	State   uploadState
	// Deadline (leader time, ns): past it an open or pending upload is
	// refunded, and a completing one is taken as completed.
	Deadline int64
	// Expiry (ns) is how long the upload may stay open, from its handler's
	// config, carried in the log.
	Expiry int64
	Parts  []charge
	// Pools are the pools the reserve was charged to; parts are charged
	// to them too.
	Pools []poolID
}

// UploadOp carries the fields of the multipart commands.
type UploadOp struct {
	Key   UploadKey `json:"key"`
	Token *TokenKey `json:"token,omitempty"`
	Units int64     `json:"units,omitempty"`
	Part  int32     `json:"part,omitempty"`
	Bytes int64     `json:"bytes,omitempty"`
	// Expiry (reserve) or Timeout (complete_begin), in nanoseconds.
	Expiry int64 `json:"expiry,omitempty"`
	// OK and Parts end a complete: whether the backend made the object, and
	// the part numbers it is made of.
	OK    bool    `json:"ok,omitempty"`
	Parts []int32 `json:"parts,omitempty"`
	// Pools and SkipMissingPools are a reserve's pools named by the
	// request, as in ConsumeRequest.
	Pools            []string `json:"pools,omitempty"`
	SkipMissingPools bool     `json:"skip_missing_pools,omitempty"`
}

// uploadTable is the FSM's multipart state.
type uploadTable struct {
	uploads map[UploadKey]*multipartUpload
	// owner finds the upload of a part charge, for a refund by request id.
	owner   map[RequestID]UploadKey
	charges int
}

func newUploadTable() *uploadTable {
	return &uploadTable{uploads: map[UploadKey]*multipartUpload{}, owner: map[RequestID]UploadKey{}}
}

func (ut *uploadTable) put(k UploadKey, u *multipartUpload) {
	ut.uploads[k] = u
	for _, p := range u.Parts {
		ut.owner[p.ID] = k
	}
	ut.charges += len(u.Parts)
}

func (ut *uploadTable) drop(k UploadKey) {
	u := ut.uploads[k]
	if u == nil {
		return
	}
	for _, p := range u.Parts {
		delete(ut.owner, p.ID)
	}
	ut.charges -= len(u.Parts)
	delete(ut.uploads, k)
}

// keyedUpload is an upload and its key, as snapshots hold them.
type keyedUpload struct {
	Key UploadKey
	U   multipartUpload
}

// copyOut copies every upload, in key order.
func (ut *uploadTable) copyOut() []keyedUpload {
	out := make([]keyedUpload, 0, len(ut.uploads))
	for k, u := range ut.uploads {
		cp := *u
		cp.Parts = slices.Clone(u.Parts) // pool refs and ids are never changed in place
		out = append(out, keyedUpload{k, cp})
	}
	slices.SortFunc(out, func(a, b keyedUpload) int { return cmp.Compare(string(a.Key[:]), string(b.Key[:])) })
	return out
}

// pendingKey is where a reserved upload waits for the backend's upload id:
// under its reserving request's id.
func pendingKey(id RequestID) UploadKey { return UploadKey(id) }

// chargeOf records an allowed charge to t.
func chargeOf(id RequestID, t *tokenState, part int32, units, bytes int64) charge {
	return charge{ID: id, Part: part, Units: units, Bytes: bytes, Gen: t.Generation, Window: t.window()}
}

// giveBack refunds one charge of an upload, and marks its request id
// refunded if the dedup table still holds it, so a later refund by id does
// not give it back twice.
func (f *uploadOps) giveBack(tok TokenKey, c charge, now time.Time) {
	if e, ok := f.dedup.Peek(c.ID); ok && e.Op == OpConsume && e.Allowed && !e.Refunded {
		e.Refunded = true
		f.dedup.Add(c.ID, e)
	}
	f.m().poolOps().givePoolsBack(c.Pools, c.Units, c.Bytes, now)
	t := f.tokens.mut(tok)
	if t == nil || t.Generation != c.Gen {
		return
	}
	renew(t, now)
	if t.window() != c.Window {
		return // the window renewed since: its usage is already gone
	}
	t.UsageCount = max(0, t.UsageCount-c.Units)
	t.BytesUsed = max(0, t.BytesUsed-c.Bytes)
	settle(t)
	t.UpdatedAt = now.UnixNano()
}

// refundUpload gives back everything an upload charged and forgets it.
func (f *uploadOps) refundUpload(k UploadKey, now time.Time) {
	u := f.uploads.uploads[k]
	f.giveBack(u.Token, u.Reserve, now)
	for _, p := range u.Parts {
		f.giveBack(u.Token, p, now)
	}
	f.uploads.drop(k)
}

func (f *uploadOps) applyReserveUpload(c *Command, now time.Time) *Result {
	o := c.Upload
	if o == nil || o.Token == nil || o.Expiry <= 0 || o.Units < 0 {
		return &Result{Err: Invalidf("reserve_upload needs a token, units and an expiry")}
	}
	if _, seen := f.dedup.Peek(c.ID); !seen && len(f.uploads.uploads) >= MaxOpenUploads {
		d := Decision{Reason: ReasonTooManyUploads}
		if t := f.tokens.get(*o.Token); t != nil {
			d = decisionFor(t)
			d.Reason = ReasonTooManyUploads
		}
		return &Result{Decisions: []Decision{d}}
	}
	req := ConsumeRequest{ID: c.ID, Key: *o.Token, Units: o.Units, Pools: o.Pools, SkipMissingPools: o.SkipMissingPools}
	d := f.m().consume(&req, now)
	if d.Allowed && !d.Duplicate {
		t := f.tokens.get(*o.Token)
		u := &multipartUpload{
			Token:    *o.Token,
			Reserve:  chargeOf(c.ID, t, 0, o.Units, 0),
			State:    uploadPending,
			Deadline: now.UnixNano() + o.Expiry,
			Expiry:   o.Expiry,
		}
		if e, _ := f.dedup.Peek(c.ID); e.Pools != nil {
			u.Reserve.Pools = *e.Pools
			for _, r := range *e.Pools {
				u.Pools = append(u.Pools, r.Pool)
			}
		}
		f.uploads.put(pendingKey(c.ID), u)
	}
	return &Result{Decisions: []Decision{d}}
}

func (f *uploadOps) applyBindUpload(c *Command, now time.Time) *Result {
	if c.Upload == nil || c.Upload.Key.IsZero() {
		return &Result{Err: Invalidf("bind_upload needs an upload key")}
	}
	pk := pendingKey(c.ID)
	u := f.uploads.uploads[pk]
	if b := f.uploads.uploads[c.Upload.Key]; b != nil && b.Reserve.ID == c.ID {
		return &Result{} // bound already: a retry
	}
	if u == nil || u.State != uploadPending {
		return &Result{Err: fmt.Errorf("%w: no reserved upload for this request (refunded or expired)", ErrNotFound)}
	}
	if f.uploads.uploads[c.Upload.Key] != nil {
		return &Result{Err: ErrExists}
	}
	f.uploads.drop(pk)
	u.State = uploadOpen
	u.Deadline = now.UnixNano() + u.Expiry
	f.uploads.put(c.Upload.Key, u)
	return &Result{}
}

// openUpload is the upload o names, if it is open and, when o names a
// token, that token's.
func (f *uploadOps) openUpload(o *UploadOp) *multipartUpload {
	u := f.uploads.uploads[o.Key]
	if u == nil || (o.Token != nil && *o.Token != u.Token) {
		return nil
	}
	return u
}

func (f *uploadOps) applyChargePart(c *Command, now time.Time) *Result {
	o := c.Upload
	if o == nil || o.Bytes < 0 || o.Part < 1 {
		return &Result{Err: Invalidf("charge_part needs an upload, a part number and bytes")}
	}
	deny := func(t *tokenState, r Reason) *Result {
		var d Decision
		if t != nil {
			d = decisionFor(t)
		}
		d.Reason = r
		return &Result{Decisions: []Decision{d}}
	}
	u := f.openUpload(o)
	if e, ok := f.dedup.Peek(c.ID); ok && !(e.Op == OpConsume && e.Refunded) {
		// A retry: its first outcome, as consume answers one.
		req := ConsumeRequest{ID: c.ID, Units: 0, Bytes: o.Bytes}
		if t := f.tokens.byID(e.Token); t != nil {
			req.Key = t.Key
		}
		return &Result{Decisions: []Decision{f.m().consume(&req, now)}}
	}
	if u == nil || u.State != uploadOpen {
		return deny(nil, ReasonNoSuchUpload)
	}
	t := f.tokens.mut(u.Token)
	if t == nil {
		return deny(nil, ReasonUnknown)
	}
	if len(u.Parts) >= MaxChargesPerUpload || f.uploads.charges >= MaxOpenPartCharges {
		return deny(t, ReasonTooManyUploads)
	}
	if renew(t, now) {
		t.UpdatedAt = now.UnixNano()
	}
	reason := decidePart(t, o.Bytes, now)
	entry := dedupEntry{Op: OpConsume, Reason: codeOfReason(reason), Token: t.id}
	var refs []poolRef
	var denied *poolDenial
	if reason == "" && len(u.Pools) > 0 {
		// The pools the reserve charged take the part's bytes too (a pool
		// deleted since is skipped: it no longer holds a quota).
		refs, _, denied = f.m().poolOps().chargePools(t, u.Pools, nil, false, 0, o.Bytes, now)
		if denied != nil {
			reason = denied.reason
			entry.Reason = codeOfReason(reason)
		}
	}
	if reason == "" {
		t.BytesUsed = addSat(t.BytesUsed, o.Bytes)
		settle(t)
		t.UpdatedAt = now.UnixNano()
		f.m().noteToken(t, now)
		ch := chargeOf(c.ID, t, o.Part, 0, o.Bytes)
		ch.Pools = refs
		entry.Allowed, entry.Bytes, entry.Gen, entry.Window = true, o.Bytes, ch.Gen, ch.Window
		if len(refs) > 0 {
			entry.Pools = &refs
		}
		u.Parts = append(u.Parts, ch)
		f.uploads.owner[c.ID] = o.Key
		f.uploads.charges++
	}
	f.dedup.Add(c.ID, entry)
	d := decisionFor(t)
	d.Allowed, d.Reason = reason == "", reason
	if denied != nil && denied.pool != nil {
		poolDecision(&d, denied.pool)
	}
	return &Result{Decisions: []Decision{d}}
}

// decidePart decides a part on its token. The unit was charged at
// reserve: only revocation, expiry and bytes can refuse a part.
func decidePart(t *tokenState, bytes int64, now time.Time) Reason {
	switch {
	case t.Status == stRevoked:
		return ReasonRevoked
	case t.expired(now):
		return ReasonExpired
	case t.BytesLimit > 0 && t.BytesUsed > t.BytesLimit-bytes:
		return ReasonBytesExhausted
	}
	return ""
}

// refundUploadCharge refunds, by its request id, a part whose upload to
// the backend failed, or the reserve of an upload the backend did not
// create, from the upload's record. It reports whether id was one.
func (f *uploadOps) refundUploadCharge(id RequestID, now time.Time) bool {
	if k, ok := f.uploads.owner[id]; ok {
		u := f.uploads.uploads[k]
		i := slices.IndexFunc(u.Parts, func(p charge) bool { return p.ID == id })
		f.giveBack(u.Token, u.Parts[i], now)
		u.Parts = slices.Delete(u.Parts, i, i+1)
		delete(f.uploads.owner, id)
		f.uploads.charges--
		return true
	}
	if u := f.uploads.uploads[pendingKey(id)]; u != nil && u.Reserve.ID == id {
		f.giveBack(u.Token, u.Reserve, now)
		f.uploads.drop(pendingKey(id))
		return true
	}
	return false
}

func (f *uploadOps) applyCompleteBegin(c *Command, now time.Time) *Result {
	o := c.Upload
	if o == nil || o.Expiry <= 0 {
		return &Result{Err: Invalidf("complete_begin needs an upload and a timeout")}
	}
	u := f.openUpload(o)
	if u == nil || u.State == uploadPending {
		return &Result{Err: fmt.Errorf("%w: no such upload", ErrNotFound)}
	}
	// Completing again (a client retrying) renews the deadline.
	u.State = uploadCompleting
	u.Deadline = now.UnixNano() + o.Expiry
	return &Result{}
}

func (f *uploadOps) applyCompleteEnd(c *Command, now time.Time) *Result {
	o := c.Upload
	if o == nil {
		return &Result{Err: Invalidf("complete_end needs an upload")}
	}
	u := f.uploads.uploads[o.Key]
	if u == nil || u.State != uploadCompleting {
		return &Result{Err: fmt.Errorf("%w: no completing upload", ErrNotFound)}
	}
	if !o.OK {
		u.State = uploadOpen
		u.Deadline = now.UnixNano() + u.Expiry
		return &Result{}
	}
	// The object is made of the listed parts, each as last uploaded: every
	// other attempt's bytes go back.
	listed := make(map[int32]bool, len(o.Parts))
	for _, p := range o.Parts {
		listed[p] = true
	}
	last := make(map[int32]int, len(u.Parts))
	for i, p := range u.Parts {
		last[p.Part] = i
	}
	for i, p := range u.Parts {
		if !listed[p.Part] || last[p.Part] != i {
			f.giveBack(u.Token, p, now)
		}
	}
	f.uploads.drop(o.Key)
	return &Result{}
}

func (f *uploadOps) applyAbortUpload(c *Command, now time.Time) *Result {
	o := c.Upload
	if o == nil {
		return &Result{Err: Invalidf("abort_upload needs an upload")}
	}
	u := f.openUpload(o)
	switch {
	case u == nil:
		return &Result{Err: fmt.Errorf("%w: no such upload", ErrNotFound)}
	case u.State == uploadCompleting:
		// The backend may be making the object: its outcome decides.
		return &Result{Err: Invalidf("the upload is being completed")}
	}
	f.refundUpload(o.Key, now)
	return &Result{}
}

// applyExpireUploads refunds the open and pending uploads past their
// deadline, and takes completing ones past theirs as completed (the node
// that forwarded the complete is gone; the charge stays, as it would for an
// object that exists).
func (f *uploadOps) applyExpireUploads(_ *Command, now time.Time) *Result {
	var due []UploadKey
	for k, u := range f.uploads.uploads {
		if u.Deadline <= now.UnixNano() {
			due = append(due, k)
		}
	}
	slices.SortFunc(due, func(a, b UploadKey) int { return cmp.Compare(string(a[:]), string(b[:])) })
	for _, k := range due {
		if f.uploads.uploads[k].State == uploadCompleting {
			f.uploads.drop(k)
		} else {
			f.refundUpload(k, now)
		}
	}
	return &Result{}
}

// nextUploadDeadline is the earliest deadline of an upload, or 0.
func (f *Machine) NextUploadDeadline() int64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var next int64
	for _, u := range f.uploads.uploads {
		if next == 0 || u.Deadline < next {
			next = u.Deadline
		}
	}
	return next
}

// UploadInfo describes an upload the cluster holds (for tests and operators).
type UploadInfo struct {
	Key      UploadKey `json:"key"`
	TokenID  string    `json:"token_id"`
	State    string    `json:"state"`
	Units    int64     `json:"units"`
	Bytes    int64     `json:"bytes"`
	Parts    int       `json:"parts"`
	Deadline time.Time `json:"deadline"`
}

var uploadStateNames = map[uploadState]string{uploadPending: "pending", uploadOpen: "open", uploadCompleting: "completing"}

func (f *Machine) Uploads() []UploadInfo {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]UploadInfo, 0, len(f.uploads.uploads))
	for k, u := range f.uploads.uploads {
		info := UploadInfo{Key: k, State: uploadStateNames[u.State], Units: u.Reserve.Units, Parts: len(u.Parts), Deadline: time.Unix(0, u.Deadline).UTC()}
		if t := f.tokens.get(u.Token); t != nil {
			info.TokenID = t.id.String()
		}
		for _, p := range u.Parts {
			info.Bytes += p.Bytes
		}
		out = append(out, info)
	}
	slices.SortFunc(out, func(a, b UploadInfo) int { return cmp.Compare(a.Key.String(), b.Key.String()) })
	return out
}
