package raftstore

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/raftquota/raftquota/internal/clustertest"
	"github.com/raftquota/raftquota/raftstore/state"
)

// TestThreeNodesNeverOverAdmitAPool: ten tokens of ten uploads each share a
// 50-upload pool; 32 clients through all three nodes get exactly 50.
func TestThreeNodesNeverOverAdmitAPool(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := clustertest.Within(t, 60*time.Second)
	p, err := c.nodes[1].Pools().Create(ctx, state.PoolSpec{Name: "customer-1", UsageLimit: 50})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if _, err := c.nodes[i%3].CreateToken(ctx, state.TokenSpec{Name: fmt.Sprintf("device-%d", i), UsageLimit: 10, Pools: []string{p.ID}}); err != nil {
			t.Fatal(err)
		}
	}
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for cl := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				s := c.nodes[(cl+i)%3]
				d, err := s.Consume(ctx, state.ConsumeRequest{ID: state.NewRequestID(), Token: fmt.Sprintf("device-%d", (cl+i)%10), Units: 1, Bytes: 10})
				if err != nil {
					t.Errorf("consume: %v", err)
					return
				}
				if d.Allowed {
					allowed.Add(1)
				} else if d.Reason != state.ReasonExhausted {
					t.Errorf("refusal %+v", d)
				}
			}
		}()
	}
	wg.Wait()
	if allowed.Load() != 50 {
		t.Fatalf("%d uploads admitted through a 50-upload pool", allowed.Load())
	}
	for _, s := range c.nodes {
		got, err := s.Pools().Get(ctx, p.ID)
		if err != nil || got.UsageCount != 50 || got.BytesUsed != 500 || got.Status != state.StatusExhausted {
			t.Fatalf("%s sees the pool as %+v (%v)", s.NodeID(), got, err)
		}
	}
	var sum int64
	toks, _, err := c.nodes[0].Pools().Tokens(ctx, p.ID, state.TokenFilter{})
	if err != nil || len(toks) != 10 {
		t.Fatalf("the pool's tokens: %d, %v", len(toks), err)
	}
	for _, tok := range toks {
		sum += tok.UsageCount
	}
	if sum != 50 {
		t.Fatalf("the tokens were charged %d uploads in all, want 50", sum)
	}
}

// TestPoolRefundsAndRetriesAcrossALeaderChange: a charge retried after a
// leader change charges none of its quotas again; its refund, sent twice
// through different nodes, gives each back once.
func TestPoolRefundsAndRetriesAcrossALeaderChange(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := clustertest.Within(t, 60*time.Second)
	plan, err := c.nodes[0].Pools().Create(ctx, state.PoolSpec{Name: "plan", UsageLimit: 5, BytesLimit: 5000})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.nodes[0].Pools().Create(ctx, state.PoolSpec{Name: "bucket", UsageLimit: 5}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.nodes[0].CreateToken(ctx, state.TokenSpec{Name: "tok", UsageLimit: 5, Pools: []string{plan.ID}}); err != nil {
		t.Fatal(err)
	}
	req := state.ConsumeRequest{ID: state.NewRequestID(), Token: "tok", Units: 2, Bytes: 300, Pools: []string{"bucket"}}
	old := c.leaderIndex()
	if d, err := c.nodes[old].Consume(ctx, req); err != nil || !d.Allowed {
		t.Fatalf("first: %+v %v", d, err)
	}
	if err := c.nodes[old].raft.LeadershipTransfer().Error(); err != nil {
		t.Fatal(err)
	}
	for c.leaderIndex() == old {
		time.Sleep(10 * time.Millisecond)
	}
	for _, s := range c.nodes {
		if d, err := s.Consume(ctx, req); err != nil || !d.Allowed || !d.Duplicate {
			t.Fatalf("retry on %s: %+v %v", s.NodeID(), d, err)
		}
	}
	usage := func(name string) (int64, int64) {
		p, err := c.nodes[old].Pools().Lookup(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		return p.UsageCount, p.BytesUsed
	}
	if n, b := usage("plan"); n != 2 || b != 300 {
		t.Fatalf("plan after retries: %d %d", n, b)
	}
	for _, s := range []*Store{c.nodes[old], c.nodes[(old+1)%3]} {
		if err := s.Refund(ctx, req.ID); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"plan", "bucket"} {
		if u, b := usage(n); u != 0 || b != 0 {
			t.Errorf("pool %s after the refund: %d %d", n, u, b)
		}
	}
	if tok, _ := c.nodes[0].Lookup(ctx, "tok"); tok.UsageCount != 0 {
		t.Errorf("token after the refund: %d", tok.UsageCount)
	}
}

// TestRefundWaitsForTheLeader: a refund made while no quorum can be
// reached is kept and retried; once the cluster is back the leader has it
// and the charge is gone, from the token and its pool.
func TestRefundWaitsForTheLeader(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := clustertest.Within(t, 60*time.Second)
	p, err := c.nodes[0].Pools().Create(ctx, state.PoolSpec{Name: "plan", UsageLimit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.nodes[0].CreateToken(ctx, state.TokenSpec{Name: "tok", UsageLimit: 10, Pools: []string{p.ID}}); err != nil {
		t.Fatal(err)
	}
	id := state.NewRequestID()
	if d, err := c.nodes[0].Consume(ctx, state.ConsumeRequest{ID: id, Token: "tok", Units: 1}); err != nil || !d.Allowed {
		t.Fatalf("%+v %v", d, err)
	}
	survivor := c.leaderIndex()
	for i := range c.nodes {
		if i != survivor {
			c.stop(i)
		}
	}
	c.nodes[survivor].RefundLater(id)
	time.Sleep(500 * time.Millisecond)
	if n := c.nodes[survivor].Stats().PendingRefunds; n != 1 {
		t.Fatalf("%d refunds pending without a quorum, want 1", n)
	}
	for i := range c.nodes {
		if i != survivor {
			c.reopen(i)
		}
	}
	clustertest.Eventually(t, 30*time.Second, "the refund reached the leader", func() bool { return c.nodes[survivor].Stats().PendingRefunds == 0 })
	tok, err := c.nodes[survivor].Lookup(ctx, "tok")
	if err != nil || tok.UsageCount != 0 {
		t.Fatalf("token after the refund: %+v %v", tok, err)
	}
	if got, _ := c.nodes[survivor].Pools().Get(ctx, p.ID); got.UsageCount != 0 {
		t.Fatalf("pool after the refund: %+v", got)
	}
}
