package raftstore

import "encoding/binary"

// dedupTable remembers the first outcome of each request id, up to a
// capacity that is replicated state (opSetDedupSize), so every node forgets
// the same ids at the same log index.
//
// It behaves exactly like the LRU used only through Peek and Add that
// earlier versions kept: Add of a known id updates it and makes it the
// newest; when the table holds more than its capacity, the oldest id is
// forgotten. Nodes of both versions therefore evict the same ids.
//
// Entries sit in age order in fixed-size chunks; an index maps each id to
// its position. The index is keyed by an id's first 8 bytes (a Go map keyed
// by the 16-byte id costs 56 bytes an entry at a million entries, by a
// uint64 38), the slot's full id checked; an id whose 8 bytes another id
// already holds is indexed in spill by its full id. Request ids come from
// clients (idempotency keys), so such ids can be made on purpose: lookups
// stay exact either way. A snapshot captures the list of chunks, not the entries: a
// chunk that a live snapshot holds is copied before Apply changes it, so
// taking a snapshot costs O(chunks) and never stalls decisions.
type dedupTable struct {
	index  map[uint64]uint64    // id's first 8 bytes -> position
	spill  map[RequestID]uint64 // id -> position, for ids whose 8 bytes index holds for another
	chunks []*dedupChunk        // chunks[0] holds positions first .. first+dedupChunkSize-1
	first  uint64
	head   uint64 // positions before head are forgotten
	tail   uint64 // the next position to write
	live   int
	cap    int

	// gen is the generation new chunks get; chunks of generation <= shared
	// belong to a live snapshot too (shared == 0: none is live).
	gen    uint64
	shared uint64
}

const dedupChunkSize = 1024

type dedupChunk struct {
	gen   uint64
	slots [dedupChunkSize]dedupSlot
}

// dedupSlot is one remembered id; Op 0 marks a slot whose id moved on.
type dedupSlot struct {
	id RequestID
	e  dedupEntry
}

func newDedupTable(capacity int) *dedupTable {
	return &dedupTable{index: make(map[uint64]uint64), spill: make(map[RequestID]uint64), cap: max(1, capacity), gen: 1}
}

// Len is how many ids the table remembers.
func (d *dedupTable) Len() int { return d.live }

// Cap is how many ids the table may remember.
func (d *dedupTable) Cap() int { return d.cap }

func (d *dedupTable) slot(pos uint64) *dedupSlot {
	off := pos - d.first
	return &d.chunks[off/dedupChunkSize].slots[off%dedupChunkSize]
}

// writable returns the slot at pos in a chunk Apply may change, copying
// the chunk first when a live snapshot holds it.
func (d *dedupTable) writable(pos uint64) *dedupSlot {
	off := pos - d.first
	i := off / dedupChunkSize
	if c := d.chunks[i]; d.shared != 0 && c.gen <= d.shared {
		cp := *c
		cp.gen = d.gen
		d.chunks[i] = &cp
	}
	return &d.chunks[i].slots[off%dedupChunkSize]
}

func idBits(id RequestID) uint64 { return binary.LittleEndian.Uint64(id[:8]) }

// find returns id's position.
func (d *dedupTable) find(id RequestID) (uint64, bool) {
	if len(d.spill) > 0 {
		if pos, ok := d.spill[id]; ok {
			return pos, true
		}
	}
	if pos, ok := d.index[idBits(id)]; ok && d.slot(pos).id == id {
		return pos, true
	}
	return 0, false
}

// place records id's position: where id is indexed already, else in index
// unless another id holds its 8 bytes there. The slot at pos must hold id.
func (d *dedupTable) place(id RequestID, pos uint64) {
	if _, ok := d.spill[id]; ok {
		d.spill[id] = pos
		return
	}
	b := idBits(id)
	if cur, ok := d.index[b]; ok && cur != pos && d.slot(cur).id != id {
		d.spill[id] = pos
		return
	}
	d.index[b] = pos
}

