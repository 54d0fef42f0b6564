package raftstore

import (
	"cmp"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/hashicorp/raft-wal/verifier"
	"go.uber.org/zap"

	"github.com/raftquota/raftquota/raftstore/state"
)

// The log check: raft-wal's verifier (which wraps either log store)
// keeps a checksum of every entry a voter writes. Every logCheckInterval
// the leader appends a checkpoint entry (state.OpLogCheckpoint, applied as
// nothing); its own verifier writes the checksum of the range since the
// last checkpoint into the entry before it is replicated. Each node, on
// writing the checkpoint, compares what it wrote with what the leader
// wrote and, in the background, reads the range back from its disk and
// compares that too. A mismatch is a log that differs between nodes, or a
// disk that returns what it was not given: it is said at ERROR and counted
// (Stats.LogChecksFailed, raftquota_log_checks_total{result="failed"}).
//
// A node of an earlier version halts on an op it does not know, so the
// leader writes checkpoints only while every member of the configuration
// says (forward.Status.MaxOp) that it can apply them: in a rolling upgrade,
// checks begin once the last node runs this version.

// defaultLogCheckInterval is how often the leader checkpoints the log.
const defaultLogCheckInterval = time.Minute

// appliesUpTo is the highest op this node says it applies.
func (c *Config) appliesUpTo() state.Op { return cmp.Or(c.maxOp, state.MaxOp) }

// isCheckpoint is the verifier's test for a checkpoint entry.
func isCheckpoint(l *raft.Log) (bool, error) {
	return l.Type == raft.LogCommand && state.IsCheckpoint(l.Data), nil
}

// logChecks counts this node's verification reports.
type logChecks struct {
	ok, failed, skipped atomic.Uint64
	// closing is set as the node closes its log: a check that was reading
	// it then says nothing.
	closing atomic.Bool
}

// report is the verifier's ReportFn: it is called once per checkpoint this
// node wrote, from the verifier's goroutine.
func (c *logChecks) report(logger *zap.Logger) verifier.ReportFn {
	return func(r verifier.VerificationReport) {
		if c.closing.Load() {
			return
		}
		fields := []zap.Field{zap.Uint64("from_index", r.Range.Start), zap.Uint64("to_index", r.Range.End), zap.Duration("took", r.Elapsed)}
		var mismatch verifier.ErrChecksumMismatch
		switch {
		case r.Err == nil:
			c.ok.Add(1)
			logger.Debug("the raft log checked out against the leader's checksum", fields...)
		case errors.Is(r.Err, verifier.ErrRangeMismatch):
			// The range was compacted away (a snapshot) or began before
			// this node started: nothing to compare, nothing wrong.
			c.skipped.Add(1)
			logger.Debug("the raft log range of a checkpoint is not all on this node; not checked", fields...)
		case errors.As(r.Err, &mismatch):
			c.failed.Add(1)
			logger.Error("this node's raft log differs from what the leader wrote: the disk returned other bytes than it was given, or the entries differ between nodes; restore this node from a backup (or remove it and add it back empty) and check the disk",
				append(fields, zap.Error(r.Err))...)
		default:
			c.failed.Add(1)
			logger.Error("could not read this node's raft log back to check it", append(fields, zap.Error(r.Err))...)
		}
	}
}

// checkpointLog is the leader's duty of appending a log checkpoint every
// interval, once every member can apply one (allKnow).
func (d *duties) checkpointLog(interval time.Duration, allKnow func(state.Op) bool) {
	d.proposeEvery(interval, state.OpLogCheckpoint, "a log checkpoint", func() bool {
		return d.ready() && allKnow(state.OpLogCheckpoint)
	})
}

// allKnow says whether this node and every other member of the
// configuration (voters and gateways, which answer within a second)
// apply op.
func (s *members) allKnow(op state.Op) bool {
	servers := s.configuration()
	if len(servers) == 0 || s.cfg.appliesUpTo() < op {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var missing atomic.Bool
	for _, srv := range servers {
		if string(srv.ID) == s.cfg.NodeID {
			continue
		}
		wg.Add(1)
		go func(id, addr string) {
			defer wg.Done()
			if out, err := s.fwd.Status(ctx, s.dialAddr(id, addr)); err != nil || out.MaxOp < uint8(op) {
				missing.Store(true)
			}
		}(string(srv.ID), string(srv.Address))
	}
	wg.Wait()
	return !missing.Load()
}
