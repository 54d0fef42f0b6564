package raftstore

import (
	"sync"
	"time"

	"github.com/raftquota/raftquota/raftstore/state"
)

// A refund whose leader cannot be reached (no quorum, a partition) is not
// dropped: the node keeps it and retries until the leader has it. A
// refund is idempotent by its request id — before its consume it leaves a
// tombstone, after it gives back once — so retrying is always safe, and a
// request answered 503 keeps no charge once the cluster heals. The queue
// is in memory and bounded: a node restart or more than maxQueuedRefunds
// pending refunds drop the oldest, with a WARN.

const (
	maxQueuedRefunds = 1 << 16
	// refundRetryFor is how long a refund is retried before it is dropped.
	refundRetryFor = time.Hour
)

type refundQueue struct {
	mu      sync.Mutex
	pending map[state.RequestID]time.Time // when it was queued
	wake    chan struct{}
	dropped int
}

func newRefundQueue() *refundQueue {
	return &refundQueue{pending: map[state.RequestID]time.Time{}, wake: make(chan struct{}, 1)}
}

// RefundLater gives back the charge of id as soon as the leader can be
// reached: now, or by retrying in the background. It never blocks.
func (s *Store) RefundLater(id state.RequestID) {
	if id.IsZero() {
		return
	}
	q := s.duties.refunds
	q.mu.Lock()
	if len(q.pending) >= maxQueuedRefunds {
		var oldest state.RequestID
		var at time.Time
		for k, t := range q.pending {
			if at.IsZero() || t.Before(at) {
				oldest, at = k, t
			}
		}
		delete(q.pending, oldest)
		q.dropped++
	}
	q.pending[id] = time.Now()
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}
