package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/raftquota/raftquota/internal/clustertest"
	"github.com/raftquota/raftquota/raftstore"
	"github.com/raftquota/raftquota/raftstore/state"
)

type scaleResult struct {
	Tokens        int
	DedupEntries  int
	RSSMB         float64 // growth of this process's RSS while the node filled
	HeapMB        float64 // live Go heap after filling
	FillSeconds   float64
	Snapshot      time.Duration
	Restore       time.Duration // Open of a node from its data dir, snapshot restore included
	CatchUp       time.Duration
	CatchUpBehind int
	// Decision latency under load, without and with snapshots of the
	// whole state being taken back to back.
	Quiet, DuringSnapshots latencies
	SnapshotsTaken         int
}

type latencies struct{ P50, P99, Max time.Duration }

func latenciesOf(d []time.Duration) latencies {
	if len(d) == 0 {
		return latencies{}
	}
	slices.Sort(d)
	return latencies{P50: d[len(d)/2], P99: d[len(d)*99/100], Max: d[len(d)-1]}
}

// decideUnderSnapshots measures consume latency on s from 16 clients for
// d, first quietly, then while snapshots are taken one after another.
func decideUnderSnapshots(s *raftstore.Store, n int, d time.Duration) (quiet, during latencies, snapshots int, err error) {
	run := func(snap bool) (latencies, int, error) {
		var mu sync.Mutex
		var lat []time.Duration
		var firstErr atomic.Value
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := 0; w < 16; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				var mine []time.Duration
				for i := w; ; i += 16 {
					select {
					case <-stop:
						mu.Lock()
						lat = append(lat, mine...)
						mu.Unlock()
						return
					default:
					}
					t0 := time.Now()
					_, err := s.Consume(context.Background(), state.ConsumeRequest{ID: state.NewRequestID(), Token: keyName(i % n), Units: 1})
					if err != nil {
						firstErr.CompareAndSwap(nil, err)
					}
					mine = append(mine, time.Since(t0))
				}
			}(w)
		}
		taken := 0
		deadline := time.Now().Add(d)
		for time.Now().Before(deadline) {
			if snap {
				if _, err := s.Snapshot(); err == nil {
					taken++
				}
			} else {
				time.Sleep(10 * time.Millisecond)
			}
		}
		close(stop)
		wg.Wait()
		if e, ok := firstErr.Load().(error); ok {
			return latencies{}, taken, e
		}
		return latenciesOf(lat), taken, nil
	}
	if quiet, _, err = run(false); err != nil {
		return
	}
	during, snapshots, err = run(true)
	return
}

func rssMB() float64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 64)
			return kb / 1024
		}
	}
	return 0
}

func settle() {
	runtime.GC()
	debug.FreeOSMemory()
}

