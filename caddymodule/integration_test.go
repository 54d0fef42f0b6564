package caddymodule

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/caddyserver/caddy/v2/caddytest"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"github.com/raftquota/raftquota/internal/testport"
	"github.com/raftquota/raftquota/raftstore"
	"github.com/raftquota/raftquota/raftstore/state"
)

// One Caddy runs in this test process (caddytest starts it), and so one
// Raft node, kept across every config the tests load: that is the reload
// behaviour under test. These are fixed for the whole package.
var (
	testDir   string
	adminPort int
	httpPort  int
	raftPort  int
	backend   *testBackend
)

func TestMain(m *testing.M) {
	var err error
	testDir, err = os.MkdirTemp("", "raftquota-caddy-test-")
	if err != nil {
		panic(err)
	}
	os.Setenv("XDG_DATA_HOME", filepath.Join(testDir, "xdg-data"))
	os.Setenv("XDG_CONFIG_HOME", filepath.Join(testDir, "xdg-config"))
	adminPort, httpPort, raftPort = freePort(), freePort(), freePort()
	backend = newTestBackend()
	code := m.Run()
	backend.srv.Close()
	os.RemoveAll(testDir)
	os.Exit(code)
}

func freePort() int { return testport.Free() }

// testBackend stands in for storage: it stores PUT bodies and fails any
// path containing /fail with a 500.
type testBackend struct {
	srv     *httptest.Server
	mu      sync.Mutex
	objects map[string][]byte
	puts    atomic.Int64
}

func newTestBackend() *testBackend {
	b := &testBackend{objects: map[string][]byte{}}
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if strings.Contains(r.URL.Path, "/fail") {
			http.Error(w, "storage failed", http.StatusInternalServerError)
			return
		}
		b.puts.Add(1)
		b.mu.Lock()
		b.objects[r.URL.Path] = body
		b.mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	return b
}

func (b *testBackend) has(path string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	_, ok := b.objects[path]
	return ok
}

// config is the Caddyfile every test loads, with its own site routes.
func config(quotaExtra, routes string) string {
	return fmt.Sprintf(`{
	admin localhost:%d
	http_port %d
	persist_config off
	log default {
		output file %s
		level INFO
		exclude admin.api
	}
	log admin_api {
		include admin.api
		level WARN
	}
	quota {
		node_id test1
		data_dir %s
		raft_address 127.0.0.1:%d
		%s
	}
}

:%d {
	bind 127.0.0.1
	%s
}
`, adminPort, httpPort, filepath.Join(testDir, "caddy.log"), filepath.Join(testDir, "raft"), raftPort, quotaExtra, httpPort, routes)
}

// uploadRoutes gates /up/* (charging), /check/* (check_only), /dry/*
// (dry_run), /idem/* (idempotent on the object name) and /bytes/* (bytes).
func uploadRoutes() string {
	up := backend.srv.Listener.Addr().String()
	return fmt.Sprintf(`
	handle_path /up/* {
		quota {
			key {http.request.header.X-Quota-Token}
		}
		reverse_proxy %[1]s
	}
	handle_path /bytes/* {
		quota {
			key {http.request.header.X-Quota-Token}
			bytes {http.request.header.Content-Length}
		}
		reverse_proxy %[1]s
	}
	handle_path /check/* {
		quota {
			key {http.request.header.X-Quota-Token}
			check_only
		}
		respond "checked" 200
	}
	handle_path /dry/* {
		quota {
			key {http.request.header.X-Quota-Token}
			dry_run
		}
		respond "dry" 200
	}
	handle_path /idem/* {
		quota {
			key {http.request.header.X-Quota-Token}
			idempotency_key {path}
		}
		reverse_proxy %[1]s
	}
	handle_path /declared/* {
		quota {
			key {http.request.header.X-Quota-Token}
			bytes {http.request.header.X-Upload-Size}
		}
		reverse_proxy %[1]s
	}
	handle_path /cost3/* {
		quota {
			key {http.request.header.X-Quota-Token}
			cost 3
		}
		respond "ok" 200
	}
	handle /attempt/* {
		quota {
			key {http.request.header.X-Quota-Token}
			charge_on attempt
		}
		reverse_proxy %[1]s
	}`, up)
}

