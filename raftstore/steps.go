package raftstore

import "time"

// Step names one step of a decision that a node times for Config.OnStep:
// together with the handler's own steps they say where an upload's time
// goes (bench prints them per Tier 2 cell).
type Step uint8

const (
	// StepQueue is a consume waiting in its batcher until its batch is
	// flushed: the previous batch's round on the leader, or a free slot for
	// a forwarded RPC on a follower. Told once per request.
	StepQueue Step = iota
	// StepForward is a follower's round trip to the leader for one batch
	// of consumes (network, encoding, and the leader's StepServe).
	StepForward
	// StepServe is the leader serving one forwarded batch: its queue and
	// commit, without the network.
	StepServe
	// StepCommit is one entry through Raft on the leader, from Apply to
	// its answer: the leader's log append, a follower's, the round trips,
	// and the state machine's apply.
	StepCommit
	// StepApply is the state machine applying one log entry (on every
	// node).
	StepApply
	// StepLogAppend is one write to this node's Raft log, fsync included:
	// the leader's append, or a follower's.
	StepLogAppend

	numSteps
)

var stepNames = [numSteps]string{"queue", "forward", "serve_forwarded", "commit", "apply", "log_append"}

// String is the step's name in metrics: queue, forward, serve_forwarded,
// commit, apply or log_append.
func (s Step) String() string {
	if s < numSteps {
		return stepNames[s]
	}
	return "unknown"
}

// Steps is every step a node times, in the order a forwarded consume meets
// them.
func Steps() []Step {
	out := make([]Step, numSteps)
	for i := range out {
		out[i] = Step(i)
	}
	return out
}

// stepTimer tells Config.OnStep how long a step took; with no OnStep it
// does nothing, and reads no clock.
type stepTimer func(Step, time.Duration)

// start is the time to pass to since, or zero when nothing is timed.
func (t stepTimer) start() time.Time {
	if t == nil {
		return time.Time{}
	}
	return time.Now()
}

func (t stepTimer) since(s Step, start time.Time) {
	if t != nil {
		t(s, time.Since(start))
	}
}
