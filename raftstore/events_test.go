package raftstore

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"sync/atomic"
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
	tf.apply(&command{Op: opAckEvents, Time: t0.UnixNano(), EventSeq: last.Seq - 1})
	if n := len(tf.f.events.events); n != 1 {
		t.Fatalf("%d events after the ack, want 1", n)
	}
	// The outbox survives a snapshot.
	g := newTestFSM(t)
	if err := g.f.Restore(nopCloser(snapshotBytes(t, tf.f))); err != nil {
		t.Fatal(err)
	}
	if len(g.f.events.events) != 1 || g.f.events.events[0] != last {
		t.Fatalf("restored outbox %+v", g.f.events.events)
	}
}

// TestEventsReachTheWebhookOnceThroughLeaderChanges: three nodes, a storm
// of uploads across two thresholds while leadership moves and the webhook
// is down for a while: each crossing reaches the receiver, and any
// repeat carries the same idempotency key.
func TestEventsReachTheWebhookOnceThroughLeaderChanges(t *testing.T) {
	var mu sync.Mutex
	byKey := map[string][]Event{}
	var down atomic.Bool
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		var e Event
		if err := json.NewDecoder(r.Body).Decode(&e); err != nil || r.Header.Get("Idempotency-Key") != e.Key {
			http.Error(w, "bad event", http.StatusBadRequest)
			return
		}
		mu.Lock()
		byKey[e.Key] = append(byKey[e.Key], e)
		mu.Unlock()
	}))
	defer recv.Close()
	c, layers := listenTestCluster(t, 3, nil)
	c.tweak = func(_ int, cfg *Config) { cfg.EventsWebhook = recv.URL }
	c.start(layers)
	ctx := ctxT(t, 60*time.Second)
	if _, err := c.nodes[0].CreateToken(ctx, TokenSpec{Name: "storm", UsageLimit: 200, NotifyAt: []int{50, 90}}); err != nil {
		t.Fatal(err)
	}
	down.Store(true)
	var wg sync.WaitGroup
	for cl := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 14 {
				c.nodes[(cl+i)%3].Consume(ctx, ConsumeRequest{ID: NewRequestID(), Token: "storm", Units: 1})
			}
		}()
	}
	for range 2 {
		time.Sleep(100 * time.Millisecond)
		if l := c.leaderIndex(); l >= 0 {
			c.nodes[l].raft.LeadershipTransfer()
		}
	}
	wg.Wait()
	// Deliveries fail meanwhile. RAFTQUOTA_WEBHOOK_OUTAGE=1m measures a
	// longer outage (the default suite keeps it short).
	outage := time.Second
	if v, err := time.ParseDuration(os.Getenv("RAFTQUOTA_WEBHOOK_OUTAGE")); err == nil {
		outage = v
	}
	time.Sleep(outage)
	down.Store(false)
	back := time.Now()
	for deadline := time.Now().Add(40 * time.Second); ; {
		mu.Lock()
		n := len(byKey)
		mu.Unlock()
		if n >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d distinct events delivered, want 2", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	thresholds := map[uint8]bool{}
	deliveries := 0
	for _, evs := range byKey {
		deliveries += len(evs)
		thresholds[evs[0].Threshold] = true
		for _, e := range evs[1:] {
			if e != evs[0] {
				t.Fatalf("two deliveries with one key differ: %+v %+v", evs[0], e)
			}
		}
	}
	if len(byKey) != 2 || !thresholds[50] || !thresholds[90] {
		t.Fatalf("events delivered: %v", byKey)
	}
	t.Logf("2 crossings, %d deliveries (repeats carry the same key); the receiver was down %v and had both events %v after it came back",
		deliveries, outage, time.Since(back).Round(100*time.Millisecond)-500*time.Millisecond)
	for _, s := range c.nodes {
		if st := s.EventStats(); st.Pending != 0 {
			t.Fatalf("%s still has %d events pending", s.NodeID(), st.Pending)
		}
	}
}
