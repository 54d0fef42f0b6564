package state

import (
	"math/rand/v2"
	"testing"
)

// TestPtrTableAgreesWithAMap drives the table with hashes from a small set
// (long chains, some wrapping around the table's end) through inserts,
// removes and growth, against a map.
func TestPtrTableAgreesWithAMap(t *testing.T) {
	type entry struct{ key, hash uint64 }
	for seed := uint64(1); seed <= 10; seed++ {
		r := rand.New(rand.NewPCG(seed, seed))
		x := newPtrTable(0, func(e *entry) uint64 { return e.hash })
		want := map[uint64]*entry{}
		find := func(e *entry) (int, bool) {
			return x.find(e.hash, func(p *entry) bool { return p.key == e.key })
		}
		for i := uint64(0); i < 5000; i++ {
			if len(want) > 0 && r.IntN(5) < 2 {
				for k, e := range want {
					slot, ok := find(e)
					if !ok {
						t.Fatalf("seed %d: key %d not found before removal", seed, k)
					}
					x.remove(slot)
					delete(want, k)
					break
				}
				continue
			}
			h := uint64(r.IntN(8)) << 61
			if r.IntN(2) == 0 {
				h = ^uint64(0) // the table's last home: chains wrap
			}
			e := &entry{key: i, hash: h}
			x.insert(e)
			want[i] = e
			if x.len() != len(want) {
				t.Fatalf("seed %d: table holds %d, want %d", seed, x.len(), len(want))
			}
		}
		for k, e := range want {
			if slot, ok := find(e); !ok || x.get(slot) != e {
				t.Fatalf("seed %d: key %d lost", seed, k)
			}
		}
		n := 0
		x.each(func(*entry) { n++ })
		if n != len(want) {
			t.Fatalf("seed %d: each visits %d, want %d", seed, n, len(want))
		}
	}
}
