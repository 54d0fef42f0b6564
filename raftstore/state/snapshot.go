package state

import (
	"bufio"
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
)

// The snapshot format is binary: JSON was far too slow to write and read
// back at a million tokens for a node catching up (BENCHMARKS.md).
// Integers are varints, strings are a length and bytes, times are unix
// nanoseconds with a presence flag.
//
//	magic "RQS" version(1)
//	secret, now, generation, [v3+: dedup size], token count, dedup count
//	[v7+: next pool id, pool count, pools by id: id, name, fields]
//	tokens, in creation order: [v6+: key (32 bytes), id (8 bytes)]
//	        [v4, v5: key, id (16 hex digits)] [v2, v3: name], fields
//	        ([v7+: a calendar renewal after renew_every]),
//	        [v7+: pool count, pool ids]
//	dedup entries, oldest first: id, flags, [v6+: token id (8 bytes)]
//	        [v4, v5: token key (32 bytes)] [v2, v3: token name], amounts,
//	        [v7+: pool charges: count, (pool id, window) each]
//	[v5+: upload count, uploads in key order: key (16 bytes), token key,
//	      state, deadline, expiry, reserve charge, part count, part charges
//	      (each with its v7+ pool charges), [v7+: pool count, pool ids]]
//	[v7+: event outbox: next seq, dropped, count, events (JSON)]
//
// Every version ever written stays readable (testdata/formats has a
// fixture of each): version 2 has no dedup size, which is then the
// default; versions 2 and 3 hold token names, which are hashed on reading;
// before version 5 there are no multipart uploads; before version 6, dedup
// entries name their token by key, which reading maps to the token's id;
// before version 7 there are no pools.
const (
	snapshotMagic   = "RQS"
	snapshotVersion = 7
)

type snapWriter struct {
	w   *bufio.Writer
	buf [binary.MaxVarintLen64]byte
}

func (s *snapWriter) uvarint(v uint64) { s.w.Write(binary.AppendUvarint(s.buf[:0], v)) }
func (s *snapWriter) varint(v int64)   { s.w.Write(binary.AppendVarint(s.buf[:0], v)) }
func (s *snapWriter) bytes(b []byte)   { s.uvarint(uint64(len(b))); s.w.Write(b) }
func (s *snapWriter) str(v string)     { s.uvarint(uint64(len(v))); s.w.WriteString(v) }
func (s *snapWriter) byte(b byte)      { s.w.WriteByte(b) }

func (s *snapWriter) id(id tokenIDBits) {
	s.w.Write(binary.BigEndian.AppendUint64(s.buf[:0], uint64(id)))
}

// optTime writes a time in unix nanoseconds with a presence flag.
func (s *snapWriter) optTime(ns int64, present bool) {
	if !present {
		s.byte(0)
		return
	}
	s.byte(1)
	s.varint(ns)
}

func (s *Snapshot) Encode(w io.Writer) error {
	sw := &snapWriter{w: bufio.NewWriterSize(w, 1<<16)}
	sw.w.WriteString(snapshotMagic)
	sw.byte(snapshotVersion)
	sw.bytes(s.header.Secret)
	sw.varint(s.header.Now)
	sw.uvarint(s.header.Gen)
	sw.uvarint(uint64(s.header.DedupSize))
	sw.uvarint(uint64(s.tokens.len()))
	sw.uvarint(uint64(s.dedup.live))
	sw.uvarint(uint64(s.poolNext))
	sw.uvarint(uint64(len(s.pools)))
	for i := range s.pools {
		sw.pool(&s.pools[i])
	}
	s.writeTokens(sw)
	s.writeDedup(sw)
	s.writeUploads(sw)
	sw.outbox(&s.events)
	return sw.w.Flush()
}

