package raftstore

import (
	"context"
	"net"
	"time"

	"github.com/hashicorp/raft"

	"github.com/raftquota/raftquota/raftstore/internal/forward"
	"github.com/raftquota/raftquota/raftstore/state"
)

// startForwarding serves this node's peers and makes the client that
// forwards to the leader, both on the mux's forwarding connections.
func (s *node) startForwarding() {
	layer := s.mux.forward
	dial := func(addr string, timeout time.Duration) (net.Conn, error) {
		return layer.Dial(raft.ServerAddress(addr), timeout)
	}
	s.fwd = forward.NewClient(dial, s.cfg.ApplyTimeout, s.leaderGoneCh)
	s.fwdServer = forward.Serve(layer, served{s}, s.cfg.ApplyTimeout)
}

// served is what this node serves its peers (forward.Service): the
// leader's side of every forwarded operation.
type served struct{ s *node }

func (v served) IsLeader() bool { return v.s.IsLeader() }

func (v served) Consume(ctx context.Context, reqs []state.ConsumeRequest) ([]state.Decision, error) {
	start := v.s.steps.start()
	defer v.s.steps.since(StepServe, start)
	return v.s.leaderConsumes.do(ctx, reqs)
}

func (v served) Write(_ context.Context, c *state.Command) (*state.Result, error) {
	return v.s.applyLocal(c)
}

func (v served) Read(ctx context.Context, q *state.Query) (state.Answer, error) {
	return v.s.reads().queryLocal(ctx, *q)
}

func (v served) Point(ctx context.Context) (forward.Point, error) { return v.s.reads().localPoint(ctx) }

func (v served) Member(_ context.Context, m *forward.Member) error {
	return v.s.members().changeMember(m)
}

func (v served) Status() forward.Status {
	s := v.s
	return forward.Status{ID: s.cfg.NodeID, State: s.State(), CommitIndex: s.raft.CommitIndex(),
		AppliedIndex: s.raft.AppliedIndex(), Now: s.cfg.Clock().UnixNano(), MaxOp: uint8(s.cfg.appliesUpTo())}
}
