package raftstore

import (
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/raftquota/raftquota/internal/clustertest"
	"github.com/raftquota/raftquota/raftstore/internal/forward"
	"github.com/raftquota/raftquota/raftstore/state"
)

// openGateway starts a gateway node that joins c's voters.
func openGateway(t *testing.T, c *testCluster, id string) *Store {
	t.Helper()
	s, err := Open(Config{NodeID: id, DataDir: filepath.Join(c.dir, id), BindAddr: "127.0.0.1:0", Peers: c.peers,
		Gateway: true, GatewayTimeout: time.Second, Logger: c.log.Named(id)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	// A gateway's log is in memory: it fsyncs nothing.
	if HasState(filepath.Join(c.dir, id)) || exists(filepath.Join(c.dir, id, walDir)) {
		t.Fatalf("gateway %s keeps a log or stable store on disk", id)
	}
	return s
}

func suffrages(s *Store) map[string]raft.ServerSuffrage {
	out := map[string]raft.ServerSuffrage{}
	for _, srv := range s.members().configuration() {
		out[string(srv.ID)] = srv.Suffrage
	}
	return out
}

// TestGatewaysDecideThroughTheVoters: gateways join as non-voters, take
// consumes that are decided by the voters (never past a limit, whichever
// node takes them), leave on close, and a gateway that vanishes without
// leaving is removed; the voter set never changes.
func TestGatewaysDecideThroughTheVoters(t *testing.T) {
	// The leader's gateway_timeout decides when a vanished gateway goes.
	c := newTestClusterWith(t, 3, nil, func(_ int, cfg *Config) { cfg.GatewayTimeout = time.Second })
	ctx := clustertest.Within(t, 60*time.Second)
	g1, g2 := openGateway(t, c, "gw1"), openGateway(t, c, "gw2")
	leader := c.nodes[c.leaderIndex()]
	clustertest.Eventually(t, 10*time.Second, "gateways joined", func() bool {
		m := suffrages(leader)
		return m["gw1"] == raft.Nonvoter && m["gw2"] == raft.Nonvoter
	})
	if n := leader.members().voters(); n != 3 {
		t.Fatalf("%d voters after gateways joined, want 3", n)
	}

	if _, err := g1.CreateToken(ctx, state.TokenSpec{Name: "edge", UsageLimit: 200}); err != nil {
		t.Fatal(err)
	}
	nodes := []*Store{c.nodes[0], c.nodes[1], c.nodes[2], g1, g2}
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 400; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			d, err := nodes[i%len(nodes)].Consume(ctx, state.ConsumeRequest{ID: state.NewRequestID(), Token: "edge", Units: 1})
			if err != nil {
				t.Error(err)
				return
			}
			if d.Allowed {
				allowed.Add(1)
			}
		}(i)
	}
	wg.Wait()
	if allowed.Load() != 200 {
		t.Fatalf("%d of 400 admitted through voters and gateways, want exactly 200", allowed.Load())
	}

	// A gateway closing leaves.
	g1.Close()
	clustertest.Eventually(t, 10*time.Second, "closed gateway removed", func() bool { _, ok := suffrages(leader)["gw1"]; return !ok })

	// A gateway that vanishes without leaving is removed after the timeout.
	g2.cfg.Gateway = false // skip the leave: as if killed
	g2.Close()
	clustertest.Eventually(t, 15*time.Second, "vanished gateway reaped", func() bool { _, ok := suffrages(leader)["gw2"]; return !ok })
	if n := leader.members().voters(); n != 3 {
		t.Fatalf("%d voters at the end, want 3", n)
	}
	info := leader.Cluster(ctx)
	if len(info.Nodes) != 3 {
		t.Fatalf("cluster lists %v", info.Nodes)
	}
}

// TestGatewayCannotTakeAVotersID: a gateway under a voter's id is refused,
// so gateways never change the voter set.
func TestGatewayCannotTakeAVotersID(t *testing.T) {
	c := newTestCluster(t, 3)
	leader := c.nodes[c.leaderIndex()]
	err := leader.members().changeMember(&forward.Member{Add: true, Gateway: true, ID: "node1", Address: "127.0.0.1:1"})
	if err == nil {
		t.Fatal("a gateway took a voter's id")
	}
	if err := leader.members().changeMember(&forward.Member{Gateway: true, ID: "node2"}); err == nil {
		t.Fatal("a gateway leave removed a voter")
	}
	if n := leader.members().voters(); n != 3 {
		t.Fatalf("%d voters, want 3", n)
	}
	if (&Config{NodeID: "node1", DataDir: "x", BindAddr: "127.0.0.1:0", Peers: c.peers, Gateway: true}).Validate() == nil {
		t.Fatal("a gateway listed among the peers validated")
	}
}
