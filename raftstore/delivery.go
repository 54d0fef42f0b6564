package raftstore

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/raftquota/raftquota/raftstore/state"
	"go.uber.org/zap"
)

// deliverEvents runs on every node; the leader, once ready in its term,
// delivers the outbox in order — a log line per event, and a POST to the
// webhook if one is configured — then acknowledges what it delivered
// through the log. A failing webhook is retried with backoff (up to 30 s)
// and said at WARN at most once a minute; nothing is acknowledged that
// was not delivered.
func (s *node) deliverEvents() {
	defer s.wg.Done()
	client := &http.Client{Timeout: 5 * time.Second}
	backoff := 100 * time.Millisecond
	var lastWarn time.Time
	for {
		select {
		case <-s.closed:
			return
		case <-time.After(backoff):
		}
		if !s.IsLeader() || s.readyTerm.Load() != s.raft.CurrentTerm() {
			backoff = 100 * time.Millisecond
			continue
		}
		evs, _ := s.fsm.PendingEvents(256)
		var delivered uint64
		var failure error
		for _, e := range evs {
			if s.cfg.EventsWebhook != "" {
				if failure = postEvent(client, s.cfg.EventsWebhook, e); failure != nil {
					break
				}
			}
			s.logger.Info("quota threshold crossed", zap.String("quota", e.Quota), zap.String("token_fingerprint", e.TokenID),
				zap.Uint8("threshold_percent", e.Threshold), zap.Int64("usage_count", e.UsageCount), zap.Int64("usage_limit", e.UsageLimit),
				zap.Int64("bytes_used", e.BytesUsed), zap.Int64("bytes_limit", e.BytesLimit), zap.String("event_id", e.Key))
			delivered = e.Seq
			s.eventsDelivered.Add(1)
		}
		if delivered > 0 {
			if _, err := s.applyLocal(&state.Command{Op: state.OpAckEvents, EventSeq: delivered}); err != nil {
				failure = err
			}
		}
		switch {
		case failure != nil:
			s.eventsFailed.Add(1)
			backoff = min(max(backoff*2, time.Second), 30*time.Second)
			if time.Since(lastWarn) > time.Minute {
				lastWarn = time.Now()
				s.logger.Warn("threshold events wait for delivery; retrying", zap.Int("pending_events", len(evs)), zap.Error(failure))
			}
		case len(evs) == 256:
			backoff = 0
		default:
			backoff = 100 * time.Millisecond
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
