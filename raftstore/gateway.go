package raftstore

import (
	"context"
	"time"

	"github.com/hashicorp/raft"
	"github.com/raftquota/raftquota/raftstore/internal/forward"
	"go.uber.org/zap"
)

// Gateways are Raft non-voters: they receive the log (so they know the
// leader after every election and forward to it), take traffic, and decide
// nothing locally, since every consume is a command the voters commit. A
// gateway joins by asking a voter to add it, leaves by asking to be
// removed, and a leader removes one it has not reached for GatewayTimeout.

// joinAsGateway asks the voters, in turn, to add this node as a
// non-voter, and asks again whenever the leader has not been heard from for
// a while (a leader that removed this gateway stops replicating to it).
func (s *members) joinAsGateway() {
	defer s.wg.Done()
	stale := max(4*s.cfg.HeartbeatTimeout, time.Second)
	for {
		if !s.askToJoin() {
			return
		}
		for {
			select {
			case <-s.closed:
				return
			case <-time.After(stale / 2):
			}
			if time.Since(s.raft.LastContact()) > stale {
				s.logger.Info("no word from a leader; asking to join again as a gateway", zap.Duration("since", time.Since(s.raft.LastContact()).Round(time.Millisecond)))
				break
			}
		}
	}
}

// askToJoin tries every voter until one adds this gateway; false when the
// node closed first.
func (s *members) askToJoin() bool {
	args := &forward.Member{Add: true, Gateway: true, ID: s.cfg.NodeID, Address: s.n().Addr()}
	for backoff := 100 * time.Millisecond; ; backoff = min(2*backoff, 5*time.Second) {
		for _, p := range s.cfg.Peers {
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ApplyTimeout)
			err := s.fwd.Member(ctx, s.dialAddr(p.ID, p.Address), args)
			cancel()
			if err == nil {
				s.logger.Info("joined the cluster as a gateway", zap.String("through", p.ID))
				return true
			}
			s.logger.Debug("joining as a gateway", zap.String("through", p.ID), zap.Error(err))
		}
		select {
		case <-s.closed:
			return false
		case <-time.After(backoff):
		}
	}
}

// leaveAsGateway asks the leader to remove this gateway, briefly: a
// gateway that cannot reach it is removed by the leader later anyway.
func (s *members) leaveAsGateway() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.member(ctx, &forward.Member{ID: s.cfg.NodeID, Gateway: true}); err != nil {
		s.logger.Info("leaving the cluster as a gateway", zap.Error(err))
		return
	}
	s.logger.Info("left the cluster as a gateway")
}

// reapGateways, while this node leads, removes gateways the leader has not
// reached for GatewayTimeout. Voters are never touched.
func (s *members) reapGateways() {
	defer s.wg.Done()
	t := time.NewTicker(max(s.cfg.GatewayTimeout/4, 50*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-s.closed:
			return
		case <-t.C:
		}
		if !s.n().IsLeader() {
			continue
		}
		for _, srv := range s.configuration() {
			if srv.Suffrage != raft.Nonvoter {
				continue
			}
			last, lost := s.peers.lostSince(string(srv.ID))
			if !lost || time.Since(last) < s.cfg.GatewayTimeout {
				continue
			}
			if err := s.raft.RemoveServer(srv.ID, 0, s.cfg.ApplyTimeout).Error(); err != nil {
				s.logger.Info("removing an unreachable gateway", zap.String("gateway_id", string(srv.ID)), zap.Error(err))
				continue
			}
			s.peers.resumed(string(srv.ID))
			s.logger.Warn("removed a gateway the leader could not reach", zap.String("gateway_id", string(srv.ID)),
				zap.Time("last_contact", last), zap.Duration("gateway_timeout", s.cfg.GatewayTimeout))
		}
	}
}
