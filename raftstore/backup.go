package raftstore

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/raft"
	"github.com/raftquota/raftquota/raftstore/state"
)

// A backup is a snapshot of the whole state with a header, like `etcdctl
// snapshot save`: a first line naming the format, a JSON line describing
// the backup, then the state in the snapshot encoding (snapshot.go).
// Restoring one seeds the data dirs of a new cluster; see RestoreBackup.
const backupMagic = "RAFTQUOTA-BACKUP 1\n"

// BackupInfo describes a backup.
type BackupInfo struct {
	// Index is the log index the backup's state includes everything up to,
	// on the cluster it was taken from.
	Index     uint64    `json:"index"`
	Term      uint64    `json:"term"`
	NodeID    string    `json:"node_id"`
	CreatedAt time.Time `json:"created_at"`
	Size      int64     `json:"size"`
	Tokens    int       `json:"tokens"`
}

// Backup writes a backup of the cluster's state to w. It is consistent and
// complete: it holds everything the leader had committed when the backup
// began (the same read barrier as a linearizable read), from this node's
// replica once it has applied that far.
func (s *Store) Backup(ctx context.Context, w io.Writer) (BackupInfo, error) {
	point, err := s.reads().point(ctx)
	if err != nil {
		return BackupInfo{}, err
	}
	// raft's AppliedIndex counts entries handed to the FSM, and a snapshot
	// request can be served before entries still on their way: the
	// snapshot itself must reach the index.
	var meta *raft.SnapshotMeta
	var rc io.ReadCloser
	for {
		if s.raft.AppliedIndex() >= point.Index {
			var err error
			if meta, rc, err = s.latestSnapshot(); err != nil {
				return BackupInfo{}, err
			}
			if meta.Index >= point.Index {
				break
			}
			rc.Close()
		}
		select {
		case <-ctx.Done():
			return BackupInfo{}, fmt.Errorf("%w: this node has not caught up to index %d", state.ErrUnavailable, point.Index)
		case <-time.After(5 * time.Millisecond):
		}
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return BackupInfo{}, fmt.Errorf("reading snapshot: %w", err)
	}
	m, err := state.ReadSnapshot(bytes.NewReader(data))
	if err != nil {
		return BackupInfo{}, fmt.Errorf("checking snapshot: %w", err)
	}
	info := BackupInfo{Index: meta.Index, Term: meta.Term, NodeID: s.cfg.NodeID, CreatedAt: time.Now().UTC(), Size: int64(len(data)), Tokens: m.Counts().Tokens}
	head, _ := json.Marshal(info)
	if _, err := io.WriteString(w, backupMagic); err != nil {
		return info, err
	}
	if _, err := w.Write(append(head, '\n')); err != nil {
		return info, err
	}
	_, err = w.Write(data)
	return info, err
}

// latestSnapshot takes a snapshot now (or, when nothing was applied since
// the last one, opens that one).
func (s *node) latestSnapshot() (*raft.SnapshotMeta, io.ReadCloser, error) {
	f := s.raft.Snapshot()
	err := f.Error()
	if err == nil {
		return f.Open()
	}
	if !errors.Is(err, raft.ErrNothingNewToSnapshot) {
		return nil, nil, fmt.Errorf("taking snapshot: %w", err)
	}
	list, err := s.snaps.List()
	if err != nil || len(list) == 0 {
		return nil, nil, fmt.Errorf("no snapshot to back up: %v", err)
	}
	return s.snaps.Open(list[0].ID)
}

// ReadBackup reads a backup's header and state, checking that the state
// decodes, and returns its info and tokens (sorted by name).
func ReadBackup(r io.Reader) (BackupInfo, []state.Token, []byte, error) {
	br := bufio.NewReader(r)
	magic, err := br.ReadString('\n')
	if err != nil || magic != backupMagic {
		return BackupInfo{}, nil, nil, fmt.Errorf("not a raftquota backup (it should start with %q)", backupMagic[:len(backupMagic)-1])
	}
	line, err := br.ReadBytes('\n')
	if err != nil {
		return BackupInfo{}, nil, nil, fmt.Errorf("reading backup header: %w", err)
	}
	var info BackupInfo
	if err := json.Unmarshal(line, &info); err != nil {
		return BackupInfo{}, nil, nil, fmt.Errorf("reading backup header: %w", err)
	}
	data, err := io.ReadAll(br)
	if err != nil {
		return info, nil, nil, err
	}
	if int64(len(data)) != info.Size {
		return info, nil, nil, fmt.Errorf("backup is %d bytes of state, its header says %d: truncated or damaged", len(data), info.Size)
	}
	f, err := state.ReadSnapshot(bytes.NewReader(data))
	if err != nil {
		return info, nil, nil, fmt.Errorf("backup state: %w", err)
	}
	return info, f.Tokens(), data, nil
}

// RestoreBackup seeds an empty data dir for nodeID from a backup, as the
// first state of a new cluster whose voters are peers (nodeID among them). Run it for every node with the same backup and peers, then start
// them: they come up with the backup's tokens, usage and remembered
// request ids, and elect a leader as a new cluster would.
func RestoreBackup(r io.Reader, dataDir, nodeID string, peers []Peer) (BackupInfo, error) {
	cfg := Config{NodeID: nodeID, DataDir: dataDir, BindAddr: "127.0.0.1:0", Peers: peers}
	if len(peers) == 0 {
		return BackupInfo{}, fmt.Errorf("name the new cluster's voters, this node (%s) among them", nodeID)
	}
	if err := cfg.Validate(); err != nil {
		return BackupInfo{}, err
	}
	info, _, data, err := ReadBackup(r)
	if err != nil {
		return info, err
	}
	for _, name := range []string{boltFile, walDir, "snapshots"} {
		p := filepath.Join(dataDir, name)
		if entries, err := os.ReadDir(p); err == nil && len(entries) > 0 || name == boltFile && exists(p) {
			return info, fmt.Errorf("data dir %s already holds a node's state (%s); restore into an empty data dir", dataDir, name)
		}
	}
	if err := os.MkdirAll(filepath.Join(dataDir, "snapshots"), 0o700); err != nil {
		return info, err
	}
	if err := claimDataDir(dataDir, nodeID); err != nil {
		return info, err
	}
	snaps, err := raft.NewFileSnapshotStore(filepath.Join(dataDir, "snapshots"), 2, io.Discard)
	if err != nil {
		return info, err
	}
	conf := raft.Configuration{}
	for _, p := range peers {
		conf.Servers = append(conf.Servers, raft.Server{ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.Address), Suffrage: raft.Voter})
	}
	// A new cluster's history starts at index 1, term 1, with the backup's
	// state as its first snapshot: every node restored from the same backup
	// holds the same one.
	// The transport only encodes peer addresses into the snapshot's meta
	// (as the network transport does: the address's bytes).
	_, enc := raft.NewInmemTransport("")
	defer enc.Close()
	sink, err := snaps.Create(raft.SnapshotVersionMax, 1, 1, conf, 1, enc)
	if err != nil {
		return info, err
	}
	if _, err := sink.Write(data); err != nil {
		sink.Cancel()
		return info, err
	}
	return info, sink.Close()
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
