package raftstore

import (
	"bytes"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/raftquota/raftquota/internal/clustertest"
	"github.com/raftquota/raftquota/raftstore/state"
	"go.uber.org/zap"
)

// TestBackupRestoresIntoANewCluster: a backup taken from a follower holds
// every committed change; three empty data dirs seeded from it come up as a
// cluster with the same tokens, usage and remembered request ids.
func TestBackupRestoresIntoANewCluster(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := clustertest.Within(t, 60*time.Second)
	leader := c.leaderIndex()
	follower := c.nodes[(leader+1)%3]
	var ids []state.RequestID
	for i := 0; i < 5; i++ {
		name := fmt.Sprintf("b%d", i)
		if _, err := c.nodes[leader].CreateToken(ctx, state.TokenSpec{Name: name, UsageLimit: 10, BytesLimit: 1000}); err != nil {
			t.Fatal(err)
		}
		for j := 0; j <= i; j++ {
			id := state.NewRequestID()
			ids = append(ids, id)
			if _, err := c.nodes[j%3].Consume(ctx, state.ConsumeRequest{ID: id, Token: name, Units: 1, Bytes: 10}); err != nil {
				t.Fatal(err)
			}
		}
	}
	var buf bytes.Buffer
	info, err := follower.Backup(ctx, &buf)
	if err != nil {
		t.Fatal(err)
	}
	if info.Tokens != 5 {
		t.Fatalf("backup info %+v", info)
	}
	want, _, err := c.nodes[leader].Tokens(ctx, state.TokenFilter{})
	if err != nil {
		t.Fatal(err)
	}
	c.closeAll()

	// A new cluster on new addresses from the backup.
	n := newTestClusterFromBackup(t, buf.Bytes())
	got, _, err := n.nodes[0].Tokens(ctx, state.TokenFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("restored tokens differ:\n got %v\nwant %v", got, want)
	}
	for _, id := range ids {
		d, err := n.nodes[1].Consume(ctx, state.ConsumeRequest{ID: id, Token: "b4", Units: 1, Bytes: 10})
		if err != nil {
			t.Fatal(err)
		}
		if !d.Duplicate {
			t.Fatal("a request id remembered before the backup charged again after the restore")
		}
	}
	if err := n.nodes[2].Health(ctx); err != nil {
		t.Fatalf("restored follower unhealthy: %v", err)
	}

	// Restoring over existing state is refused.
	if _, err := RestoreBackup(bytes.NewReader(buf.Bytes()), n.config(0).DataDir, "node1", n.peers); err == nil {
		t.Fatal("restore into a data dir with state succeeded")
	}
	// A damaged backup is refused.
	if _, err := RestoreBackup(bytes.NewReader(buf.Bytes()[:buf.Len()-3]), t.TempDir(), "node1", n.peers); err == nil {
		t.Fatal("truncated backup restored")
	}
}

func newTestClusterFromBackup(t *testing.T, backup []byte) *testCluster {
	t.Helper()
	c, layers := listenTestCluster(t, 3, zap.NewNop())
	for i := range c.nodes {
		if _, err := RestoreBackup(bytes.NewReader(backup), filepath.Join(c.dir, c.peers[i].ID), c.peers[i].ID, c.peers); err != nil {
			t.Fatal(err)
		}
	}
	c.start(layers)
	return c
}
