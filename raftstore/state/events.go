package state

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strconv"
	"time"
)

// Threshold events: a token or a pool may name thresholds (notify_at, in
// percent of its count or byte limit). The FSM records, per quota, how
// many of them the current window has crossed, so each crossing yields
// exactly one event in the replicated state whichever node decided, and
// however many retries and leader changes there were. Events wait in a
// replicated outbox; the leader delivers them (a log line, and the
// webhook if one is configured) and then proposes an ack that removes
// them on every replica. A leader lost between delivery and ack makes the
// next one deliver again, with the same idempotency key: at least once,
// and receivers can deduplicate.

// MaxThresholds bounds a quota's thresholds.
const MaxThresholds = 8

// maxOutbox bounds the events waiting for delivery; past it the oldest
// are dropped (and counted).
const maxOutbox = 100_000

// Event is one crossing of a threshold.
type Event struct {
	// Seq orders events in the outbox.
	Seq uint64 `json:"seq"`
	// Key is the idempotency key: the same for every delivery of this
	// crossing, derived from the quota, its window and the threshold.
	Key string `json:"id"`
	// Quota is "token" or "pool:NAME".
	Quota string `json:"quota"`
	// TokenID is the token whose charge crossed the threshold.
	TokenID string `json:"token_id"`
	// Pool is the pool's name, for a pool's crossing.
	Pool string `json:"pool,omitempty"`
	// Window is the start of the window the crossing is in (unix ns; 0:
	// the quota does not renew).
	Window    int64 `json:"window_start"`
	Threshold uint8 `json:"threshold_percent"`
	// Usage and limits when it was crossed.
	UsageCount int64 `json:"usage_count"`
	UsageLimit int64 `json:"usage_limit"`
	BytesUsed  int64 `json:"bytes_used"`
	BytesLimit int64 `json:"bytes_limit"`
	// At is the leader's stamped time of the crossing charge (unix ns).
	At int64 `json:"at"`
}

// eventKey is the idempotency key of a crossing.
func eventKey(quota string, window int64, threshold uint8) string {
	h := sha256.Sum256([]byte(quota + "|" + strconv.FormatInt(window, 10) + "|" + strconv.Itoa(int(threshold))))
	return hex.EncodeToString(h[:16])
}

// validateThresholds checks notify_at: 1-100 percent, at most
// MaxThresholds, and returns them sorted without repeats.
func validateThresholds(ps []int) ([]uint8, error) {
	if len(ps) > MaxThresholds {
		return nil, Invalidf("notify_at holds at most %d thresholds, got %d", MaxThresholds, len(ps))
	}
	out := make([]uint8, 0, len(ps))
	for _, p := range ps {
		if p < 1 || p > 100 {
			return nil, Invalidf("notify_at thresholds are percents from 1 to 100, got %d", p)
		}
		if !slices.Contains(out, uint8(p)) {
			out = append(out, uint8(p))
		}
	}
	slices.Sort(out)
	return out, nil
}

// crossed is how many of thresholds usage has reached: the larger of
// its count and bytes percentages, for the limits set.
func crossed(thresholds []uint8, count, limit, bytes, bytesLimit int64) uint8 {
	var n uint8
	for _, th := range thresholds {
		if (limit > 0 && count*100 >= int64(th)*limit) || (bytesLimit > 0 && bytes*100 >= int64(th)*bytesLimit) {
			n++
		}
	}
	return n
}

// outbox is the replicated list of events waiting for delivery.
type outbox struct {
	events  []Event
	nextSeq uint64
	dropped uint64
}

func (o *outbox) add(e Event) {
	if len(o.events) >= maxOutbox {
		o.events = o.events[1:]
		o.dropped++
	}
	o.nextSeq++
	e.Seq = o.nextSeq
	o.events = append(o.events, e)
}

// ack removes the events up to seq.
func (o *outbox) ack(seq uint64) {
	i := 0
	for i < len(o.events) && o.events[i].Seq <= seq {
		i++
	}
	o.events = slices.Clone(o.events[i:])
}

// noteToken records the thresholds a token's charge crossed.
func (f *Machine) noteToken(t *tokenState, now time.Time) {
	e := t.ext
	if e == nil || len(e.Notify) == 0 {
		return
	}
	n := crossed(e.Notify, t.UsageCount, t.UsageLimit, t.BytesUsed, t.BytesLimit)
	for ; e.Notified < n; e.Notified++ {
		th := e.Notify[e.Notified]
		quota := "token:" + t.id.String()
		f.events.add(Event{Key: eventKey(quota, t.window(), th), Quota: "token", TokenID: t.id.String(), Window: t.window(), Threshold: th,
			UsageCount: t.UsageCount, UsageLimit: t.UsageLimit, BytesUsed: t.BytesUsed, BytesLimit: t.BytesLimit, At: now.UnixNano()})
	}
}

// notePool records the thresholds a pool's charge crossed, by token t.
func (f *Machine) notePool(p *poolState, t *tokenState, now time.Time) {
	if len(p.Notify) == 0 {
		return
	}
	n := crossed(p.Notify, p.UsageCount, p.UsageLimit, p.BytesUsed, p.BytesLimit)
	for ; p.Notified < n; p.Notified++ {
		th := p.Notify[p.Notified]
		f.events.add(Event{Key: eventKey("pool:"+p.id.String(), p.window(), th), Quota: "pool:" + p.Name, TokenID: t.id.String(), Pool: p.Name,
			Window: p.window(), Threshold: th, UsageCount: p.UsageCount, UsageLimit: p.UsageLimit, BytesUsed: p.BytesUsed, BytesLimit: p.BytesLimit, At: now.UnixNano()})
	}
}

// applyAckEvents removes delivered events.
func (f *Machine) applyAckEvents(c *Command, _ time.Time) *Result {
	f.events.ack(c.EventSeq)
	return &Result{}
}

// pendingEvents copies the events waiting for delivery, up to n.
func (f *Machine) PendingEvents(n int) ([]Event, uint64) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return slices.Clone(f.events.events[:min(n, len(f.events.events))]), f.events.dropped
}
