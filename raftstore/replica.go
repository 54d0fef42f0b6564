package raftstore

import (
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
	"github.com/raftquota/raftquota/raftstore/state"
	"go.uber.org/zap"
)

// replica is a node's raft.FSM: it hands the log to the state machine and
// stops applying at an entry the machine cannot read (written by a newer
// version, or corrupt), rather than skip it and diverge.
type replica struct {
	*state.Machine

	// halted is set when a log entry cannot be applied.
	halted atomic.Pointer[haltError]
	// stop ends a halted Apply when the node shuts down.
	stop     chan struct{}
	stopOnce sync.Once
	onHalt   func(error)
	logger   *zap.Logger
	steps    stepTimer
}

func newReplica(m *state.Machine, logger *zap.Logger, onHalt func(error)) *replica {
	return &replica{Machine: m, stop: make(chan struct{}), onHalt: onHalt, logger: logger}
}

// haltError says which log entry stopped the node and why.
type haltError struct {
	Index uint64
	Err   error
}

func (h *haltError) Error() string {
	return fmt.Sprintf("cannot apply log entry %d: %v", h.Index, h.Err)
}

func (h *haltError) Unwrap() error { return h.Err }

// Apply applies one log entry, or halts on one it cannot read.
func (r *replica) Apply(l *raft.Log) any {
	start := r.steps.start()
	res, err := r.Machine.Apply(l.Index, l.Data)
	r.steps.since(StepApply, start)
	if err != nil {
		r.halt(l.Index, err)
		return &state.Result{Err: fmt.Errorf("%w: %v", state.ErrUnavailable, err)}
	}
	return res
}

// halt stops applying: it logs why once and blocks the FSM until the node
// shuts down, so no later entry is applied on top of a missing one.
func (r *replica) halt(index uint64, err error) {
	h := &haltError{Index: index, Err: err}
	if r.halted.CompareAndSwap(nil, h) {
		r.logger.Error("this node stopped applying the replicated log: an entry was written by a newer version of raftquota, or is corrupt; upgrade this node (or restore it from a backup) and start it again",
			zap.Uint64("index", index), zap.Error(err))
		if r.onHalt != nil {
			go r.onHalt(h)
		}
	}
	<-r.stop
}

// haltedErr returns why the node halted, or nil.
func (r *replica) haltedErr() error {
	if h := r.halted.Load(); h != nil {
		return h
	}
	return nil
}

func (r *replica) shutdown() { r.stopOnce.Do(func() { close(r.stop) }) }

// Snapshot captures the state's handles; Persist encodes them while Apply
// goes on.
func (r *replica) Snapshot() (raft.FSMSnapshot, error) {
	return persisted{r.Machine.Snapshot()}, nil
}

// Restore replaces the state with a snapshot's.
func (r *replica) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	return r.Machine.Restore(rc)
}

type persisted struct{ s *state.Snapshot }

func (p persisted) Persist(sink raft.SnapshotSink) error {
	if err := p.s.Encode(sink); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (p persisted) Release() { p.s.Release() }
