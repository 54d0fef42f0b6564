package raftstore

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
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
			if _, err := c.nodes[0].CreateToken(ctx, TokenSpec{Name: "bench"}); err != nil {
				b.Fatal(err)
			}
			var n atomic.Int64
			b.ResetTimer()
			start := time.Now()
			if clients == 1 {
				for i := 0; i < b.N; i++ {
					if _, err := c.nodes[i%3].Consume(ctx, ConsumeRequest{ID: NewRequestID(), Token: "bench", Units: 1}); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "consumes/s")
				return
			}
			b.SetParallelism(clients / runtime.GOMAXPROCS(0))
			b.RunParallel(func(pb *testing.PB) {
				s := c.nodes[int(n.Add(1))%3]
				for pb.Next() {
					if _, err := s.Consume(ctx, ConsumeRequest{ID: NewRequestID(), Token: "bench", Units: 1}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "consumes/s")
		})
	}
}

// BenchmarkApplyBatch measures the FSM applying one log entry of 256 consumes.
func BenchmarkApplyBatch(b *testing.B) {
	f := fsmWithDedup(DefaultDedupSize, nopLogger())
	tf := &testFSM{t: b, f: f}
	tf.create(t0, TokenSpec{Name: "bench"})
	reqs := make([]ConsumeRequest, 256)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		for j := range reqs {
			// The log carries the name's key, never the name.
			reqs[j] = ConsumeRequest{ID: NewRequestID(), Key: KeyOf("bench"), Units: 1}
		}
		data, _ := encodeCommand(&command{Op: opConsume, Time: t0.UnixNano(), Consumes: reqs})
		f.Apply(&raft.Log{Index: uint64(i + 2), Data: data})
	}
	b.StopTimer()
	if f.dedup.Len() == 0 {
		b.Fatal("no consume was applied")
	}
}

// BenchmarkCommandCodec measures encoding and decoding a 64-consume batch.
func BenchmarkCommandCodec(b *testing.B) {
	reqs := make([]ConsumeRequest, 64)
	for j := range reqs {
		reqs[j] = ConsumeRequest{ID: NewRequestID(), Token: "some-token-name", Units: 1, Bytes: 1 << 20}
	}
	c := &command{Op: opConsume, Time: t0.UnixNano(), Consumes: reqs}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		data, err := encodeCommand(c)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := decodeCommand(data); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDedupMemory reports the heap cost of one dedup entry.
func BenchmarkDedupMemory(b *testing.B) {
	const n = 200_000
	for i := 0; i < b.N; i++ {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		f := fsmWithDedup(n, nopLogger())
		tf := &testFSM{t: b, f: f}
		tf.create(t0, TokenSpec{Name: "bench"})
		reqs := make([]ConsumeRequest, 1000)
		for k := 0; k < n/len(reqs); k++ {
			for j := range reqs {
				reqs[j] = ConsumeRequest{ID: NewRequestID(), Key: KeyOf("bench"), Units: 1}
			}
			f.mu.Lock()
			f.applyConsumes(&command{Consumes: reqs}, t0)
			f.mu.Unlock()
		}
		if f.dedup.Len() != n {
			b.Fatalf("%d dedup entries, want %d", f.dedup.Len(), n)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "bytes/entry")
		runtime.KeepAlive(f)
	}
}

// BenchmarkSnapshotRoundTrip writes and restores a snapshot of 1M tokens
// and 1M dedup entries built directly in the FSM (no Raft), reporting each
// half. Run: go test -run '^$' -bench SnapshotRoundTrip -benchtime 1x ./raftstore
func BenchmarkSnapshotRoundTrip(b *testing.B) {
	const n = 1_000_000
	f := fsmWithDedup(n, nopLogger())
	for i := 0; i < n; i++ {
		key := KeyOf(fmt.Sprintf("token-%07d", i))
		f.applyCreate(&command{Key: &key, Spec: &TokenSpec{UsageLimit: 1 << 40}}, t0)
	}
	reqs := make([]ConsumeRequest, 1000)
	for k := 0; k < n/len(reqs); k++ {
		for j := range reqs {
			reqs[j] = ConsumeRequest{ID: NewRequestID(), Key: KeyOf(fmt.Sprintf("token-%07d", k*len(reqs)+j)), Units: 1}
		}
		f.applyConsumes(&command{Consumes: reqs}, t0)
	}
	if f.tokens.len() != n || f.dedup.Len() != n {
		b.Fatalf("%d tokens and %d dedup entries, want %d of each", f.tokens.len(), f.dedup.Len(), n)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		snap, _ := f.Snapshot()
		var buf bytes.Buffer
		if err := snap.(*fsmSnapshot).write(&buf); err != nil {
			b.Fatal(err)
		}
		written := time.Since(start)
		size := buf.Len()
		start = time.Now()
		g := fsmWithDedup(n, nopLogger())
		if err := g.Restore(io.NopCloser(&buf)); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(written.Seconds(), "snapshot-s")
		b.ReportMetric(time.Since(start).Seconds(), "restore-s")
		b.ReportMetric(float64(size)/(1<<20), "MB")
	}
}

// BenchmarkPoolMemory reports the heap cost of one pool (100k pools, each
// with a name like a customer's).
func BenchmarkPoolMemory(b *testing.B) {
	const n = 100_000
	for i := 0; i < b.N; i++ {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		f := fsmWithDedup(MinDedupSize, nopLogger())
		for k := 0; k < n; k++ {
			if res := f.applyCreatePool(&command{Pool: &PoolSpec{Name: fmt.Sprintf("customer-%07d", k), UsageLimit: 1000, BytesLimit: 1 << 40}}, t0); res.Err != nil {
				b.Fatal(res.Err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "bytes/pool")
		runtime.KeepAlive(f)
	}
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
				p, err := c.nodes[0].CreatePool(ctx, PoolSpec{Name: fmt.Sprintf("pool-%d", i)})
				if err != nil {
					b.Fatal(err)
				}
				ids = append(ids, p.ID)
			}
			if _, err := c.nodes[0].CreateToken(ctx, TokenSpec{Name: "bench", Pools: ids}); err != nil {
				b.Fatal(err)
			}
			var n atomic.Int64
			b.SetParallelism(64 / runtime.GOMAXPROCS(0))
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				s := c.nodes[int(n.Add(1))%3]
				for pb.Next() {
					if _, err := s.Consume(ctx, ConsumeRequest{ID: NewRequestID(), Token: "bench", Units: 1}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "consumes/s")
		})
	}
}
