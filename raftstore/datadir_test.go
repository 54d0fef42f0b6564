package raftstore

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raftquota/raftquota/internal/clustertest"
	"github.com/raftquota/raftquota/raftstore/state"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// damagedNode writes a node's data dir with raft.db holding its log and two
// snapshots, and returns the dir.
func damagedNode(t *testing.T) string {
	dir := t.TempDir()
	ctx := clustertest.Within(t, 30*time.Second)
	s, err := Open(Config{NodeID: "n1", DataDir: dir, BindAddr: "127.0.0.1:0", Logger: zap.NewNop(), LogStore: LogStoreBolt, SnapshotThreshold: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateToken(ctx, state.TokenSpec{Name: "kept", UsageLimit: 100}); err != nil {
		t.Fatal(err)
	}
	for round := range 2 {
		for range 5 {
			if _, err := s.Consume(ctx, state.ConsumeRequest{ID: state.NewRequestID(), Token: "kept", Units: 1}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.Snapshot(); err != nil {
			t.Fatalf("snapshot %d: %v", round, err)
		}
	}
	s.Close()
	return dir
}

func snapshotDirs(t *testing.T, dir string) []string {
	ds, _ := filepath.Glob(filepath.Join(dir, "snapshots", "snapshots", "*"))
	if len(ds) != 2 {
		t.Fatalf("%d snapshots, want 2: %v", len(ds), ds)
	}
	return ds // oldest first
}

func flip(t *testing.T, path string, off int64) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 64)
	f.ReadAt(b, off)
	for i := range b {
		b[i] ^= 0xA5
	}
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// A damaged raft.db is named, with the way to recover, and never faults
// inside bbolt; the node does not start.
func TestDamagedRaftDBIsNamedNotPanickedOn(t *testing.T) {
	dir := damagedNode(t)
	db := filepath.Join(dir, boltFile)
	good, _ := os.ReadFile(db)
	for _, damage := range []struct {
		name string
		do   func()
		want string
	}{
		{"cut to half", func() { os.Truncate(db, int64(len(good)/2)) }, "cut short"},
		{"page headers overwritten", func() {
			for p := int64(2); p*4096 < int64(len(good)); p++ {
				flip(t, db, p*4096)
			}
		}, "page"},
		{"both meta pages", func() { flip(t, db, 16); flip(t, db, 4096+16) }, "both meta pages"},
	} {
		t.Run(damage.name, func(t *testing.T) {
			os.WriteFile(db, good, 0o600)
			damage.do()
			_, err := Open(Config{NodeID: "n1", DataDir: dir, BindAddr: "127.0.0.1:0", Logger: zap.NewNop(), LogStore: LogStoreBolt})
			var de *DamageError
			if !errors.As(err, &de) || de.Path != db || !strings.Contains(err.Error(), damage.want) || !strings.Contains(err.Error(), "Recovering a node") {
				t.Fatalf("opening a node whose raft.db is %s: %v", damage.name, err)
			}
		})
	}
	os.WriteFile(db, good, 0o600)
	if _, err := CheckDataDir(dir, false); err != nil {
		t.Fatalf("the undamaged data dir: %v", err)
	}
}

// A damaged newest snapshot with a good older one is moved aside and the
// node starts from the older one, its state whole (the log holds the
// rest); with no good snapshot the node does not start, and says which.
func TestDamagedSnapshotFallsBackOrStops(t *testing.T) {
	dir := damagedNode(t)
	snaps := snapshotDirs(t, dir)
	flip(t, filepath.Join(snaps[1], "state.bin"), 10)
	check, err := CheckDataDir(dir, false)
	if err != nil || !strings.Contains(strings.Join(check.Lines, "\n"), "CRC mismatch") {
		t.Fatalf("check of a dir with one damaged snapshot: %v\n%s", err, strings.Join(check.Lines, "\n"))
	}
	s, err := Open(Config{NodeID: "n1", DataDir: dir, BindAddr: "127.0.0.1:0", Logger: zap.NewNop(), LogStore: LogStoreBolt})
	if err != nil {
		t.Fatalf("opening with an older good snapshot: %v", err)
	}
	ctx := clustertest.Within(t, 20*time.Second)
	if err := s.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	if tok, err := s.Lookup(ctx, "kept"); err != nil || tok.UsageCount != 10 {
		t.Fatalf("state after falling back: %+v %v", tok, err)
	}
	s.Close()
	if _, err := os.Stat(filepath.Join(dir, "snapshots", "snapshots.damaged", filepath.Base(snaps[1]))); err != nil {
		t.Fatalf("the damaged snapshot was not moved aside: %v", err)
	}

	dir = damagedNode(t)
	for _, d := range snapshotDirs(t, dir) {
		flip(t, filepath.Join(d, "state.bin"), 10)
	}
	_, err = Open(Config{NodeID: "n1", DataDir: dir, BindAddr: "127.0.0.1:0", Logger: zap.NewNop(), LogStore: LogStoreBolt})
	var de *DamageError
	if !errors.As(err, &de) || !strings.Contains(err.Error(), "no snapshot is readable") {
		t.Fatalf("opening with every snapshot damaged: %v", err)
	}
}

// A member whose data dir was wiped, started again with the same config,
// rejoins: it says so (not that it made a new cluster), copies the
// cluster's state, and the cluster keeps deciding.
func TestWipedMemberRejoinsAndSaysSo(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	c := newTestClusterWith(t, 3, zap.New(core), nil)
	ctx := clustertest.Within(t, 60*time.Second)
	clustertest.Eventually(t, 10*time.Second, "a new cluster's nodes each say they started one", func() bool {
		return logs.FilterMessageSnippet("started a new cluster").Len() >= 3
	})
	if _, err := c.nodes[0].CreateToken(ctx, state.TokenSpec{Name: "kept", UsageLimit: 1000}); err != nil {
		t.Fatal(err)
	}
	for range 30 {
		if _, err := c.nodes[0].Consume(ctx, state.ConsumeRequest{ID: state.NewRequestID(), Token: "kept", Units: 1}); err != nil {
			t.Fatal(err)
		}
	}
	victim := (c.leaderIndex() + 1) % 3
	c.stop(victim)
	if err := os.RemoveAll(c.config(victim).DataDir); err != nil {
		t.Fatal(err)
	}
	logs.TakeAll()
	c.reopen(victim)
	clustertest.Eventually(t, 30*time.Second, "the wiped member caught up", func() bool {
		tok, err := c.nodes[victim].Lookup(ctx, "kept")
		return err == nil && tok.UsageCount == 30 && c.nodes[victim].Stats().AppliedIndex > 16
	})
	for deadline := time.Now().Add(20 * time.Second); ; {
		said := logs.FilterMessageSnippet("rejoined an existing cluster")
		if said.Len() > 0 {
			if e := said.All()[0]; said.Len() != 1 || e.LoggerName != c.peers[victim].ID {
				t.Fatalf("rejoin said by the wrong nodes: %v", said.All())
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the wiped member never said it rejoined; it said: %v", logs.All())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := logs.FilterMessageSnippet("new").FilterLevelExact(zapcore.WarnLevel).Len(); n != 0 {
		t.Fatalf("the rejoining member warned of a new cluster %d times", n)
	}
}
