package state

// dedupTable remembers the first outcome of each request id, up to a
// capacity that is replicated state (opSetDedupSize), so every node forgets
// the same ids at the same log index.
//
// It behaves exactly like the LRU used only through Peek and Add that
// earlier versions kept: Add of a known id updates it and makes it the
// newest; when the table holds more than its capacity, the oldest id is
// forgotten. Nodes of both versions therefore evict the same ids.
//
// Entries sit in age order in fixed-size chunks; an index (dedupindex.go)
// maps each id to its position. A snapshot captures the list of chunks, not the entries: a
// chunk that a live snapshot holds is copied before Apply changes it, so
// taking a snapshot costs O(chunks) and never stalls decisions.
type dedupTable struct {
	index  dedupIndex
	chunks []*dedupChunk // chunks[0] holds positions first .. first+dedupChunkSize-1
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
	return &dedupTable{index: newDedupIndex(), cap: max(1, capacity), gen: 1}
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

// pos returns the full position whose low 32 bits are low: live positions
// lie in [head, tail), which spans far less than 2^32.
func (d *dedupTable) pos(low uint32) uint64 { return d.head + uint64(low-uint32(d.head)) }

// find returns id's position and its index slot.
func (d *dedupTable) find(id RequestID) (pos uint64, slot int, ok bool) {
	slot, ok = d.index.find(d.index.hashBits(id), func(low uint32) bool {
		pos = d.pos(low)
		return d.slot(pos).id == id
	})
	return pos, slot, ok
}

// Peek returns the entry for id without changing its age.
func (d *dedupTable) Peek(id RequestID) (dedupEntry, bool) {
	pos, _, ok := d.find(id)
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
	if pos, slot, ok := d.find(id); ok {
		d.writable(pos).e.Op = 0
		d.live--
		d.index.remove(slot)
	}
	if d.tail-d.first == uint64(len(d.chunks))*dedupChunkSize {
		d.chunks = append(d.chunks, &dedupChunk{gen: d.gen})
	}
	*d.writable(d.tail) = dedupSlot{id: id, e: e}
	d.index.insert(d.index.hashBits(id), d.tail)
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
			_, slot, _ := d.find(s.id)
			d.index.remove(slot)
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
	d.index.reset()
	for p := old.head; p < old.tail; p++ {
		s := old.slot(p)
		if s.e.Op == 0 {
			continue
		}
		if d.tail == uint64(len(d.chunks))*dedupChunkSize {
			d.chunks = append(d.chunks, &dedupChunk{gen: d.gen})
		}
		d.chunks[d.tail/dedupChunkSize].slots[d.tail%dedupChunkSize] = *s
		d.index.insert(d.index.hashBits(s.id), d.tail)
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
