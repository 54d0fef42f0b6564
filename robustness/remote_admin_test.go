package robustness

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raftquota/raftquota/internal/clustercert"
)

// TestRemoteAdminNeedsAClientCertificate runs a node whose admin endpoint
// stays on loopback, with Caddy's remote admin open on another port for the
// quota paths only, to holders of a certificate from an operators' CA (as
// SECURITY.md describes): an operator manages tokens; no certificate, or
// one from another CA, cannot connect; other admin paths are refused.
func TestRemoteAdminNeedsAClientCertificate(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary")
	}
	dir := t.TempDir()
	doc, err := os.ReadFile(filepath.Join("..", "SECURITY.md"))
	if err != nil {
		t.Fatal(err)
	}
	section := string(doc)[strings.Index(string(doc), "## Administering remotely"):]
	block := func(lang string, n int) string {
		s := section
		for range n {
			s = s[strings.Index(s, "```"+lang+"\n")+len(lang)+4:]
			s = s[strings.Index(s, "```")+3:]
		}
		s = s[strings.Index(s, "```"+lang+"\n")+len(lang)+4:]
		return s[:strings.Index(s, "```")]
	}
	// The recipe's commands: the operators' CA and certificate, and the
	// public_keys value.
	var publicKey string
	for _, line := range strings.Split(strings.TrimSpace(block("sh", 0)), "\n") {
		cmdText, _, _ := strings.Cut(line, "#")
		cmdText = strings.TrimSpace(cmdText)
		if rest, ok := strings.CutPrefix(cmdText, "caddy "); ok {
			cmdText = binary + " " + rest
		}
		out, err := exec.Command("bash", "-c", "cd "+dir+" && "+cmdText).Output()
		if err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		publicKey = string(out)
	}
	opsCA, rogueCA := filepath.Join(dir, "ops"), filepath.Join(dir, "rogue")
	if err := clustercert.Generate(rogueCA, []clustercert.Node{{ID: "intruder"}}, time.Hour); err != nil {
		t.Fatal(err)
	}

	// The recipe's JSON, pointed at free ports and this node.
	local, remote, raftAddr := freePort(t), freePort(t), freePort(t)
	var cfg map[string]any
	text := block("json", 0)
	text = strings.Replace(text, "127.0.0.1:2019", "127.0.0.1:"+local, 1)
	text = strings.Replace(text, `":2021"`, `"127.0.0.1:`+remote+`"`, 1)
	text = strings.Replace(text, "node1.example", "127.0.0.1", 1)
	text = strings.Replace(text, "<the public_keys value above>", publicKey, 1)
	if err := json.Unmarshal([]byte(text), &cfg); err != nil {
		t.Fatalf("SECURITY.md's JSON: %v\n%s", err, text)
	}
	cfg["admin"].(map[string]any)["config"] = map[string]any{"persist": false}
	cfg["apps"].(map[string]any)["quota"] = map[string]any{"node_id": "node1", "data_dir": filepath.Join(dir, "raft"), "raft_address": "127.0.0.1:" + raftAddr}
	b, _ := json.Marshal(cfg)
	cfgPath := filepath.Join(dir, "caddy.json")
	if err := os.WriteFile(cfgPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	spawn(t, dir, "caddy", "run", "--config", cfgPath)

	client := func(certDir, id string) *http.Client {
		tc := &tls.Config{InsecureSkipVerify: true} // the server's identity is Caddy's local CA; client auth is what is tested
		if id != "" {
			f := clustercert.NodeFiles(certDir, id)
			cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
			if err != nil {
				t.Fatal(err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
	}
	base := "https://127.0.0.1:" + remote
	operator := client(opsCA, "operator")

	var resp *http.Response
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err = operator.Post(base+"/quota/tokens", "application/json", strings.NewReader(`{"name":"remote-token","usage_limit":3}`))
		if err == nil && resp.StatusCode != http.StatusServiceUnavailable {
			break
		}
		if resp != nil {
			resp.Body.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("remote admin never answered: %v", err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("operator creating a token remotely: %d %s", resp.StatusCode, body)
	}
	var created struct {
		ID string `json:"id"`
	}
	json.Unmarshal(body, &created)
	if resp, err := operator.Get(base + "/quota/tokens/" + created.ID); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("operator reading the token: %v %v", resp, err)
	}
	if resp, err := operator.Get(base + "/config/"); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("operator reading /config/ (not permitted): %v %v", resp, err)
	}
	if resp, err := operator.Do(mustRequest("PUT", base+"/quota/tokens/"+created.ID)); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("operator using PUT (not permitted): %v %v", resp, err)
	}
	for name, c := range map[string]*http.Client{"no certificate": client("", ""), "another CA": client(rogueCA, "intruder")} {
		if resp, err := c.Get(base + "/quota/tokens"); err == nil {
			resp.Body.Close()
			t.Errorf("%s: remote admin answered %d", name, resp.StatusCode)
		}
	}
	// The CLI line, as SECURITY.md writes it, with the admin CA copied
	// from Caddy's data directory to admin-ca.pem.
	root, err := os.ReadFile(filepath.Join(dir, "xdg-caddy", "caddy", "pki", "authorities", "local", "root.crt"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "admin-ca.pem"), root, 0o644)
	line := strings.TrimSpace(block("sh", 1))
	line = strings.Replace(strings.Replace(line, "caddy ", binary+" ", 1), "https://node1.example:2021", base, 1)
	if out, err := exec.Command("bash", "-c", "cd "+dir+" && "+line).CombinedOutput(); err != nil || !strings.Contains(string(out), "remote-token") && !strings.Contains(string(out), created.ID) {
		t.Fatalf("SECURITY.md's CLI line: %v\n%s", err, out)
	}
	ops := clustercert.NodeFiles(opsCA, "operator")
	cli := func(args ...string) (string, error) {
		args = append(append([]string{"quota"}, args...), "--address", base, "--cert", ops.Cert, "--key", ops.Key, "--ca", filepath.Join(dir, "admin-ca.pem"))
		out, err := exec.Command(binary, args...).CombinedOutput()
		return string(out), err
	}
	if out, err := cli("token", "show", "remote-token"); err != nil || !strings.Contains(out, `"id": "`+created.ID+`"`) {
		t.Fatalf("caddy quota token show over remote admin: %v\n%s", err, out)
	}
	if out, err := cli("token", "create", "--generate", "--limit", "2"); err != nil || !strings.Contains(out, `"name": "rq_`) {
		t.Fatalf("caddy quota token create over remote admin: %v\n%s", err, out)
	}
	if out, err := cli("token", "delete", created.ID); err != nil {
		t.Fatalf("DELETE is permitted remotely by the recipe: %v\n%s", err, out)
	}
	out, err := exec.Command(binary, "quota", "token", "list", "--address", base).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--cert and --key") {
		t.Fatalf("remote admin without a certificate: %v\n%s", err, out)
	}

	// The local admin endpoint is on loopback, as configured.
	if resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%s/quota/tokens", local)); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("local admin: %v %v", resp, err)
	}
}

func mustRequest(method, url string) *http.Request {
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		panic(err)
	}
	return req
}
