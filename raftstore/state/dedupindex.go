package state

import "hash/maphash"

// dedupIndex finds a request id's position in the dedup table's ring. It
// is an open-addressing hash table (linear probing, deletion by backward
// shift) of 8-byte slots: the high 32 bits of the id's hash, then the low
// 32 bits of its position; 0 is an empty slot: a fraction of what a Go map
// from the id's first 8 bytes costs (BenchmarkDedupMemory; the numbers are
// in BENCHMARKS.md).
//
// A slot's home is the top bits of its hash bits, so the table grows
// without reading the ring; the bits below the home tell most ids in one
// chain apart without a look at the ring, which holds the full id. The
// hash is keyed with a random seed per table: request ids can come from
// clients (idempotency keys), and ids chosen to share a chain would
// otherwise make every lookup walk it. Nodes lay their tables out
// differently; nothing but lookups depends on the layout.
type dedupIndex struct {
	slots []uint64
	n     int
	bits  uint // len(slots) == 1 << bits
	seed  maphash.Seed
}

const dedupIndexMinBits = 4

func newDedupIndex() dedupIndex {
	return dedupIndex{slots: make([]uint64, 1<<dedupIndexMinBits), bits: dedupIndexMinBits, seed: maphash.MakeSeed()}
}

// hashBits are the 32 bits of id's hash a slot keeps, never 0.
func (x *dedupIndex) hashBits(id RequestID) uint32 {
	return uint32(maphash.Comparable(x.seed, id)>>32) | 1
}

func (x *dedupIndex) home(hb uint32) uint64 { return uint64(hb >> (32 - x.bits)) }

func (x *dedupIndex) mask() uint64 { return uint64(len(x.slots) - 1) }

// find returns the slot of the id with hash bits hb for which isID(the
// low 32 bits of its position) holds.
func (x *dedupIndex) find(hb uint32, isID func(low uint32) bool) (int, bool) {
	for i := x.home(hb); ; i = (i + 1) & x.mask() {
		s := x.slots[i]
		if s == 0 {
			return 0, false
		}
		if uint32(s>>32) == hb && isID(uint32(s)) {
			return int(i), true
		}
	}
}

// insert adds an id known to be absent.
func (x *dedupIndex) insert(hb uint32, pos uint64) {
	if (x.n+1)*4 > len(x.slots)*3 {
		x.grow()
	}
	x.put(uint64(hb)<<32 | uint64(uint32(pos)))
	x.n++
}

func (x *dedupIndex) put(s uint64) {
	i := x.home(uint32(s >> 32))
	for x.slots[i] != 0 {
		i = (i + 1) & x.mask()
	}
	x.slots[i] = s
}

func (x *dedupIndex) grow() {
	old := x.slots
	x.bits++
	x.slots = make([]uint64, 1<<x.bits)
	for _, s := range old {
		if s != 0 {
			x.put(s)
		}
	}
}

// remove empties slot i, moving later slots of the chain back so no
// lookup stops early.
func (x *dedupIndex) remove(i int) {
	m := x.mask()
	hole := uint64(i)
	for j := (hole + 1) & m; x.slots[j] != 0; j = (j + 1) & m {
		h := x.home(uint32(x.slots[j] >> 32))
		// The slot at j may fill the hole unless its home lies cyclically
		// in (hole, j].
		if (j-h)&m >= (j-hole)&m {
			x.slots[hole] = x.slots[j]
			hole = j
		}
	}
	x.slots[hole] = 0
	x.n--
}

// reset empties the index, keeping its size.
func (x *dedupIndex) reset() {
	clear(x.slots)
	x.n = 0
}
