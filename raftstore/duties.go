package raftstore

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/raftquota/raftquota/raftstore/state"
)

// duties are a node's background loops: delivering threshold events,
// expiring multipart uploads, and retrying refunds that waited for a
// leader. They are given what they use when they start, not the node.
type duties struct {
	cfg    Config
	logger *zap.Logger
	state  *state.Machine
	closed <-chan struct{}
	// leading says this node leads; ready that it also has applied an
	// entry of its own term, so its state is the cluster's.
	leading, ready func() bool
	// apply proposes a command on this node, which leads; write proposes
	// one wherever the leader is.
	apply func(c *state.Command) (*state.Result, error)
	write func(ctx context.Context, c *state.Command) error

	refunds *refundQueue
	// eventsDelivered and eventsFailed count this node's deliveries.
	eventsDelivered, eventsFailed atomic.Uint64
}

// start runs the loops until closed; wg waits for them.
func (d *duties) start(wg *sync.WaitGroup) {
	for _, loop := range []func(){d.deliverEvents, d.expireUploads, d.retryRefunds} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			loop()
		}()
	}
}

// deliverEvents runs on every node; the leader, once ready in its term,
// delivers the outbox in order — a log line per event, and a POST to the
// webhook if one is configured — then acknowledges what it delivered
// through the log. A failing webhook is retried with backoff (up to 30 s)
// and said at WARN at most once a minute; nothing is acknowledged that
// was not delivered.
func (d *duties) deliverEvents() {
	client := &http.Client{Timeout: 5 * time.Second}
	backoff := 100 * time.Millisecond
	var lastWarn time.Time
	for {
		select {
		case <-d.closed:
			return
		case <-time.After(backoff):
		}
		if !d.ready() {
			backoff = 100 * time.Millisecond
			continue
		}
		evs, _ := d.state.PendingEvents(256)
		var delivered uint64
		var failure error
		for _, e := range evs {
			if d.cfg.EventsWebhook != "" {
				if failure = postEvent(client, d.cfg.EventsWebhook, e); failure != nil {
					break
				}
			}
			d.logger.Info("quota threshold crossed", zap.String("quota", e.Quota), zap.String("token_fingerprint", e.TokenID),
				zap.Uint8("threshold_percent", e.Threshold), zap.Int64("usage_count", e.UsageCount), zap.Int64("usage_limit", e.UsageLimit),
				zap.Int64("bytes_used", e.BytesUsed), zap.Int64("bytes_limit", e.BytesLimit), zap.String("event_id", e.Key))
			delivered = e.Seq
			d.eventsDelivered.Add(1)
		}
		if delivered > 0 {
			if _, err := d.apply(&state.Command{Op: state.OpAckEvents, EventSeq: delivered}); err != nil {
				failure = err
			}
		}
		switch {
		case failure != nil:
			d.eventsFailed.Add(1)
			backoff = min(max(backoff*2, time.Second), 30*time.Second)
			if time.Since(lastWarn) > time.Minute {
				lastWarn = time.Now()
				d.logger.Warn("threshold events wait for delivery; retrying", zap.Int("pending_events", len(evs)), zap.Error(failure))
			}
		case len(evs) == 256:
			backoff = 0
		default:
			backoff = 100 * time.Millisecond
		}
	}
}

// expireUploads proposes expire_uploads while this node leads and an
// upload is past its deadline.
func (d *duties) expireUploads() {
	every := d.cfg.UploadSweep
	if every <= 0 {
		every = time.Second
	}
	d.proposeEvery(every, state.OpExpireUploads, "upload expiry", func() bool {
		if !d.leading() {
			return false
		}
		next := d.state.NextUploadDeadline() // a scan of at most MaxOpenUploads, only while some are open
		return next != 0 && time.Now().UnixNano() >= next
	})
}

// proposeEvery proposes op (a command of the node's own, with nothing but
// the op) every interval when due says so, until the node closes. A
// failed proposal is said at DEBUG: the next tick tries again.
func (d *duties) proposeEvery(every time.Duration, op state.Op, what string, due func() bool) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-d.closed:
			return
		case <-tick.C:
		}
		if !due() {
			continue
		}
		if _, err := d.apply(&state.Command{Op: op}); err != nil {
			d.logger.Debug("proposing "+what, zap.Error(err))
		}
	}
}

// retryRefunds sends the queued refunds, backing off while they fail, and
// says at WARN, at most once a minute, that some are waiting or were
// dropped.
func (d *duties) retryRefunds() {
	q := d.refunds
	backoff := 50 * time.Millisecond
	var lastWarn time.Time
	for {
		select {
		case <-d.closed:
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
			ctx, cancel := context.WithTimeout(context.Background(), d.cfg.RequestTimeout)
			err := d.write(ctx, &state.Command{Op: state.OpRefund, ID: id})
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
			d.logger.Warn("refunds are waiting for the quota leader; they are retried until it has them",
				zap.Int("pending_refunds", failed), zap.Int("dropped_refunds", dropped))
		}
	}
}

// postEvent sends one event to the webhook; any 2xx is delivered.
func postEvent(client *http.Client, url string, e state.Event) error {
	body, _ := json.Marshal(e)
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", e.Key)
	req.Header.Set("User-Agent", "raftquota")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("webhook answered %s", resp.Status)
	}
	return nil
}