// writeTokens writes the tokens in creation order: deterministic
// (generations are unique and replicated).
func (s *Snapshot) writeTokens(sw *snapWriter) {
	// Sorted as (generation, token) pairs: a comparison that followed the
	// pointers spent much of a large snapshot in cache misses
	// (BENCHMARKS.md).
	type genToken struct {
		gen uint64
		t   *tokenState
	}
	byGen := make([]genToken, 0, s.tokens.len())
	s.tokens.each(func(t *tokenState) { byGen = append(byGen, genToken{t.Generation, t}) })
	slices.SortFunc(byGen, func(a, b genToken) int { return cmp.Compare(a.gen, b.gen) })
	var ext tokenExt
	for _, g := range byGen {
		t := g.t
		sw.w.Write(t.Key[:])
		sw.id(t.id)
		sw.varint(t.UsageLimit)
		sw.varint(t.UsageCount)
		sw.varint(t.BytesLimit)
		sw.varint(t.BytesUsed)
		sw.byte(byte(t.Status))
		e := &ext
		if t.ext != nil {
			e = t.ext
		}
		sw.str(e.CreatedBy)
		keys := make([]string, 0, len(e.Metadata))
		for k := range e.Metadata {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		sw.uvarint(uint64(len(keys)))
		for _, k := range keys {
			sw.str(k)
			sw.str(e.Metadata[k])
		}
		sw.optTime(e.ExpiresAt, e.hasExpiry)
		sw.varint(int64(e.RenewEvery))
		sw.calendar(e.Cal)
		sw.thresholds(e.Notify, e.Notified)
		sw.optTime(e.WindowStart, e.hasWindow)
		sw.varint(t.CreatedAt)
		sw.varint(t.UpdatedAt)
		sw.uvarint(t.Generation)
		sw.poolIDs(e.Pools)
	}
}

// writeDedup writes the remembered request ids, oldest first.
func (s *Snapshot) writeDedup(sw *snapWriter) {
	s.dedup.each(func(id RequestID, e *dedupEntry) {
		sw.w.Write(id[:])
		var flags byte
		if e.Allowed {
			flags |= 1
		}
		if e.Refunded {
			flags |= 2
		}
		sw.byte(byte(e.Op))
		sw.byte(byte(e.Code))
		sw.byte(flags)
		sw.byte(byte(e.Reason))
		sw.id(e.Token)
		sw.varint(e.Units)
		sw.varint(e.Bytes)
		sw.varint(e.Window)
		sw.uvarint(e.Gen)
		if e.Pools != nil {
			sw.poolRefs(*e.Pools)
		} else {
			sw.poolRefs(nil)
		}
	})
}

// writeUploads writes the multipart uploads, in key order.
func (s *Snapshot) writeUploads(sw *snapWriter) {
	sw.uvarint(uint64(len(s.uploads)))
	for i := range s.uploads {
		k, u := s.uploads[i].Key, &s.uploads[i].U
		sw.w.Write(k[:])
		sw.w.Write(u.Token[:])
		sw.byte(byte(u.State))
		sw.varint(u.Deadline)
		sw.varint(u.Expiry)
		sw.charge(&u.Reserve)
		sw.uvarint(uint64(len(u.Parts)))
		for j := range u.Parts {
			sw.charge(&u.Parts[j])
		}
		sw.poolIDs(u.Pools)
	}
}

func (s *snapWriter) charge(c *charge) {
	s.w.Write(c.ID[:])
	s.varint(int64(c.Part))
	s.varint(c.Units)
	s.varint(c.Bytes)
	s.uvarint(c.Gen)
	s.varint(c.Window)
	s.poolRefs(c.Pools)
}

func (s *snapReader) charge(c *charge, version byte) {
	s.full(c.ID[:])
	c.Part = int32(s.varint())
	c.Units, c.Bytes = s.varint(), s.varint()
	c.Gen = s.uvarint()
	c.Window = s.varint()
	if version >= 7 {
		c.Pools = s.poolRefs()
	}
}

func (s *snapWriter) pool(p *poolState) {
	s.uvarint(uint64(p.id))
	s.str(p.Name)
	s.varint(p.UsageLimit)
	s.varint(p.UsageCount)
	s.varint(p.BytesLimit)
	s.varint(p.BytesUsed)
	s.byte(byte(p.Status))
	s.varint(int64(p.RenewEvery))
	s.calendar(p.Cal)
	s.thresholds(p.Notify, p.Notified)
	s.optTime(p.WindowStart, p.hasWindow)
	s.optTime(p.ExpiresAt, p.hasExpiry)
	s.varint(p.CreatedAt)
	s.varint(p.UpdatedAt)
}

func (s *snapReader) pool() *poolState {
	p := &poolState{id: poolID(s.uvarint()), Name: s.str()}
	p.UsageLimit, p.UsageCount, p.BytesLimit, p.BytesUsed = s.varint(), s.varint(), s.varint(), s.varint()
	if st := s.byte(); st > byte(stExhausted) {
		s.fail()
	} else {
		p.Status = statusCode(st)
	}
	p.RenewEvery = Duration(s.varint())
	p.Cal = s.calendar()
	p.Notify, p.Notified = s.thresholds()
	p.WindowStart, p.hasWindow = s.optTime()
	p.ExpiresAt, p.hasExpiry = s.optTime()
	p.CreatedAt, p.UpdatedAt = s.varint(), s.varint()
	if p.id == 0 || ValidatePoolName(p.Name) != nil {
		s.fail()
	}
	return p
}

// thresholds writes notify_at and how many are reached.
func (s *snapWriter) thresholds(th []uint8, reached uint8) {
	s.bytes(th)
	s.byte(reached)
}

func (s *snapReader) thresholds() ([]uint8, uint8) {
	th := s.rawBytes()
	reached := s.byte()
	if len(th) > MaxThresholds || int(reached) > len(th) {
		s.fail()
	}
	if len(th) == 0 {
		th = nil
	}
	return th, reached
}

// outbox writes the events waiting for delivery: next seq, dropped,
// count, then each as JSON (few, and read back whole).
func (s *snapWriter) outbox(o *outbox) {
	s.uvarint(o.nextSeq)
	s.uvarint(o.dropped)
	s.uvarint(uint64(len(o.events)))
	for _, e := range o.events {
		b, _ := json.Marshal(e)
		s.bytes(b)
	}
}

func (s *snapReader) readOutbox(o *outbox) {
	o.nextSeq, o.dropped = s.uvarint(), s.uvarint()
	n := s.uvarint()
	if n > maxOutbox {
		s.fail()
		return
	}
	for i := uint64(0); i < n && s.err == nil; i++ {
		var e Event
		if err := json.Unmarshal(s.rawBytes(), &e); err != nil || e.Seq > o.nextSeq {
			s.fail()
			return
		}
		o.events = append(o.events, e)
	}
}

// calendar writes a calendar renewal: unit, day, minute.
func (s *snapWriter) calendar(c Calendar) {
	s.byte(byte(c.Unit))
	s.varint(int64(c.Day))
	s.varint(int64(c.Minute))
}

func (s *snapReader) calendar() Calendar {
	c := Calendar{Unit: calUnit(s.byte()), Day: int8(s.varint()), Minute: int16(s.varint())}
	if !c.valid() {
		s.fail()
	}
	return c
}

func (s *snapWriter) poolIDs(ids []poolID) {
	s.uvarint(uint64(len(ids)))
	for _, id := range ids {
		s.uvarint(uint64(id))
	}
}

func (s *snapReader) poolIDs() []poolID {
	n := s.uvarint()
	if n > MaxTokenPools*2 {
		s.fail()
		return nil
	}
	var out []poolID
	for range n {
		out = append(out, poolID(s.uvarint()))
	}
	return out
}

func (s *snapWriter) poolRefs(refs []poolRef) {
	s.uvarint(uint64(len(refs)))
	for _, r := range refs {
		s.uvarint(uint64(r.Pool))
		s.varint(r.Window)
	}
}

func (s *snapReader) poolRefs() []poolRef {
	n := s.uvarint()
	if n > MaxTokenPools*2 {
		s.fail()
		return nil
	}
	var out []poolRef
	for range n {
		out = append(out, poolRef{Pool: poolID(s.uvarint()), Window: s.varint()})
	}
	return out
}

// fail marks the snapshot corrupt, unless an error came first.
func (s *snapReader) fail() {
	if s.err == nil {
		s.err = errBadSnapshot
	}
}

func (s *snapReader) full(b []byte) {
	if s.err == nil {
		_, s.err = io.ReadFull(s.r, b)
	}
}

// readUploads reads the multipart section of a version 5+ snapshot.
func (s *snapReader) readUploads(ut *uploadTable, version byte) {
	n := s.uvarint()
	if n > MaxOpenUploads {
		s.err = errBadSnapshot
		return
	}
	for i := uint64(0); i < n && s.err == nil; i++ {
		var k UploadKey
		u := &multipartUpload{}
		s.full(k[:])
		s.full(u.Token[:])
		u.State = uploadState(s.byte())
		if u.State < uploadPending || u.State > uploadCompleting {
			s.err = errBadSnapshot
			return
		}
		u.Deadline, u.Expiry = s.varint(), s.varint()
		s.charge(&u.Reserve, version)
		np := s.uvarint()
		if np > MaxChargesPerUpload {
			s.err = errBadSnapshot
			return
		}
		u.Parts = make([]charge, np)
		for j := range u.Parts {
			s.charge(&u.Parts[j], version)
		}
		if version >= 7 {
			u.Pools = s.poolIDs()
		}
		ut.put(k, u)
	}
}

// readPools reads the pools of a version 7+ snapshot.
func (s *snapReader) readPools(pt *poolTable) {
	pt.next = poolID(s.uvarint())
	n := s.uvarint()
	if n > MaxPools || pt.next < 1 || pt.next > maxPoolID {
		s.fail()
		return
	}
	for i := uint64(0); i < n && s.err == nil; i++ {
		p := s.pool()
		if pt.get(p.id) != nil || pt.named(p.Name) != nil || p.id >= pt.next {
			s.fail()
			return
		}
		pt.put(p)
	}
}

// snapReader reads what snapWriter wrote; the first error sticks.
type snapReader struct {
	r   *bufio.Reader
	err error
	// version is the format being read.
	version byte
}

var errBadSnapshot = errors.New("corrupt snapshot")

func (s *snapReader) uvarint() uint64 {
	if s.err != nil {
		return 0
	}
	v, err := binary.ReadUvarint(s.r)
	if err != nil {
		s.err = err
	}
	return v
}

func (s *snapReader) varint() int64 {
	if s.err != nil {
		return 0
	}
	v, err := binary.ReadVarint(s.r)
	if err != nil {
		s.err = err
	}
	return v
}

func (s *snapReader) byte() byte {
	if s.err != nil {
		return 0
	}
	b, err := s.r.ReadByte()
	if err != nil {
		s.err = err
	}
	return b
}

// maxSnapshotString bounds one string, so a corrupt length cannot make a
// node allocate gigabytes.
const maxSnapshotString = 1 << 20

func (s *snapReader) rawBytes() []byte {
	n := s.uvarint()
	if s.err != nil {
		return nil
	}
	if n > maxSnapshotString {
		s.err = errBadSnapshot
		return nil
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(s.r, b); err != nil {
		s.err = err
	}
	return b
}

func (s *snapReader) str() string { return string(s.rawBytes()) }

func (s *snapReader) key(k *TokenKey) {
	if s.err != nil {
		return
	}
	if _, err := io.ReadFull(s.r, k[:]); err != nil {
		s.err = err
	}
}

// optTime reads what snapWriter.optTime wrote.
func (s *snapReader) optTime() (int64, bool) {
	if s.byte() == 0 {
		return 0, false
	}
	return s.varint(), true
}

func (s *snapReader) id() tokenIDBits {
	var b [8]byte
	s.full(b[:])
	return tokenIDBits(binary.BigEndian.Uint64(b[:]))
}

// idText reads a token id written as its 16 hex digits (versions 4, 5).
func (s *snapReader) idText() tokenIDBits {
	text := s.str()
	id, ok := parseTokenID(text)
	if !ok && s.err == nil {
		s.err = fmt.Errorf("%w: token id %q", errBadSnapshot, text)
	}
	return id
}

// readSnapshot decodes a snapshot into fresh state. Token names in dedup
// entries share the tokens' strings, as they do in a live FSM.
func ReadSnapshot(r io.Reader) (*Machine, error) {
	sr := &snapReader{r: bufio.NewReaderSize(r, 1<<16)}
	magic := make([]byte, len(snapshotMagic)+1)
	if _, err := io.ReadFull(sr.r, magic); err != nil {
		return nil, fmt.Errorf("reading snapshot header: %w", err)
	}
	sr.version = magic[3]
	if string(magic[:3]) != snapshotMagic || sr.version < 2 || sr.version > snapshotVersion {
		return nil, fmt.Errorf("unknown snapshot format %q: written by a newer version of raftquota?", magic)
	}
	f := &Machine{}
	f.reset()
	ntok, ndedup, err := sr.header(f)
	if err != nil {
		return nil, err
	}
	sr.readTokens(f, ntok)
	for i := uint64(0); i < ndedup && sr.err == nil; i++ {
		sr.readDedupEntry(f)
	}
	if sr.version >= 5 && sr.err == nil {
		sr.readUploads(f.uploads, sr.version)
	}
	if sr.version >= 7 && sr.err == nil {
		sr.readOutbox(f.events)
	}
	if sr.err != nil {
		return nil, fmt.Errorf("reading snapshot: %w", sr.err)
	}
	if _, err := sr.r.ReadByte(); err != io.EOF {
		return nil, fmt.Errorf("reading snapshot: %w: data after the last entry", errBadSnapshot)
	}
	return f, nil
}

// header reads what precedes the tokens into f, and the counts of tokens
// and dedup entries.
func (sr *snapReader) header(f *Machine) (ntok, ndedup uint64, err error) {
	if secret := sr.rawBytes(); len(secret) > 0 {
		f.secret = secret
	}
	f.now = sr.varint()
	f.generation = sr.uvarint()
	if sr.version >= 3 {
		n := sr.uvarint()
		if n < 1 || n > MaxDedupSize {
			return 0, 0, fmt.Errorf("reading snapshot: %w: dedup size %d", errBadSnapshot, n)
		}
		f.dedup.Resize(int(n))
	}
	ntok, ndedup = sr.uvarint(), sr.uvarint()
	if sr.version >= 7 {
		sr.readPools(f.pools)
	}
	if sr.err != nil {
		return 0, 0, fmt.Errorf("reading snapshot header: %w", sr.err)
	}
	return ntok, ndedup, nil
}

// readTokens reads ntok tokens into f. They are allocated in chunks
// rather than one by one: restoring a million tokens was dominated by
// allocation and GC. Chunks (not one slab of the claimed count) keep a
// corrupt count from allocating much.
func (sr *snapReader) readTokens(f *Machine, ntok uint64) {
	const chunk = 1 << 16
	var slab []tokenState
	f.tokens = newTokenTable(int(min(ntok, 1<<22)))
	for i := uint64(0); i < ntok && sr.err == nil; i++ {
		if len(slab) == 0 {
			slab = make([]tokenState, min(ntok-i, chunk))
		}
		t := &slab[0]
		slab = slab[1:]
		sr.readToken(f, t)
		if sr.err == nil && !f.tokens.putNew(t) {
			sr.err = fmt.Errorf("%w: token %s twice", errBadSnapshot, t.id)
		}
	}
}

// readToken reads one token into t.
func (sr *snapReader) readToken(f *Machine, t *tokenState) {
	switch {
	case sr.version >= 6:
		sr.key(&t.Key)
		t.id = sr.id()
	case sr.version >= 4:
		sr.key(&t.Key)
		t.id = sr.idText()
	default:
		t.Key = keyOfStored(sr.str())
		t.id, _ = parseTokenID(TokenIDOf(f.secret, t.Key))
	}
	t.UsageLimit, t.UsageCount = sr.varint(), sr.varint()
	t.BytesLimit, t.BytesUsed = sr.varint(), sr.varint()
	st := sr.byte()
	if int(st) >= len(statusByCode) {
		sr.fail()
		return
	}
	t.Status = statusCode(st)
	e := sr.tokenExt()
	if sr.err != nil {
		return
	}
	if e.CreatedBy != "" || e.Metadata != nil || e.RenewEvery != 0 || e.hasExpiry || e.hasWindow || !e.Cal.IsZero() || e.Notify != nil {
		t.ext = e
	}
	t.CreatedAt, t.UpdatedAt = sr.varint(), sr.varint()
	t.Generation = sr.uvarint()
	if sr.version < 7 {
		return
	}
	if ids := sr.poolIDs(); len(ids) > 0 {
		if t.ext == nil {
			t.ext = e
		}
		t.ext.Pools = ids
		for _, id := range ids {
			if p := f.pools.get(id); p != nil {
				p.tokens++
			} else {
				sr.fail()
			}
		}
	}
}

// tokenExt reads the fields of a token that few tokens have.
func (sr *snapReader) tokenExt() *tokenExt {
	e := &tokenExt{}
	e.CreatedBy = sr.str()
	if n := sr.uvarint(); n > 0 {
		if n > 1<<16 {
			sr.fail()
			return e
		}
		e.Metadata = make(map[string]string, n)
		for j := uint64(0); j < n; j++ {
			k := sr.str()
			e.Metadata[k] = sr.str()
		}
	}
	e.ExpiresAt, e.hasExpiry = sr.optTime()
	e.RenewEvery = Duration(sr.varint())
	if sr.version >= 7 {
		e.Cal = sr.calendar()
		e.Notify, e.Notified = sr.thresholds()
	}
	e.WindowStart, e.hasWindow = sr.optTime()
	return e
}

// readDedupEntry reads one remembered request id into f.
func (sr *snapReader) readDedupEntry(f *Machine) {
	var id RequestID
	if _, err := io.ReadFull(sr.r, id[:]); err != nil {
		sr.err = err
		return
	}
	e := dedupEntry{Op: Op(sr.byte()), Code: Code(sr.byte())}
	flags := sr.byte()
	e.Allowed, e.Refunded = flags&1 != 0, flags&2 != 0
	e.Reason = reasonCode(sr.byte())
	var key TokenKey
	switch {
	case sr.version >= 6:
		e.Token = sr.id()
	case sr.version >= 4:
		sr.key(&key)
	default:
		key = keyOfStored(sr.str())
	}
	if sr.version < 6 && !key.IsZero() {
		// The token it charged, if it still exists; a deleted one's
		// entry refunds nothing either way (Gen tells a token that
		// took the name since).
		if t := f.tokens.stored(key); t != nil {
			e.Token = t.id
		}
	}
	e.Units, e.Bytes, e.Window = sr.varint(), sr.varint(), sr.varint()
	e.Gen = sr.uvarint()
	if sr.version >= 7 {
		if refs := sr.poolRefs(); len(refs) > 0 {
			e.Pools = &refs
		}
	}
	if sr.err != nil {
		return
	}
	if _, known := commands[e.Op]; !known {
		sr.fail()
		return
	}
	f.dedup.Add(id, e)
}
