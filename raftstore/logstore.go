package raftstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	wal "github.com/hashicorp/raft-wal"
	walmetrics "github.com/hashicorp/raft-wal/metrics"
	"github.com/hashicorp/raft-wal/migrate"
	"github.com/hashicorp/raft-wal/verifier"
	"go.etcd.io/bbolt"
	"go.uber.org/zap"
)

// A voter's data dir:
//
//	raft.db    raft-boltdb: the stable store (current term, vote), and the
//	           log with log store "boltdb"
//	wal/       hashicorp/raft-wal: the log, with log store "wal" (default)
//	snapshots/ raft's file snapshot store
//
// raft-wal is the default because every decision waits for the leader's
// log append and a follower's, one after the other, and a bbolt commit is
// a copy-on-write B-tree update with two fsyncs (data pages, then the meta
// page) where raft-wal appends to a segment file with one (BENCHMARKS.md
// has the measurements). raft-boltdb keeps the term and vote, and the log
// too for a user who chooses it.
//
// Changing the setting moves the log on the next start, crash-safely: the
// store being left stays authoritative until the copy is complete (the
// WAL is written in wal.new/ and renamed into place; raft.db's copy is
// complete once wal/ is gone).
const (
	LogStoreBolt = "boltdb"
	LogStoreWAL  = "wal"

	boltFile = "raft.db"
	walDir   = "wal"
)

// logStores are a voter's stores, opened.
type logStores struct {
	bolt *raftboltdb.BoltStore // stable store
	wal  *wal.WAL              // log
	hl   hclog.Logger
	// segmentSize is the WAL's segment file size (0: raft-wal's 64 MiB);
	// the format fixtures are written with small ones.
	segmentSize int
	// watch is the log as raft writes it: watched for failing writes,
	// timed, and checksummed between checkpoints (logcheck.go).
	watch *watchedLog
	// stable is raft.db's stable store as raft uses it.
	stable *closableStable
}

func (ls *logStores) openAt(path string) (*wal.WAL, error) {
	return wal.Open(path, wal.WithLogger(ls.hl), wal.WithSegmentSize(ls.segmentSize))
}

// openLogStores opens (or creates) a voter's stable store and its log in
// kind ("" is wal), first moving a log kept in the other store.
func openLogStores(dir, kind string, hl hclog.Logger, logger *zap.Logger, segmentSize int) (*logStores, error) {
	boltPath := filepath.Join(dir, boltFile)
	bolt, err := raftboltdb.New(raftboltdb.Options{
		Path: boltPath,
		// The freelist is rebuilt on open instead of written on every
		// commit: less to write per fsync (hashicorp's advice for raft logs).
		BoltOptions: &bbolt.Options{Timeout: 5 * time.Second, NoFreelistSync: true, FreelistType: bbolt.FreelistMapType},
	})
	if err != nil {
		return nil, fmt.Errorf("opening raft stable store %s: %w", boltPath, err)
	}
	ls := &logStores{bolt: bolt, hl: hl.Named("wal"), segmentSize: segmentSize}
	if kind == LogStoreBolt {
		err = ls.moveWALLog(dir, logger)
	} else {
		err = ls.openWAL(dir, logger)
	}
	if err != nil {
		bolt.Close()
		return nil, err
	}
	return ls, nil
}

// moveWALLog copies a log kept in dir/wal into raft.db and removes wal/.
// raft.db's log is only a partial copy while wal/ exists (a crash during
// an earlier move): it is replaced.
func (ls *logStores) moveWALLog(dir string, logger *zap.Logger) error {
	path := filepath.Join(dir, walDir)
	old := path + ".old"
	if err := os.RemoveAll(old); err != nil {
		return err
	}
	if !exists(path) {
		return nil
	}
	w, err := ls.openAt(path)
	if err != nil {
		return fmt.Errorf("opening raft log %s to move it into %s: %w", path, boltFile, err)
	}
	err = ls.dropBoltLog()
	if err == nil {
		err = copyLog(ls.bolt, w, "from the write-ahead log into raft.db", logger)
	}
	err = errors.Join(err, w.Close())
	if err == nil {
		err = os.Rename(path, old)
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("moving the raft log from %s into %s: %w", path, boltFile, err)
	}
	return os.RemoveAll(old)
}

func (ls *logStores) openWAL(dir string, logger *zap.Logger) error {
	path := filepath.Join(dir, walDir)
	if !exists(path) {
		// The WAL appears whole or not at all: it is written in a
		// directory of its own and renamed into place once complete, so
		// a crash during the move leaves raft.db's log as it was.
		if err := ls.moveBoltLog(dir, logger); err != nil {
			return err
		}
	}
	w, err := ls.openAt(path)
	if err != nil {
		return fmt.Errorf("opening raft log %s: %w", path, err)
	}
	ls.wal = w
	// A log moved into the WAL is dropped from raft.db only now, after the
	// WAL that holds it was opened: a crash before this line leaves both,
	// and the next open drops it again.
	if err := ls.dropBoltLog(); err != nil {
		return fmt.Errorf("dropping the log moved out of %s: %w", boltFile, err)
	}
	return nil
}

