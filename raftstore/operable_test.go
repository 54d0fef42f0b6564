package raftstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/raftquota/raftquota/internal/clustertest"
	"github.com/raftquota/raftquota/raftstore/state"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestGracefulStopOfTheLeaderFailsNoRequest is a rolling restart's first
// step: the leader is closed while clients consume through every node.
// Requests on the other nodes must all succeed (retried through the new
// leader), and every request the closing node had accepted must finish.
func TestGracefulStopOfTheLeaderFailsNoRequest(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := clustertest.Within(t, 60*time.Second)
	if _, err := c.nodes[0].CreateToken(ctx, state.TokenSpec{Name: "roll"}); err != nil {
		t.Fatal(err)
	}
	leader := c.leaderIndex()
	var ok, failedElsewhere, failedOnLeader, refusedOnLeader atomic.Int64
	var errs sync.Map
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 24; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			node := w % 3
			for {
				select {
				case <-stop:
					return
				default:
				}
				rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				_, err := c.nodes[node].Consume(rctx, state.ConsumeRequest{ID: state.NewRequestID(), Token: "roll", Units: 1})
				cancel()
				switch {
				case err == nil:
					ok.Add(1)
				case node == leader && errors.Is(err, state.ErrClosed):
					// Refused before it started: the node was already
					// shutting down (its HTTP server would be closed).
					refusedOnLeader.Add(1)
					return
				case node == leader:
					failedOnLeader.Add(1)
					errs.Store(err.Error(), true)
				default:
					failedElsewhere.Add(1)
					errs.Store(err.Error(), true)
				}
			}
		}(w)
	}
	time.Sleep(300 * time.Millisecond)
	if err := c.nodes[leader].Close(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(700 * time.Millisecond)
	close(stop)
	wg.Wait()
	errs.Range(func(k, _ any) bool { t.Logf("error: %v", k); return true })
	t.Logf("%d ok, %d refused by the stopped node after it began closing", ok.Load(), refusedOnLeader.Load())
	if failedElsewhere.Load() > 0 || failedOnLeader.Load() > 0 {
		t.Fatalf("%d requests failed on the other nodes and %d accepted by the closing leader failed", failedElsewhere.Load(), failedOnLeader.Load())
	}
	survivor := c.nodes[(leader+1)%3]
	tok, err := survivor.Lookup(ctx, "roll")
	if err != nil {
		t.Fatal(err)
	}
	if tok.UsageCount != ok.Load() {
		t.Fatalf("usage %d, but %d consumes were answered", tok.UsageCount, ok.Load())
	}
}

