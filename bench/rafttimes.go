package main

import (
	"fmt"
	"time"

	metrics "github.com/armon/go-metrics"
)

// raftTimes collects hashicorp/raft's own timings (it reports through
// go-metrics' global sink) over one cell, to tell which step of a commit
// round the time goes to.
type raftTimes struct{ sink *metrics.InmemSink }

// startRaftTimes points go-metrics' global sink at a fresh in-memory one.
func startRaftTimes() raftTimes {
	sink := metrics.NewInmemSink(time.Hour, time.Hour)
	cfg := metrics.DefaultConfig("bench")
	cfg.EnableHostname, cfg.EnableRuntimeMetrics = false, false
	metrics.NewGlobal(cfg, sink)
	return raftTimes{sink}
}

// stop points go-metrics back at a sink that keeps nothing, so no later
// step pays for collecting.
func (t raftTimes) stop() {
	metrics.NewGlobal(metrics.DefaultConfig("bench"), &metrics.BlackholeSink{})
}

// String says, over the cell: how many log entries committed and what a
// commit round took (raft.commitTime: from the leader's dispatch to the
// quorum's match), split into the leader's log append (leader.dispatchLog)
// and a follower's (rpc.appendEntries.storeLogs), with consumes per entry.
func (t raftTimes) String(consumes int64) string {
	mean := func(name string) (float64, int) {
		var sum float64
		n := 0
		for _, iv := range t.sink.Data() {
			if s, ok := iv.Samples["bench."+name]; ok {
				sum += s.Sum
				n += s.Count
			}
		}
		if n == 0 {
			return 0, 0
		}
		return sum / float64(n), n
	}
	commit, entries := mean("raft.commitTime")
	if entries == 0 {
		return ""
	}
	leader, _ := mean("raft.leader.dispatchLog")
	follower, _ := mean("raft.rpc.appendEntries.storeLogs")
	s := fmt.Sprintf("commit round %.2f ms (leader's log append %.2f ms, then a follower's %.2f ms), %.1f consumes per entry", commit, leader, follower, float64(consumes)/float64(entries))
	if follower == 0 {
		s = fmt.Sprintf("commit round %.2f ms (the log append %.2f ms), %.1f consumes per entry", commit, leader, float64(consumes)/float64(entries))
	}
	return s
}
