package raftstore

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	"github.com/raftquota/raftquota/raftstore/internal/forward"
	"github.com/raftquota/raftquota/raftstore/state"
	"go.uber.org/zap"
)

// members is the node's membership: the voter set, gateways joining and
// leaving, and which peer is at which address.
type members node

func (s *node) members() *members { return (*members)(s) }
func (s *members) n() *node       { return (*node)(s) }

func (s *members) member(ctx context.Context, args *forward.Member) error {
	return s.n().do(ctx, func(ctx context.Context) error {
		if s.n().IsLeader() {
			return s.changeMember(args)
		}
		_, addr, err := s.n().leader()
		if err != nil {
			return err
		}
		return s.fwd.Member(ctx, addr, args)
	})
}

func (s *members) changeMember(args *forward.Member) error {
	if !s.n().IsLeader() {
		return state.ErrNotLeader
	}
	var current *raft.Server
	for _, srv := range s.configuration() {
		if string(srv.ID) == args.ID {
			current = &srv
		}
	}
	if args.Gateway && current != nil && current.Suffrage != raft.Nonvoter {
		// A gateway never changes the voter set, even under a voter's id.
		return state.Invalidf("%q is a voter, not a gateway", args.ID)
	}
	var f raft.IndexFuture
	switch {
	case args.Add && args.Gateway:
		f = s.raft.AddNonvoter(raft.ServerID(args.ID), raft.ServerAddress(args.Address), 0, s.cfg.ApplyTimeout)
	case args.Add:
		f = s.raft.AddVoter(raft.ServerID(args.ID), raft.ServerAddress(args.Address), 0, s.cfg.ApplyTimeout)
	case current == nil:
		return fmt.Errorf("%w: %q", state.ErrNoMember, args.ID)
	default:
		f = s.raft.RemoveServer(raft.ServerID(args.ID), 0, s.cfg.ApplyTimeout)
	}
	if err := f.Error(); err != nil {
		return raftError(err)
	}
	if n := s.voters(); n%2 == 0 && !args.Gateway {
		s.logger.Warn("the cluster now has an even number of voters: it needs a majority of them for every decision yet tolerates no more failures than one voter fewer would; add or remove one",
			zap.Int("voters", n), zap.Int("quorum", n/2+1), zap.Int("tolerated_failures", (n-1)/2))
	}
	return nil
}

func (s *members) configuration() []raft.Server {
	f := s.raft.GetConfiguration()
	if f.Error() != nil {
		return nil
	}
	return f.Configuration().Servers
}

func (s *members) askState(ctx context.Context, id, addr string) string {
	for range 2 {
		cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		out, err := s.fwd.Status(cctx, s.dialAddr(id, addr))
		cancel()
		if err == nil {
			return out.State
		}
	}
	return "unreachable"
}

func (s *members) voters() int {
	f := s.raft.GetConfiguration()
	if f.Error() != nil {
		return 0
	}
	n := 0
	for _, srv := range f.Configuration().Servers {
		if srv.Suffrage == raft.Voter {
			n++
		}
	}
	return n
}

// dialAddr is where this node dials peer id, advertised at addr.
func (s *members) dialAddr(id, addr string) string {
	if a, ok := s.cfg.DialAddresses[id]; ok {
		return a
	}
	return addr
}

// dialProvider makes Raft's transport dial peers at their overrides, and
// every other peer at the address in the cluster's configuration.
// peerAt returns the id of the member Raft dials at addr.
func (s *members) peerAt(addr string) (string, bool) {
	for id, a := range s.cfg.DialAddresses {
		if a == addr {
			return id, true
		}
	}
	if r := s.raftNode.Load(); r != nil {
		for _, srv := range r.GetConfiguration().Configuration().Servers {
			if string(srv.Address) == addr {
				return string(srv.ID), true
			}
		}
	}
	return "", false
}

// leadsMemberAt reports whether this node leads and addr is a member's in
// the latest configuration: Raft's dials to such a peer wait for it
// (mux.keepDialing).
func (s *members) leadsMemberAt(addr string) bool {
	r := s.raftNode.Load()
	if r == nil || r.State() != raft.Leader {
		return false
	}
	id, ok := s.peerAt(addr)
	if !ok {
		return false
	}
	for _, srv := range r.GetConfiguration().Configuration().Servers {
		if string(srv.ID) == id {
			return true
		}
	}
	return false
}

// sayWhatWasJoined tells, once a leader is known, whether this node's
// empty data dir started a new cluster or rejoined one that holds state
// (a member recovered by wiping its data dir): the leader has applied
// more than the bootstrap configuration and this node's first leader
// proposals.
func (s *members) sayWhatWasJoined() {
	defer s.wg.Done()
	// Judged as soon as a leader is known: a new cluster's leader has
	// applied only its first few commands then.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); {
		select {
		case <-s.closed:
			return
		case <-tick.C:
		}
		id, _, err := s.n().leader()
		if err != nil {
			continue
		}
		var leaderApplied uint64
		if id == s.cfg.NodeID {
			leaderApplied = s.fsm.Applied()
		} else if points, err := s.n().reads().fetchReadPoint([]struct{}{{}}); err == nil {
			leaderApplied = points[0].Applied
		} else {
			continue
		}
		if leaderApplied > 16 || s.raft.Stats()["last_snapshot_index"] != "0" {
			s.logger.Info("this node's data dir was empty: it rejoined an existing cluster and copies its state from the leader",
				zap.String("leader", id), zap.Uint64("leader_applied_index", leaderApplied), zap.String("data_dir", s.cfg.DataDir))
		} else {
			s.logger.Info("started a new cluster with the configured peers", zap.String("leader", id), zap.String("data_dir", s.cfg.DataDir))
		}
		return
	}
}
