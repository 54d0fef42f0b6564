package raftstore

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/raftquota/raftquota/internal/clustertest"
	"github.com/raftquota/raftquota/raftstore/state"
)

// TestHealthSaysWhenADiskIsFull: a follower whose data dir (a small tmpfs)
// fills up answers health with the reason while the others decide on, and
// is healthy again once space is freed. Needs root for the mount; CI
// runs as root.
func TestHealthSaysWhenADiskIsFull(t *testing.T) {
	mnt := t.TempDir()
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=160m"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mounting a tmpfs: %v (CI runs as root)", err)
		}
		t.Skipf("mounting a tmpfs needs root: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(mnt, syscall.MNT_DETACH) })
	c, layers := listenTestCluster(t, 3, nil)
	c.tweak = func(i int, cfg *Config) {
		if i == 2 {
			// Small WAL segments: a full disk shows at the next one, not
			// after a 64 MiB preallocated segment fills.
			cfg.DataDir, cfg.walSegmentSize = filepath.Join(mnt, "node3"), 1<<20
		}
	}
	c.start(layers)
	ctx := clustertest.Within(t, 60*time.Second)
	if c.leaderIndex() == 2 {
		if err := c.nodes[2].raft.LeadershipTransfer().Error(); err != nil {
			t.Fatal(err)
		}
		for c.leaderIndex() == 2 || c.leaderIndex() < 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if _, err := c.nodes[0].CreateToken(ctx, state.TokenSpec{Name: "disk"}); err != nil {
		t.Fatal(err)
	}
	if err := c.nodes[2].Health(ctx); err != nil {
		t.Fatalf("health before the disk fills: %v", err)
	}
	// Fill the tmpfs.
	filler := filepath.Join(mnt, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	for {
		if _, err := f.Write(chunk); err != nil {
			break
		}
	}
	f.Close()
	var reason error
	deadline := time.Now().Add(30 * time.Second)
	for reason == nil {
		for range 50 {
			// Entries big enough to need new pages and segments.
			if _, err := c.nodes[0].CreateToken(ctx, state.TokenSpec{Name: "t" + state.NewRequestID().String()[:12], Metadata: map[string]string{"pad": strings.Repeat("x", 1000)}}); err != nil {
				t.Fatal(err)
			}
		}
		reason = c.nodes[2].Health(ctx)
		if time.Now().After(deadline) {
			t.Fatal("a follower with a full disk still says it is healthy")
		}
	}
	t.Logf("full disk: %v", reason)
	if err := c.nodes[0].Health(ctx); err != nil {
		t.Fatalf("the leader's health with a follower's disk full: %v", err)
	}
	os.Remove(filler)
	for deadline := time.Now().Add(30 * time.Second); ; {
		c.nodes[0].CreateToken(ctx, state.TokenSpec{Name: "t" + state.NewRequestID().String()[:12]})
		if err := c.nodes[2].Health(ctx); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("the follower is still unhealthy after space was freed: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestHealthSaysWhenAFollowerTakesNoEntriesAfterASnapshot: a follower that
// restarted from its snapshot has applied no command since, so its FSM
// cannot say how far it is; while it is in contact with the leader but
// takes no entries (its log writes held here; a log that refused them did
// the same), health says how far behind it is, by Raft's indexes, instead
// of ok. Once it takes them, ok.
func TestHealthSaysWhenAFollowerTakesNoEntriesAfterASnapshot(t *testing.T) {
	hold := make(chan struct{})
	held := false
	c := newTestClusterWith(t, 3, nil, func(i int, cfg *Config) {
		if held {
			cfg.holdLogWrites = hold
		}
	})
	ctx := clustertest.Within(t, 30*time.Second)
	if _, err := c.nodes[0].CreateToken(ctx, state.TokenSpec{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	leader := c.leaderIndex()
	f := (leader + 1) % 3
	waitApplied(t, c)
	if _, err := c.nodes[f].Snapshot(); err != nil {
		t.Fatal(err)
	}
	c.stop(f)
	for range 20 {
		if _, err := c.nodes[leader].Consume(ctx, state.ConsumeRequest{ID: state.NewRequestID(), Token: "a", Units: 1}); err != nil {
			t.Fatal(err)
		}
	}
	held = true
	c.reopen(f)
	defer func() {
		if hold != nil {
			close(hold)
		}
	}()
	clustertest.Eventually(t, 10*time.Second, "the held follower in contact with the leader", func() bool {
		return c.nodes[f].Leader() != "" && time.Since(c.nodes[f].raft.LastContact()) < time.Second
	})
	err := c.nodes[f].Health(ctx)
	if err == nil || !strings.Contains(err.Error(), "did not catch up") {
		t.Fatalf("health of a follower taking no entries: %v", err)
	}
	t.Logf("held: %v", err)
	close(hold)
	hold = nil
	clustertest.Eventually(t, 10*time.Second, "health ok once it takes entries", func() bool { return c.nodes[f].Health(ctx) == nil })
}
