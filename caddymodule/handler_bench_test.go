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

	"github.com/raftquota/raftquota/raftstore"
	"github.com/raftquota/raftquota/raftstore/state"
)

// BenchmarkHandler measures the handler's hot path on a single node of its
// own (not the package's shared one): parse the key, consume, set headers
// and placeholders, call the next handler. Run:
//
//	go test -run '^$' -bench Handler -benchmem ./caddymodule
func BenchmarkHandler(b *testing.B) {
	l, err := raftstore.NewTCPStreamLayer("127.0.0.1:0", "")
	if err != nil {
		b.Fatal(err)
	}
	s, err := raftstore.Open(raftstore.Config{NodeID: "bench", DataDir: b.TempDir(), Stream: l, Logger: zap.NewNop()})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitForLeader(ctx); err != nil {
		b.Fatal(err)
	}
	if _, err := s.CreateToken(ctx, state.TokenSpec{Name: "bench-token", UsageLimit: 1 << 40, BytesLimit: 1 << 50}); err != nil {
		b.Fatal(err)
	}
	app := &App{node: new(atomic.Pointer[node])}
	app.node.Store(&node{store: s})
	h := &Handler{
		Key: "{http.request.header.X-Quota-Token}", Bytes: "{http.request.header.Content-Length}",
		Cost: 1, ChargeOn: "success", OnUnavailable: "deny", Timeout: caddy.Duration(3 * time.Second),
		app: app, logger: zap.NewNop(),
	}
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
		w.WriteHeader(http.StatusOK)
		return nil
	})
	b.ReportAllocs()
	b.SetParallelism(32) // 64 concurrent requests on 2 cores
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req := httptest.NewRequest("PUT", "/bucket/object", http.NoBody)
			req.Header.Set("X-Quota-Token", "bench-token")
			req.Header.Set("Content-Length", "1024")
			repl := caddyhttp.NewTestReplacer(req) // the server's request placeholders
			req = req.WithContext(context.WithValue(req.Context(), caddy.ReplacerCtxKey, repl))
			w := httptest.NewRecorder()
			if err := h.ServeHTTP(w, req, next); err != nil || w.Code != http.StatusOK {
				b.Fatalf("status %d err %v", w.Code, err)
			}
		}
	})
}