// TestHealthyClusterIsQuietAtWarn: an idle cluster and one under load log
// nothing at WARN or above, and every line names its node.
func TestHealthyClusterIsQuietAtWarn(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	c := newTestClusterWith(t, 3, zap.New(core), nil)
	ctx := clustertest.Within(t, 30*time.Second)
	if _, err := c.nodes[0].CreateToken(ctx, state.TokenSpec{Name: "q"}); err != nil {
		t.Fatal(err)
	}
	// A new cluster of configured peers starts without a WARN (a lone
	// node's new data dir is said at WARN: it may be a mistaken data_dir).
	for _, e := range logs.TakeAll() {
		if e.Level >= zapcore.WarnLevel {
			t.Errorf("a new three-node cluster said at %s: %s %v", e.Level, e.Message, e.ContextMap())
		}
	}
	var wg sync.WaitGroup
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				if _, err := c.nodes[w%3].Consume(ctx, state.ConsumeRequest{ID: state.NewRequestID(), Token: "q", Units: 1}); err != nil {
					t.Error(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	time.Sleep(2 * time.Second) // idle: heartbeats only
	for _, e := range logs.All() {
		if e.Level >= zapcore.WarnLevel {
			t.Errorf("healthy cluster logged at %s: %s %v", e.Level, e.Message, e.ContextMap())
		}
		if _, ok := e.ContextMap()["node_id"]; !ok {
			t.Errorf("log line without node_id: %s", e.Message)
		}
	}
}

// TestDedupSizeIsClusterState: nodes started with different dedup_size
// values end with byte-identical state after the same workload, since the
// size that applies is the one in the log.
func TestDedupSizeIsClusterState(t *testing.T) {
	sizes := []int{state.MinDedupSize, 2 * state.MinDedupSize, 0}
	core, logs := observer.New(zapcore.WarnLevel)
	c := newTestClusterWith(t, 3, zap.New(core), func(i int, cfg *Config) { cfg.DedupSize = sizes[i] })
	ctx := clustertest.Within(t, 60*time.Second)
	leader := c.leaderIndex()
	if _, err := c.nodes[0].CreateToken(ctx, state.TokenSpec{Name: "d"}); err != nil {
		t.Fatal(err)
	}
	// Enough distinct ids to overflow the smaller table.
	for i := 0; i < 3*state.MinDedupSize; i += 64 {
		var wg sync.WaitGroup
		for j := 0; j < 64; j++ {
			wg.Add(1)
			go func(n int) {
				defer wg.Done()
				if _, err := c.nodes[n%3].Consume(ctx, state.ConsumeRequest{ID: state.NewRequestID(), Token: "d", Units: 1}); err != nil {
					t.Error(err)
				}
			}(i + j)
		}
		wg.Wait()
	}
	// Every node has applied everything once a read on each sees it.
	for _, s := range c.nodes {
		if _, err := s.Lookup(ctx, "d"); err != nil {
			t.Fatal(err)
		}
	}
	waitApplied(t, c)
	want := sizes[leader]
	if want == 0 {
		want = state.DefaultDedupSize
	}
	// Raft reports an entry applied when it hands it to the FSM, a moment
	// before the FSM has run it: compare until the states agree, for a few
	// seconds. Replicas that diverged never would.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var snaps [][]byte
		for _, s := range c.nodes {
			snaps = append(snaps, snapshotBytes(t, s.fsm))
		}
		differs := 0
		for i := 1; i < len(snaps); i++ {
			if !bytes.Equal(snaps[0], snaps[i]) {
				differs = i + 1
			}
		}
		if differs == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %d's state differs from node 1's", differs)
		}
	}
	for i, s := range c.nodes {
		if got := s.fsm.DedupSize(); got != want {
			t.Errorf("node %d applies dedup size %d, want the leader's %d", i, got, want)
		}
	}
	var warned int
	for _, e := range logs.All() {
		if e.Message != "" && e.ContextMap()["config_dedup_size"] != nil {
			warned++
		}
	}
	// At least one node's config differs from what the cluster applies
	// (the three configs differ), and says so.
	if warned == 0 {
		t.Error("no node warned that its dedup_size differs from the cluster's")
	}
	t.Logf("leader node%d, %d warnings about differing dedup_size", leader+1, warned)
}

func waitApplied(t *testing.T, c *testCluster) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		want := c.nodes[c.leaderIndex()].raft.CommitIndex()
		done := true
		for _, s := range c.nodes {
			done = done && s.Stats().AppliedIndex >= want
		}
		if done {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("nodes did not catch up")
}

