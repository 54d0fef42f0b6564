package main

import (
	"fmt"
	"strings"
)

// nodeSteps is one quota node's raftquota_step_duration_seconds totals
// (sum and count per step, from Caddy's admin /metrics), and whether it led
// when they were read.
type nodeSteps struct {
	sum, count map[string]float64
	leader     bool
}

// steps reads every quota node's step totals.
func (c *caddyCluster) steps() []nodeSteps {
	var out []nodeSteps
	for _, a := range c.admins {
		n := nodeSteps{sum: map[string]float64{}, count: map[string]float64{}}
		for name, v := range scrape(a) {
			if name == "raftquota_raft_leader" {
				n.leader = v == 1
			}
			for suffix, m := range map[string]map[string]float64{"_sum": n.sum, "_count": n.count} {
				if step, ok := strings.CutPrefix(name, "raftquota_step_duration_seconds"+suffix+`{step="`); ok {
					m[strings.TrimSuffix(step, `"}`)] = v
				}
			}
		}
		out = append(out, n)
	}
	return out
}

// stepMean is a step's mean over the cell in ms (what one occurrence
// took), over the nodes keep accepts.
func stepMean(before, after []nodeSteps, step string, keep func(nodeSteps) bool) (float64, bool) {
	var sum, n float64
	for i := range after {
		if i >= len(before) || !keep(after[i]) {
			continue
		}
		sum += after[i].sum[step] - before[i].sum[step]
		n += after[i].count[step] - before[i].count[step]
	}
	if n == 0 {
		return 0, false
	}
	return sum / n * 1000, true
}

// breakdown says where a cell's uploads spent their time, from the nodes'
// own timers: the handler's steps (on whichever node the client used) and
// the decision's (queue, forward, commit, log appends, apply), as means
// over the cell, beside the client's mean latency, clientMS.
func breakdown(before, after []nodeSteps, clientMS float64) string {
	every := func(nodeSteps) bool { return true }
	either := func(step string) (float64, bool) { return stepMean(before, after, step, every) }
	handler, ok := either("handler")
	if !ok {
		return fmt.Sprintf("per upload, mean in ms: client %.3f", clientMS)
	}
	prepare, _ := either("prepare")
	decide, _ := either("decide")
	upstream, _ := either("upstream")
	var b strings.Builder
	fmt.Fprintf(&b, "per upload, means in ms: client %.3f = outside the handler %.3f + handler %.3f (prepare %.3f, decide %.3f, upstream %.3f, the rest %.3f)",
		clientMS, clientMS-handler, handler, prepare, decide, upstream, handler-prepare-decide-upstream)
	var parts []string
	add := func(label, step string, leader bool) {
		if v, ok := stepMean(before, after, step, func(n nodeSteps) bool { return n.leader == leader }); ok {
			parts = append(parts, fmt.Sprintf("%s %.3f", label, v))
		}
	}
	add("follower's queue", "queue", false)
	add("forward", "forward", false)
	add("leader serving it", "serve_forwarded", true)
	add("leader's queue", "queue", true)
	add("commit", "commit", true)
	add("leader's log append", "log_append", true)
	add("a follower's log append", "log_append", false)
	add("apply", "apply", true)
	if len(parts) > 0 {
		fmt.Fprintf(&b, "; decide: %s", strings.Join(parts, ", "))
	}
	if len(after) > 1 {
		role := "a follower"
		if after[0].leader {
			role = "the leader"
		}
		fmt.Fprintf(&b, "; node1 (the first client's) was %s", role)
	}
	return b.String()
}
