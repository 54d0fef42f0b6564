package state

// ptrTable is a set of pointers found by a key of the pointee: an
// open-addressing hash table (linear probing, deletion by backward shift)
// of 8-byte slots, nil for empty. At a million entries it costs about 14
// bytes an entry; a Go map from a uint64 to a pointer costs 38, from a
// 32-byte key 100. A lookup compares keys through the pointers, so a miss
// reads a few pointees; hash is given the pointee (for growth and removal),
// and lookups pass a key's hash computed the same way.
type ptrTable[T any] struct {
	slots []*T
	n     int
	bits  uint // len(slots) == 1 << bits
	hash  func(*T) uint64
}

const ptrTableMinBits = 4

func newPtrTable[T any](size int, hash func(*T) uint64) *ptrTable[T] {
	bits := uint(ptrTableMinBits)
	for (1<<bits)*3 < size*4 {
		bits++
	}
	return &ptrTable[T]{slots: make([]*T, 1<<bits), bits: bits, hash: hash}
}

func (x *ptrTable[T]) home(h uint64) uint64 { return h >> (64 - x.bits) }

func (x *ptrTable[T]) mask() uint64 { return uint64(len(x.slots) - 1) }

// find returns the slot of the entry with hash h that match accepts.
func (x *ptrTable[T]) find(h uint64, match func(*T) bool) (int, bool) {
	for i := x.home(h); ; i = (i + 1) & x.mask() {
		p := x.slots[i]
		if p == nil {
			return 0, false
		}
		if match(p) {
			return int(i), true
		}
	}
}

// get returns the entry in slot i.
func (x *ptrTable[T]) get(i int) *T { return x.slots[i] }

// replace puts p, whose key is the same, in slot i.
func (x *ptrTable[T]) replace(i int, p *T) { x.slots[i] = p }

// insert adds p, whose key is absent.
func (x *ptrTable[T]) insert(p *T) {
	if (x.n+1)*4 > len(x.slots)*3 {
		x.grow()
	}
	x.put(p)
	x.n++
}

// insertNew adds p, whose hash is h, unless match accepts an entry already
// there: one walk of the chain for both.
func (x *ptrTable[T]) insertNew(p *T, h uint64, match func(*T) bool) bool {
	if (x.n+1)*4 > len(x.slots)*3 {
		x.grow()
	}
	i := x.home(h)
	for ; x.slots[i] != nil; i = (i + 1) & x.mask() {
		if match(x.slots[i]) {
			return false
		}
	}
	x.slots[i] = p
	x.n++
	return true
}

func (x *ptrTable[T]) put(p *T) {
	i := x.home(x.hash(p))
	for x.slots[i] != nil {
		i = (i + 1) & x.mask()
	}
	x.slots[i] = p
}

func (x *ptrTable[T]) grow() {
	old := x.slots
	x.bits++
	x.slots = make([]*T, 1<<x.bits)
	for _, p := range old {
		if p != nil {
			x.put(p)
		}
	}
}

// remove empties slot i, moving later slots of the chain back so no
// lookup stops early.
func (x *ptrTable[T]) remove(i int) {
	m := x.mask()
	hole := uint64(i)
	for j := (hole + 1) & m; x.slots[j] != nil; j = (j + 1) & m {
		h := x.home(x.hash(x.slots[j]))
		// The entry at j may fill the hole unless its home lies
		// cyclically in (hole, j].
		if (j-h)&m >= (j-hole)&m {
			x.slots[hole] = x.slots[j]
			hole = j
		}
	}
	x.slots[hole] = nil
	x.n--
}

func (x *ptrTable[T]) len() int { return x.n }

// each calls fn for every entry; fn must not change the table.
func (x *ptrTable[T]) each(fn func(*T)) {
	for _, p := range x.slots {
		if p != nil {
			fn(p)
		}
	}
}
