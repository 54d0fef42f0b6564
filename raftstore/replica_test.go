package raftstore

import (
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/zap"

	"github.com/raftquota/raftquota/raftstore/state"
)

// TestUnknownEntryHaltsTheNode: an entry this build cannot read (a newer
// op, a field it does not know, garbage) stops the node's FSM at that
// index instead of being skipped, and nothing after it is applied.
func TestUnknownEntryHaltsTheNode(t *testing.T) {
	for _, entry := range [][]byte{[]byte("junk"), []byte("\x01{\"op\":42,\"t\":1}"), []byte("\x01{\"op\":5,\"name\":\"a\",\"new_field\":1}")} {
		halted := make(chan error, 1)
		r := newReplica(state.New(zap.NewNop()), zap.NewNop(), func(err error) { halted <- err })
		done := make(chan any)
		go func() { done <- r.Apply(&raft.Log{Index: 7, Data: entry}) }()
		select {
		case <-done:
			t.Fatalf("Apply(%q) returned: the node went on past an entry it cannot read", entry)
		case err := <-halted:
			if !strings.Contains(err.Error(), "log entry 7") {
				t.Fatalf("halt reported %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no halt reported")
		}
		if err := r.haltedErr(); err == nil || !strings.Contains(err.Error(), "log entry 7") {
			t.Fatalf("halted error = %v", err)
		}
		r.shutdown()
		if res := (<-done).(*state.Result); res.Err == nil {
			t.Fatal("halted Apply returned no error")
		}
	}
}
