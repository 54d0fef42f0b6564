package raftstore

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/raftquota/raftquota/internal/clustertest"
	"github.com/raftquota/raftquota/raftstore/state"
	"go.uber.org/zap"
)

func boltLogs(t *testing.T, dir string, first, last uint64) {
	t.Helper()
	b, err := raftboltdb.NewBoltStore(filepath.Join(dir, boltFile))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var logs []*raft.Log
	for i := first; i <= last; i++ {
		logs = append(logs, &raft.Log{Index: i, Term: 2, Type: raft.LogCommand, Data: []byte(fmt.Sprintf("entry %d", i))})
	}
	if err := b.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	if err := b.SetUint64([]byte("CurrentTerm"), 2); err != nil {
		t.Fatal(err)
	}
}

func checkWAL(t *testing.T, ls *logStores, first, last uint64) {
	t.Helper()
	if f, _ := ls.wal.FirstIndex(); f != first {
		t.Errorf("wal first index %d, want %d", f, first)
	}
	if l, _ := ls.wal.LastIndex(); l != last {
		t.Errorf("wal last index %d, want %d", l, last)
	}
	for i := first; i <= last; i++ {
		var got raft.Log
		if err := ls.wal.GetLog(i, &got); err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		if want := fmt.Sprintf("entry %d", i); got.Term != 2 || !bytes.Equal(got.Data, []byte(want)) {
			t.Fatalf("entry %d: term %d data %q, want term 2 data %q", i, got.Term, got.Data, want)
		}
	}
	if l, _ := ls.bolt.LastIndex(); l != 0 {
		t.Errorf("raft.db still holds a log up to %d", l)
	}
	if term, err := ls.bolt.GetUint64([]byte("CurrentTerm")); err != nil || term != 2 {
		t.Errorf("stable store: term %d, %v; want 2", term, err)
	}
}

