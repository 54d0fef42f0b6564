package state

import (
	"bytes"
	"fmt"
	"runtime"
	"testing"
	"time"
)

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
		data, _ := Encode(&Command{Op: OpConsume, Time: t0.UnixNano(), Consumes: reqs})
		f.Apply(uint64(i+2), data)
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
	c := &Command{Op: OpConsume, Time: t0.UnixNano(), Consumes: reqs}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		data, err := Encode(c)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := Decode(data); err != nil {
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
			f.applyConsumes(&Command{Consumes: reqs}, t0)
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
		f.applyCreate(&Command{Key: &key, Spec: &TokenSpec{UsageLimit: 1 << 40}}, t0)
	}
	reqs := make([]ConsumeRequest, 1000)
	for k := 0; k < n/len(reqs); k++ {
		for j := range reqs {
			reqs[j] = ConsumeRequest{ID: NewRequestID(), Key: KeyOf(fmt.Sprintf("token-%07d", k*len(reqs)+j)), Units: 1}
		}
		f.applyConsumes(&Command{Consumes: reqs}, t0)
	}
	if f.tokens.len() != n || f.dedup.Len() != n {
		b.Fatalf("%d tokens and %d dedup entries, want %d of each", f.tokens.len(), f.dedup.Len(), n)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		snap := f.Snapshot()
		var buf bytes.Buffer
		if err := snap.Encode(&buf); err != nil {
			b.Fatal(err)
		}
		written := time.Since(start)
		size := buf.Len()
		start = time.Now()
		g := fsmWithDedup(n, nopLogger())
		if err := g.Restore(&buf); err != nil {
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
			if res := f.poolOps().applyCreatePool(&Command{Pool: &PoolSpec{Name: fmt.Sprintf("customer-%07d", k), UsageLimit: 1000, BytesLimit: 1 << 40}}, t0); res.Err != nil {
				b.Fatal(res.Err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "bytes/pool")
		runtime.KeepAlive(f)
	}
}
