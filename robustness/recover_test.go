package robustness

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// docs/OPERATIONS.md's "Recovering a node" runbook on the three-node example, with
// the real binary: a follower's raft.db is damaged; it refuses to start
// with one error naming the file and the way out; caddy quota verify says
// the same; the runbook's step (move the data dir aside, start it again
// with the same config) brings it back as the same member, which says it
// rejoined and serves the cluster's state.
func TestRecoveringADamagedNode(t *testing.T) {
	c := newCluster(t)
	c.createToken("recover-me", 100)
	for i := range 20 {
		req, _ := http.NewRequest("PUT", fmt.Sprintf("%s/upload/rec/o%d", c.httpURL(i%3), i), strings.NewReader("x"))
		req.Header.Set("X-Quota-Token", "recover-me")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	victim := (c.leader() + 1) % nodes
	dataDir := filepath.Join(c.dir, "data", c.name(victim), "raft")
	c.kill(victim)
	db := filepath.Join(dataDir, "raft.db")
	fi, err := os.Stat(db)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(db, fi.Size()/2); err != nil {
		t.Fatal(err)
	}

	// It does not start, and says why and what to do, in one line.
	logPath := filepath.Join(c.dir, c.name(victim)+".Caddyfile.log")
	before, _ := os.ReadFile(logPath)
	c.start(victim)
	if err := c.procs[victim].Wait(); err == nil || c.procs[victim].ProcessState.ExitCode() != 1 {
		t.Fatal("a node with a damaged raft.db started")
	}
	c.procs[victim] = nil
	after, _ := os.ReadFile(logPath)
	out := string(after[len(before):])
	if strings.Contains(out, "goroutine ") || !strings.Contains(out, db) || !strings.Contains(out, "Recovering a node") {
		t.Fatalf("the damaged node's output (%d bytes before):\n%s", len(before), after)
	}
	verify, err := exec.Command(binary, "quota", "verify", "--data-dir", dataDir).CombinedOutput()
	if err == nil || !strings.Contains(string(verify), "cut short") {
		t.Fatalf("caddy quota verify on the damaged dir: %v\n%s", err, verify)
	}

	// The runbook: move the data dir aside, start the node again.
	if err := os.Rename(dataDir, dataDir+".damaged"); err != nil {
		t.Fatal(err)
	}
	c.start(victim)
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(c.adminURL(victim) + "/quota/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the recovered node did not become healthy")
		}
		time.Sleep(100 * time.Millisecond)
	}
	var tok struct {
		UsageCount int `json:"usage_count"`
	}
	resp, err := http.Post(c.adminURL(victim)+"/quota/tokens/lookup", "application/json", strings.NewReader(`{"name":"recover-me"}`))
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	if tok.UsageCount != 20 {
		t.Fatalf("the recovered node sees %d uploads, want 20", tok.UsageCount)
	}
	for deadline := time.Now().Add(20 * time.Second); ; {
		b, _ := os.ReadFile(logPath)
		if strings.Contains(string(b[len(after):]), "rejoined an existing cluster") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the recovered node did not say it rejoined:\n%s", b[len(after):])
		}
		time.Sleep(100 * time.Millisecond)
	}
	// caddy quota verify checks a backup too, and names a damaged one.
	backup := filepath.Join(t.TempDir(), "quota.backup")
	if out, err := exec.Command(binary, "quota", "backup", backup, "--address", strings.TrimPrefix(c.adminURL(0), "http://")).CombinedOutput(); err != nil {
		t.Fatalf("backup: %v\n%s", err, out)
	}
	if out, err := exec.Command(binary, "quota", "verify", "--backup", backup).CombinedOutput(); err != nil || !strings.Contains(string(out), "ok") {
		t.Fatalf("verify of a good backup: %v\n%s", err, out)
	}
	b, _ := os.ReadFile(backup)
	os.WriteFile(backup, b[:len(b)-10], 0o600)
	if out, err := exec.Command(binary, "quota", "verify", "--backup", backup).CombinedOutput(); err == nil || !strings.Contains(string(out), "damaged") {
		t.Fatalf("verify of a truncated backup: %v\n%s", err, out)
	}
}
