package raftstore

import (
	"context"
	"sync"
	"time"

	"github.com/raftquota/raftquota/raftstore/state"
)

// batcher coalesces concurrent requests into one flush: one Raft log entry
// (one fsync) on the leader, one RPC on a follower. It never waits for a
// batch to fill: a flush starts as soon as one of the inFlight flush slots
// is free, carrying everything that queued while the previous flushes were
// running. Under no load a request is flushed alone, at once; under load
// batches grow by themselves.
//
// A caller that finds a slot free flushes on its own goroutine (group
// commit), so a lone request is never handed between goroutines on its way
// to the log and back. Once its own request is answered it leaves; if
// others queued meanwhile, a goroutine of their own takes over the slot.
type batcher[Req, Res any] struct {
	maxBatch, inFlight int
	flush              func(reqs []Req) ([]Res, error)

	mu      sync.Mutex
	queue   []*pending[Req, Res]
	running int  // flush slots taken
	closed  bool // nothing more is queued, nothing more is flushed
	// flushers waits for whoever holds a slot (close waits on it).
	flushers sync.WaitGroup

	// batchSize, if set, is told the size of every flushed batch.
	batchSize func(int)
	// queued, if set, is told how long each request waited to be flushed.
	queued stepTimer
}

type pending[Req, Res any] struct {
	reqs []Req
	res  []Res
	err  error
	done chan struct{}
	at   time.Time // when it was queued, if timed
}

func newBatcher[Req, Res any](maxBatch, inFlight int, flush func([]Req) ([]Res, error)) *batcher[Req, Res] {
	return &batcher[Req, Res]{maxBatch: maxBatch, inFlight: inFlight, flush: flush}
}

// do submits reqs (kept together in one flush) and waits for their results.
// Once queued, reqs are answered by their flush, never abandoned: an
// answer of ErrClosed means they were not sent. ctx only matters before.
func (b *batcher[Req, Res]) do(ctx context.Context, reqs []Req) ([]Res, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p := &pending[Req, Res]{reqs: reqs, done: make(chan struct{}), at: b.queued.start()}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, state.ErrClosed
	}
	b.queue = append(b.queue, p)
	flusher := b.running < b.inFlight
	if flusher {
		b.running++
		b.flushers.Add(1)
	}
	b.mu.Unlock()
	if flusher {
		b.flushUntil(p)
	}
	<-p.done
	return p.res, p.err
}

// flushUntil holds a flush slot: it flushes what is queued, batch after
// batch, until own (nil: nothing) is answered and, if requests are left,
// hands the slot to a goroutine that goes on until the queue is empty.
func (b *batcher[Req, Res]) flushUntil(own *pending[Req, Res]) {
	for {
		b.mu.Lock()
		if b.closed || len(b.queue) == 0 {
			b.running--
			b.mu.Unlock()
			b.flushers.Done()
			return
		}
		if own != nil && answered(own) {
			b.mu.Unlock()
			go b.flushUntil(nil) // the slot and its flushers count go with it
			return
		}
		batch, n := b.take()
		b.mu.Unlock()
		b.run(batch, n)
	}
}

func answered[Req, Res any](p *pending[Req, Res]) bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// take removes the next batch from the queue: the first request, and those
// after it while the batch holds fewer than maxBatch. The caller holds mu.
func (b *batcher[Req, Res]) take() ([]*pending[Req, Res], int) {
	n, i := 0, 0
	for i < len(b.queue) && (i == 0 || n < b.maxBatch) {
		n += len(b.queue[i].reqs)
		i++
	}
	batch := make([]*pending[Req, Res], i)
	copy(batch, b.queue[:i])
	clear(b.queue[:i])
	b.queue = b.queue[i:]
	return batch, n
}

// run flushes one batch and answers each of its requests.
func (b *batcher[Req, Res]) run(batch []*pending[Req, Res], n int) {
	if b.batchSize != nil {
		b.batchSize(n)
	}
	if b.queued != nil {
		now := time.Now()
		for _, p := range batch {
			b.queued(StepQueue, now.Sub(p.at))
		}
	}
	reqs := make([]Req, 0, n)
	for _, p := range batch {
		reqs = append(reqs, p.reqs...)
	}
	res, err := b.flush(reqs)
	if err == nil && len(res) != len(reqs) {
		err = state.ErrUnavailable
	}
	off := 0
	for _, p := range batch {
		if err != nil {
			p.err = err
		} else {
			p.res = res[off : off+len(p.reqs)]
		}
		off += len(p.reqs)
		close(p.done)
	}
}

// close waits for the flushes in progress and answers what was queued but
// not flushed with ErrClosed.
func (b *batcher[Req, Res]) close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.flushers.Wait()
	b.mu.Lock()
	left := b.queue
	b.queue = nil
	b.mu.Unlock()
	for _, p := range left {
		p.err = state.ErrClosed
		close(p.done)
	}
}
