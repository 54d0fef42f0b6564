package raftstore

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/raftquota/raftquota/internal/clustertest"
	"github.com/raftquota/raftquota/raftstore/state"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// testCluster is n real nodes in this process, on 127.0.0.1 TCP with their
// own data dirs.
type testCluster struct {
	t     testing.TB
	dir   string
	peers []Peer
	nodes []*Store
	log   *zap.Logger
	// skew shifts each node's clock, for the clock-skew tests.
	skew []atomic.Int64
	// tweak, if set, changes node i's config before it opens.
	tweak func(i int, cfg *Config)
}

func newTestCluster(t testing.TB, n int) *testCluster {
	return newTestClusterWith(t, n, nil, nil)
}

// newTestClusterWith starts n nodes logging to log (nil: nowhere, or the
// test log at WARN when verbose), each config changed by tweak.
func newTestClusterWith(t testing.TB, n int, log *zap.Logger, tweak func(i int, cfg *Config)) *testCluster {
	t.Helper()
	c, layers := listenTestCluster(t, n, log)
	c.tweak = tweak
	c.start(layers)
	return c
}

// listenTestCluster makes a cluster of n nodes and listens on free ports
// for them, so every node knows its peers' addresses before any opens.
func listenTestCluster(t testing.TB, n int, log *zap.Logger) (*testCluster, []raft.StreamLayer) {
	c := &testCluster{t: t, dir: t.TempDir(), nodes: make([]*Store, n), log: zap.NewNop(), skew: make([]atomic.Int64, n)}
	if testing.Verbose() {
		c.log = zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	}
	if log != nil {
		c.log = log
	}
	members, err := clustertest.Listen(n, NewTCPStreamLayer)
	if err != nil {
		t.Fatal(err)
	}
	layers := make([]raft.StreamLayer, n)
	for i, m := range members {
		layers[i] = m.Layer
		c.peers = append(c.peers, Peer{ID: m.ID, Address: m.Address})
	}
	return c, layers
}

// start opens every node on its layer and waits for a leader.
func (c *testCluster) start(layers []raft.StreamLayer) {
	c.t.Helper()
	for i := range c.nodes {
		c.open(i, layers[i])
	}
	c.t.Cleanup(c.closeAll)
	c.waitLeader()
}

func (c *testCluster) config(i int) Config {
	return Config{
		NodeID:   c.peers[i].ID,
		DataDir:  filepath.Join(c.dir, c.peers[i].ID),
		BindAddr: c.peers[i].Address,
		Peers:    c.peers,
		Logger:   c.log.Named(c.peers[i].ID),
		Clock:    func() time.Time { return time.Now().Add(time.Duration(c.skew[i].Load())) },
	}
}

func (c *testCluster) open(i int, layer raft.StreamLayer) {
	c.t.Helper()
	cfg := c.config(i)
	cfg.Stream = layer
	if c.tweak != nil {
		c.tweak(i, &cfg)
	}
	s, err := Open(cfg)
	if err != nil {
		c.t.Fatalf("opening %s: %v", cfg.NodeID, err)
	}
	c.nodes[i] = s
}

// reopen starts node i again from its data dir on its old address.
func (c *testCluster) reopen(i int) { c.open(i, nil) }

func (c *testCluster) stop(i int) {
	if c.nodes[i] != nil {
		c.nodes[i].Close()
	}
}

func (c *testCluster) closeAll() {
	for i := range c.nodes {
		c.stop(i)
	}
}

func (c *testCluster) waitLeader() *Store { return c.nodes[c.leaderIndex()] }

func (c *testCluster) leaderIndex() int {
	c.t.Helper()
	i, err := clustertest.WaitLeader(clustertest.Within(c.t, 20*time.Second), c.nodes)
	if err != nil {
		c.t.Fatal(err)
	}
	return i
}