func startCaddy(t *testing.T) *caddytest.Tester {
	t.Helper()
	tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{AdminPort: adminPort})
	load(tester, config("", uploadRoutes()))
	return tester
}

// load gives the running Caddy a new Caddyfile. The old config's servers
// close their kept-alive connections, so the client drops its own: a PUT
// sent on one of them would fail with EOF (Go does not retry a PUT).
func load(tester *caddytest.Tester, caddyfile string) {
	tester.InitServer(caddyfile, "caddyfile")
	http.DefaultClient.CloseIdleConnections()
}

func admin(t *testing.T, method, path, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, fmt.Sprintf("http://localhost:%d%s", adminPort, path), strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if len(bytes.TrimSpace(raw)) > 0 && raw[0] == '{' {
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatalf("%s %s: bad JSON %q", method, path, raw)
		}
	}
	return resp.StatusCode, out
}

func mustCreate(t *testing.T, body string) {
	t.Helper()
	if code, out := admin(t, "POST", "/quota/tokens", body); code != http.StatusCreated {
		t.Fatalf("create %s: %d %v", body, code, out)
	}
}

func upload(t *testing.T, path, token, body string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("PUT", fmt.Sprintf("http://127.0.0.1:%d%s", httpPort, path), strings.NewReader(body))
	if token != "" {
		req.Header.Set("X-Quota-Token", token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

// lookup finds a token by name (in the body, as the admin API takes it).
func lookup(t *testing.T, name string) map[string]any {
	t.Helper()
	code, out := admin(t, "POST", "/quota/tokens/lookup", `{"name":"`+name+`"}`)
	if code != http.StatusOK {
		t.Fatalf("lookup %s: %d %v", name, code, out)
	}
	return out
}

func tokenIDOf(t *testing.T, name string) string { return lookup(t, name)["id"].(string) }

func usage(t *testing.T, token string) float64 { return lookup(t, token)["usage_count"].(float64) }

func TestAllowedUploadReachesStorageAndLimitHolds(t *testing.T) {
	startCaddy(t)
	mustCreate(t, `{"name":"tok-allowed","usage_limit":2}`)
	for i := 0; i < 2; i++ {
		if resp := upload(t, fmt.Sprintf("/up/b/obj%d", i), "tok-allowed", "data"); resp.StatusCode != 200 {
			t.Fatalf("upload %d: %d", i, resp.StatusCode)
		}
	}
	if !backend.has("/b/obj0") || !backend.has("/b/obj1") {
		t.Fatal("allowed uploads did not reach storage (prefix stripped)")
	}
	req, _ := http.NewRequest("PUT", fmt.Sprintf("http://127.0.0.1:%d/up/b/obj2", httpPort), strings.NewReader("x"))
	req.Header.Set("X-Quota-Token", "tok-allowed")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var p map[string]any
	json.NewDecoder(resp.Body).Decode(&p)
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("over limit: %d, want 429", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Errorf("content type %q", ct)
	}
	if got := resp.Header.Get("RateLimit-Policy"); got != `"uploads";q=2` {
		t.Errorf("RateLimit-Policy %q", got)
	}
	if got := resp.Header.Get("RateLimit"); got != `"uploads";r=0` {
		t.Errorf("RateLimit %q", got)
	}
	if p["status"] != float64(429) || p["reason"] != "exhausted" || p["type"] != "urn:raftquota:problem:exhausted" || p["instance"] != "/up/b/obj2" {
		t.Errorf("problem body %v", p)
	}
	if backend.has("/b/obj2") {
		t.Fatal("denied upload reached storage")
	}
}

func TestDenialStatuses(t *testing.T) {
	startCaddy(t)
	mustCreate(t, `{"name":"tok-revoked","usage_limit":5}`)
	mustCreate(t, `{"name":"tok-expired","usage_limit":5,"expires_at":"2020-01-01T00:00:00Z"}`)
	mustCreate(t, `{"name":"tok-bytes","bytes_limit":10}`)
	if code, _ := admin(t, "POST", "/quota/tokens/"+tokenIDOf(t, "tok-revoked")+"/revoke", ""); code != 200 {
		t.Fatalf("revoke: %d", code)
	}
	tests := []struct {
		name, path, token, body string
		want                    int
	}{
		{"no key", "/up/b/o", "", "x", http.StatusUnauthorized},
		{"malformed key", "/up/b/o", "bad key!", "x", http.StatusUnauthorized},
		{"overlong key", "/up/b/o", strings.Repeat("k", 129), "x", http.StatusUnauthorized},
		{"unknown token", "/up/b/o", "no-such-token", "x", http.StatusForbidden},
		{"revoked", "/up/b/o", "tok-revoked", "x", http.StatusForbidden},
		{"expired", "/up/b/o", "tok-expired", "x", http.StatusForbidden},
		{"bytes fit", "/bytes/b/fits", "tok-bytes", "0123456789", http.StatusOK},
		{"bytes exhausted", "/bytes/b/over", "tok-bytes", "x", http.StatusTooManyRequests},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if resp := upload(t, tt.path, tt.token, tt.body); resp.StatusCode != tt.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.want)
			}
		})
	}
	resp := upload(t, "/bytes/b/over2", "tok-bytes", "x")
	if got := resp.Header.Get("RateLimit-Policy"); got != `"bytes";q=10;qu="content-bytes"` {
		t.Errorf("byte RateLimit-Policy %q", got)
	}
}

