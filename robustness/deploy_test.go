package robustness

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestDeploymentFilesAgree checks examples/deploy: its Caddyfile validates
// with the real binary (certificate paths moved to files `caddy quota
// certs` makes), the systemd unit runs that binary the way it takes its
// flags and gives a graceful stop time to finish, and the container image
// builds with the same xcaddy line as docs/OPERATIONS.md and CI.
func TestDeploymentFilesAgree(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary")
	}
	deploy := filepath.Join("..", "examples", "deploy")
	read := func(path string) string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}

	dir := t.TempDir()
	if out, err := exec.Command(binary, "quota", "certs", "--dir", dir, "node1=10.0.0.1").CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	cfg := strings.ReplaceAll(read(filepath.Join(deploy, "Caddyfile")), "/etc/caddy/quota-certs", dir)
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	validate := exec.Command(binary, "validate", "--config", path, "--adapter", "caddyfile")
	validate.Env = append(os.Environ(), "XDG_DATA_HOME="+filepath.Join(dir, "xdg"), "XDG_CONFIG_HOME="+filepath.Join(dir, "xdg"))
	if out, err := validate.CombinedOutput(); err != nil {
		t.Fatalf("caddy validate of the deploy Caddyfile: %v\n%s", err, out)
	}

	unit := read(filepath.Join(deploy, "raftquota.service"))
	for _, want := range []string{"ExecStart=/usr/bin/caddy run --environ --config /etc/caddy/Caddyfile", "ExecReload=/usr/bin/caddy reload --config /etc/caddy/Caddyfile --force", "KillSignal=SIGTERM"} {
		if !strings.Contains(unit, want+"\n") {
			t.Errorf("raftquota.service lacks %q", want)
		}
	}
	for _, flags := range [][]string{{"run", "--help"}, {"reload", "--help"}} {
		out, _ := exec.Command(binary, flags...).CombinedOutput()
		for _, f := range []string{"--config", "--environ", "--force"} {
			if (f == "--environ" && flags[0] == "reload") || (f == "--force" && flags[0] == "run") {
				continue
			}
			if !strings.Contains(string(out), f) {
				t.Errorf("caddy %s has no %s flag", flags[0], f)
			}
		}
	}
	m := regexp.MustCompile(`TimeoutStopSec=(\S+)`).FindStringSubmatch(unit)
	if m == nil {
		t.Fatal("raftquota.service sets no TimeoutStopSec")
	}
	// Close drains for up to the request timeout and gives Raft 15 s to
	// stop; SIGKILL before that would cut a graceful stop short.
	if d, err := time.ParseDuration(m[1]); err != nil || d < 30*time.Second {
		t.Errorf("TimeoutStopSec=%s: give a graceful stop at least 30s", m[1])
	}

	xcaddyLine := regexp.MustCompile(`xcaddy build v[0-9.]+ --with github\.com/raftquota/raftquota@v0\.0\.0=`)
	docker := read(filepath.Join(deploy, "Dockerfile"))
	readme := read(filepath.Join("..", "docs", "OPERATIONS.md")) // "Building your own Caddy"
	ci := read(filepath.Join("..", ".ci", "run"))
	lineOf := func(s string) string {
		s = strings.ReplaceAll(s, `"$tmp/bin/xcaddy"`, "xcaddy")
		return xcaddyLine.FindString(strings.ReplaceAll(s, `"`, ""))
	}
	if lineOf(docker) == "" || lineOf(docker) != lineOf(readme) || lineOf(readme) != lineOf(ci) {
		t.Errorf("xcaddy lines differ: Dockerfile %q, README %q, .ci/run %q", lineOf(docker), lineOf(readme), lineOf(ci))
	}
	if !strings.Contains(docker, "xcaddy@v0.4.5") || !strings.Contains(ci, "xcaddy@v0.4.5") {
		t.Error("the Dockerfile and CI install different xcaddy versions")
	}
	gomod := read(filepath.Join("..", "go.mod"))
	goLine := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(gomod)
	if goLine == nil || !strings.Contains(docker, "FROM golang:"+goLine[1]+" ") {
		t.Errorf("the Dockerfile's Go image is not go.mod's Go (%v)", goLine)
	}
	if !strings.Contains(docker, "STOPSIGNAL SIGTERM") {
		t.Error("the image does not stop with SIGTERM")
	}
}

// TestJSONExampleLoads: examples/json/caddy.json, which sets every field
// of the quota app and handler docs/REFERENCE.md documents, passes `caddy
// validate` (with its certificate paths pointed at files `caddy quota
// certs` makes).
func TestJSONExampleLoads(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary")
	}
	b, err := os.ReadFile(filepath.Join("..", "examples", "json", "caddy.json"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if out, err := exec.Command(binary, "quota", "certs", "--dir", filepath.Join(dir, "certs"), "node1=127.0.0.1").CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	cfg := strings.ReplaceAll(string(b), `"certs/`, `"`+filepath.Join(dir, "certs")+"/")
	for _, field := range []string{"node_id", "data_dir", "raft_address", "advertise_address", "peers", "dial_addresses", "tls", "join",
		"role", "gateway_timeout", "heartbeat_timeout", "election_timeout", "leader_lease_timeout", "commit_timeout", "apply_timeout", "snapshot_threshold", "dedup_size", "max_batch",
		`"key"`, "cost", `"bytes"`, "charge_on", "idempotency_key", "on_unavailable", "check_only", "dry_run", `"timeout"`, "quota_health"} {
		if !strings.Contains(cfg, strings.Trim(field, `"`)) {
			t.Errorf("the JSON example does not show %s", field)
		}
	}
	path := filepath.Join(dir, "caddy.json")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	validate := exec.Command(binary, "validate", "--config", path)
	validate.Env = append(os.Environ(), "XDG_DATA_HOME="+filepath.Join(dir, "xdg"), "XDG_CONFIG_HOME="+filepath.Join(dir, "xdg"))
	if out, err := validate.CombinedOutput(); err != nil {
		t.Fatalf("caddy validate examples/json/caddy.json: %v\n%s", err, out)
	}
}