// openOne opens a single node from dir and returns it once it leads, with
// how long Open took (Raft restores the latest snapshot inside Open).
func openOne(dir string) (*raftstore.Store, time.Duration, error) {
	l, err := raftstore.NewTCPStreamLayer("127.0.0.1:0", "")
	if err != nil {
		return nil, 0, err
	}
	t0 := time.Now()
	s, err := raftstore.Open(raftstore.Config{NodeID: "node1", DataDir: dir, Stream: l, Logger: zap.NewNop(), SnapshotThreshold: 1 << 62, LogStore: scaleLogStore})
	if err != nil {
		return nil, 0, err
	}
	opened := time.Since(t0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return s, opened, s.WaitForLeader(ctx)
}

// parallel runs f(i) for i in [0,n) on workers goroutines.
func parallel(n, workers int, f func(i int) error) error {
	var next atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || firstErr.Load() != nil {
					return
				}
				if err := f(i); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err, ok := firstErr.Load().(error); ok {
		return err
	}
	return nil
}

// measureScale fills one node with n tokens and n dedup entries, then times
// a snapshot and a restart from it.
// scaleLogStore is the log store the scale and catch-up steps run on
// (-log-store).
var scaleLogStore string

func measureScale(dir string, n int, progress func(string)) (scaleResult, error) {
	r := scaleResult{Tokens: n, DedupEntries: min(n, state.DefaultDedupSize)}
	settle()
	base := rssMB()
	s, _, err := openOne(dir)
	if err != nil {
		return r, err
	}
	ctx := context.Background()
	start := time.Now()
	progress(fmt.Sprintf("creating %d tokens", n))
	if err := parallel(n, 256, func(i int) error {
		_, err := s.CreateToken(ctx, state.TokenSpec{Name: keyName(i), UsageLimit: plenty})
		return err
	}); err != nil {
		s.Close()
		return r, err
	}
	progress(fmt.Sprintf("%d consumes to fill the dedup table", n))
	if err := parallel(n, 256, func(i int) error {
		_, err := s.Consume(ctx, state.ConsumeRequest{ID: state.NewRequestID(), Token: keyName(i), Units: 1})
		return err
	}); err != nil {
		s.Close()
		return r, err
	}
	r.FillSeconds = time.Since(start).Seconds()
	settle()
	r.RSSMB = rssMB() - base
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	r.HeapMB = float64(ms.HeapAlloc) / (1 << 20)
	mb := func(b uint64) float64 { return float64(b) / (1 << 20) }
	progress(fmt.Sprintf("RSS +%.0f MB; Go heap: live %.0f MB, in spans %.0f MB, not returned %.0f MB; GC metadata %.0f MB, stacks %.0f MB",
		r.RSSMB, mb(ms.HeapAlloc), mb(ms.HeapInuse), mb(ms.HeapIdle-ms.HeapReleased), mb(ms.GCSys), mb(ms.StackSys)))

	progress("snapshot")
	if r.Snapshot, err = s.Snapshot(); err != nil {
		s.Close()
		return r, err
	}
	// Measured after the first snapshot: that one also truncates the log
	// of the fill (2n entries, written with snapshots off), which a
	// cluster snapshotting every snapshot_threshold entries never has.
	progress("decisions while snapshots are taken back to back")
	if r.Quiet, r.DuringSnapshots, r.SnapshotsTaken, err = decideUnderSnapshots(s, n, 5*time.Second); err != nil {
		s.Close()
		return r, err
	}
	s.Close()
	progress("restore")
	s, r.Restore, err = openOne(dir)
	if err != nil {
		return r, err
	}
	tok, err := s.Lookup(ctx, keyName(n-1))
	s.Close()
	if err != nil || tok.UsageCount < 1 { // one from the fill, more from the latency runs
		return r, fmt.Errorf("after restore: %+v %v", tok, err)
	}
	return r, nil
}

// measureCatchUp stops one of three nodes, runs consumes until the log is
// behind entries past where the stopped node left it, restarts it and
// times how long it takes to apply what it missed. The leader snapshots
// and compacts its log meanwhile (every 8192 entries, keeping 10240), as a
// cluster does: the follower is sent a snapshot and the log after it.
func measureCatchUp(dir string, behind int) (time.Duration, error) {
	ctx := context.Background()
	var peers []raftstore.Peer
	cfg := func(i int) raftstore.Config {
		return raftstore.Config{NodeID: peers[i].ID, DataDir: filepath.Join(dir, peers[i].ID), BindAddr: peers[i].Address, Peers: peers, Logger: zap.NewNop(), LogStore: scaleLogStore}
	}
	nodes, err := clustertest.Start(ctx, 3, raftstore.NewTCPStreamLayer, func(i int, members []clustertest.Member) (*raftstore.Store, error) {
		peers = peersOf(members)
		c := cfg(i)
		c.Stream = members[i].Layer
		return raftstore.Open(c)
	})
	if err != nil {
		return 0, err
	}
	defer func() {
		for _, s := range nodes {
			if s != nil {
				s.Close()
			}
		}
	}()
	if _, err := nodes[0].CreateToken(ctx, state.TokenSpec{Name: "catchup"}); err != nil {
		return 0, err
	}
	lagger := 2
	if nodes[2].IsLeader() {
		lagger = 1
	}
	left := nodes[lagger].Stats().AppliedIndex
	nodes[lagger].Close()
	nodes[lagger] = nil
	live := nodes[(lagger+1)%3]
	// Few clients, so most entries hold one consume or a few.
	for live.Stats().AppliedIndex < left+uint64(behind) {
		if err := parallel(1000, 4, func(int) error {
			_, err := live.Consume(ctx, state.ConsumeRequest{ID: state.NewRequestID(), Token: "catchup", Units: 1})
			return err
		}); err != nil {
			return 0, err
		}
	}
	target := live.Stats().AppliedIndex
	t0 := time.Now()
	s, err := raftstore.Open(cfg(lagger))
	if err != nil {
		return 0, err
	}
	opened := time.Since(t0)
	nodes[lagger] = s
	start := s.Stats().AppliedIndex
	var moved time.Duration
	for s.Stats().AppliedIndex < target {
		if time.Since(t0) > 2*time.Minute {
			return 0, fmt.Errorf("node did not catch up")
		}
		if moved == 0 && s.Stats().AppliedIndex > start {
			moved = time.Since(t0)
		}
		time.Sleep(time.Millisecond)
	}
	fmt.Fprintf(os.Stderr, "  opened in %s, first entry applied at %s; %d entries behind where it stopped\n", opened.Round(time.Millisecond), moved.Round(time.Millisecond), target-left)
	return time.Since(t0), nil
}
