package raftstore

import (
	"context"
	"sync"
	"time"

	"github.com/raftquota/raftquota/raftstore/state"
)

// batcher coalesces concurrent requests into one flush: one Raft log entry
// (one fsync) on the leader, one RPC on a follower. It never waits for a
// batch to fill: a flush starts as soon as a flush slot is free, carrying
// everything that queued while the previous flushes were running. Under no
// load a request is flushed alone, at once; under load batches grow by
// themselves.
type batcher[Req, Res any] struct {
	in       chan *pending[Req, Res]
	slots    chan struct{}
	maxBatch int
	flush    func(reqs []Req) ([]Res, error)
	stop     chan struct{}
	wg       sync.WaitGroup
	// mu orders do's sends before close: once closed is set, nothing more
	// enters in, so close can answer everything that did.
	mu     sync.RWMutex
	closed bool
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
	b := &batcher[Req, Res]{
		in:       make(chan *pending[Req, Res], 4*maxBatch),
		slots:    make(chan struct{}, inFlight),
		maxBatch: maxBatch,
		flush:    flush,
		stop:     make(chan struct{}),
	}
	b.wg.Add(1)
	go b.loop()
	return b
}

// do submits reqs (kept together in one flush) and waits for their results.
// Once queued, reqs are answered by their flush, never abandoned: an
// answer of ErrClosed means they were not sent.
func (b *batcher[Req, Res]) do(ctx context.Context, reqs []Req) ([]Res, error) {
	p := &pending[Req, Res]{reqs: reqs, done: make(chan struct{}), at: b.queued.start()}
	b.mu.RLock()
	if b.closed {
		b.mu.RUnlock()
		return nil, state.ErrClosed
	}
	select {
	case b.in <- p:
	case <-ctx.Done():
		b.mu.RUnlock()
		return nil, ctx.Err()
	}
	b.mu.RUnlock()
	<-p.done
	return p.res, p.err
}

func (b *batcher[Req, Res]) loop() {
	defer b.wg.Done()
	for {
		var first *pending[Req, Res]
		select {
		case first = <-b.in:
		case <-b.stop:
			return
		}
		select {
		case b.slots <- struct{}{}:
		case <-b.stop:
			first.err = state.ErrClosed
			close(first.done)
			return
		}
		batch := []*pending[Req, Res]{first}
		n := len(first.reqs)
	drain:
		for n < b.maxBatch {
			select {
			case p := <-b.in:
				batch = append(batch, p)
				n += len(p.reqs)
			default:
				break drain
			}
		}
		b.wg.Add(1)
		go b.run(batch, n)
	}
}

func (b *batcher[Req, Res]) run(batch []*pending[Req, Res], n int) {
	defer b.wg.Done()
	defer func() { <-b.slots }()
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
	close(b.stop)
	b.wg.Wait()
	for {
		select {
		case p := <-b.in:
			p.err = state.ErrClosed
			close(p.done)
		default:
			return
		}
	}
}
