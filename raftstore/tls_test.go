package raftstore

import (
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/zap"

	"github.com/raftquota/raftquota/internal/clustercert"
	"github.com/raftquota/raftquota/internal/clustertest"
	"github.com/raftquota/raftquota/raftstore/state"
)

func tlsFiles(dir, id string) TLSFiles {
	f := clustercert.NodeFiles(dir, id)
	return TLSFiles{CertFile: f.Cert, KeyFile: f.Key, CAFile: f.CA}
}

// newTLSCluster starts three nodes speaking mutual TLS with certificates
// from one cluster CA.
func newTLSCluster(t *testing.T) (*testCluster, string) {
	certDir := t.TempDir()
	var certNodes []clustercert.Node
	for i := 1; i <= 3; i++ {
		certNodes = append(certNodes, clustercert.Node{ID: fmt.Sprintf("node%d", i), Hosts: []string{"127.0.0.1"}})
	}
	if err := clustercert.Generate(certDir, certNodes, time.Hour); err != nil {
		t.Fatal(err)
	}
	c := &testCluster{t: t, dir: t.TempDir(), nodes: make([]*Store, 3), log: zap.NewNop(), skew: make([]atomic.Int64, 3)}
	layers := make([]raft.StreamLayer, 3)
	for i := range layers {
		id := fmt.Sprintf("node%d", i+1)
		l, err := NewTLSStreamLayer("127.0.0.1:0", "", tlsFiles(certDir, id))
		if err != nil {
			t.Fatal(err)
		}
		layers[i] = l
		c.peers = append(c.peers, Peer{ID: id, Address: l.Addr().String()})
	}
	for i := range c.nodes {
		c.open(i, layers[i])
	}
	t.Cleanup(c.closeAll)
	c.waitLeader()
	return c, certDir
}

func TestMutualTLSClusterServes(t *testing.T) {
	c, _ := newTLSCluster(t)
	ctx := clustertest.Within(t, 30*time.Second)
	f := c.nodes[(c.leaderIndex()+1)%3]
	if _, err := f.CreateToken(ctx, state.TokenSpec{Name: "tls", UsageLimit: 2}); err != nil {
		t.Fatal(err)
	}
	if d, err := f.Consume(ctx, state.ConsumeRequest{ID: state.NewRequestID(), Token: "tls", Units: 1}); err != nil || !d.Allowed {
		t.Fatalf("consume forwarded over TLS: %+v %v", d, err)
	}
}

