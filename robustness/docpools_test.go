package robustness

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The pool recipes in README.md and examples/sgraph-send/README.md run as
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
		{filepath.Join("..", "README.md"), "**A plan shared by a customer's tokens:**", ""},
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
		t.Fatalf("the README's plan has %d tokens, want 2", p.Tokens)
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
}
