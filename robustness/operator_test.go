package robustness

import (
	"fmt"
	"net"
	"net/http"
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
		{0, []string{"token", "list", "--created-by", "ops"}, "0/5", false},
		{0, []string{"token", "create", "--generate", "--limit", "1"}, `"name": "rq_`, false},
		{1, []string{"cluster"}, `"state": "Leader"`, false},
		{2, []string{"token", "delete", "op-token"}, "ok", false},
		{0, []string{"token", "show", "op-token"}, "HTTP 404", true},
		{0, []string{"token", "create", "bad name"}, "HTTP 400", true},
		{0, []string{"token", "update-limit", "x"}, "give --limit", true},
		{1, []string{"health"}, `"status": "ok"`, false},
		{2, []string{"member", "remove", "nosuch"}, "no such cluster member", true},
	}
	for _, s := range steps {
		out, err := c.quota(s.node, s.args...)
		if (err != nil) != s.fail || !strings.Contains(out, s.want) {
			t.Errorf("caddy quota %s on node%d: err %v, output:\n%s\nwant it to contain %q", strings.Join(s.args, " "), s.node+1, err, out, s.want)
		}
	}
	// --address as a URL: http:// means the same as without it; another
	// scheme is refused with the forms the flag takes.
	admin := "127.0.0.1:" + c.ports["2022"]
	for _, s := range []struct {
		address, want string
		fail          bool
	}{
		{"http://" + admin, `"state": "Leader"`, false},
		{"http://" + admin + "/", `"state": "Leader"`, false},
		{"http://" + admin + "/config", "give HOST:PORT", true},
		{"ftp://" + admin, "give HOST:PORT, http://HOST:PORT, or https://HOST:PORT", true},
	} {
		out, err := exec.Command(binary, "quota", "cluster", "--address", s.address).CombinedOutput()
		if (err != nil) != s.fail || !strings.Contains(string(out), s.want) {
			t.Errorf("caddy quota cluster --address %s: err %v, output:\n%s\nwant it to contain %q", s.address, err, out, s.want)
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

// TestJoinWithMemberCommand adds a fourth node, started with `join`, with
// `caddy quota member add` on a follower, uploads through it, and removes it
// with `caddy quota member remove`, while clients upload through the three
// voters: none of their uploads fails, usage equals the 200s.
func TestJoinWithMemberCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary")
	}
	c := newCluster(t)
	c.createToken("join-token", 10)
	certDir := filepath.Join(c.dir, "data", "certs")
	if out, err := exec.Command(binary, "quota", "certs", "--dir", certDir, "node4=127.0.0.1").CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	raftAddr, httpPort, adminPort := "127.0.0.1:"+freePort(t), freePort(t), freePort(t)
	cfg := fmt.Sprintf(`{
	admin 127.0.0.1:%s
	persist_config off
	storage file_system ./data/node4/caddy
	quota {
		node_id node4
		data_dir ./data/node4/raft
		raft_address %s
		join
		tls ./data/certs/node4.pem ./data/certs/node4-key.pem ./data/certs/ca.pem
	}
}

:%s {
	bind 127.0.0.1
	handle_path /upload/* {
		quota {
			key {http.request.header.X-Quota-Token}
		}
		reverse_proxy 127.0.0.1:%s
	}
}
`, adminPort, raftAddr, httpPort, c.ports["9000"])
	c.writeFile("node4.Caddyfile", cfg)
	spawn(t, c.dir, "node4", "run", "--config", filepath.Join(c.dir, "node4.Caddyfile"), "--adapter", "caddyfile")

	// Clients upload through the three voters the whole time: adding and
	// removing a member must fail none of them.
	c.createToken("roll", 0)
	load := startUploads(t, c, "roll", 12)

	// Ask a node that is not the leader, so the join is forwarded.
	asked := (c.leader() + 1) % nodes
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := c.quota(asked, "member", "add", "node4", raftAddr)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("caddy quota member add: %v\n%s", err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	var status int
	for deadline = time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		req, _ := http.NewRequest("PUT", "http://127.0.0.1:"+httpPort+"/upload/joined/obj", strings.NewReader("x"))
		req.Header.Set("X-Quota-Token", "join-token")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if status = resp.StatusCode; status == http.StatusOK {
				break
			}
		}
	}
	if status != http.StatusOK {
		t.Fatalf("upload through the joined node: %d", status)
	}
	if got := c.usage("join-token"); got != 1 {
		t.Fatalf("usage %d after one upload through node4", got)
	}
	if out, err := c.quota(asked, "member", "remove", "node4"); err != nil {
		t.Fatalf("caddy quota member remove: %v\n%s", err, out)
	}
	if out, err := c.quota(asked, "member", "remove", "node4"); err == nil || !strings.Contains(out, "HTTP 404") {
		t.Fatalf("removing node4 twice: %v\n%s", err, out)
	}
	time.Sleep(500 * time.Millisecond)
	load.stop()
	load.mu.Lock()
	defer load.mu.Unlock()
	t.Logf("uploads during the membership changes: %v", load.perStatus)
	if len(load.failures) > 0 || load.ok.Load() == 0 {
		t.Fatalf("%d ok, failures during membership changes: %v", load.ok.Load(), load.failures[:min(5, len(load.failures))])
	}
	if u := c.usage("roll"); int64(u) != load.ok.Load() {
		t.Fatalf("usage %d, %d uploads answered 200", u, load.ok.Load())
	}
}

// TestValidateDoesNotStartRaft checks `caddy validate` on a config with a
// quota node: it must neither bind the Raft port nor touch the data dir.
func TestValidateDoesNotStartRaft(t *testing.T) {
	dir := t.TempDir()
	taken, err := net.Listen("tcp", "127.0.0.1:0") // a validate that bound the port would fail
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	dataDir := filepath.Join(dir, "raft")
	cfg := fmt.Sprintf("{\n\tadmin off\n\tquota {\n\t\tnode_id node1\n\t\tdata_dir %s\n\t\traft_address %s\n\t}\n}\n:%s {\n\tbind 127.0.0.1\n\tquota {\n\t\tkey {http.request.header.X-Quota-Token}\n\t}\n\trespond 200\n}\n",
		dataDir, taken.Addr(), freePort(t))
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, "validate", "--config", path, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+filepath.Join(dir, "xdg"), "XDG_CONFIG_HOME="+filepath.Join(dir, "xdg"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("caddy validate: %v\n%s", err, out)
	}
	if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
		t.Fatalf("validate touched the data dir: %v", err)
	}
}
