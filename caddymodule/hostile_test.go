package caddymodule

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddytest"
)

// rawRequest writes a request by hand (to lie about lengths, or stop
// mid-body) and returns the status line's code, or 0 if none came back.
func rawRequest(t *testing.T, req string, closeWrite bool) int {
	t.Helper()
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", httpPort))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	if closeWrite {
		conn.(*net.TCPConn).CloseWrite()
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestHostileKeysAreRefusedWithoutTouchingTheCluster(t *testing.T) {
	startCaddy(t)
	for _, key := range []string{
		strings.Repeat("a", 129),
		"tök",           // non-ASCII
		"a\tb",          // control byte
		"../etc/passwd", // path characters
		"a b",
		"%00",
	} {
		req, _ := http.NewRequest("PUT", fmt.Sprintf("http://127.0.0.1:%d/up/b/o", httpPort), strings.NewReader("x"))
		req.Header["X-Quota-Token"] = []string{key}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%q: %v", key, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("key %q: %d, want 401", key, resp.StatusCode)
		}
	}
}

func TestHostileLengths(t *testing.T) {
	startCaddy(t)
	mustCreate(t, `{"name":"tok-len-1","bytes_limit":1000}`)
	put := func(path, size, body string) int {
		req, _ := http.NewRequest("PUT", fmt.Sprintf("http://127.0.0.1:%d%s", httpPort, path), strings.NewReader(body))
		req.Header.Set("X-Quota-Token", "tok-len-1")
		if size != "" {
			req.Header.Set("X-Upload-Size", size)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	bytesUsed := func() float64 {
		_, out := admin(t, "POST", "/quota/tokens/lookup", `{"name":"tok-len-1"}`)
		return out["bytes_used"].(float64)
	}
	for _, tt := range []struct {
		size string
		want int
	}{
		{"-1", 400},
		{"-9223372036854775808", 400},
		{"99999999999999999999", 400}, // overflows int64
		{"1e3", 400},
		{"9223372036854775807", 429}, // the largest int64 must not wrap into room
		{"", 411},
	} {
		if got := put("/declared/b/x", tt.size, "x"); got != tt.want {
			t.Errorf("declared size %q: %d, want %d", tt.size, got, tt.want)
		}
	}
	if u := bytesUsed(); u != 0 {
		t.Fatalf("refused requests charged %v bytes", u)
	}

	// A body longer than the declared size is cut off; the upload fails and
	// its charge is given back.
	if got := put("/declared/b/long", "3", "0123456789"); got < 400 {
		t.Errorf("body longer than declared: %d, want a failure", got)
	}
	if backend.has("/b/long") {
		t.Error("a body longer than its declared size was stored")
	}
	if u := bytesUsed(); u != 0 {
		t.Fatalf("a cut-off upload left %v bytes charged", u)
	}

	// Content-Length promising more than is sent, then the client stops:
	// the upload fails and nothing stays charged.
	code := rawRequest(t, fmt.Sprintf("PUT /bytes/b/short HTTP/1.1\r\nHost: x\r\nX-Quota-Token: tok-len-1\r\nContent-Length: 500\r\n\r\n%s", strings.Repeat("z", 20)), true)
	if code == http.StatusOK {
		t.Error("an upload cut off mid-body succeeded")
	}
	time.Sleep(200 * time.Millisecond) // the refund follows the failed proxy
	if u := bytesUsed(); u != 0 {
		t.Fatalf("an upload cut off mid-body left %v bytes charged", u)
	}

	// Content-Length smaller than what is sent: exactly the declared bytes
	// are charged and stored; the rest is not part of this request.
	code = rawRequest(t, "PUT /bytes/b/exact HTTP/1.1\r\nHost: x\r\nX-Quota-Token: tok-len-1\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcdEXTRA", false)
	if code != http.StatusOK {
		t.Fatalf("short Content-Length: %d", code)
	}
	backend.mu.Lock()
	stored := string(backend.objects["/b/exact"])
	backend.mu.Unlock()
	if stored != "abcd" || bytesUsed() != 4 {
		t.Fatalf("stored %q with %v bytes charged, want \"abcd\" and 4", stored, bytesUsed())
	}
}

// TestUnknownTokenFloodLeavesNoTrace: a flood of random unknown keys adds
// no state, writes a bounded number of log lines, and is counted exactly.
func TestUnknownTokenFloodLeavesNoTrace(t *testing.T) {
	startCaddy(t)
	before := len(adminTokenList(t))
	logBefore := logSize(t)
	countBefore := metricValue(t, `raftquota_decisions_total{quota="token",reason="unknown",result="denied"}`)
	const flood = 1500
	for i := 0; i < flood; i++ {
		if resp := upload(t, "/up/b/flood", fmt.Sprintf("random-key-%d", i), "x"); resp.StatusCode != http.StatusForbidden {
			t.Fatalf("unknown token: %d", resp.StatusCode)
		}
	}
	if after := len(adminTokenList(t)); after != before {
		t.Fatalf("tokens %d -> %d after a flood of unknown keys", before, after)
	}
	logs, err := os.ReadFile(filepath.Join(testDir, "caddy.log"))
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.Count(logs[logBefore:], []byte(`"reason":"unknown"`))
	t.Logf("%d unknown-token requests wrote %d log lines", flood, lines)
	if lines == 0 || lines > 2*denialLogBudget {
		t.Fatalf("%d log lines for %d denials: want at least one and at most %d", lines, flood, 2*denialLogBudget)
	}
	if got := metricValue(t, `raftquota_decisions_total{quota="token",reason="unknown",result="denied"}`) - countBefore; got != flood {
		t.Fatalf("decisions_total counted %v unknown-token denials, want %d", got, flood)
	}
}

func logSize(t *testing.T) int {
	st, err := os.Stat(filepath.Join(testDir, "caddy.log"))
	if err != nil {
		return 0
	}
	return int(st.Size())
}

// metricValue reads one series' value from /metrics (0 when absent).
func metricValue(t *testing.T, series string) float64 {
	for _, line := range strings.Split(string(scrapeMetrics(t)), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

func adminTokenList(t *testing.T) []any {
	resp, err := http.Get(fmt.Sprintf("http://localhost:%d/quota/tokens", adminPort))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var page struct {
		Tokens []any `json:"tokens"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
		t.Fatal(err)
	}
	return page.Tokens
}

func TestAdminAPIIsNotOnTheSite(t *testing.T) {
	startCaddy(t)
	for _, path := range []string{"/quota/tokens", "/quota/cluster"} {
		resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d%s", httpPort, path), "application/json", strings.NewReader(`{"name":"sneaky"}`))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		// Caddy answers an unrouted path with an empty 200; the admin API
		// would have answered with JSON.
		if resp.StatusCode == http.StatusCreated || len(body) > 0 {
			t.Fatalf("%s answered %d %q on the public site", path, resp.StatusCode, body)
		}
	}
	if code, _ := admin(t, "POST", "/quota/tokens/lookup", `{"name":"sneaky"}`); code != http.StatusNotFound {
		t.Fatalf("a token was created through the public site (%d)", code)
	}
}

// TestForgottenBracesAreFlagged: `key X-Quota-Token` (no placeholder) is
// warned about when the config loads, without logging the value; `bytes
// Content-Length` is refused.
func TestForgottenBracesAreFlagged(t *testing.T) {
	before := logSize(t)
	tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{AdminPort: adminPort})
	load(tester, config("", `
	handle /fixed/* {
		quota {
			key X-Quota-Token-fixed-value
		}
		respond 200
	}`))
	logs, _ := os.ReadFile(filepath.Join(testDir, "caddy.log"))
	if !bytes.Contains(logs[before:], []byte("key holds no placeholder")) {
		t.Fatal("a key without a placeholder was not flagged")
	}
	if bytes.Contains(logs[before:], []byte("X-Quota-Token-fixed-value")) {
		t.Fatal("the warning logged the key's value")
	}
	h := &Handler{Key: "{http.request.header.X}", Bytes: "Content-Length"}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := h.Provision(ctx); err == nil || !strings.Contains(err.Error(), "neither a placeholder nor a number") {
		t.Fatalf("bytes Content-Length: %v", err)
	}
}

// TestEveryDenialIsCounted: refusals decided before the cluster is asked
// (401, 411, 400) are counted with their reason, like the cluster's.
func TestEveryDenialIsCounted(t *testing.T) {
	startCaddy(t)
	series := func(reason string) string {
		return `raftquota_decisions_total{quota="token",reason="` + reason + `",result="denied"}`
	}
	before := map[string]float64{}
	for _, r := range []string{"missing_key", "invalid_key", "length_required"} {
		before[r] = metricValue(t, series(r))
	}
	upload(t, "/up/b/x", "", "x")
	upload(t, "/up/b/x", "bad key!", "x")
	req, _ := http.NewRequest("PUT", fmt.Sprintf("http://127.0.0.1:%d/bytes/b/x", httpPort), io.NopCloser(strings.NewReader("chunked")))
	req.Header.Set("X-Quota-Token", "anything")
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusLengthRequired {
			t.Fatalf("chunked upload on a byte route: %d", resp.StatusCode)
		}
	}
	for _, r := range []string{"missing_key", "invalid_key", "length_required"} {
		if got := metricValue(t, series(r)) - before[r]; got != 1 {
			t.Errorf("%s counted %v times, want 1", r, got)
		}
	}
}
