package raftstore

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/zap"
)

// The leader stamps time into every command, and windows and expiry are
// judged by those stamps. One node's clock running fast would make windows
// renew early while it leads; one running slow would make them renew late.
// So the leader does not stamp its own clock: it asks its peers for theirs
// (over the forwarding RPC) and stamps its clock corrected by the median
// difference, which one skewed node, the leader included, cannot move. The
// correction is measured when leadership starts and refreshed every few
// seconds while leading. Independently, the FSM never lets time go
// backwards, so a window never renews twice.

const (
	clockRefresh   = 5 * time.Second
	clockSampleRPC = 300 * time.Millisecond
	// clockWarn is how far the leader's own clock may be off the cluster's
	// before it says so.
	clockWarn = time.Second
)

type clockSync struct {
	// now is the local clock; sample measures, for each voter but this
	// node, its clock minus ours (members.clockDiffs).
	now    func() time.Time
	sample func() []time.Duration
	logger *zap.Logger

	measuring  sync.Mutex // one measurement at a time
	refreshing atomic.Bool

	mu       sync.Mutex
	offset   time.Duration // add to the local clock to get cluster time
	term     uint64        // the term the offset was measured in
	measured time.Time     // monotonic time of the measurement
}

// invalidate forgets the offset: a new term measures again.
func (c *clockSync) invalidate() {
	c.mu.Lock()
	c.term = 0
	c.mu.Unlock()
}

// stamp returns the time to stamp into a command: the local clock corrected
// to the cluster's median clock.
//
// Only the first command of a term waits for a measurement; later refreshes
// run in the background so no request pays for them.
func (c *clockSync) stamp(term uint64) int64 {
	offset, ok, stale := c.get(term)
	if !ok {
		c.measuring.Lock()
		if offset, ok, _ = c.get(term); !ok {
			offset = c.measure(term)
		}
		c.measuring.Unlock()
	} else if stale && c.refreshing.CompareAndSwap(false, true) {
		go func() {
			defer c.refreshing.Store(false)
			c.measuring.Lock()
			defer c.measuring.Unlock()
			c.measure(term)
		}()
	}
	return c.now().Add(offset).UnixNano()
}

func (c *clockSync) get(term uint64) (offset time.Duration, ok, stale bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.offset, c.term == term, time.Since(c.measured) > clockRefresh
}

// measure asks every peer for its clock and takes the median difference to
// the local clock (the local clock counts as one vote with difference 0).
// Peers that do not answer in time do not vote. With an even number of
// votes the smaller middle value is taken, so time errs towards late.
func (c *clockSync) measure(term uint64) time.Duration {
	diffs := append([]time.Duration{0}, c.sample()...)
	slices.Sort(diffs)
	offset := diffs[(len(diffs)-1)/2]
	c.mu.Lock()
	c.offset, c.term, c.measured = offset, term, time.Now()
	c.mu.Unlock()
	if offset > clockWarn || offset < -clockWarn {
		c.logger.Warn("this node's clock is off the cluster's median; stamping the corrected time",
			zap.Duration("offset", offset), zap.Int("votes", len(diffs)))
	}
	return offset
}

// clockDiffs asks every other voter for its clock, at once, and returns
// each answer's difference to the local clock (half the round trip
// added). Voters that do not answer within clockSampleRPC are left out.
func (s *members) clockDiffs() []time.Duration {
	var diffs []time.Duration
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, srv := range s.configuration() {
		if string(srv.ID) == s.cfg.NodeID || srv.Suffrage != raft.Voter {
			continue
		}
		wg.Add(1)
		go func(id, addr string) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), clockSampleRPC)
			defer cancel()
			sent := time.Now()
			out, err := s.fwd.Status(ctx, s.dialAddr(id, addr))
			if err != nil || out.Now == 0 {
				return
			}
			rtt := time.Since(sent)
			local := s.cfg.Clock()
			peer := time.Unix(0, out.Now).Add(rtt / 2)
			mu.Lock()
			diffs = append(diffs, peer.Sub(local))
			mu.Unlock()
		}(string(srv.ID), string(srv.Address))
	}
	wg.Wait()
	return diffs
}