func TestRenewingTokenTellsWhenToRetry(t *testing.T) {
	startCaddy(t)
	mustCreate(t, `{"name":"tok-window","usage_limit":1,"renew_every":"1h"}`)
	upload(t, "/up/b/w1", "tok-window", "x")
	resp := upload(t, "/up/b/w2", "tok-window", "x")
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("second upload in the window: %d", resp.StatusCode)
	}
	if got := resp.Header.Get("RateLimit-Policy"); got != `"uploads";q=1;w=3600` {
		t.Errorf("RateLimit-Policy %q", got)
	}
	var secs int
	if _, err := fmt.Sscanf(resp.Header.Get("Retry-After"), "%d", &secs); err != nil || secs < 3500 || secs > 3600 {
		t.Errorf("Retry-After %q, want the window's end (~3600s)", resp.Header.Get("Retry-After"))
	}
	if rl := resp.Header.Get("RateLimit"); !strings.HasPrefix(rl, `"uploads";r=0;t=`) {
		t.Errorf("RateLimit %q", rl)
	}
}

func TestChunkedUploadOnByteRouteNeedsLength(t *testing.T) {
	startCaddy(t)
	mustCreate(t, `{"name":"tok-len","bytes_limit":100}`)
	pr, pw := io.Pipe()
	go func() { pw.Write([]byte("abc")); pw.Close() }()
	req, _ := http.NewRequest("PUT", fmt.Sprintf("http://127.0.0.1:%d/bytes/b/chunked", httpPort), pr)
	req.Header.Set("X-Quota-Token", "tok-len")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusLengthRequired {
		t.Fatalf("chunked upload: %d, want 411", resp.StatusCode)
	}
}

// TestCostAwareDenial: a request that costs more than what is left says so,
// beside the RateLimit header that shows what is left.
func TestCostAwareDenial(t *testing.T) {
	startCaddy(t)
	mustCreate(t, `{"name":"tok-cost","usage_limit":2}`)
	req, _ := http.NewRequest("PUT", fmt.Sprintf("http://127.0.0.1:%d/cost3/x", httpPort), strings.NewReader("x"))
	req.Header.Set("X-Quota-Token", "tok-cost")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var p map[string]any
	json.NewDecoder(resp.Body).Decode(&p)
	if resp.StatusCode != 429 || resp.Header.Get("RateLimit") != `"uploads";r=2` || !strings.Contains(fmt.Sprint(p["detail"]), "counts as 3 uploads; the token has 2 left") {
		t.Fatalf("%d %q %v", resp.StatusCode, resp.Header.Get("RateLimit"), p)
	}
}

