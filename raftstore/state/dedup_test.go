package state

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// TestDedupTableForgetsWhatTheOldLRUForgot drives the table and the LRU
// that earlier versions used (Peek and Add only) with the same random
// operations: both must remember exactly the same ids, in the same order,
// so old and new nodes in one cluster decide retries alike. In even seeds
// every new id shares its first 8 bytes (what the index is keyed by) with
// many others, as ids made on purpose could.
func TestDedupTableForgetsWhatTheOldLRUForgot(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		collide := seed%2 == 0
		r := rand.New(rand.NewPCG(seed, seed))
		capacity := 1 + r.IntN(3000)
		lru, _ := simplelru.NewLRU[RequestID, dedupEntry](capacity, nil)
		d := newDedupTable(capacity)
		var ids []RequestID
		for i := 0; i < 20000; i++ {
			var id RequestID
			if len(ids) > 0 && r.IntN(3) == 0 {
				id = ids[r.IntN(len(ids))] // a known id moves to the newest end
			} else {
				id = NewRequestID()
				if collide {
					binary.LittleEndian.PutUint64(id[:8], uint64(r.IntN(4)))
				}
				ids = append(ids, id)
			}
			e := dedupEntry{Op: OpConsume, Units: int64(i)}
			lru.Add(id, e)
			d.Add(id, e)
			if r.IntN(500) == 0 {
				capacity = 1 + r.IntN(3000)
				lru.Resize(capacity)
				d.Resize(capacity)
			}
		}
		var got []RequestID
		d.capture().each(func(id RequestID, e *dedupEntry) {
			got = append(got, id)
			if w, ok := lru.Peek(id); !ok || w != *e {
				t.Fatalf("seed %d: entry for %s differs", seed, id)
			}
		})
		d.release()
		for _, id := range ids {
			w, wok := lru.Peek(id)
			g, gok := d.Peek(id)
			if wok != gok || w != g {
				t.Fatalf("seed %d: Peek(%x) = %v %v, the LRU says %v %v", seed, id, g, gok, w, wok)
			}
		}
		want := lru.Keys()
		if fmt.Sprint(got) != fmt.Sprint(want) || d.Len() != len(want) {
			t.Fatalf("seed %d: table holds %d ids, LRU %d, or in another order", seed, len(got), len(want))
		}
		if used := d.tail - d.head; used > 2*uint64(max(d.live, dedupChunkSize)) {
			t.Fatalf("seed %d: %d slots used for %d ids: moved ids are not compacted", seed, used, d.live)
		}
	}
}

// TestDedupIndexAgreesWithAMap drives the index with hash bits from a
// small set (long chains that wrap around the table's end, all ids in a
// few homes) through inserts, removes and growth, against a map.
func TestDedupIndexAgreesWithAMap(t *testing.T) {
	for seed := uint64(1); seed <= 10; seed++ {
		r := rand.New(rand.NewPCG(seed, seed))
		x := newDedupIndex()
		want := map[uint64]uint32{} // position -> hash bits
		next := uint64(1)
		for i := 0; i < 5000; i++ {
			if len(want) > 0 && r.IntN(5) < 2 {
				for pos, hb := range want {
					slot, ok := x.find(hb, func(low uint32) bool { return uint64(low) == pos })
					if !ok {
						t.Fatalf("seed %d: position %d not found before removal", seed, pos)
					}
					x.remove(slot)
					delete(want, pos)
					break
				}
			} else {
				hb := uint32(r.IntN(8))<<29 | 1
				if r.IntN(2) == 0 {
					hb = ^uint32(0) // the table's last home: chains wrap
				}
				x.insert(hb, next)
				want[next] = hb
				next++
			}
			if x.n != len(want) {
				t.Fatalf("seed %d: index holds %d, want %d", seed, x.n, len(want))
			}
		}
		for pos, hb := range want {
			if _, ok := x.find(hb, func(low uint32) bool { return uint64(low) == pos }); !ok {
				t.Fatalf("seed %d: position %d lost", seed, pos)
			}
		}
		// Hash bits no entry has are never found, whatever the ring says.
		if _, ok := x.find(0x10000001, func(uint32) bool { return true }); ok {
			t.Fatalf("seed %d: found hash bits no entry has", seed)
		}
	}
}

// TestSnapshotIsTheStateAtCapture: Apply goes on while a snapshot is
// persisted; the snapshot still holds the state at the moment it was
// captured, and the live state is unaffected.
func TestSnapshotIsTheStateAtCapture(t *testing.T) {
	tf := newTestFSM(t)
	tf.f.dedup.Resize(5000)
	for i := 0; i < 300; i++ {
		tf.create(t0, TokenSpec{Name: fmt.Sprintf("t%d", i), UsageLimit: 1000})
	}
	for i := 0; i < 3000; i++ {
		tf.consume(t0, fmt.Sprintf("t%d", i%300), 1, 0)
	}
	want := snapshotBytes(t, tf.f)

	snap := tf.f.Snapshot()
	// Changes of every kind while the snapshot is open.
	for i := 0; i < 3000; i++ {
		tf.consume(t0.Add(time.Second), fmt.Sprintf("t%d", i%300), 1, 0)
	}
	tf.op(t0, OpDelete, "t1")
	tf.op(t0, OpRevoke, "t2")
	tf.create(t0, TokenSpec{Name: "new", UsageLimit: 1})
	var buf bytes.Buffer
	if err := snap.Encode(&buf); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatal("the snapshot changed with writes made after it was captured")
	}

	// The live state has every change, and a fresh snapshot of it restores
	// to the same bytes.
	if tok, _ := tf.f.tokenNamed("t0"); tok.UsageCount != 20 {
		t.Fatalf("t0 used %d, want 20", tok.UsageCount)
	}
	if _, ok := tf.f.tokenNamed("t1"); ok {
		t.Fatal("deleted token is back")
	}
	if tok, _ := tf.f.tokenNamed("new"); tok == nil {
		t.Fatal("token created during the snapshot is missing")
	}
	after := snapshotBytes(t, tf.f)
	g := New(nopLogger())
	if err := g.Restore(bytes.NewReader(after)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(snapshotBytes(t, g), after) {
		t.Fatal("restored state differs")
	}
}