// dropBoltLog deletes the log entries raft.db holds, if any.
func (ls *logStores) dropBoltLog() error {
	first, err := ls.bolt.FirstIndex()
	if err != nil {
		return err
	}
	last, err := ls.bolt.LastIndex()
	if err != nil || last == 0 {
		return err
	}
	return ls.bolt.DeleteRange(first, last)
}

// copyLog appends src's whole log to dst, which is empty, and says so at
// INFO when there was one; what names the move for that line.
func copyLog(dst, src raft.LogStore, what string, logger *zap.Logger) error {
	first, err := src.FirstIndex()
	if err != nil {
		return err
	}
	last, err := src.LastIndex()
	if err != nil || last == 0 {
		return err
	}
	start := time.Now()
	if err := migrate.CopyLogs(context.Background(), dst, src, 1<<20, nil); err != nil {
		return err
	}
	logger.Info("moved the raft log "+what,
		zap.Uint64("first_index", first), zap.Uint64("last_index", last), zap.Duration("took", time.Since(start)))
	return nil
}

// moveBoltLog writes dir/wal from raft.db's log (empty for a new node).
func (ls *logStores) moveBoltLog(dir string, logger *zap.Logger) error {
	path := filepath.Join(dir, walDir)
	tmp := path + ".new"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return fmt.Errorf("creating raft log dir: %w", err)
	}
	w, err := ls.openAt(tmp)
	if err != nil {
		return fmt.Errorf("creating raft log %s: %w", tmp, err)
	}
	err = copyLog(w, ls.bolt, "from raft.db into the write-ahead log", logger)
	err = errors.Join(err, w.Close())
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("moving the raft log from %s into %s: %w", boltFile, path, err)
	}
	return nil
}

// logs is the log store Raft is given: the log behind raft-wal's verifier
// (which checksums what is written between checkpoints and reads it back,
// telling report), watched (watchedLog), behind a cache of the newest
// entries, which the leader reads back to replicate them.
func (ls *logStores) logs(steps stepTimer, report verifier.ReportFn, hold <-chan struct{}) (raft.LogStore, error) {
	var log raft.LogStore = unclosedLog{ls.bolt}
	if ls.wal != nil {
		log = unclosedLog{ls.wal}
	}
	w, err := newWatchedLog(log, report, steps, hold)
	if err != nil {
		return nil, err
	}
	ls.watch = w
	return raft.NewLogCache(512, w)
}

// watchedLog is the log as Raft writes it. It notes whether the last
// write failed (a full or failing disk), for the health check, and times
// each write (StepLogAppend).
//
// It also keeps the log check true. raft-wal's verifier, which it writes
// through, keeps one running checksum of the entries written since the
// last checkpoint and assumes they follow one another. Two writes break
// that, and the verifier would then say the log differs from the leader's
// when it does not: a follower whose uncommitted tail is replaced by a new
// leader's entries (the checksum would hold both), and a follower sent a
// snapshot, whose log starts again after it. watchedLog starts a fresh
// verifier then, and the next checkpoint's range is checked by reading it
// back (the range is compared as the leader wrote it) or, if the log no
// longer holds all of it, skipped.
type watchedLog struct {
	store   raft.LogStore
	report  verifier.ReportFn
	v       atomic.Pointer[verifier.LogStore]
	failing atomic.Pointer[error]
	steps   stepTimer
	hold    <-chan struct{} // tests: Config.holdLogWrites
	// last is the log's last index as this node wrote it: raft writes
	// from one goroutine, and deletes the tail from it; only compaction,
	// which deletes the head, runs beside it.
	last atomic.Uint64
	// from is where the log last started again: the first entry written
	// after a gap, or the first of a replaced tail.
	from atomic.Uint64
}

func newWatchedLog(store raft.LogStore, report verifier.ReportFn, steps stepTimer, hold <-chan struct{}) (*watchedLog, error) {
	last, err := store.LastIndex()
	if err != nil {
		return nil, fmt.Errorf("reading the raft log's last index: %w", err)
	}
	w := &watchedLog{store: store, steps: steps, hold: hold}
	w.report = func(r verifier.VerificationReport) {
		if errors.Is(r.Err, raft.ErrLogNotFound) && (r.Range.Start < w.from.Load() || !w.holds(r.Range)) {
			// Written only in part since the log started again after a
			// snapshot, or compacted while it was read back.
			r.Err = verifier.ErrRangeMismatch
		}
		report(r)
	}
	w.last.Store(last)
	w.restart()
	return w, nil
}

// restart replaces the verifier with a fresh one. The old one finishes
// what it was checking (a range deleted meanwhile is reported as skipped:
// newWatchedLog's report) and stops.
func (w *watchedLog) restart() {
	old := w.v.Swap(verifier.NewLogStore(w.store, isCheckpoint, w.report, &walmetrics.NoOpCollector{}))
	if old != nil {
		old.Close() // the store stays open (unclosedLog)
	}
}