func TestFailedUploadIsRefunded(t *testing.T) {
	startCaddy(t)
	mustCreate(t, `{"name":"tok-refund","usage_limit":1}`)
	resp := upload(t, "/up/b/fail", "tok-refund", "x")
	if resp.StatusCode != 500 {
		t.Fatalf("failing upstream: %d", resp.StatusCode)
	}
	if got := resp.Header.Get("RateLimit"); got != `"uploads";r=1` {
		t.Fatalf("RateLimit on a refunded upload: %q, want the unit back", got)
	}
	if u := usage(t, "tok-refund"); u != 0 {
		t.Fatalf("usage %v after a failed upload, want 0", u)
	}
	if resp := upload(t, "/up/b/ok", "tok-refund", "x"); resp.StatusCode != 200 {
		t.Fatalf("the refunded unit could not be used: %d", resp.StatusCode)
	}
	// charge_on attempt keeps the charge.
	mustCreate(t, `{"name":"tok-attempt","usage_limit":5}`)
	upload(t, "/attempt/fail", "tok-attempt", "x")
	if u := usage(t, "tok-attempt"); u != 1 {
		t.Fatalf("charge_on attempt: usage %v, want 1", u)
	}
}

func TestIdempotencyKeyChargesOnce(t *testing.T) {
	startCaddy(t)
	mustCreate(t, `{"name":"tok-idem","usage_limit":5}`)
	before := backend.puts.Load()
	for i := 0; i < 3; i++ {
		if resp := upload(t, "/idem/transfer-42", "tok-idem", "x"); resp.StatusCode != 200 {
			t.Fatalf("attempt %d: %d", i, resp.StatusCode)
		}
	}
	if u := usage(t, "tok-idem"); u != 1 {
		t.Fatalf("usage %v after three calls with one idempotency key, want 1", u)
	}
	if backend.puts.Load()-before != 3 {
		t.Fatal("repeats were not passed through")
	}
	upload(t, "/idem/transfer-43", "tok-idem", "x")
	if u := usage(t, "tok-idem"); u != 2 {
		t.Fatalf("another key: usage %v, want 2", u)
	}
}

func TestCheckOnlyAndDryRun(t *testing.T) {
	startCaddy(t)
	mustCreate(t, `{"name":"tok-check","usage_limit":1}`)
	for i := 0; i < 3; i++ {
		if resp := upload(t, "/check/x", "tok-check", ""); resp.StatusCode != 200 {
			t.Fatalf("check_only %d: %d", i, resp.StatusCode)
		}
	}
	if u := usage(t, "tok-check"); u != 0 {
		t.Fatalf("check_only charged: usage %v", u)
	}
	upload(t, "/up/b/use", "tok-check", "x")
	if resp := upload(t, "/check/x", "tok-check", ""); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("check_only on exhausted token: %d, want 429", resp.StatusCode)
	}
	if resp := upload(t, "/dry/x", "tok-check", ""); resp.StatusCode != 200 {
		t.Fatalf("dry_run blocked: %d", resp.StatusCode)
	}
	if resp := upload(t, "/dry/x", "no-such-token", ""); resp.StatusCode != 200 {
		t.Fatalf("dry_run blocked an unknown token: %d", resp.StatusCode)
	}
	// Rolling out in dry-run must not lock out clients not yet sending a key.
	if resp := upload(t, "/dry/x", "", ""); resp.StatusCode != 200 {
		t.Fatalf("dry_run blocked a request without a key: %d", resp.StatusCode)
	}
	if resp := upload(t, "/dry/x", "bad key!", ""); resp.StatusCode != 200 {
		t.Fatalf("dry_run blocked a malformed key: %d", resp.StatusCode)
	}
}

