// Package clustertest is the kit tests and benchmarks use to run clusters
// of nodes in one process and wait on them: listeners on free 127.0.0.1
// ports named node1..n, waiting for a leader, and polling for a condition
// under a deadline.
//
// It imports nothing of this module, so raftstore's own tests can use it:
// the stream layer to listen with is passed in.
package clustertest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// Member is one node's identity and listener.
type Member struct {
	ID, Address string
	Layer       raft.StreamLayer
}

// Listen opens n listeners on free ports of 127.0.0.1 with listen (e.g.
// raftstore.NewTCPStreamLayer), for nodes named node1..n: every node knows
// its peers' addresses before any opens. On an error it closes what it
// opened.
func Listen(n int, listen func(bind, advertise string) (raft.StreamLayer, error)) ([]Member, error) {
	members := make([]Member, n)
	for i := range members {
		l, err := listen("127.0.0.1:0", "")
		if err != nil {
			for _, m := range members[:i] {
				m.Layer.Close()
			}
			return nil, err
		}
		members[i] = Member{ID: fmt.Sprintf("node%d", i+1), Address: l.Addr().String(), Layer: l}
	}
	return members, nil
}

// Leader is a node (a pointer) that can say whether it leads.
type Leader interface {
	comparable
	IsLeader() bool
}

// WaitLeader waits until one of nodes leads (a nil node is skipped) and
// returns its index, or ctx's error.
func WaitLeader[N Leader](ctx context.Context, nodes []N) (int, error) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	var none N
	for {
		for i, n := range nodes {
			if n != none && n.IsLeader() {
				return i, nil
			}
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("no leader: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// Node is a cluster member that can be closed.
type Node interface {
	Leader
	Close() error
}

// Start listens for n nodes, opens node i with open (given every member,
// so it knows its peers), and waits until one leads or ctx ends. On an
// error it closes what it opened.
func Start[N Node](ctx context.Context, n int, listen func(bind, advertise string) (raft.StreamLayer, error), open func(i int, members []Member) (N, error)) ([]N, error) {
	members, err := Listen(n, listen)
	if err != nil {
		return nil, err
	}
	nodes := make([]N, 0, n)
	closeAll := func() {
		for _, nd := range nodes {
			nd.Close()
		}
		for _, m := range members[len(nodes):] {
			m.Layer.Close()
		}
	}
	for i := range members {
		nd, err := open(i, members)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("opening %s: %w", members[i].ID, err)
		}
		nodes = append(nodes, nd)
	}
	if _, err := WaitLeader(ctx, nodes); err != nil {
		closeAll()
		return nil, err
	}
	return nodes, nil
}

// Eventually fails t unless ok holds within d, asking every 20ms.
func Eventually(t testing.TB, d time.Duration, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !ok(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
	}
}

// Within is a context that ends after d, or when the test ends.
func Within(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