// TestLogMovesFromBoltIntoWAL: a data dir written before the WAL (its log in
// raft.db) opens with its log moved into wal/, whole, and dropped from
// raft.db; the term stays in raft.db. A half-written move from a crash is
// discarded and redone, and a crash after the move but before raft.db was
// emptied neither loses nor duplicates entries.
func TestLogMovesFromBoltIntoWAL(t *testing.T) {
	dir := t.TempDir()
	boltLogs(t, dir, 5, 300)
	// What a crash in the middle of a move leaves.
	if err := os.MkdirAll(filepath.Join(dir, walDir+".new"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, walDir+".new", "00000000000000000001-0000000000000005.wal"), []byte("torn"), 0o600); err != nil {
		t.Fatal(err)
	}

	ls, err := openLogStores(dir, LogStoreWAL, hclog.NewNullLogger(), zap.NewNop(), 0)
	if err != nil {
		t.Fatal(err)
	}
	checkWAL(t, ls, 5, 300)
	if exists(filepath.Join(dir, walDir+".new")) {
		t.Error("the half-written move is still there")
	}
	if err := ls.close(); err != nil {
		t.Fatal(err)
	}
	if !HasState(dir) {
		t.Error("HasState: false for a data dir with a log")
	}

	// A crash after the WAL was renamed into place, before raft.db was
	// emptied: raft.db holds the old log again.
	boltLogs(t, dir, 5, 300)
	ls, err = openLogStores(dir, LogStoreWAL, hclog.NewNullLogger(), zap.NewNop(), 0)
	if err != nil {
		t.Fatal(err)
	}
	checkWAL(t, ls, 5, 300)
	// New entries go to the WAL.
	if err := ls.wal.StoreLogs([]*raft.Log{{Index: 301, Term: 2, Data: []byte("entry 301")}}); err != nil {
		t.Fatal(err)
	}
	ls.close()
	ls, err = openLogStores(dir, LogStoreWAL, hclog.NewNullLogger(), zap.NewNop(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ls.close()
	checkWAL(t, ls, 5, 301)
}

// TestNewDataDirHasNoState: an empty data dir opens with an empty WAL.
func TestNewDataDirHasNoState(t *testing.T) {
	dir := t.TempDir()
	if HasState(dir) {
		t.Fatal("HasState: true for an empty dir")
	}
	ls, err := openLogStores(dir, LogStoreWAL, hclog.NewNullLogger(), zap.NewNop(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ls.close()
	if l, _ := ls.wal.LastIndex(); l != 0 {
		t.Fatalf("new wal holds a log up to %d", l)
	}
	if !exists(filepath.Join(dir, walDir)) {
		t.Fatal("no wal dir")
	}
}

// TestLogMovesBackFromWALIntoBolt: switching the log store back to boltdb
// moves the WAL's log into raft.db on the next start, and removes wal/. A
// crash in the middle (raft.db holding a partial copy, wal/ still there)
// is redone from the WAL.
func TestLogMovesBackFromWALIntoBolt(t *testing.T) {
	dir := t.TempDir()
	boltLogs(t, dir, 5, 300)
	ls, err := openLogStores(dir, LogStoreWAL, hclog.NewNullLogger(), zap.NewNop(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := ls.wal.StoreLogs([]*raft.Log{{Index: 301, Term: 2, Data: []byte("entry 301")}}); err != nil {
		t.Fatal(err)
	}
	ls.close()

	// What a crash during the move back leaves: a partial copy in raft.db.
	boltLogs(t, dir, 5, 20)

	ls, err = openLogStores(dir, LogStoreBolt, hclog.NewNullLogger(), zap.NewNop(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ls.close()
	if ls.wal != nil || exists(filepath.Join(dir, walDir)) || exists(filepath.Join(dir, walDir+".old")) {
		t.Fatal("wal/ is still there after the move back")
	}
	if f, _ := ls.bolt.FirstIndex(); f != 5 {
		t.Errorf("raft.db first index %d, want 5", f)
	}
	if l, _ := ls.bolt.LastIndex(); l != 301 {
		t.Errorf("raft.db last index %d, want 301", l)
	}
	for i := uint64(5); i <= 301; i++ {
		var got raft.Log
		if err := ls.bolt.GetLog(i, &got); err != nil || string(got.Data) != fmt.Sprintf("entry %d", i) {
			t.Fatalf("entry %d: %q, %v", i, got.Data, err)
		}
	}
	if term, _ := ls.bolt.GetUint64([]byte("CurrentTerm")); term != 2 {
		t.Errorf("term %d, want 2", term)
	}
}

// TestSwitchingTheLogStoreKeepsTheState: a node runs on the WAL, restarts
// on raft.db, then on the WAL again, on raft.db, and on the default (the
// WAL); every start sees what the last answered, and takes new decisions.
func TestSwitchingTheLogStoreKeepsTheState(t *testing.T) {
	dir := t.TempDir()
	ctx := clustertest.Within(t, 60*time.Second)
	open := func(kind string) *Store {
		s, err := Open(Config{NodeID: "n1", DataDir: dir, BindAddr: "127.0.0.1:0", Logger: zap.NewNop(), LogStore: kind, SnapshotThreshold: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.WaitForLeader(ctx); err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open(LogStoreWAL)
	if _, err := s.CreateToken(ctx, state.TokenSpec{Name: "switch", UsageLimit: 100}); err != nil {
		t.Fatal(err)
	}
	want := int64(0)
	for _, kind := range []string{LogStoreWAL, LogStoreBolt, LogStoreWAL, LogStoreBolt, ""} {
		for range 3 {
			if d, err := s.Consume(ctx, state.ConsumeRequest{ID: state.NewRequestID(), Token: "switch", Units: 1}); err != nil || !d.Allowed {
				t.Fatalf("%s: consume: %+v, %v", kind, d, err)
			}
			want++
		}
		s.Close()
		s = open(kind)
		tok, err := s.Lookup(ctx, "switch")
		if err != nil || tok.UsageCount != want {
			t.Fatalf("restarted on %q: usage %v, %v; want %d", kind, tok, err, want)
		}
		if onWAL := exists(filepath.Join(dir, walDir)); onWAL != (kind != LogStoreBolt) {
			t.Fatalf("restarted on %q: wal/ there: %v", kind, onWAL)
		}
	}
	s.Close()
}

// TestAFollowerBehindTheLeadersSnapshotCatchesUp: a follower down while
// the leader snapshots and drops the entries it missed is sent the
// snapshot when it is back, then the entries after it, and takes new ones
// from then on, with either log store. raft-wal refuses an append that
// does not follow its last entry, so after installing the snapshot the
// follower must empty its log; hashicorp/raft does so only for a log store
// that says it is monotonic.
func TestAFollowerBehindTheLeadersSnapshotCatchesUp(t *testing.T) {
	for _, kind := range []string{LogStoreWAL, LogStoreBolt} {
		t.Run(kind, func(t *testing.T) {
			c := newTestClusterWith(t, 3, nil, func(i int, cfg *Config) {
				cfg.LogStore = kind
				cfg.trailingLogs = 8
				cfg.walSegmentSize = 4 << 10 // raft-wal drops whole segments only
				cfg.logCheckInterval = 100 * time.Millisecond
				cfg.SnapshotThreshold = 1 << 20 // snapshots only when asked
			})
			ctx := clustertest.Within(t, 60*time.Second)
			if _, err := c.nodes[0].CreateToken(ctx, state.TokenSpec{Name: "a"}); err != nil {
				t.Fatal(err)
			}
			leader := c.leaderIndex()
			f := (leader + 1) % 3
			consume := func(n int) {
				for range n {
					if _, err := c.nodes[leader].Consume(ctx, state.ConsumeRequest{ID: state.NewRequestID(), Token: "a", Units: 1}); err != nil {
						t.Fatal(err)
					}
				}
			}
			consume(5)
			waitApplied(t, c)
			c.stop(f)
			consume(200)
			if _, err := c.nodes[leader].Snapshot(); err != nil {
				t.Fatal(err)
			}
			c.reopen(f)
			waitApplied(t, c)
			if got := c.nodes[f].raft.Stats()["last_snapshot_index"]; got == "0" {
				t.Fatal("the follower caught up without a snapshot: the test proved nothing")
			}
			consume(5)
			waitApplied(t, c)
			// Its log starts after the snapshot now, and opens again.
			c.stop(f)
			c.reopen(f)
			consume(5)
			waitApplied(t, c)
			// The log check goes on over the emptied log and fails nowhere.
			ok := c.nodes[f].Stats().LogChecksOK
			clustertest.Eventually(t, 20*time.Second, "the follower's log checked again", func() bool { return c.nodes[f].Stats().LogChecksOK >= ok+2 })
			for i, n := range c.nodes {
				if st := n.Stats(); st.LogChecksFailed != 0 {
					t.Errorf("node %d: %d log checks failed", i, st.LogChecksFailed)
				}
			}
			tok, err := c.nodes[f].Lookup(ctx, "a")
			if err != nil {
				t.Fatal(err)
			}
			if tok.UsageCount != 215 {
				t.Fatalf("the follower's usage is %d, want 215", tok.UsageCount)
			}
		})
	}
}
