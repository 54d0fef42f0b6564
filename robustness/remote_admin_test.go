package robustness

import (
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
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
	opsCA, rogueCA := filepath.Join(dir, "ops"), filepath.Join(dir, "rogue")
	if err := clustercert.Generate(opsCA, []clustercert.Node{{ID: "operator"}}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := clustercert.Generate(rogueCA, []clustercert.Node{{ID: "intruder"}}, time.Hour); err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(clustercert.NodeFiles(opsCA, "operator").CA)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(caPEM)

	local, remote, raftAddr := freePort(t), freePort(t), freePort(t)
	cfg := map[string]any{
		"admin": map[string]any{
			"listen":   "127.0.0.1:" + local,
			"config":   map[string]any{"persist": false},
			"identity": map[string]any{"identifiers": []string{"127.0.0.1"}, "issuers": []any{map[string]any{"module": "internal"}}},
			"remote": map[string]any{
				"listen": "127.0.0.1:" + remote,
				"access_control": []any{map[string]any{
					"public_keys": []string{base64.StdEncoding.EncodeToString(block.Bytes)},
					"permissions": []any{map[string]any{"paths": []string{"/quota/"}, "methods": []string{"GET", "POST"}}},
				}},
			},
		},
		"apps": map[string]any{
			"quota": map[string]any{"node_id": "node1", "data_dir": filepath.Join(dir, "raft"), "raft_address": "127.0.0.1:" + raftAddr},
			"pki":   map[string]any{"certificate_authorities": map[string]any{"local": map[string]any{"install_trust": false}}},
		},
	}
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
	if resp, err := operator.Do(mustRequest("DELETE", base+"/quota/tokens/"+created.ID)); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("operator using DELETE (not permitted): %v %v", resp, err)
	}
	for name, c := range map[string]*http.Client{"no certificate": client("", ""), "another CA": client(rogueCA, "intruder")} {
		if resp, err := c.Get(base + "/quota/tokens"); err == nil {
			resp.Body.Close()
			t.Errorf("%s: remote admin answered %d", name, resp.StatusCode)
		}
	}
	// The CLI, as SECURITY.md shows it: the remote admin address, the
	// operator's certificate, and the CA of the endpoint's certificate
	// (Caddy's local CA here).
	ops := clustercert.NodeFiles(opsCA, "operator")
	serverCA := filepath.Join(dir, "xdg-caddy", "caddy", "pki", "authorities", "local", "root.crt")
	cli := func(args ...string) (string, error) {
		args = append(append([]string{"quota"}, args...), "--address", base, "--cert", ops.Cert, "--key", ops.Key, "--ca", serverCA)
		out, err := exec.Command(binary, args...).CombinedOutput()
		return string(out), err
	}
	if out, err := cli("token", "show", "remote-token"); err != nil || !strings.Contains(out, `"id": "`+created.ID+`"`) {
		t.Fatalf("caddy quota token show over remote admin: %v\n%s", err, out)
	}
	if out, err := cli("token", "create", "--generate", "--limit", "2"); err != nil || !strings.Contains(out, `"name": "rq_`) {
		t.Fatalf("caddy quota token create over remote admin: %v\n%s", err, out)
	}
	if out, err := cli("token", "delete", created.ID); err == nil || !strings.Contains(out, "HTTP 403") {
		t.Fatalf("DELETE is not permitted remotely, yet: %v\n%s", err, out)
	}
	out, err := exec.Command(binary, "quota", "token", "list", "--address", base).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--cert and --key") {
		t.Fatalf("remote admin without a certificate: %v\n%s", err, out)
	}

	// The local admin endpoint is on loopback, as configured.
	if resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%s/quota/tokens/%s", local, created.ID)); err != nil || resp.StatusCode != http.StatusOK {
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
