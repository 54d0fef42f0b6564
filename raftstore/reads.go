package raftstore

import (
	"context"
	"fmt"
	"time"

	"github.com/raftquota/raftquota/raftstore/internal/forward"
	"github.com/raftquota/raftquota/raftstore/state"
)

// reads is how the node makes reads linearizable without writing the log
// (see the package doc): read barriers on the leader, read points for a
// follower's checks.
type reads node

func (s *node) reads() *reads { return (*reads)(s) }
func (s *reads) n() *node     { return (*node)(s) }

// fetchReadPoint asks the leader for a read point, for a batch of reads.
func (s *reads) fetchReadPoint(batch []struct{}) ([]readPoint, error) {
	_, addr, err := s.n().leader()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ApplyTimeout)
	defer cancel()
	s.forwarded.Add(1)
	p, err := s.fwd.Point(ctx, addr)
	if err != nil {
		return nil, err
	}
	res := make([]readPoint, len(batch))
	for i := range res {
		res[i] = readPoint{p, addr}
	}
	return res, nil
}

// waitApplied waits until this node's FSM has applied the command at
// index. It answers false, at once, when index is 0 or this node cannot
// say what its FSM applied (it restored a snapshot and has applied no
// command since).
func (s *reads) waitApplied(ctx context.Context, index uint64) (bool, error) {
	for {
		applied := s.fsm.Applied()
		if index == 0 || applied == 0 {
			return false, nil
		}
		if applied >= index {
			return true, nil
		}
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("%w: command %d not applied in time", state.ErrUnavailable, index)
		case <-s.closed:
			return false, state.ErrClosed
		default:
		}
		time.Sleep(50 * time.Microsecond) // as readIndex waits; no timer per turn
	}
}

// query serves a read on the leader after a read barrier, which makes it
// linearizable: the barrier is committed after the read began, and the
// leader has applied everything up to it. A follower forwards it.
func (s *reads) query(ctx context.Context, q state.Query) (state.Answer, error) {
	var a state.Answer
	err := s.n().do(ctx, func(ctx context.Context) error {
		var err error
		if s.n().IsLeader() {
			a, err = s.queryLocal(ctx, q)
			return err
		}
		_, addr, err := s.n().leader()
		if err != nil {
			return err
		}
		s.forwarded.Add(1)
		a, err = s.fwd.Read(ctx, addr, &q)
		return err
	})
	return a, err
}

// point returns a read point: this node's, when it leads (after a read
// barrier), or the leader's.
func (s *reads) point(ctx context.Context) (forward.Point, error) {
	var p forward.Point
	err := s.n().do(ctx, func(ctx context.Context) error {
		if s.n().IsLeader() {
			var err error
			p, err = s.localPoint(ctx)
			return err
		}
		_, addr, err := s.n().leader()
		if err != nil {
			return err
		}
		s.forwarded.Add(1)
		p, err = s.fwd.Point(ctx, addr)
		return err
	})
	return p, err
}

// localPoint is this leader's read point.
func (s *reads) localPoint(ctx context.Context) (forward.Point, error) {
	if err := s.readBarrier(ctx); err != nil {
		return forward.Point{}, err
	}
	return forward.Point{Index: s.raft.AppliedIndex(), Applied: s.fsm.Applied(), Now: s.clock.stamp(s.raft.CurrentTerm())}, nil
}

// queryLocal serves q from this node, which leads.
func (s *reads) queryLocal(ctx context.Context, q state.Query) (state.Answer, error) {
	if err := s.readBarrier(ctx); err != nil {
		return state.Answer{}, err
	}
	if q.Kind == state.ReadCheck {
		// Judged at the time the leader would stamp into a consume now.
		q.At = time.Unix(0, s.clock.stamp(s.raft.CurrentTerm()))
	}
	return s.fsm.Query(&q)
}

// barrier waits until everything committed before it is applied here, by
// committing an entry of its own (a log append and an fsync).
func (s *reads) barrier([]struct{}) ([]struct{}, error) {
	if err := s.raft.Barrier(s.cfg.ApplyTimeout).Error(); err != nil {
		return nil, raftError(err)
	}
	return nil, nil
}

// readIndex makes the reads waiting when it starts linearizable without
// writing the log: it notes the commit index, confirms with a quorum that
// this node still leads (hashicorp/raft VerifyLeader: one heartbeat round),
// and waits until Raft has handed that index to the FSM. What makes a read
// see every write answered before it began: this leader answers a write
// only after its own FSM applied it, and it serves reads only once the
// barrier it took on becoming leader returned, which Raft answers after the
// FSM applied every entry of earlier terms. A leader that has not done so
// yet in its current term takes a barrier per read batch instead.
func (s *reads) readIndex([]struct{}) ([]struct{}, error) {
	term := s.raft.CurrentTerm()
	if s.readyTerm.Load() != term {
		return s.barrier(nil)
	}
	index := s.raft.CommitIndex()
	if err := s.raft.VerifyLeader().Error(); err != nil {
		return nil, raftError(err)
	}
	if s.raft.CurrentTerm() != term {
		return nil, fmt.Errorf("%w: term changed during a read", state.ErrNotLeader)
	}
	deadline := time.Now().Add(s.cfg.ApplyTimeout)
	for s.raft.AppliedIndex() < index {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%w: entries up to %d not applied in time", state.ErrUnavailable, index)
		}
		time.Sleep(50 * time.Microsecond)
	}
	return nil, nil
}

// readBarrier makes the next local read linearizable (see readIndex). Only
// the leader can.
func (s *reads) readBarrier(ctx context.Context) error {
	if !s.n().IsLeader() {
		return state.ErrNotLeader
	}
	_, err := s.barriers.do(ctx, nil)
	return err
}