// holds says whether the log still holds all of r.
func (w *watchedLog) holds(r verifier.LogRange) bool {
	first, err1 := w.store.FirstIndex()
	last, err2 := w.store.LastIndex()
	return err1 == nil && err2 == nil && first <= r.Start && r.End <= last+1
}

func (w *watchedLog) FirstIndex() (uint64, error)              { return w.store.FirstIndex() }
func (w *watchedLog) LastIndex() (uint64, error)               { return w.store.LastIndex() }
func (w *watchedLog) GetLog(index uint64, log *raft.Log) error { return w.store.GetLog(index, log) }
func (w *watchedLog) IsMonotonic() bool                        { return isMonotonic(w.store) }
func (w *watchedLog) StoreLog(log *raft.Log) error             { return w.StoreLogs([]*raft.Log{log}) }

func (w *watchedLog) StoreLogs(logs []*raft.Log) error {
	if len(logs) == 0 {
		return nil
	}
	if w.hold != nil {
		<-w.hold
	}
	start := w.steps.start()
	defer w.steps.since(StepLogAppend, start)
	if last := w.last.Load(); last > 0 && logs[0].Index != last+1 {
		// A gap: what follows a snapshot in a log that was not emptied.
		w.from.Store(logs[0].Index)
		w.restart()
	}
	if err := w.note(w.v.Load().StoreLogs(logs)); err != nil {
		return err
	}
	w.last.Store(logs[len(logs)-1].Index)
	return nil
}

func (w *watchedLog) DeleteRange(min, max uint64) error {
	if err := w.store.DeleteRange(min, max); err != nil {
		return err
	}
	if last := w.last.Load(); last > 0 && max >= last {
		// The tail went (replaced by a new leader's entries, or the whole
		// log, after a snapshot): what the verifier summed is void.
		w.last.Store(min - 1)
		w.from.Store(min)
		w.restart()
	}
	return nil
}

func (w *watchedLog) note(err error) error {
	if err != nil {
		w.failing.Store(&err)
	} else if w.failing.Load() != nil {
		w.failing.Store(nil)
	}
	return err
}

// writeError is the error of the last log write, if it failed.
func (w *watchedLog) writeError() error {
	if w == nil {
		return nil
	}
	if p := w.failing.Load(); p != nil {
		return *p
	}
	return nil
}

// close stops the verifier; the store stays open.
func (w *watchedLog) close() { w.v.Load().Close() }

// unclosedLog is a log the verifier's Close leaves open: logStores.close
// closes the stores themselves, the stable store last.
type unclosedLog struct{ raft.LogStore }

func (u unclosedLog) IsMonotonic() bool { return isMonotonic(u.LogStore) }

// isMonotonic says whether log takes only entries that follow its last
// one (raft.MonotonicLogStore: raft-wal does, raft-boltdb does not). Every
// wrapper of a log store must pass it on: after installing a snapshot from
// the leader, hashicorp/raft empties a monotonic log, and only compacts
// any other, so a raft-wal log still holding entries from before the
// snapshot would refuse every entry after it, and the follower would
// never catch up.
func isMonotonic(log raft.LogStore) bool {
	m, ok := log.(raft.MonotonicLogStore)
	return ok && m.IsMonotonic()
}

// closableStable is the stable store closed under Raft's feet safely:
// NetworkTransport does not wait for the connection handlers it runs, and
// one handling a heartbeat when the node stops may still save the term,
// which Raft turns into a panic if the store is closed (hashicorp/raft
// #717). close waits for writes in progress; a write after it never
// returns, so the stopping node acknowledges nothing it did not persist.
type closableStable struct {
	raft.StableStore
	mu     sync.RWMutex
	closed bool
}

var never = make(chan struct{})

func (c *closableStable) enter() {
	c.mu.RLock()
	if c.closed {
		c.mu.RUnlock()
		<-never
	}
}

func (c *closableStable) Set(k, v []byte) error {
	c.enter()
	defer c.mu.RUnlock()
	return c.StableStore.Set(k, v)
}

func (c *closableStable) SetUint64(k []byte, v uint64) error {
	c.enter()
	defer c.mu.RUnlock()
	return c.StableStore.SetUint64(k, v)
}

func (c *closableStable) close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
}

func (ls *logStores) close() error {
	if ls.stable != nil {
		ls.stable.close()
	}
	if ls.watch != nil {
		ls.watch.close() // ends the verifier's goroutine; the log stays open (unclosedLog)
	}
	var errs []error
	if ls.wal != nil {
		errs = append(errs, ls.wal.Close())
	}
	errs = append(errs, ls.bolt.Close())
	return errors.Join(errs...)
}

// HasState reports whether dir is a voter's data dir with Raft state in it
// (a log, in either place, or a stable store).
func HasState(dir string) bool {
	if entries, err := os.ReadDir(filepath.Join(dir, walDir)); err == nil && len(entries) > 0 {
		return true
	}
	st, err := os.Stat(filepath.Join(dir, boltFile))
	return err == nil && st.Size() > 0
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
