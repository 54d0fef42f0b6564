package raftstore

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	walmetrics "github.com/hashicorp/raft-wal/metrics"
	"github.com/hashicorp/raft-wal/verifier"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/raftquota/raftquota/internal/clustertest"
	"github.com/raftquota/raftquota/raftstore/state"
)

// TestLogCheckVerifiesEveryVotersLog: with checkpoints every 100 ms, every
// voter's log is checked against the leader's checksum, again after a
// follower restarts, and nothing fails.
func TestLogCheckVerifiesEveryVotersLog(t *testing.T) {
	c := newTestClusterWith(t, 3, nil, func(_ int, cfg *Config) { cfg.logCheckInterval = 100 * time.Millisecond })
	ctx := clustertest.Within(t, 30*time.Second)
	if _, err := c.nodes[0].CreateToken(ctx, state.TokenSpec{Name: "a", UsageLimit: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	down := -1 // a stopped node takes no consumes
	consume := func(n int) {
		for i := range n {
			if i%3 == down {
				continue
			}
			if _, err := c.nodes[i%3].Consume(ctx, state.ConsumeRequest{ID: state.NewRequestID(), Token: "a", Units: 1}); err != nil {
				t.Fatalf("node %d consume %d: %#v", i%3, i, err)
			}
		}
	}
	checked := func(min uint64) func() bool {
		return func() bool {
			for _, n := range c.nodes {
				if n.Stats().LogChecksOK < min {
					return false
				}
			}
			return true
		}
	}
	consume(50)
	clustertest.Eventually(t, 20*time.Second, "every voter's log checked twice", checked(2))

	f := (c.leaderIndex() + 1) % 3
	c.stop(f)
	down = f
	consume(20)
	c.reopen(f)
	down = -1
	consume(20)
	clustertest.Eventually(t, 20*time.Second, "the restarted follower's log checked", func() bool { return c.nodes[f].Stats().LogChecksOK >= 2 })
	for i, n := range c.nodes {
		if st := n.Stats(); st.LogChecksFailed != 0 {
			t.Errorf("node %d: %d log checks failed", i, st.LogChecksFailed)
		}
	}
}

// TestNoLogCheckpointWhileAMemberIsOlder: a node of an earlier version
// would halt on a checkpoint, so none is written while one member says it
// cannot apply it; once it is upgraded, checks begin.
func TestNoLogCheckpointWhileAMemberIsOlder(t *testing.T) {
	older := 2
	c := newTestClusterWith(t, 3, nil, func(i int, cfg *Config) {
		cfg.logCheckInterval = 50 * time.Millisecond
		if i == older {
			cfg.maxOp = state.OpLogCheckpoint - 1
		}
	})
	// The first leader proposes the fingerprint secret and the dedup size
	// of its own accord; after them, nothing is.
	clustertest.Eventually(t, 10*time.Second, "the first leader's own proposals applied", func() bool {
		return c.nodes[0].fsm.Secret() != nil && c.nodes[0].fsm.DedupSize() != 0
	})
	time.Sleep(100 * time.Millisecond)
	applied := c.nodes[0].Stats().AppliedIndex
	time.Sleep(time.Second) // twenty intervals
	for i, n := range c.nodes {
		if st := n.Stats(); st.LogChecksOK+st.LogChecksFailed+st.LogChecksSkipped != 0 || n.Halted() != nil {
			t.Fatalf("node %d: %+v, halted %v; want no checkpoint while node %d is older", i, st, n.Halted(), older)
		}
	}
	if now := c.nodes[0].Stats().AppliedIndex; now != applied {
		t.Fatalf("the log grew from %d to %d with nothing proposed", applied, now)
	}

	c.stop(older)
	c.tweak = func(_ int, cfg *Config) { cfg.logCheckInterval = 50 * time.Millisecond }
	c.reopen(older)
	clustertest.Eventually(t, 20*time.Second, "log checks once every member is upgraded", func() bool {
		return c.nodes[older].Stats().LogChecksOK > 0
	})
}

// TestLogCheckReportsSayWhatTheyFound: a match is counted, a range no
// longer on the node is skipped quietly, and a mismatch or a failed read is
// an ERROR and counted as failed.
func TestLogCheckReportsSayWhatTheyFound(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	var c logChecks
	report := c.report(zap.New(core))
	rng := verifier.LogRange{Start: 10, End: 20}
	report(verifier.VerificationReport{Range: rng})
	report(verifier.VerificationReport{Range: rng, Err: verifier.ErrRangeMismatch})
	report(verifier.VerificationReport{Range: rng, Err: verifier.ErrChecksumMismatch("storage corruption: node read checksum=1, leader wrote checksum=2")})
	report(verifier.VerificationReport{Range: rng, Err: errors.New("unable to verify log range: disk on fire")})
	if ok, skipped, failed := c.ok.Load(), c.skipped.Load(), c.failed.Load(); ok != 1 || skipped != 1 || failed != 2 {
		t.Fatalf("ok %d, skipped %d, failed %d; want 1, 1, 2", ok, skipped, failed)
	}
	errs := logs.FilterLevelExact(zap.ErrorLevel).All()
	if len(errs) != 2 || errs[0].ContextMap()["from_index"] != uint64(10) || errs[0].ContextMap()["to_index"] != uint64(20) {
		t.Fatalf("ERROR lines: %+v; want the mismatch and the failed read, with their range", errs)
	}
	if n := logs.FilterLevelExact(zap.WarnLevel).Len(); n != 0 {
		t.Fatalf("%d WARN lines", n)
	}
}

// TestLogCheckAfterATailIsReplacedOrALogRestarts drives a follower's log
// check by hand, against a leader's verifier: a tail a new leader replaced
// and a log that starts again after a snapshot (emptied, as raft-wal's is,
// or with a gap, as raft-boltdb's is) are checked or skipped, never said
// to differ from the leader's. raft-wal's verifier alone says all three
// differ.
func TestLogCheckAfterATailIsReplacedOrALogRestarts(t *testing.T) {
	cp, err := state.Encode(&state.Command{Op: state.OpLogCheckpoint, Time: 1})
	if err != nil {
		t.Fatal(err)
	}
	entry := func(index, term uint64, checkpoint bool) *raft.Log {
		l := &raft.Log{Index: index, Term: term, Type: raft.LogCommand, Data: []byte(fmt.Sprintf("entry %d of term %d", index, term))}
		if checkpoint {
			l.Data = cp
		}
		return l
	}
	for _, tc := range []struct {
		name string
		// follower changes the follower's log between two checkpoints the
		// leader writes at 4 and at 22; the leader's own log holds 1-22
		// of term 2 (1-4 of term 1).
		follower func(t *testing.T, f *watchedLog, leader func(from, to uint64) []*raft.Log)
		want     string
	}{
		{"a tail replaced", func(t *testing.T, f *watchedLog, leader func(from, to uint64) []*raft.Log) {
			// An old leader's entries 5-9, never committed, then the new
			// leader's from 5 on.
			must(t, f.StoreLogs([]*raft.Log{entry(5, 1, false), entry(6, 1, false), entry(7, 1, false), entry(8, 1, false), entry(9, 1, false)}))
			must(t, f.DeleteRange(5, 9))
			must(t, f.StoreLogs(leader(5, 22)))
		}, "ok"},
		{"emptied after a snapshot", func(t *testing.T, f *watchedLog, leader func(from, to uint64) []*raft.Log) {
			must(t, f.DeleteRange(1, 4))
			must(t, f.StoreLogs(leader(15, 22)))
		}, "skipped"},
		{"a gap after a snapshot", func(t *testing.T, f *watchedLog, leader func(from, to uint64) []*raft.Log) {
			must(t, f.DeleteRange(1, 2))
			must(t, f.StoreLogs(leader(15, 22)))
		}, "skipped"},
		{"nothing happened", func(t *testing.T, f *watchedLog, leader func(from, to uint64) []*raft.Log) {
			must(t, f.StoreLogs(leader(5, 22)))
		}, "ok"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leaderLog := verifier.NewLogStore(raft.NewInmemStore(), isCheckpoint, nil, &walmetrics.NoOpCollector{})
			defer leaderLog.Close()
			var written []*raft.Log // as the leader wrote them, checkpoints with its checksum
			for i := uint64(1); i <= 22; i++ {
				term := uint64(2)
				if i <= 4 {
					term = 1
				}
				l := entry(i, term, i == 4 || i == 22)
				must(t, leaderLog.StoreLogs([]*raft.Log{l}))
				written = append(written, l)
			}
			leader := func(from, to uint64) []*raft.Log { return written[from-1 : to] }

			reports := make(chan verifier.VerificationReport, 4)
			checks := &logChecks{}
			report := checks.report(zap.NewNop())
			f, err := newWatchedLog(unclosedLog{raft.NewInmemStore()}, func(r verifier.VerificationReport) { report(r); reports <- r }, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer f.close()
			must(t, f.StoreLogs(leader(1, 4)))
			if r := <-reports; r.Err != nil || checks.ok.Load() != 1 {
				t.Fatalf("the first checkpoint: %+v", r)
			}
			tc.follower(t, f, leader)
			r := <-reports
			got := map[bool]string{true: "ok"}[checks.ok.Load() == 2]
			if checks.skipped.Load() == 1 {
				got = "skipped"
			}
			if checks.failed.Load() != 0 {
				got = "failed"
			}
			if got != tc.want {
				t.Fatalf("the checkpoint at 22 was %s (%+v), want %s", got, r, tc.want)
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
