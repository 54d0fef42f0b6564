package caddymodule

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/raftquota/raftquota/raftstore"
)

// Each timed step lands in the summary of its own name, the handler's and
// the node's alike.
func TestStepTimingsLandUnderTheirNames(t *testing.T) {
	read := func() map[string]*dto.Summary {
		ch := make(chan prometheus.Metric, 64)
		stepCollector{}.Collect(ch)
		close(ch)
		out := map[string]*dto.Summary{}
		for m := range ch {
			var pb dto.Metric
			if err := m.Write(&pb); err != nil {
				t.Fatal(err)
			}
			out[pb.GetLabel()[0].GetValue()] = pb.GetSummary()
		}
		return out
	}
	before := read()
	observeHandlerStep(stepUpstream, 3*time.Millisecond)
	observeNodeStep(raftstore.StepCommit, 2*time.Millisecond)
	observeNodeStep(raftstore.StepLogAppend, time.Millisecond)
	after := read()
	if len(after) != len(stepHandlerNames)+len(raftstore.Steps()) {
		t.Fatalf("%d steps exposed", len(after))
	}
	for name, want := range map[string]float64{"upstream": 0.003, "commit": 0.002, "log_append": 0.001, "decide": 0, "apply": 0} {
		got := after[name].GetSampleSum() - before[name].GetSampleSum()
		if d := got - want; d > 1e-9 || d < -1e-9 {
			t.Errorf("step %s: %g s added, want %g", name, got, want)
		}
	}
}
