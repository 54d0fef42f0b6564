package robustness

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The pool recipes in docs/QUOTAS.md and examples/sgraph-send/README.md run as
// written against the embedded single-node default (ports moved): every
// `caddy quota` line of the marked blocks, with --address added.

// quotaLines are the `caddy quota ...` lines of the first sh block after
// marker in the Markdown file at path, without their comments.
func quotaLines(t *testing.T, path, marker string) [][]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, marker)
	if i < 0 {
		t.Fatalf("%s has no %q", path, marker)
	}
	s = s[i:]
	start := strings.Index(s, "```sh\n")
	end := strings.Index(s[start+6:], "```")
	var out [][]string
	for _, line := range strings.Split(s[start+6:start+6+end], "\n") {
		line, _, _ = strings.Cut(line, "#")
		if f := strings.Fields(line); len(f) > 2 && f[0] == "caddy" && f[1] == "quota" {
			out = append(out, f[1:])
		}
	}
	if len(out) == 0 {
		t.Fatalf("no caddy quota lines after %q in %s", marker, path)
	}
	return out
}

func startDefaultNode(t *testing.T) (adminAddr string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "Caddyfile"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	admin := freePort(t)
	s := movePorts(string(b), map[string]string{"2019": admin, "8080": freePort(t), "9000": freePort(t)})
	s = strings.Replace(s, "\tpersist_config off\n", "\tpersist_config off\n\tquota {\n\t\traft_address 127.0.0.1:"+freePort(t)+"\n\t}\n", 1)
	if err := os.WriteFile(filepath.Join(dir, "Caddyfile"), []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	_, exited := spawn(t, dir, "default", "run", "--config", "Caddyfile")
	waitHealth(t, "http://127.0.0.1:"+admin, exited)
	return "127.0.0.1:" + admin
}

func TestPoolRecipesRunAsWritten(t *testing.T) {
	admin := startDefaultNode(t)
	run := func(args []string) string {
		t.Helper()
		out, err := exec.Command(binary, append(args, "--address", admin)...).CombinedOutput()
		if err != nil {
			t.Fatalf("caddy %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	// Both recipes name their pool customer-acme: the second one's is
	// renamed so each can be checked.
	for _, doc := range []struct{ path, marker, suffix string }{
		{filepath.Join("..", "docs", "QUOTAS.md"), "**A plan shared by a customer's tokens:**", ""},
		{filepath.Join("..", "examples", "sgraph-send", "README.md"), "## A customer's plan across its tokens", "-sg"},
	} {
		for _, args := range quotaLines(t, doc.path, doc.marker) {
			for i := range args {
				if args[i] == "customer-acme" {
					args[i] += doc.suffix
				}
			}
			run(args)
		}
	}
	var p poolAnswer
	adminJSON(t, "POST", "http://"+admin+"/quota/pools/lookup", map[string]string{"name": "customer-acme"}, http.StatusOK, &p)
	if p.Tokens != 2 {
		t.Fatalf("the docs' plan has %d tokens, want 2", p.Tokens)
	}
	adminJSON(t, "POST", "http://"+admin+"/quota/pools/lookup", map[string]string{"name": "customer-acme-sg"}, http.StatusOK, &p)
	if p.Tokens != 2 {
		t.Fatalf("sgraph-send's plan has %d tokens, want 2", p.Tokens)
	}
	if out := run([]string{"quota", "pool", "list"}); !strings.Contains(out, "customer-acme-sg") {
		t.Fatalf("pool list:\n%s", out)
	}
	// The global cap recipe's pool.
	run([]string{"quota", "pool", "create", "global-daily", "--bytes-limit", "1099511627776", "--renew-every", "24h"})
	// The stacked windows recipe (its quoted argument, as the shell reads it).
	for _, args := range quotaLines(t, filepath.Join("..", "docs", "QUOTAS.md"), "**Stacked windows**") {
		var fixed []string
		for i := 0; i < len(args); i++ {
			if strings.HasPrefix(args[i], `"`) {
				j := i
				for !strings.HasSuffix(args[j], `"`) {
					j++
				}
				fixed = append(fixed, strings.Trim(strings.Join(args[i:j+1], " "), `"`))
				i = j
				continue
			}
			fixed = append(fixed, args[i])
		}
		run(fixed)
	}
	var tok struct {
		RenewCalendar string   `json:"renew_calendar"`
		Pools         []string `json:"pools"`
	}
	adminJSON(t, "POST", "http://"+admin+"/quota/tokens/lookup", map[string]string{"name": "acme-2027"}, http.StatusOK, &tok)
	if tok.RenewCalendar != "monthly on 1 at 00:00" || len(tok.Pools) != 1 {
		t.Fatalf("the stacked-windows token: %+v", tok)
	}
}

// TestHolderUsageEndpoint: the embedded default's GET /usage answers the
// caller's own token: its usage and its pools, with RateLimit headers,
// charging nothing; refusals as an upload route gives them.
func TestHolderUsageEndpoint(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "Caddyfile"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	admin, web := freePort(t), freePort(t)
	s := movePorts(string(b), map[string]string{"2019": admin, "8080": web, "9000": freePort(t)})
	s = strings.Replace(s, "\tpersist_config off\n", "\tpersist_config off\n\tquota {\n\t\traft_address 127.0.0.1:"+freePort(t)+"\n\t}\n", 1)
	os.WriteFile(filepath.Join(dir, "Caddyfile"), []byte(s), 0o644)
	_, exited := spawn(t, dir, "default", "run", "--config", "Caddyfile")
	adminURL := "http://127.0.0.1:" + admin
	waitHealth(t, adminURL, exited)
	p := createPool(t, adminURL, map[string]any{"name": "plan-usage", "usage_limit": 3, "renew_every": "720h"})
	adminJSON(t, "POST", adminURL+"/quota/tokens", map[string]any{"name": "holder-secret-1", "usage_limit": 10, "bytes_limit": 1000, "pools": []string{p.ID}}, http.StatusCreated, nil)
	do := func(method, path, tok, body string) (*http.Response, string) {
		req, _ := http.NewRequest(method, "http://127.0.0.1:"+web+path, strings.NewReader(body))
		if tok != "" {
			req.Header.Set("X-Quota-Token", tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(b)
	}
	for i := range 2 {
		if resp, body := do("PUT", fmt.Sprintf("/upload/u/o%d", i), "holder-secret-1", "12345"); resp.StatusCode != 200 {
			t.Fatalf("upload: %d %s", resp.StatusCode, body)
		}
	}
	for range 2 { // asking twice charges nothing
		resp, body := do("GET", "/usage", "holder-secret-1", "")
		if resp.StatusCode != 200 {
			t.Fatalf("usage: %d %s", resp.StatusCode, body)
		}
		var v struct {
			Token struct {
				UsageCount int64  `json:"usage_count"`
				Remaining  int64  `json:"remaining"`
				BytesUsed  int64  `json:"bytes_used"`
				ID         string `json:"id"`
			} `json:"token"`
			Pools []struct {
				Name      string     `json:"name"`
				Remaining int64      `json:"remaining"`
				ResetsAt  *time.Time `json:"resets_at"`
			} `json:"pools"`
			Quota string `json:"quota"`
		}
		if err := json.Unmarshal([]byte(body), &v); err != nil {
			t.Fatal(err)
		}
		if v.Token.UsageCount != 2 || v.Token.Remaining != 8 || v.Token.BytesUsed != 10 || len(v.Pools) != 1 || v.Pools[0].Remaining != 1 || v.Pools[0].ResetsAt == nil || v.Quota != "pool:plan-usage" {
			t.Fatalf("usage answer: %s", body)
		}
		if strings.Contains(body, "holder-secret-1") {
			t.Fatal("the usage answer holds the token's name")
		}
		if got := resp.Header.Get("RateLimit"); !strings.Contains(got, `"uploads";r=1`) {
			t.Fatalf("RateLimit %q, want the pool's 1 left", got)
		}
	}
	if resp, body := do("GET", "/usage", "no-such-token", ""); resp.StatusCode != 403 || !strings.Contains(body, "unknown") {
		t.Fatalf("usage of an unknown token: %d %s", resp.StatusCode, body)
	}
	if resp, _ := do("GET", "/usage", "", ""); resp.StatusCode != 401 {
		t.Fatalf("usage without a token: %d", resp.StatusCode)
	}
	do("PUT", "/upload/u/o3", "holder-secret-1", "x")
	if resp, body := do("GET", "/usage", "holder-secret-1", ""); resp.StatusCode != 200 || !strings.Contains(body, `"remaining":0`) {
		t.Fatalf("usage with the pool spent: %d %s", resp.StatusCode, body)
	}
}

// TestQuickStartRunsAsWritten runs the README's quick start block line by
// line with bash against the embedded default (ports moved), checking
// each line's commented expectation: an HTTP status, or a word.
func TestQuickStartRunsAsWritten(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	i := strings.Index(readme, "With the first command running")
	start := strings.Index(readme[i:], "```sh\n") + i + 6
	end := strings.Index(readme[start:], "```") + start
	block := readme[start:end]

	c, err := os.ReadFile(filepath.Join("..", "Caddyfile"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ports := map[string]string{"2019": freePort(t), "8080": freePort(t), "9000": freePort(t)}
	s := movePorts(string(c), ports)
	s = strings.Replace(s, "\tpersist_config off\n", "\tpersist_config off\n\tquota {\n\t\traft_address 127.0.0.1:"+freePort(t)+"\n\t}\n", 1)
	os.WriteFile(filepath.Join(dir, "Caddyfile"), []byte(s), 0o644)
	_, exited := spawn(t, dir, "default", "run", "--config", "Caddyfile")
	waitHealth(t, "http://127.0.0.1:"+ports["2019"], exited)

	work := t.TempDir()
	for _, line := range strings.Split(strings.TrimSpace(block), "\n") {
		cmdText, want, _ := strings.Cut(line, "#")
		cmdText, want = strings.TrimSpace(cmdText), strings.TrimSpace(want)
		if cmdText == "" {
			continue
		}
		for from, to := range ports {
			cmdText = strings.ReplaceAll(cmdText, "localhost:"+from, "127.0.0.1:"+to)
		}
		out, err := exec.Command("bash", "-c", "cd "+work+" && "+cmdText).Output() // curl's progress goes to stderr
		if err != nil {
			t.Fatalf("%s: %v\n%s", line, err, out)
		}
		if want == "" {
			continue
		}
		first := strings.Fields(want)[0]
		first = strings.TrimSuffix(first, ";")
		switch {
		case len(first) == 3 && strings.Trim(first, "0123456789") == "":
			// The final status: curl -i shows the 100 Continue first.
			statuses := regexp.MustCompile(`(?m)^HTTP/1\.1 (\d{3})`).FindAllStringSubmatch(string(out), -1)
			if len(statuses) == 0 || statuses[len(statuses)-1][1] != first {
				t.Errorf("%s: got %.60q", line, out)
			}
		case first == "usage_count":
			if !strings.Contains(string(out), `"usage_count":2`) || !strings.Contains(string(out), `"remaining":0`) {
				t.Errorf("%s: got %s", line, out)
			}
		case first == "the":
			if !strings.Contains(string(out), `"remaining":0`) {
				t.Errorf("%s: got %s", line, out)
			}
		default:
			if !strings.Contains(string(out), first) {
				t.Errorf("%s: want %q in %s", line, first, out)
			}
		}
	}
}

// TestJSONExampleValidatesAsWritten runs docs/REFERENCE.md's block that
// makes the JSON example's certificates and validates it, in a copy of
// the repository's examples/json (the test's binary standing in for the
// go build line).
func TestJSONExampleValidatesAsWritten(t *testing.T) {
	ref, err := os.ReadFile(filepath.Join("..", "docs", "REFERENCE.md"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(ref)
	s = s[strings.Index(s, "## JSON"):]
	start := strings.Index(s, "```sh\n") + 6
	block := s[start : start+strings.Index(s[start:], "```")]
	root := t.TempDir()
	if err := os.CopyFS(filepath.Join(root, "examples", "json"), os.DirFS(filepath.Join("..", "examples", "json"))); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(block), "\n") {
		if line == "go build -o caddy ./cmd/caddy" {
			line = "cp " + binary + " caddy"
		}
		out, err := exec.Command("bash", "-c", "cd "+root+" && "+line).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", line, err, out)
		}
		if strings.Contains(line, "validate") && !strings.Contains(string(out), "Valid configuration") {
			t.Fatalf("%s:\n%s", line, out)
		}
	}
}