// TestHealthAndBackupRoutes: the admin endpoint's health route and the
// quota_health site handler answer 200 on a node that can decide, and the
// backup route returns a backup with every token.
func TestHealthAndBackupRoutes(t *testing.T) {
	tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{AdminPort: adminPort})
	load(tester, config("", uploadRoutes()+`
	handle /healthz {
		quota_health
	}`))
	mustCreate(t, `{"name":"tok-backup","usage_limit":5}`)
	upload(t, "/up/b/bk", "tok-backup", "x")
	code, out := admin(t, "GET", "/quota/health", "")
	if code != http.StatusOK || out["status"] != "ok" || out["node_id"] != "test1" {
		t.Fatalf("admin health: %d %v", code, out)
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", httpPort))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(`"status":"ok"`)) {
		t.Fatalf("site health: %d %s", resp.StatusCode, body)
	}

	resp, err = http.Get(fmt.Sprintf("http://localhost:%d/quota/backup", adminPort))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("backup: %d", resp.StatusCode)
	}
	_, toks, _, err := raftstore.ReadBackup(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, tok := range toks {
		if tok.Key == state.KeyOf("tok-backup") {
			found = tok.UsageCount == 1
		}
	}
	if !found {
		t.Fatalf("backup lacks tok-backup with usage 1: %v", toks)
	}
	if code, _ := admin(t, "POST", "/quota/backup", ""); code != http.StatusMethodNotAllowed {
		t.Fatalf("POST backup: %d", code)
	}
}

func TestReloadKeepsUsageAndDoesNotRestartRaft(t *testing.T) {
	tester := startCaddy(t)
	mustCreate(t, `{"name":"tok-reload","usage_limit":10}`)
	upload(t, "/up/b/r1", "tok-reload", "x")
	before := current.Load()
	if before == nil {
		t.Fatal("no node running")
	}
	load(tester, config("", uploadRoutes()+"\n\trespond /other 204"))
	if after := current.Load(); after != before {
		t.Fatal("config reload restarted the Raft node")
	}
	if u := usage(t, "tok-reload"); u != 1 {
		t.Fatalf("usage %v after reload, want 1", u)
	}
	if resp := upload(t, "/up/b/r2", "tok-reload", "x"); resp.StatusCode != 200 {
		t.Fatalf("upload after reload: %d", resp.StatusCode)
	}
	// The new config's metrics registry has the collectors again.
	if !bytes.Contains(scrapeMetrics(t), []byte("raftquota_raft_leader 1")) {
		t.Fatal("quota metrics missing after a reload")
	}
}

func TestReloadChangingNodeIDIsRefused(t *testing.T) {
	startCaddy(t)
	cfg := strings.Replace(config("", uploadRoutes()), "node_id test1", "node_id other", 1)
	resp, err := http.Post(fmt.Sprintf("http://localhost:%d/load", adminPort), "text/caddyfile", strings.NewReader(cfg))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode == 200 || !strings.Contains(string(body), "needs a restart") {
		t.Fatalf("reload with a new node_id: %d %s", resp.StatusCode, body)
	}
	if u := upload(t, "/up/b/still", "no-such-token", "x"); u.StatusCode != http.StatusForbidden {
		t.Fatalf("old config stopped serving: %d", u.StatusCode)
	}
}

