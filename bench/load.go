package main

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// result is one cell of a table: a system under one load.
type result struct {
	Tier, System, Workload string
	Clients                int
	Ops                    int64
	Errors                 int64
	Retries                int64 // etcd CAS retries
	Seconds                float64
	P50, P99, Mean         time.Duration
	Note                   string // where the CPU went (Tier 2)
	Groups                 int    // Raft groups (the multi-group rows)
	// CPUPerOp is the process's user+system CPU time over the cell divided
	// by the operations (set where the whole system runs in this process).
	CPUPerOp time.Duration
}

func (r result) opsPerSec() float64 {
	if r.Seconds == 0 {
		return 0
	}
	return float64(r.Ops) / r.Seconds
}

// opFunc performs one operation for client c. It returns how many retries
// it needed (etcd) and an error if it failed.
type opFunc func(ctx context.Context, c int) (retries int, err error)

// closedLoop runs clients goroutines, each issuing op back to back for d,
// and records every operation's latency.
func closedLoop(clients int, d time.Duration, op opFunc) result {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var ops, errs, retries atomic.Int64
	lat := make([][]time.Duration, clients)
	var wg sync.WaitGroup
	start := time.Now()
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			local := make([]time.Duration, 0, 4096)
			for ctx.Err() == nil {
				t0 := time.Now()
				n, err := op(ctx, c)
				if ctx.Err() != nil {
					break // cut off by the end of the run, not a real failure
				}
				local = append(local, time.Since(t0))
				retries.Add(int64(n))
				if err != nil {
					errs.Add(1)
					continue
				}
				ops.Add(1)
			}
			lat[c] = local
		}(c)
	}
	wg.Wait()
	all := slices.Concat(lat...)
	slices.Sort(all)
	r := result{Clients: clients, Ops: ops.Load(), Errors: errs.Load(), Retries: retries.Load(), Seconds: time.Since(start).Seconds()}
	if len(all) > 0 {
		r.P50 = all[len(all)*50/100]
		r.P99 = all[min(len(all)-1, len(all)*99/100)]
		var sum time.Duration
		for _, d := range all {
			sum += d
		}
		r.Mean = sum / time.Duration(len(all))
	}
	return r
}
