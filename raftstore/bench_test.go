package raftstore

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/raftquota/raftquota/raftstore/state"
)

// BenchmarkConsume measures consumes/s on a 3-node in-process cluster, with
// clients spread over all nodes (so two thirds are forwarded) against one
// unlimited token. Run:
//
//	go test -run '^$' -bench Consume -benchtime 5s ./raftstore
func BenchmarkConsume(b *testing.B) {
	for _, clients := range []int{1, 64} {
		b.Run(fmt.Sprintf("nodes=3/clients=%d", clients), func(b *testing.B) {
			c := newTestCluster(b, 3)
			ctx := context.Background()
			if _, err := c.nodes[0].CreateToken(ctx, state.TokenSpec{Name: "bench"}); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			if clients == 1 {
				start := time.Now()
				for i := 0; i < b.N; i++ {
					if _, err := c.nodes[i%3].Consume(ctx, state.ConsumeRequest{ID: state.NewRequestID(), Token: "bench", Units: 1}); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "consumes/s")
				return
			}
			consumeInParallel(b, c, clients)
		})
	}
}

// consumeInParallel runs b.N consumes of the token "bench" from clients
// goroutines spread over c's nodes, and reports consumes/s.
func consumeInParallel(b *testing.B, c *testCluster, clients int) {
	ctx := context.Background()
	var n atomic.Int64
	b.SetParallelism(clients / runtime.GOMAXPROCS(0))
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		s := c.nodes[int(n.Add(1))%3]
		for pb.Next() {
			if _, err := s.Consume(ctx, state.ConsumeRequest{ID: state.NewRequestID(), Token: "bench", Units: 1}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "consumes/s")
}

// BenchmarkConsumeInPools: three nodes, 64 clients, one token in 0, 1 or
// 4 pools (each charge then touches 1, 2 or 5 counters in one entry).
func BenchmarkConsumeInPools(b *testing.B) {
	for _, pools := range []int{0, 1, 4} {
		b.Run(fmt.Sprintf("pools=%d", pools), func(b *testing.B) {
			c := newTestCluster(b, 3)
			ctx := context.Background()
			var ids []string
			for i := range pools {
				p, err := c.nodes[0].Pools().Create(ctx, state.PoolSpec{Name: fmt.Sprintf("pool-%d", i)})
				if err != nil {
					b.Fatal(err)
				}
				ids = append(ids, p.ID)
			}
			if _, err := c.nodes[0].CreateToken(ctx, state.TokenSpec{Name: "bench", Pools: ids}); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			consumeInParallel(b, c, 64)
		})
	}
}
