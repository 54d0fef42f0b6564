package raftstore

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
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

	ls, err := openLogStores(dir, hclog.NewNullLogger(), zap.NewNop(), 0)
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
	ls, err = openLogStores(dir, hclog.NewNullLogger(), zap.NewNop(), 0)
	if err != nil {
		t.Fatal(err)
	}
	checkWAL(t, ls, 5, 300)
	// New entries go to the WAL.
	if err := ls.wal.StoreLogs([]*raft.Log{{Index: 301, Term: 2, Data: []byte("entry 301")}}); err != nil {
		t.Fatal(err)
	}
	ls.close()
	ls, err = openLogStores(dir, hclog.NewNullLogger(), zap.NewNop(), 0)
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
	ls, err := openLogStores(dir, hclog.NewNullLogger(), zap.NewNop(), 0)
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