func TestAdminAPI(t *testing.T) {
	startCaddy(t)
	var id string // of adm-1, known once it is created; "{id}" in paths
	tests := []struct {
		method, path, body string
		want               int
		check              func(map[string]any) bool
	}{
		{"POST", "/quota/tokens", `{"name":"adm-1","usage_limit":3,"bytes_limit":100,"created_by":"ops","metadata":{"team":"a"}}`, 201,
			func(m map[string]any) bool {
				id, _ = m["id"].(string)
				return m["remaining"] == float64(3) && m["status"] == "active" && m["name"] == "adm-1" && state.IsTokenID(id)
			}},
		{"POST", "/quota/tokens", `{"name":"adm-1"}`, 409, nil},
		{"POST", "/quota/tokens", `{"name":"bad name"}`, 400, nil},
		{"POST", "/quota/tokens", `{"name":"."}`, 400, nil},
		{"POST", "/quota/tokens", `{"name":".."}`, 400, nil},
		{"POST", "/quota/tokens", `{"name":"adm-2","usage_limit":-1}`, 400, nil},
		{"POST", "/quota/tokens", `{"name":"adm-2","surprise":1}`, 400, nil},
		{"POST", "/quota/tokens", `{"name":`, 400, nil},
		{"POST", "/quota/tokens", ``, 400, nil},
		{"POST", "/quota/tokens", `{"name":"adm-3"} {}`, 400, nil},
		{"POST", "/quota/tokens", `{"name":"adm-4","renew_every":"soon"}`, 400, nil},
		{"POST", "/quota/tokens", `{"name":"` + strings.Repeat("a", 2<<20) + `"}`, 413, nil},
		{"POST", "/quota/tokens", `{"usage_limit":5,"created_by":"gen"}`, 201, func(m map[string]any) bool {
			name, _ := m["name"].(string)
			return strings.HasPrefix(name, "rq_") && len(name) >= 3+26 && m["usage_limit"] == float64(5)
		}},
		{"GET", "/quota/tokens/{id}", "", 200, func(m map[string]any) bool {
			return m["id"] == id && m["name"] == nil && m["bytes_remaining"] == float64(100)
		}},
		{"POST", "/quota/tokens/lookup", `{"name":"adm-1"}`, 200, func(m map[string]any) bool { return m["id"] == id && m["name"] == nil }},
		{"POST", "/quota/tokens/lookup", `{"name":"missing"}`, 404, nil},
		{"POST", "/quota/tokens/lookup", `{"name":"bad name"}`, 400, nil},
		{"GET", "/quota/tokens/lookup", "", 405, nil},
		{"GET", "/quota/tokens/0123456789abcdef", "", 404, func(m map[string]any) bool { return m["error"] != "" }},
		{"GET", "/quota/tokens/adm-1", "", 404, nil}, // names are not ids
		{"PATCH", "/quota/tokens/{id}", `{"usage_limit":7}`, 200, func(m map[string]any) bool { return m["usage_limit"] == float64(7) }},
		{"PATCH", "/quota/tokens/{id}", `{}`, 400, nil},
		{"PATCH", "/quota/tokens/0123456789abcdef", `{"usage_limit":1}`, 404, nil},
		{"POST", "/quota/tokens/{id}/revoke", "", 200, func(m map[string]any) bool { return m["status"] == "revoked" }},
		{"GET", "/quota/tokens?status=revoked&created_by=ops", "", 200, func(m map[string]any) bool { return pageIDs(m) == id }},
		{"POST", "/quota/tokens/{id}/reactivate", "", 200, func(m map[string]any) bool { return m["status"] == "active" }},
		{"POST", "/quota/tokens/{id}/reset", "", 200, func(m map[string]any) bool { return m["usage_count"] == float64(0) }},
		{"POST", "/quota/tokens/{id}/explode", "", 404, nil},
		{"GET", "/quota/tokens/{id}/revoke", "", 405, nil},
		{"PUT", "/quota/tokens", "", 405, nil},
		{"GET", "/quota/tokens?created_by=ops", "", 200, func(m map[string]any) bool { return pageIDs(m) == id }},
		{"GET", "/quota/tokens?remaining_below=8&created_by=ops", "", 200, func(m map[string]any) bool { return pageIDs(m) == id }},
		{"GET", "/quota/tokens?remaining_below=7&created_by=ops", "", 200, func(m map[string]any) bool { return pageIDs(m) == "" }},
		{"GET", "/quota/tokens?status=sleepy", "", 400, nil},
		{"GET", "/quota/tokens?limit=0", "", 400, nil},
		{"GET", "/quota/tokens?remaining_below=x", "", 400, nil},
		{"GET", "/quota/cluster", "", 200, func(m map[string]any) bool {
			nodes, _ := m["nodes"].([]any)
			return m["leader"] == "test1" && len(nodes) == 1 && m["commit_index"].(float64) > 0
		}},
		{"POST", "/quota/cluster/members", `{"id":""}`, 400, nil},
		{"DELETE", "/quota/cluster/members/ghost", "", 404, func(m map[string]any) bool {
			msg, _ := m["error"].(string)
			return strings.Contains(msg, "no such cluster member")
		}},
		{"DELETE", "/quota/tokens/{id}", "", 204, nil},
		{"DELETE", "/quota/tokens/{id}", "", 404, nil},
		{"GET", "/quota/nothing", "", 404, nil},
	}
	for _, tt := range tests {
		path := strings.ReplaceAll(tt.path, "{id}", id)
		code, out := admin(t, tt.method, path, tt.body)
		if code != tt.want {
			t.Errorf("%s %s %.60s: %d %v, want %d", tt.method, path, tt.body, code, out, tt.want)
			continue
		}
		if tt.check != nil && !tt.check(out) {
			t.Errorf("%s %s: unexpected body %v", tt.method, path, out)
		}
		if code >= 400 && (out == nil || out["error"] == "") {
			t.Errorf("%s %s: error without a JSON message: %v", tt.method, path, out)
		}
	}
}