func TestBatcherAnswersEverythingItAccepted(t *testing.T) {
	release := make(chan struct{})
	var flushed atomic.Int64
	b := newBatcher(4, 1, func(reqs []int) ([]int, error) {
		<-release
		flushed.Add(int64(len(reqs)))
		return reqs, nil
	})
	var wg sync.WaitGroup
	var answered, closed atomic.Int64
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, err := b.do(context.Background(), []int{i})
			answered.Add(1)
			if errors.Is(err, state.ErrClosed) {
				closed.Add(1)
			} else if err != nil {
				t.Error(err)
			}
		}(i)
	}
	time.Sleep(50 * time.Millisecond)
	go func() { time.Sleep(50 * time.Millisecond); close(release) }()
	b.close()
	wg.Wait()
	if answered.Load() != 20 {
		t.Fatalf("%d of 20 requests answered", answered.Load())
	}
	// Everything not reported closed was flushed, and nothing closed was.
	if got := flushed.Load() + closed.Load(); got != 20 {
		t.Fatalf("%d flushed + %d closed != 20", flushed.Load(), closed.Load())
	}
	if _, err := b.do(context.Background(), []int{1}); !errors.Is(err, state.ErrClosed) {
		t.Fatalf("do after close: %v", err)
	}
}

// TestMembershipChangesUnderLoad adds a fourth voter and then removes the
// leader while clients consume through the nodes that stay: no request
// fails, nothing is admitted past the limit, and usage equals what was
// answered allowed. The even-sized voter set in between is warned about.
func TestMembershipChangesUnderLoad(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	c := newTestClusterWith(t, 3, zap.New(core), nil)
	ctx := clustertest.Within(t, 60*time.Second)
	const limit = 1500
	if _, err := c.nodes[0].CreateToken(ctx, state.TokenSpec{Name: "m", UsageLimit: limit}); err != nil {
		t.Fatal(err)
	}
	gone := c.leaderIndex()
	var stay []*Store
	for i, s := range c.nodes {
		if i != gone {
			stay = append(stay, s)
		}
	}
	l, err := NewTCPStreamLayer("127.0.0.1:0", "")
	if err != nil {
		t.Fatal(err)
	}
	n4, err := Open(Config{NodeID: "node4", DataDir: filepath.Join(c.dir, "node4"), Stream: l, NoBootstrap: true, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	defer n4.Close()

	var allowed, denied, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				d, err := stay[w%len(stay)].Consume(ctx, state.ConsumeRequest{ID: state.NewRequestID(), Token: "m", Units: 1})
				switch {
				case err != nil:
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				case d.Allowed:
					allowed.Add(1)
				default:
					denied.Add(1)
				}
			}
		}(w)
	}
	time.Sleep(200 * time.Millisecond)
	if err := stay[0].Join(ctx, "node4", n4.Addr()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if err := stay[1].Remove(ctx, fmt.Sprintf("node%d", gone+1)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	c.stop(gone)
	c.nodes[gone] = nil
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()

	if failed.Load() > 0 {
		t.Fatalf("%d consumes failed during membership changes, e.g. %v", failed.Load(), firstErr.Load())
	}
	tok, err := n4.Lookup(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d allowed, %d denied, usage %d", allowed.Load(), denied.Load(), tok.UsageCount)
	if allowed.Load() > limit || tok.UsageCount != allowed.Load() {
		t.Fatalf("allowed %d, usage %d, limit %d", allowed.Load(), tok.UsageCount, limit)
	}
	even := 0
	for _, e := range logs.All() {
		if e.ContextMap()["tolerated_failures"] != nil {
			even++
		}
	}
	if even == 0 {
		t.Fatal("four voters, and no warning about an even-sized voter set")
	}
}

// TestRestartedPeerIsAFollowerOnTheFirstPoll: once a restarted follower
// takes replication again, the leader's cluster view says Follower on the
// first poll (it used to say unreachable for a few, from one failed probe
// on a stale connection); while it is down, unreachable with last_contact.
func TestRestartedPeerIsAFollowerOnTheFirstPoll(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := clustertest.Within(t, 30*time.Second)
	leader := c.leaderIndex()
	f := (leader + 1) % 3
	c.stop(f)
	stateOf := func() Node {
		for _, n := range c.nodes[leader].Cluster(ctx).Nodes {
			if n.ID == c.peers[f].ID {
				return n
			}
		}
		t.Fatal("member missing")
		return Node{}
	}
	deadline := time.Now().Add(10 * time.Second)
	for n := stateOf(); n.State != "unreachable" || n.LastContact == nil; n = stateOf() {
		if time.Now().After(deadline) {
			t.Fatalf("stopped follower shown as %+v", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.reopen(f)
	for c.nodes[f].Stats().AppliedIndex < c.nodes[leader].Stats().AppliedIndex || c.nodes[f].Health(ctx) != nil {
		if time.Now().After(deadline.Add(10 * time.Second)) {
			t.Fatal("restarted follower did not catch up")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := stateOf(); n.State != "Follower" || n.LastContact != nil {
		t.Fatalf("caught-up follower shown as %+v on the first poll", n)
	}
}

// TestReadsAreLinearizableWithoutLogWrites: once the leader has committed
// in its term, reads (lookups, checks) append nothing to the log, and a
// read that starts after a consume was answered sees it, on any node.
func TestReadsAreLinearizableWithoutLogWrites(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := clustertest.Within(t, 60*time.Second)
	if _, err := c.nodes[0].CreateToken(ctx, state.TokenSpec{Name: "r"}); err != nil {
		t.Fatal(err)
	}
	leader := c.nodes[c.leaderIndex()]
	// Ready for read-index reads, and done with its own proposals of a new
	// term (the fingerprint secret, the dedup size), which follow readiness.
	settled := func() bool {
		cfg := leader.cfg.DedupSize
		return leader.readyTerm.Load() == leader.raft.CurrentTerm() && leader.fsm.Secret() != nil &&
			(cfg == 0 || cfg == leader.fsm.DedupSize()) && leader.raft.AppliedIndex() == leader.raft.LastIndex()
	}
	clustertest.Eventually(t, 10*time.Second, "the leader ready for read-index reads", settled)

	before := leader.raft.LastIndex()
	for i := 0; i < 30; i++ {
		s := c.nodes[i%3]
		if _, err := s.Lookup(ctx, "r"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Check(ctx, state.ConsumeRequest{Token: "r", Units: 1, Bytes: 0}); err != nil {
			t.Fatal(err)
		}
	}
	if after := leader.raft.LastIndex(); after != before {
		t.Fatalf("60 reads appended %d log entries", after-before)
	}

	// Reads racing writes never miss a write answered before they began.
	var acked atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := c.nodes[0].Consume(ctx, state.ConsumeRequest{ID: state.NewRequestID(), Token: "r", Units: 1}); err != nil {
				t.Error(err)
				return
			}
			acked.Add(1)
		}
	}()
	for i := 0; i < 300; i++ {
		floor := acked.Load()
		n := c.nodes[(c.leaderIndex()+1+i%2)%3] // a follower
		tok, err := n.Lookup(ctx, "r")
		if err != nil {
			t.Fatal(err)
		}
		if tok.UsageCount < floor {
			t.Fatalf("a read saw usage %d after %d consumes were answered", tok.UsageCount, floor)
		}
		// A follower judges checks itself, at a read point the leader gave.
		floor = acked.Load()
		d, err := n.Check(ctx, state.ConsumeRequest{Token: "r", Units: 1, Bytes: 0})
		if err != nil {
			t.Fatal(err)
		}
		if d.UsageCount < floor {
			t.Fatalf("a check on a follower saw usage %d after %d consumes were answered", d.UsageCount, floor)
		}
	}
	close(stop)
	wg.Wait()
	if acked.Load() == 0 {
		t.Fatal("no consume ran alongside the reads")
	}

	// A follower that cannot say what its FSM applied (it restored a
	// snapshot and applied no command since) lets the leader judge.
	f := c.nodes[(c.leaderIndex()+1)%3]
	restoreOwnSnapshot(t, f)
	d, err := f.Check(ctx, state.ConsumeRequest{Token: "r", Units: 1, Bytes: 0})
	if err != nil || d.UsageCount != acked.Load() {
		t.Fatalf("check on a follower after a restore: usage %d, %v; want %d", d.UsageCount, err, acked.Load())
	}
}

// TestADownFollowerCostsTheLeaderFewLogLines: while a follower is down,
// the leader says so without flooding its log: a few lines when the
// connections break and contact is lost, then its Raft dials wait for the
// peer instead of failing once per backoff step (several a second).
func TestADownFollowerCostsTheLeaderFewLogLines(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	c := newTestClusterWith(t, 3, zap.New(core), nil)
	leader := c.leaderIndex()
	f := (leader + 1) % 3
	stopped := time.Now()
	c.stop(f)
	time.Sleep(6 * time.Second)
	var n int
	var seen []string
	for _, e := range logs.All() {
		if strings.HasPrefix(e.LoggerName, c.peers[leader].ID) && !e.Time.Before(stopped) {
			n++
			seen = append(seen, e.Message)
		}
	}
	if n > 12 {
		t.Fatalf("the leader wrote %d lines at WARN or above in 6 s with one follower down: %q", n, seen)
	}
	t.Logf("the leader wrote %d lines at WARN or above in 6 s with one follower down", n)
}

// TestAFollowerBackFromALongAbsenceCatchesUpAtOnce: hashicorp/raft waits
// longer after each failed replication RPC (doubling up to 10.24 s, a wait
// nothing cuts short), so a follower that was down long enough sat idle
// for seconds after it came back. The leader's dials now wait for a
// refusing member instead of failing, and the count never grows. Raft's
// RPC timeout is 200 ms here so that, without that, the count would reach
// its cap within the outage. Once contact is lost (the first seconds), the
// leader writes nothing at WARN or above while the follower stays down.
func TestAFollowerBackFromALongAbsenceCatchesUpAtOnce(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	c := newTestClusterWith(t, 3, zap.New(core), func(i int, cfg *Config) { cfg.raftTimeout = 200 * time.Millisecond })
	ctx := clustertest.Within(t, 60*time.Second)
	if _, err := c.nodes[0].CreateToken(ctx, state.TokenSpec{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	leader := c.leaderIndex()
	f := (leader + 1) % 3
	c.stop(f)
	quietFrom := time.Now().Add(2 * time.Second)
	for end := time.Now().Add(8 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if _, err := c.nodes[leader].Consume(ctx, state.ConsumeRequest{ID: state.NewRequestID(), Token: "a", Units: 1}); err != nil {
			t.Fatal(err)
		}
	}
	var loud []string
	for _, e := range logs.All() {
		if strings.HasPrefix(e.LoggerName, c.peers[leader].ID) && e.Time.After(quietFrom) {
			loud = append(loud, e.Message)
		}
	}
	if len(loud) > 0 {
		t.Errorf("the leader wrote %d lines at WARN or above in the last 6 s of a follower's outage: %q", len(loud), loud)
	}
	target := c.nodes[leader].Stats().AppliedIndex
	start := time.Now()
	c.reopen(f)
	for c.nodes[f].Stats().AppliedIndex < target {
		if time.Since(start) > 20*time.Second {
			t.Fatal("the restarted follower did not catch up in 20 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(start)
	t.Logf("caught up %s after it was reopened", took.Round(time.Millisecond))
	if took > 1500*time.Millisecond {
		t.Fatalf("the restarted follower caught up only %s after it was reopened", took.Round(time.Millisecond))
	}
}

// restoreOwnSnapshot restores s's state from a snapshot of itself, as a
// node does when it installs one: the state is the same, and the machine
// no longer knows which command it applied last.
func restoreOwnSnapshot(t *testing.T, s *Store) {
	t.Helper()
	snap := s.fsm.Machine.Snapshot()
	var buf bytes.Buffer
	err := snap.Encode(&buf)
	snap.Release()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.fsm.Machine.Restore(&buf); err != nil {
		t.Fatal(err)
	}
}
