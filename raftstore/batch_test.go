package raftstore

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A lone request is flushed at once, never held back waiting for company.
func TestBatcherFlushesALoneRequestAtOnce(t *testing.T) {
	b := newBatcher(1024, 1, func(reqs []int) ([]int, error) { return reqs, nil })
	defer b.close()
	start := time.Now()
	res, err := b.do(context.Background(), []int{7})
	if err != nil || len(res) != 1 || res[0] != 7 {
		t.Fatalf("do = %v, %v", res, err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Fatalf("a lone request waited %s", d)
	}
}

// Requests that arrive while a flush runs share the next flush, and each
// caller gets its own results back.
func TestBatcherCoalescesConcurrentRequests(t *testing.T) {
	var flushes atomic.Int64
	release := make(chan struct{})
	b := newBatcher(1024, 1, func(reqs []int) ([]int, error) {
		if flushes.Add(1) == 1 {
			<-release // hold the only slot while the others queue
		}
		out := make([]int, len(reqs))
		for i, r := range reqs {
			out[i] = r * 10
		}
		return out, nil
	})
	defer b.close()
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			res, err := b.do(context.Background(), []int{i})
			if err != nil || res[0] != i*10 {
				t.Errorf("request %d got %v, %v", i, res, err)
			}
		}(i)
	}
	time.Sleep(100 * time.Millisecond) // let them queue behind the first flush
	close(release)
	wg.Wait()
	if n := flushes.Load(); n > 5 {
		t.Fatalf("50 concurrent requests took %d flushes", n)
	}
}

// BenchmarkBatcher is the batcher's own cost around a flush that does
// nothing: one caller (every request alone), and 64 at once. Run:
//
//	go test -run '^$' -bench Batcher -benchmem ./raftstore
func BenchmarkBatcher(b *testing.B) {
	for _, clients := range []int{1, 64} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			bt := newBatcher(1024, 1, func(reqs []int) ([]int, error) { return reqs, nil })
			defer bt.close()
			ctx := context.Background()
			b.ReportAllocs()
			if clients == 1 {
				for i := 0; i < b.N; i++ {
					bt.do(ctx, []int{i})
				}
				return
			}
			b.SetParallelism(clients / runtime.GOMAXPROCS(0))
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					bt.do(ctx, []int{1})
				}
			})
		})
	}
}
