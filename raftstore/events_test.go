package raftstore

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/raftquota/raftquota/internal/clustertest"
	"github.com/raftquota/raftquota/raftstore/state"
)

// TestEventsReachTheWebhookOnceThroughLeaderChanges: three nodes, a storm
// of uploads across two thresholds while leadership moves and the webhook
// is down for a while: each crossing reaches the receiver, and any
// repeat carries the same idempotency key.
func TestEventsReachTheWebhookOnceThroughLeaderChanges(t *testing.T) {
	var mu sync.Mutex
	byKey := map[string][]state.Event{}
	var down atomic.Bool
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		var e state.Event
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
	ctx := clustertest.Within(t, 60*time.Second)
	if _, err := c.nodes[0].CreateToken(ctx, state.TokenSpec{Name: "storm", UsageLimit: 200, NotifyAt: []int{50, 90}}); err != nil {
		t.Fatal(err)
	}
	down.Store(true)
	var wg sync.WaitGroup
	for cl := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 14 {
				c.nodes[(cl+i)%3].Consume(ctx, state.ConsumeRequest{ID: state.NewRequestID(), Token: "storm", Units: 1})
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
		if st := s.Stats(); st.PendingEvents != 0 {
			t.Fatalf("%s still has %d events pending", s.NodeID(), st.PendingEvents)
		}
	}
}