func TestThreeNodesNeverOverAdmit(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := clustertest.Within(t, 60*time.Second)
	follower := c.nodes[(c.leaderIndex()+1)%3]
	if _, err := follower.CreateToken(ctx, state.TokenSpec{Name: "hot", UsageLimit: 100}); err != nil {
		t.Fatal(err)
	}
	var allowed, denied atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 1000; i++ {
		wg.Add(1)
		go func(s *Store) {
			defer wg.Done()
			d, err := s.Consume(ctx, state.ConsumeRequest{ID: state.NewRequestID(), Token: "hot", Units: 1})
			switch {
			case err != nil:
				t.Errorf("consume: %v", err)
			case d.Allowed:
				allowed.Add(1)
			case d.Reason == state.ReasonExhausted:
				denied.Add(1)
			default:
				t.Errorf("unexpected decision %+v", d)
			}
		}(c.nodes[i%3])
	}
	wg.Wait()
	if allowed.Load() != 100 || denied.Load() != 900 {
		t.Fatalf("allowed %d denied %d, want exactly 100 and 900", allowed.Load(), denied.Load())
	}
	for _, s := range c.nodes {
		tok, err := s.Lookup(ctx, "hot")
		if err != nil {
			t.Fatal(err)
		}
		if tok.UsageCount != 100 || tok.Status != state.StatusExhausted {
			t.Fatalf("%s sees usage %d status %s", s.NodeID(), tok.UsageCount, tok.Status)
		}
	}
}

func TestLeaderLossNeverOverAdmitsNorLosesAnAllowedCharge(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := clustertest.Within(t, 90*time.Second)
	if _, err := c.nodes[0].CreateToken(ctx, state.TokenSpec{Name: "hot", UsageLimit: 100}); err != nil {
		t.Fatal(err)
	}
	leader := c.leaderIndex()
	var allowed, started atomic.Int64
	var wg sync.WaitGroup
	killed := make(chan struct{})
	for i := 0; i < 1000; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s := c.nodes[i%3]
			if started.Add(1) == 300 {
				c.stop(leader)
				close(killed)
			}
			rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			defer cancel()
			d, err := s.Consume(rctx, state.ConsumeRequest{ID: state.NewRequestID(), Token: "hot", Units: 1})
			if err == nil && d.Allowed {
				allowed.Add(1)
			}
		}(i)
		if i%50 == 0 {
			time.Sleep(5 * time.Millisecond)
		}
	}
	wg.Wait()
	<-killed
	survivor := c.nodes[(leader+1)%3]
	tok, err := survivor.Lookup(ctx, "hot")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("answered allowed %d, final usage %d", allowed.Load(), tok.UsageCount)
	if allowed.Load() > 100 || tok.UsageCount > 100 {
		t.Fatalf("over-admitted: %d answered allowed, usage %d, limit 100", allowed.Load(), tok.UsageCount)
	}
	if tok.UsageCount < allowed.Load() {
		t.Fatalf("lost charges: %d answered allowed but usage is %d", allowed.Load(), tok.UsageCount)
	}
	if allowed.Load() == 0 {
		t.Fatal("nothing was admitted: the test proved nothing")
	}
}

