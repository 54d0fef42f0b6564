package raftstore

import (
	"context"
	"sync"
	"time"

	"github.com/raftquota/raftquota/raftstore/state"
	"go.uber.org/zap"
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
	q := s.refunds
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

// retryRefunds sends the queued refunds, backing off while they fail, and
// says at WARN, at most once a minute, that some are waiting or were
// dropped.
func (s *node) retryRefunds() {
	defer s.wg.Done()
	q := s.refunds
	backoff := 50 * time.Millisecond
	var lastWarn time.Time
	for {
		select {
		case <-s.closed:
			return
		case <-q.wake:
		case <-time.After(backoff):
		}
		q.mu.Lock()
		ids := make([]state.RequestID, 0, len(q.pending))
		for id, at := range q.pending {
			if time.Since(at) > refundRetryFor {
				delete(q.pending, id)
				q.dropped++
				continue
			}
			ids = append(ids, id)
		}
		dropped := q.dropped
		q.dropped = 0
		q.mu.Unlock()
		failed := 0
		for _, id := range ids {
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.RequestTimeout)
			_, err := s.write(ctx, &state.Command{Op: state.OpRefund, ID: id})
			cancel()
			if err != nil {
				failed++
				if err == state.ErrClosed {
					return
				}
				continue
			}
			q.mu.Lock()
			delete(q.pending, id)
			q.mu.Unlock()
		}
		if failed == 0 {
			backoff = 50 * time.Millisecond
		} else {
			backoff = min(backoff*2, 5*time.Second)
		}
		if (failed > 0 || dropped > 0) && time.Since(lastWarn) > time.Minute {
			lastWarn = time.Now()
			s.logger.Warn("refunds are waiting for the quota leader; they are retried until it has them",
				zap.Int("pending_refunds", failed), zap.Int("dropped_refunds", dropped))
		}
	}
}
