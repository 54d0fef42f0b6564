package robustness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// quota runs `caddy quota ...` against node i's admin endpoint.
func (c *cluster) quota(i int, args ...string) (string, error) {
	args = append(append([]string{"quota"}, args...), "--address", "127.0.0.1:"+c.ports[fmt.Sprintf("202%d", i+1)])
	out, err := exec.Command(binary, args...).CombinedOutput()
	return string(out), err
}

// TestOperatorCommands drives token management through `caddy quota`, on
// different nodes, as an operator would.
func TestOperatorCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary")
	}
	c := newCluster(t)
	steps := []struct {
		node int
		args []string
		want string
		fail bool
	}{
		{0, []string{"token", "create", "op-token", "--limit", "2", "--created-by", "ops"}, `"created_by": "ops"`, false},
		{1, []string{"token", "show", "op-token"}, `"usage_limit": 2`, false},
		{2, []string{"token", "update-limit", "op-token", "--limit", "5"}, `"usage_limit": 5`, false},
		{0, []string{"token", "revoke", "op-token"}, `"status": "revoked"`, false},
		{1, []string{"token", "reactivate", "op-token"}, `"status": "active"`, false},
		{2, []string{"token", "reset", "op-token"}, `"usage_count": 0`, false},
		{0, []string{"token", "list"}, `"name": "op-token"`, false},
		{1, []string{"cluster"}, `"state": "Leader"`, false},
		{2, []string{"token", "delete", "op-token"}, "ok", false},
		{0, []string{"token", "show", "op-token"}, "HTTP 404", true},
		{0, []string{"token", "create", "bad name"}, "HTTP 400", true},
		{0, []string{"token", "update-limit", "x"}, "give --limit", true},
	}
	for _, s := range steps {
		out, err := c.quota(s.node, s.args...)
		if (err != nil) != s.fail || !strings.Contains(out, s.want) {
			t.Errorf("caddy quota %s on node%d: err %v, output:\n%s\nwant it to contain %q", strings.Join(s.args, " "), s.node+1, err, out, s.want)
		}
	}
}

// TestCertificateRotationByReload replaces every node's certificate and
// reloads the config: the nodes keep running (same processes, same Raft),
// and a node restarted afterwards rejoins with the new certificates.
func TestCertificateRotationByReload(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary")
	}
	c := newCluster(t)
	c.createToken("rot-token", 100)
	certDir := filepath.Join(c.dir, "data", "certs")
	before, err := os.ReadFile(filepath.Join(certDir, "node1.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(binary, "quota", "certs", "--dir", certDir, "node1=127.0.0.1", "node2=127.0.0.1", "node3=127.0.0.1").CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if after, _ := os.ReadFile(filepath.Join(certDir, "node1.pem")); string(after) == string(before) {
		t.Fatal("certificates were not replaced")
	}
	pids := make([]int, nodes)
	for i := 0; i < nodes; i++ {
		pids[i] = c.procs[i].Process.Pid
		reload := exec.Command(binary, "reload", "--force", "--adapter", "caddyfile",
			"--config", filepath.Join(c.dir, fmt.Sprintf("node%d.Caddyfile", i+1)),
			"--address", "127.0.0.1:"+c.ports[fmt.Sprintf("202%d", i+1)])
		reload.Dir = c.dir
		if out, err := reload.CombinedOutput(); err != nil {
			t.Fatalf("reloading node%d: %v\n%s", i+1, err, out)
		}
	}
	for i := 0; i < nodes; i++ {
		if c.procs[i].Process.Pid != pids[i] {
			t.Fatalf("node%d was restarted", i+1)
		}
		log, _ := os.ReadFile(c.logs[i].Name())
		if !strings.Contains(string(log), "reloaded tls certificates") {
			t.Errorf("node%d did not reload its certificates", i+1)
		}
	}
	// A restarted node dials and is dialed with the new certificates only.
	c.restart(1)
	c.waitHealthy(30 * time.Second)
	for i := 0; i < nodes; i++ {
		if out, err := c.quota(i, "token", "show", "rot-token"); err != nil {
			t.Fatalf("node%d after rotation: %v\n%s", i+1, err, out)
		}
	}
}
