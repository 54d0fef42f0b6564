package caddymodule

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/raftquota/raftquota/raftstore/state"
)

// With no node to ask, on_unavailable decides: deny answers 503 with
// Retry-After and logs at ERROR; allow passes the request on and logs at WARN.
func TestOnUnavailable(t *testing.T) {
	for _, tt := range []struct {
		mode   string
		status int
		level  string
	}{
		{"deny", http.StatusServiceUnavailable, "warn"},
		{"allow", http.StatusNoContent, "warn"},
	} {
		t.Run(tt.mode, func(t *testing.T) {
			core, logs := observer.New(zap.DebugLevel)
			h := &Handler{
				Key: "{http.request.header.X-Quota-Token}", Cost: 1, ChargeOn: "success",
				OnUnavailable: tt.mode, Timeout: caddy.Duration(time.Second),
				app: &App{node: new(atomic.Pointer[node])}, logger: zap.New(core), outage: new(everyInterval),
			}
			req := httptest.NewRequest("PUT", "/bucket/object", http.NoBody)
			req.Header.Set("X-Quota-Token", "some-token")
			repl := caddyhttp.NewTestReplacer(req)
			req = req.WithContext(context.WithValue(req.Context(), caddy.ReplacerCtxKey, repl))
			w := httptest.NewRecorder()
			passed := false
			next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
				passed = true
				w.WriteHeader(http.StatusNoContent)
				return nil
			})
			if err := h.ServeHTTP(w, req, next); err != nil {
				t.Fatal(err)
			}
			if w.Code != tt.status || passed != (tt.mode == "allow") {
				t.Fatalf("status %d passed %v", w.Code, passed)
			}
			if tt.mode == "deny" && w.Header().Get("Retry-After") == "" {
				t.Fatal("503 without Retry-After")
			}
			if d, _ := repl.GetString("http.quota.decision"); d != "unavailable" {
				t.Fatalf("decision placeholder %q", d)
			}
			entries := logs.All()
			if len(entries) != 1 || entries[0].Level.String() != tt.level {
				t.Fatalf("logs %+v, want one at %s", entries, tt.level)
			}
			for _, v := range entries[0].ContextMap() {
				if v == "some-token" {
					t.Fatal("raw token logged")
				}
			}
		})
	}
}

// The RateLimit fields, built by hand on the decision path, read as the
// IETF httpapi draft writes them: an item per limit the token has, the
// window and the seconds to its reset when it renews.
func TestRateLimitHeaders(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		d             state.Decision
		policy, state string
	}{
		{state.Decision{UsageLimit: 2, UsageCount: 2}, `"uploads";q=2`, `"uploads";r=0`},
		{state.Decision{BytesLimit: 10, BytesUsed: 4}, `"bytes";q=10;qu="content-bytes"`, `"bytes";r=6`},
		{state.Decision{UsageLimit: 10, UsageCount: 3, BytesLimit: 1000, BytesUsed: 100, RenewEvery: state.Duration(time.Hour), ResetAt: now.Add(90*time.Second + 500*time.Millisecond).UnixNano()},
			`"uploads";q=10;w=3600, "bytes";q=1000;qu="content-bytes";w=3600`, `"uploads";r=7;t=91, "bytes";r=900;t=91`},
		{state.Decision{UsageLimit: 1, ResetAt: now.Add(-time.Minute).UnixNano()}, `"uploads";q=1`, `"uploads";r=1;t=0`},
		{state.Decision{}, "", ""},
	} {
		hdr := http.Header{}
		setRateLimitHeaders(hdr, c.d, now)
		if got := hdr.Get("RateLimit-Policy"); got != c.policy {
			t.Errorf("%+v: RateLimit-Policy %q, want %q", c.d, got, c.policy)
		}
		if got := hdr.Get("RateLimit"); got != c.state {
			t.Errorf("%+v: RateLimit %q, want %q", c.d, got, c.state)
		}
	}
}