// TestTokenListPages: ?limit pages through every token exactly once.
func TestTokenListPages(t *testing.T) {
	startCaddy(t)
	for i := 0; i < 7; i++ {
		mustCreate(t, fmt.Sprintf(`{"name":"page-%d","created_by":"pager"}`, i))
	}
	seen := map[string]bool{}
	cursor := ""
	for pages := 0; ; pages++ {
		code, out := admin(t, "GET", "/quota/tokens?created_by=pager&limit=3&cursor="+cursor, "")
		if code != 200 || pages > 5 {
			t.Fatalf("page %d: %d %v", pages, code, out)
		}
		for _, tok := range out["tokens"].([]any) {
			id := tok.(map[string]any)["id"].(string)
			if seen[id] {
				t.Fatalf("token %s listed twice", id)
			}
			seen[id] = true
		}
		next, _ := out["next_cursor"].(string)
		if next == "" {
			break
		}
		cursor = next
	}
	if len(seen) != 7 {
		t.Fatalf("%d tokens listed, want 7", len(seen))
	}
}

// pageIDs joins the ids of a token page.
func pageIDs(m map[string]any) string {
	var ids []string
	toks, _ := m["tokens"].([]any)
	for _, tok := range toks {
		ids = append(ids, tok.(map[string]any)["id"].(string))
	}
	return strings.Join(ids, ",")
}

func TestRawTokenNeverLogged(t *testing.T) {
	startCaddy(t)
	const planted = "planted-secret-token-4f9a1c"
	mustCreate(t, `{"name":"`+planted+`","usage_limit":1}`)
	upload(t, "/up/b/p1", planted, "x")
	upload(t, "/up/b/p2", planted, "x") // exceeded: logged at WARN
	upload(t, "/dry/p3", planted, "")
	id := tokenIDOf(t, planted)
	admin(t, "GET", "/quota/tokens/"+id, "")
	admin(t, "POST", "/quota/tokens/"+id+"/revoke", "")
	upload(t, "/up/b/p4", planted, "x")
	upload(t, "/up/b/p5", planted+"-unknown", "x")
	logs, err := os.ReadFile(filepath.Join(testDir, "caddy.log"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(logs, []byte("quota exceeded")) {
		t.Fatal("no exceedance was logged: the check below would prove nothing")
	}
	if bytes.Contains(logs, []byte(planted)) {
		t.Fatal("a raw token appears in the logs")
	}
	metrics := scrapeMetrics(t)
	if !bytes.Contains(metrics, []byte(`raftquota_decisions_total{quota="token",reason="exhausted",result="denied"}`)) {
		t.Fatalf("quota metrics missing from /metrics:\n%.2000s", metrics)
	}
	if bytes.Contains(metrics, []byte(planted)) {
		t.Fatal("a raw token appears in the metrics")
	}
	// Every metric docs/REFERENCE.md lists is exposed, and every one
	// exposed is listed.
	ref, err := os.ReadFile(filepath.Join("..", "docs", "REFERENCE.md"))
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, name := range regexp.MustCompile(`raftquota_[a-z_]+`).FindAllString(string(ref), -1) {
		documented[name] = true
		if !bytes.Contains(metrics, []byte("\n"+name)) {
			t.Errorf("metric %s is documented but not exposed", name)
		}
	}
	for _, m := range regexp.MustCompile(`(?m)^# TYPE (raftquota_[a-z_]+)`).FindAllSubmatch(metrics, -1) {
		if !documented[string(m[1])] {
			t.Errorf("metric %s is exposed but not in docs/REFERENCE.md", m[1])
		}
	}
}

func scrapeMetrics(t *testing.T) []byte {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://localhost:%d/metrics", adminPort))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v %s", resp.StatusCode, err, b)
	}
	return b
}