// move changes an indexed id's position, in the map that holds it.
func (d *dedupTable) move(id RequestID, pos uint64) {
	if _, ok := d.spill[id]; ok {
		d.spill[id] = pos
		return
	}
	d.index[idBits(id)] = pos
}

// unplace forgets id's position.
func (d *dedupTable) unplace(id RequestID) {
	if _, ok := d.spill[id]; ok {
		delete(d.spill, id)
		return
	}
	delete(d.index, idBits(id))
}

// Peek returns the entry for id without changing its age.
func (d *dedupTable) Peek(id RequestID) (dedupEntry, bool) {
	pos, ok := d.find(id)
	if !ok {
		return dedupEntry{}, false
	}
	return d.slot(pos).e, true
}

// Add remembers e for id as the newest entry, forgetting the oldest when the
// table is over capacity.
func (d *dedupTable) Add(id RequestID, e dedupEntry) {
	if e.Op == 0 {
		panic("raftstore: dedup entry without an op")
	}
	if pos, ok := d.find(id); ok {
		d.writable(pos).e.Op = 0
		d.live--
		d.unplace(id)
	}
	if d.tail-d.first == uint64(len(d.chunks))*dedupChunkSize {
		d.chunks = append(d.chunks, &dedupChunk{gen: d.gen})
	}
	*d.writable(d.tail) = dedupSlot{id: id, e: e}
	d.place(id, d.tail)
	d.tail++
	d.live++
	d.evict()
	d.compact()
}

// Resize sets the capacity, forgetting the oldest ids when it shrinks.
func (d *dedupTable) Resize(capacity int) {
	d.cap = max(1, capacity)
	d.evict()
}

// evict forgets the oldest ids while the table is over capacity. Forgotten
// positions are only skipped, never written, so no shared chunk is copied.
func (d *dedupTable) evict() {
	for d.live > d.cap {
		s := d.slot(d.head)
		if s.e.Op != 0 {
			d.unplace(s.id)
			d.live--
		}
		d.head++
	}
	for d.head-d.first >= dedupChunkSize {
		d.chunks[0] = nil
		d.chunks = d.chunks[1:]
		d.first += dedupChunkSize
	}
}

// compact rewrites the chunks without the slots of moved ids once those
// are more than the live ones, so repeated moves cannot grow the table
// without bound. Order is kept; only positions change.
func (d *dedupTable) compact() {
	used := d.tail - d.head
	if used < 2*dedupChunkSize || used <= 2*uint64(d.live) {
		return
	}
	old := *d
	d.chunks, d.first, d.head, d.tail = nil, 0, 0, 0
	d.gen++
	for p := old.head; p < old.tail; p++ {
		s := old.slot(p)
		if s.e.Op == 0 {
			continue
		}
		if d.tail == uint64(len(d.chunks))*dedupChunkSize {
			d.chunks = append(d.chunks, &dedupChunk{gen: d.gen})
		}
		d.chunks[d.tail/dedupChunkSize].slots[d.tail%dedupChunkSize] = *s
		d.move(s.id, d.tail)
		d.tail++
	}
}

// dedupView is a snapshot's read-only view of the table.
type dedupView struct {
	chunks           []*dedupChunk
	first, head, end uint64
	live             int
}

// capture returns a view of the table as it is now; until release, Apply
// copies any chunk of the view before changing it.
func (d *dedupTable) capture() *dedupView {
	v := &dedupView{chunks: append([]*dedupChunk(nil), d.chunks...), first: d.first, head: d.head, end: d.tail, live: d.live}
	d.shared = d.gen
	d.gen++
	return v
}

// release ends the copying that capture started.
func (d *dedupTable) release() { d.shared = 0 }

// each calls fn for every remembered id, oldest first.
func (v *dedupView) each(fn func(id RequestID, e *dedupEntry)) {
	for p := v.head; p < v.end; p++ {
		off := p - v.first
		s := &v.chunks[off/dedupChunkSize].slots[off%dedupChunkSize]
		if s.e.Op != 0 {
			fn(s.id, &s.e)
		}
	}
}
