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
