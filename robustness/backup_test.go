package robustness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raftquota/raftquota/raftstore"
	"github.com/raftquota/raftquota/raftstore/state"
)

// TestBackupUnderLoadRestoresEveryToken takes a backup with `caddy quota
// backup` while clients upload, wipes all three nodes, seeds their data
// dirs with `caddy quota restore`, and starts them: every token's usage
// is the backup's, and the restored cluster keeps deciding.
func TestBackupUnderLoadRestoresEveryToken(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary")
	}
	c := newCluster(t)
	for i := 0; i < 5; i++ {
		c.createToken(fmt.Sprintf("bk%d", i), 0)
	}
	c.createToken("roll", 0)
	l := startUploads(t, c, "roll", 16)
	time.Sleep(time.Second)

	file := filepath.Join(c.dir, "quota.backup")
	out, err := exec.Command(binary, "quota", "backup", file, "--address", strings.TrimPrefix(c.adminURL(2), "http://")).CombinedOutput()
	if err != nil {
		t.Fatalf("caddy quota backup: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	time.Sleep(500 * time.Millisecond)
	l.stop()
	if len(l.failures) > 0 {
		t.Fatalf("uploads failed while the backup was taken: %v", l.failures[:min(5, len(l.failures))])
	}

	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	info, want, _, err := raftstore.ReadBackup(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(want) != 6 {
		t.Fatalf("backup holds %d tokens, want 6", len(want))
	}
	names := map[state.TokenKey]string{state.KeyOf("roll"): "roll"}
	for i := 0; i < 5; i++ {
		names[state.KeyOf(fmt.Sprintf("bk%d", i))] = fmt.Sprintf("bk%d", i)
	}
	var rollBackedUp int64
	for _, tok := range want {
		if names[tok.Key] == "roll" {
			rollBackedUp = tok.UsageCount
		}
	}
	t.Logf("backup at index %d: roll used %d (cluster went on to %d)", info.Index, rollBackedUp, l.ok.Load())

	for i := 0; i < nodes; i++ {
		c.stop(i)
	}
	var peers []string
	for i := 1; i <= nodes; i++ {
		peers = append(peers, "--peer", fmt.Sprintf("node%d=127.0.0.1:%s", i, c.ports[fmt.Sprintf("700%d", i)]))
	}
	for i := 1; i <= nodes; i++ {
		dir := filepath.Join(c.dir, "data", fmt.Sprintf("node%d", i), "raft")
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		args := append([]string{"quota", "restore", file, "--data-dir", dir, "--node-id", fmt.Sprintf("node%d", i)}, peers...)
		if out, err := exec.Command(binary, args...).CombinedOutput(); err != nil {
			t.Fatalf("caddy quota restore: %v\n%s", err, out)
		}
	}
	for i := 0; i < nodes; i++ {
		c.start(i)
	}
	c.waitHealthy(30 * time.Second)
	for _, tok := range want {
		name := names[tok.Key]
		if got := c.usage(name); int64(got) != tok.UsageCount {
			t.Errorf("%s: usage %d after restore, %d in the backup", name, got, tok.UsageCount)
		}
	}
	// The restored cluster decides as before.
	l2 := startUploads(t, c, "roll", 4)
	time.Sleep(500 * time.Millisecond)
	l2.stop()
	if len(l2.failures) > 0 || l2.ok.Load() == 0 {
		t.Fatalf("restored cluster: %d ok, failures %v", l2.ok.Load(), l2.failures)
	}
	if got := c.usage("roll"); int64(got) != rollBackedUp+l2.ok.Load() {
		t.Fatalf("roll usage %d, want %d + %d", got, rollBackedUp, l2.ok.Load())
	}
	// The backup file holds no token name.
	raw, _ := os.ReadFile(file)
	for _, name := range names {
		if strings.Contains(string(raw), name) && len(name) > 3 {
			t.Errorf("the backup holds the token name %q", name)
		}
	}
}