func TestRestartedClusterKeepsUsage(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := clustertest.Within(t, 60*time.Second)
	if _, err := c.nodes[1].CreateToken(ctx, state.TokenSpec{Name: "keep", UsageLimit: 10, BytesLimit: 1000}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 7; i++ {
		if d, err := c.nodes[i%3].Consume(ctx, state.ConsumeRequest{ID: state.NewRequestID(), Token: "keep", Units: 1, Bytes: 10}); err != nil || !d.Allowed {
			t.Fatalf("consume %d: %+v %v", i, d, err)
		}
	}
	// Force a snapshot on one node so restore from snapshot is exercised too.
	if err := c.nodes[0].raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	c.closeAll()
	for i := range c.nodes {
		c.reopen(i)
	}
	c.waitLeader()
	for _, s := range c.nodes {
		tok, err := s.Lookup(ctx, "keep")
		if err != nil {
			t.Fatal(err)
		}
		if tok.UsageCount != 7 || tok.BytesUsed != 70 {
			t.Fatalf("%s after restart: usage %d bytes %d, want 7 and 70", s.NodeID(), tok.UsageCount, tok.BytesUsed)
		}
	}
}

func TestRetryAfterLeadershipChangeChargesOnce(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := clustertest.Within(t, 60*time.Second)
	if _, err := c.nodes[0].CreateToken(ctx, state.TokenSpec{Name: "once", UsageLimit: 5}); err != nil {
		t.Fatal(err)
	}
	id := state.NewRequestID()
	old := c.leaderIndex()
	first, err := c.nodes[old].Consume(ctx, state.ConsumeRequest{ID: id, Token: "once", Units: 2})
	if err != nil || !first.Allowed {
		t.Fatalf("first: %+v %v", first, err)
	}
	if err := c.nodes[old].raft.LeadershipTransfer().Error(); err != nil {
		t.Fatal(err)
	}
	for c.leaderIndex() == old {
		time.Sleep(10 * time.Millisecond)
	}
	for _, s := range c.nodes { // the retry lands on every node, new leader included
		d, err := s.Consume(ctx, state.ConsumeRequest{ID: id, Token: "once", Units: 2})
		if err != nil || !d.Allowed || !d.Duplicate {
			t.Fatalf("retry on %s: %+v %v", s.NodeID(), d, err)
		}
	}
	tok, err := c.nodes[old].Lookup(ctx, "once")
	if err != nil {
		t.Fatal(err)
	}
	if tok.UsageCount != 2 {
		t.Fatalf("usage %d, want 2", tok.UsageCount)
	}
}

func TestAnyNodeServesEveryOperation(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := clustertest.Within(t, 60*time.Second)
	f := c.nodes[(c.leaderIndex()+1)%3]
	if _, err := f.CreateToken(ctx, state.TokenSpec{Name: "t1", UsageLimit: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.CreateToken(ctx, state.TokenSpec{Name: "t1"}); !errors.Is(err, state.ErrExists) {
		t.Fatalf("duplicate create via follower: %v", err)
	}
	if _, err := f.Lookup(ctx, "nope"); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("missing token via follower: %v", err)
	}
	id := state.NewRequestID()
	if d, _ := f.Consume(ctx, state.ConsumeRequest{ID: id, Token: "t1", Units: 2}); !d.Allowed {
		t.Fatal("consume denied")
	}
	if d, err := f.Check(ctx, state.ConsumeRequest{Token: "t1", Units: 1, Bytes: 0}); err != nil || d.Allowed || d.Reason != state.ReasonExhausted {
		t.Fatalf("check: %+v %v", d, err)
	}
	if err := f.Refund(ctx, id); err != nil {
		t.Fatal(err)
	}
	if d, err := f.Check(ctx, state.ConsumeRequest{Token: "t1", Units: 1, Bytes: 0}); err != nil || !d.Allowed {
		t.Fatalf("check after refund: %+v %v", d, err)
	}
	t1, err := f.Lookup(ctx, "t1")
	if err != nil || t1.UsageCount != 0 {
		t.Fatalf("check must not charge: %+v %v", t1, err)
	}
	if byID, err := f.Token(ctx, t1.ID); err != nil || byID.Key != state.KeyOf("t1") {
		t.Fatalf("by id: %+v %v", byID, err)
	}
	limit := int64(9)
	if tok, err := f.UpdateLimits(ctx, t1.ID, state.LimitUpdate{UsageLimit: &limit}); err != nil || tok.UsageLimit != 9 {
		t.Fatalf("update: %+v %v", tok, err)
	}
	for _, step := range []func(context.Context, string) (*state.Token, error){f.Revoke, f.Reactivate, f.Reset} {
		if _, err := step(ctx, t1.ID); err != nil {
			t.Fatal(err)
		}
	}
	if toks, _, err := f.Tokens(ctx, state.TokenFilter{}); err != nil || len(toks) != 1 {
		t.Fatalf("list: %v %v", toks, err)
	}
	if err := f.DeleteToken(ctx, t1.ID); err != nil {
		t.Fatal(err)
	}
	if err := f.DeleteToken(ctx, t1.ID); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	if f.Fingerprint("x") != c.nodes[c.leaderIndex()].Fingerprint("x") {
		t.Fatal("nodes disagree on fingerprints")
	}
	info := f.Cluster(ctx)
	if len(info.Nodes) != 3 || info.Leader == "" {
		t.Fatalf("cluster info %+v", info)
	}
	for _, n := range info.Nodes {
		if n.State != "Leader" && n.State != "Follower" {
			t.Fatalf("node %s state %q", n.ID, n.State)
		}
	}
}

func TestJoinAndRemoveMember(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := clustertest.Within(t, 60*time.Second)
	l, err := NewTCPStreamLayer("127.0.0.1:0", "")
	if err != nil {
		t.Fatal(err)
	}
	n4, err := Open(Config{NodeID: "node4", DataDir: filepath.Join(c.dir, "node4"), Stream: l, NoBootstrap: true, Logger: c.log})
	if err != nil {
		t.Fatal(err)
	}
	defer n4.Close()
	follower := c.nodes[(c.leaderIndex()+1)%3]
	if err := follower.Join(ctx, "node4", n4.Addr()); err != nil {
		t.Fatal(err)
	}
	if _, err := n4.CreateToken(ctx, state.TokenSpec{Name: "via4", UsageLimit: 1}); err != nil {
		t.Fatalf("new member cannot serve: %v", err)
	}
	if err := follower.Remove(ctx, "node4"); err != nil {
		t.Fatal(err)
	}
	if err := follower.Remove(ctx, "node4"); !errors.Is(err, state.ErrNoMember) {
		t.Fatalf("removing twice: %v", err)
	}
	// A follower learns of the new configuration shortly after the leader.
	clustertest.Eventually(t, 5*time.Second, "3 members after the remove", func() bool { return len(follower.Cluster(ctx).Nodes) == 3 })
}

func TestNoQuorumIsUnavailable(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := clustertest.Within(t, 60*time.Second)
	if _, err := c.nodes[0].CreateToken(ctx, state.TokenSpec{Name: "q", UsageLimit: 5}); err != nil {
		t.Fatal(err)
	}
	l := c.leaderIndex()
	c.stop((l + 1) % 3)
	c.stop((l + 2) % 3)
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err := c.nodes[l].Consume(rctx, state.ConsumeRequest{ID: state.NewRequestID(), Token: "q", Units: 1})
	if !errors.Is(err, state.ErrUnavailable) {
		t.Fatalf("consume without quorum: %v, want ErrUnavailable", err)
	}
}

func TestDataDirBelongsToOneNode(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Config{NodeID: "a", DataDir: dir, BindAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := Open(Config{NodeID: "b", DataDir: dir, BindAddr: "127.0.0.1:0"}); err == nil {
		t.Fatal("opened another node's data dir")
	}
}

// transferTo makes node i the leader.
func (c *testCluster) transferTo(i int) {
	c.t.Helper()
	for c.leaderIndex() != i {
		l := c.nodes[c.leaderIndex()]
		l.raft.LeadershipTransferToServer(raft.ServerID(c.peers[i].ID), raft.ServerAddress(c.peers[i].Address)).Error()
		time.Sleep(50 * time.Millisecond)
	}
}

func TestSkewedLeaderNeverRenewsEarlyOrTwice(t *testing.T) {
	for _, skew := range []time.Duration{time.Hour, -10 * time.Minute} {
		t.Run(fmt.Sprintf("skew=%s", skew), func(t *testing.T) {
			c := newTestCluster(t, 3)
			ctx := clustertest.Within(t, 60*time.Second)
			fast := (c.leaderIndex() + 1) % 3
			c.skew[fast].Store(int64(skew))
			c.transferTo((fast + 1) % 3) // a correct clock leads first

			const window = 2 * time.Second
			if _, err := c.nodes[0].CreateToken(ctx, state.TokenSpec{Name: "w", UsageLimit: 1, RenewEvery: state.Duration(window)}); err != nil {
				t.Fatal(err)
			}
			consume := func() state.Decision {
				t.Helper()
				d, err := c.nodes[0].Consume(ctx, state.ConsumeRequest{ID: state.NewRequestID(), Token: "w", Units: 1})
				if err != nil {
					t.Fatal(err)
				}
				return d
			}
			if !consume().Allowed {
				t.Fatal("first consume denied")
			}
			c.transferTo(fast)
			if d := consume(); d.Allowed {
				t.Fatalf("the skewed leader (%s) renewed the window early: %+v", skew, d)
			}
			time.Sleep(window + 300*time.Millisecond)
			if d := consume(); !d.Allowed {
				t.Fatalf("the window did not renew on time under the skewed leader (%s): %+v", skew, d)
			}
			c.skew[fast].Store(0)
			c.transferTo((fast + 1) % 3)
			if d := consume(); d.Allowed {
				t.Fatalf("the window renewed twice: %+v", d)
			}
		})
	}
}