func TestRoguePeersCannotTouchTheCluster(t *testing.T) {
	c, _ := newTLSCluster(t)
	ctx := clustertest.Within(t, 60*time.Second)
	if _, err := c.nodes[0].CreateToken(ctx, state.TokenSpec{Name: "guarded", UsageLimit: 5}); err != nil {
		t.Fatal(err)
	}
	leader := c.nodes[c.leaderIndex()]
	target := leader.Addr()
	termBefore := leader.raft.CurrentTerm()

	// A rogue node with a certificate from another CA, bootstrapped with the
	// real peers, tries to vote, append and forward.
	rogueCA := t.TempDir()
	if err := clustercert.Generate(rogueCA, []clustercert.Node{{ID: "rogue", Hosts: []string{"127.0.0.1"}}}, time.Hour); err != nil {
		t.Fatal(err)
	}
	rl, err := NewTLSStreamLayer("127.0.0.1:0", "", tlsFiles(rogueCA, "rogue"))
	if err != nil {
		t.Fatal(err)
	}
	peers := append([]Peer{{ID: "rogue", Address: rl.Addr().String()}}, c.peers...)
	rogue, err := Open(Config{NodeID: "rogue", DataDir: filepath.Join(c.dir, "rogue"), Stream: rl, Peers: peers, Logger: c.log.Named("rogue")})
	if err != nil {
		t.Fatal(err)
	}
	defer rogue.Close()
	shortCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := rogue.Join(shortCtx, "rogue2", "127.0.0.1:1"); err == nil {
		t.Fatal("rogue joined a member")
	}
	shortCtx2, cancel2 := context.WithTimeout(ctx, 2*time.Second)
	defer cancel2()
	if _, err := rogue.Consume(shortCtx2, state.ConsumeRequest{ID: state.NewRequestID(), Token: "guarded", Units: 1}); err == nil {
		t.Fatal("rogue got a consume through")
	}

	// A peer without any certificate, speaking Raft over plain TCP.
	plain, err := NewTCPStreamLayer("127.0.0.1:0", "")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	m := newMux(plain, c.log)
	defer m.close()
	trans := raft.NewNetworkTransport(m.raft, 1, time.Second, io.Discard)
	defer trans.Close()
	var resp raft.AppendEntriesResponse
	err = trans.AppendEntries("node1", raft.ServerAddress(target), &raft.AppendEntriesRequest{
		RPCHeader: raft.RPCHeader{ID: []byte("plain"), Addr: []byte(plain.Addr().String())},
		Term:      termBefore + 100, Leader: []byte(plain.Addr().String()),
	}, &resp)
	if err == nil {
		t.Fatal("a plain-TCP peer appended entries")
	}

	// Raw garbage on the port.
	for _, junk := range [][]byte{{'R', 0, 0, 0}, []byte("GET / HTTP/1.1\r\n\r\n"), make([]byte, 4096)} {
		conn, err := net.Dial("tcp", target)
		if err != nil {
			t.Fatal(err)
		}
		conn.Write(junk)
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, 1024)
		n, _ := io.ReadFull(conn, b)
		conn.Close()
		if n > 0 && b[0] != 0x15 { // a TLS alert is all it may answer
			t.Fatalf("garbage got an answer: %q", b[:n])
		}
	}

	// The cluster never noticed: same leader, same term, the token intact.
	time.Sleep(2 * time.Second) // rogue elections would have happened by now
	if !leader.IsLeader() || leader.raft.CurrentTerm() != termBefore {
		t.Fatalf("rogue traffic disturbed the leader: term %d -> %d", termBefore, leader.raft.CurrentTerm())
	}
	tok, err := c.nodes[0].Lookup(ctx, "guarded")
	if err != nil || tok.UsageCount != 0 {
		t.Fatalf("token after rogue traffic: %+v %v", tok, err)
	}
	if got := len(c.nodes[0].Cluster(ctx).Nodes); got != 3 {
		t.Fatalf("%d members, want 3", got)
	}
}

func TestTLSReloadRotatesCertificatesWithoutRestart(t *testing.T) {
	c, certDir := newTLSCluster(t)
	ctx := clustertest.Within(t, 60*time.Second)
	// New node certificates from the same CA, written over the old files.
	if err := clustercert.Generate(certDir, []clustercert.Node{{ID: "node1"}, {ID: "node2"}, {ID: "node3"}}, time.Hour); err != nil {
		t.Fatal(err)
	}
	for i, s := range c.nodes {
		if err := s.cfg.Stream.(*TLSStreamLayer).Reload(tlsFiles(certDir, c.peers[i].ID)); err != nil {
			t.Fatal(err)
		}
	}
	// New connections handshake with the new certificates on both ends.
	for i, s := range c.nodes {
		peer := c.peers[(i+1)%3].Address
		conn, err := s.cfg.Stream.Dial(raft.ServerAddress(peer), 5*time.Second)
		if err != nil {
			t.Fatalf("dial after rotation: %v", err)
		}
		conn.Close()
	}
	f := c.nodes[(c.leaderIndex()+1)%3]
	if _, err := f.CreateToken(ctx, state.TokenSpec{Name: "rotated", UsageLimit: 1}); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	// A reload with files that do not fit keeps the old ones.
	other := t.TempDir()
	clustercert.Generate(other, []clustercert.Node{{ID: "x"}}, time.Hour)
	bad := tlsFiles(certDir, "node1")
	bad.CAFile = clustercert.NodeFiles(other, "x").CA
	if err := c.nodes[0].cfg.Stream.(*TLSStreamLayer).Reload(bad); err == nil {
		t.Fatal("a certificate from another CA was accepted on reload")
	}
}
