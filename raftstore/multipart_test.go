package raftstore

import (
	"bytes"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/raftquota/raftquota/internal/clustertest"
	"github.com/raftquota/raftquota/raftstore/state"
)

// TestMultipartAcrossLeaderChanges: uploads reserved, bound, charged,
// completed and aborted through every node while leadership moves: the
// count limit holds, completed objects stay charged exactly, aborted ones
// give everything back once, and every replica ends with the same state.
func TestMultipartAcrossLeaderChanges(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := clustertest.Within(t, 60*time.Second)
	if _, err := c.nodes[0].CreateToken(ctx, state.TokenSpec{Name: "mp", UsageLimit: 3}); err != nil {
		t.Fatal(err)
	}
	key := state.KeyOf("mp")
	var completed, denied atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	// Leadership moves all along; moved says the mover is done, which the
	// test waits for: it must not outlive the cluster.
	moved := make(chan struct{})
	go func() {
		defer close(moved)
		for {
			select {
			case <-stop:
				return
			case <-time.After(150 * time.Millisecond):
			}
			c.transferTo((c.leaderIndex() + 1) % 3)
		}
	}()
	for w := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := func(i int) *Store { return c.nodes[(w+i)%3] }
			id := state.NewRequestID()
			d, err := s(0).Uploads().Reserve(ctx, state.ConsumeRequest{ID: id, Key: key, Units: 1}, time.Hour)
			if err != nil {
				t.Error(err)
				return
			}
			if !d.Allowed {
				denied.Add(1)
				return
			}
			u := state.UploadKeyOf(fmt.Sprintf("b/o%d", w), "id")
			if err := s(1).Uploads().Bind(ctx, id, u); err != nil {
				t.Error(err)
				return
			}
			for p := int32(1); p <= 3; p++ {
				if d, err := s(int(p)).Uploads().ChargePart(ctx, state.NewRequestID(), u, p, 1000, state.TokenKey{}); err != nil || !d.Allowed {
					t.Errorf("part %d: %+v %v", p, d, err)
					return
				}
			}
			if w%2 == 0 {
				if err := s(2).Uploads().BeginComplete(ctx, u, key, time.Hour); err != nil {
					t.Error(err)
					return
				}
				if err := s(0).Uploads().EndComplete(ctx, u, true, []int32{1, 2, 3}); err != nil {
					t.Error(err)
					return
				}
				completed.Add(1)
			} else if err := s(1).Uploads().Abort(ctx, u, key); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-moved
	tok, err := c.nodes[0].Lookup(ctx, "mp")
	if err != nil {
		t.Fatal(err)
	}
	n := completed.Load()
	t.Logf("%d completed, %d denied, usage %d units %d bytes", n, denied.Load(), tok.UsageCount, tok.BytesUsed)
	if n > 3 || tok.UsageCount != n || tok.BytesUsed != 3000*n {
		t.Fatalf("%d uploads completed; the token holds %d units and %d bytes (limit 3)", n, tok.UsageCount, tok.BytesUsed)
	}
	waitApplied(t, c)
	clustertest.Eventually(t, 5*time.Second, "the replicas' states agree", func() bool {
		a, b, cc := snapshotBytes(t, c.nodes[0].fsm), snapshotBytes(t, c.nodes[1].fsm), snapshotBytes(t, c.nodes[2].fsm)
		return bytes.Equal(a, b) && bytes.Equal(a, cc)
	})
	for i, s := range c.nodes {
		if u := s.Uploads().List(); len(u) != 0 || s.Uploads().Open() != 0 {
			t.Errorf("node %d still holds uploads: %+v", i+1, u)
		}
	}
}

// snapshotBytes encodes a snapshot of s's state.
func snapshotBytes(t testing.TB, r *replica) []byte {
	t.Helper()
	snap := r.Machine.Snapshot()
	defer snap.Release()
	var buf bytes.Buffer
	if err := snap.Encode(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
