package state

import (
	"bytes"
	"fmt"
	"testing"
	"time"
)

// Each crossing of a threshold in a window makes one event: retries do
// not, a renewed window starts over, a pool's crossings are its own.
func TestThresholdEventsOncePerCrossing(t *testing.T) {
	tf := newTestFSM(t)
	p := tf.createPool(t0, PoolSpec{Name: "team", UsageLimit: 8, NotifyAt: []int{50}})
	tf.create(t0, TokenSpec{Name: "tok", UsageLimit: 4, RenewEvery: Duration(time.Hour), NotifyAt: []int{100, 50, 50}, Pools: []string{p.ID}})
	id := NewRequestID()
	for range 3 {
		tf.consumeID(t0, id, "tok", 2, 0) // 50% once, however often retried
	}
	tf.consume(t0, "tok", 1, 0)
	tf.consume(t0, "tok", 1, 0) // 100%
	tf.consume(t0, "tok", 1, 0) // refused: no event
	var got []string
	for _, e := range tf.f.events.events {
		got = append(got, fmt.Sprintf("%s@%d", e.Quota, e.Threshold))
	}
	if fmt.Sprint(got) != "[token@50 pool:team@50 token@100]" {
		t.Fatalf("events %v", got)
	}
	keys := map[string]bool{}
	for _, e := range tf.f.events.events {
		keys[e.Key] = true
	}
	if len(keys) != 3 {
		t.Fatalf("keys are not distinct: %v", tf.f.events.events)
	}
	tok, _ := tf.f.tokenNamed("tok")
	if fmt.Sprint(tok.NotifyAt, tok.ThresholdsReached) != "[50 100] [50 100]" {
		t.Fatalf("token thresholds %v reached %v", tok.NotifyAt, tok.ThresholdsReached)
	}
	// A new window: the token crosses 50% again, a new event with a new key.
	tf.consume(t0.Add(time.Hour), "tok", 2, 0)
	last := tf.f.events.events[len(tf.f.events.events)-1]
	if last.Quota != "token" || last.Threshold != 50 || keys[last.Key] {
		t.Fatalf("the new window's event: %+v", last)
	}
	tf.apply(&Command{Op: OpAckEvents, Time: t0.UnixNano(), EventSeq: last.Seq - 1})
	if n := len(tf.f.events.events); n != 1 {
		t.Fatalf("%d events after the ack, want 1", n)
	}
	// The outbox survives a snapshot.
	g := newTestFSM(t)
	if err := g.f.Restore(bytes.NewReader(snapshotBytes(t, tf.f))); err != nil {
		t.Fatal(err)
	}
	if len(g.f.events.events) != 1 || g.f.events.events[0] != last {
		t.Fatalf("restored outbox %+v", g.f.events.events)
	}
}
