package state

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

// TestTokenTableAgreesWithAMap drives the token table and a plain map with
// the same random creates, changes and deletes, freezing and thawing it as
// snapshots do, with keys that share their first 8 bytes in even seeds. Every lookup, by key and by id, must agree,
// and a frozen view must hold exactly the tokens as they were at the
// freeze.
func TestTokenTableAgreesWithAMap(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		r := rand.New(rand.NewPCG(seed, seed))
		collide := seed%2 == 0
		tt := newTokenTable(0)
		want := map[TokenKey]tokenState{}
		var keys []TokenKey
		var frozen frozenTokens
		var atFreeze map[TokenKey]tokenState
		nextID := tokenIDBits(1)
		for i := 0; i < 4000; i++ {
			switch n := r.IntN(100); {
			case n < 30 || len(keys) == 0:
				var k TokenKey
				binary.LittleEndian.PutUint64(k[8:], r.Uint64())
				if collide {
					binary.LittleEndian.PutUint64(k[:8], uint64(r.IntN(3)))
				} else {
					binary.LittleEndian.PutUint64(k[:8], r.Uint64())
				}
				if _, ok := want[k]; ok {
					continue
				}
				ts := &tokenState{Key: k, id: nextID, Generation: uint64(i)}
				nextID++
				tt.put(ts)
				want[k] = *ts
				keys = append(keys, k)
			case n < 80:
				k := keys[r.IntN(len(keys))]
				ts := tt.mut(k)
				if _, ok := want[k]; ok != (ts != nil) {
					t.Fatalf("seed %d: mut found %v, want %v", seed, ts != nil, ok)
				}
				if ts != nil {
					ts.UsageCount++
					want[k] = *ts
				}
			case n < 95:
				k := keys[r.IntN(len(keys))]
				tt.del(k)
				delete(want, k)
			case !tt.frozen:
				frozen = tt.freeze()
				atFreeze = map[TokenKey]tokenState{}
				for k, v := range want {
					atFreeze[k] = v
				}
			default:
				got := map[TokenKey]tokenState{}
				frozen.each(func(ts *tokenState) {
					if _, twice := got[ts.Key]; twice {
						t.Fatalf("seed %d: the frozen view holds a token twice", seed)
					}
					got[ts.Key] = *ts
				})
				if len(got) != len(atFreeze) || frozen.len() != len(atFreeze) {
					t.Fatalf("seed %d: frozen view holds %d tokens, %d at the freeze", seed, len(got), len(atFreeze))
				}
				for k, v := range atFreeze {
					if got[k] != v {
						t.Fatalf("seed %d: frozen view changed after the freeze", seed)
					}
				}
				tt.thaw()
			}
			if tt.len() != len(want) {
				t.Fatalf("seed %d, step %d: %d tokens, want %d", seed, i, tt.len(), len(want))
			}
		}
		tt.thaw()
		for _, k := range keys {
			w, ok := want[k]
			g := tt.get(k)
			if ok != (g != nil) || ok && *g != w {
				t.Fatalf("seed %d: get disagrees with the map", seed)
			}
			if ok && tt.byID(w.id) != g {
				t.Fatalf("seed %d: byID and get return different tokens", seed)
			}
		}
		if n := tt.base.len(); n != len(want) {
			t.Fatalf("seed %d: base holds %d tokens, want %d", seed, n, len(want))
		}
	}
}
