package caddymodule

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/raftquota/raftquota/raftstore"
	"go.uber.org/zap"
)

// Collectors are package-level so counts survive config reloads; Caddy's
// registry is new on each config load, so every load registers them again.
var (
	decisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "raftquota",
		Name:      "decisions_total",
		Help:      "Quota decisions by result (allowed, denied, dry_run, unavailable), denial reason, and the quota that refused (token or pool).",
	}, []string{"result", "reason", "quota"})
	consumeSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "raftquota",
		Name:      "consume_duration_seconds",
		Help:      "Time to get a decision from the cluster, retries included.",
		Buckets:   []float64{.0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	})
	refunds = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "raftquota",
		Name:      "refunds_total",
		Help:      "Charges given back because the upload failed.",
	})
	batchSizes = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "raftquota",
		Name:      "batch_size",
		Help:      "Consumes per Raft log entry (forwarded=false) or per forwarded RPC (forwarded=true).",
		Buckets:   prometheus.ExponentialBuckets(1, 2, 11),
	}, []string{"forwarded"})
	raftLeader = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "raftquota",
		Name:      "raft_leader",
		Help:      "1 if this node is the Raft leader, else 0.",
	}, func() float64 {
		if s := currentStore(); s != nil && s.IsLeader() {
			return 1
		}
		return 0
	})
	leaderChanges = prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: "raftquota",
		Name:      "raft_leader_changes_total",
		Help:      "Leader changes this node has observed since it started.",
	}, func() float64 {
		if s := currentStore(); s != nil {
			return float64(s.Stats().LeaderChanges)
		}
		return 0
	})
	healthy = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "raftquota",
		Name:      "healthy",
		Help:      "1 when this node can take part in decisions (what /quota/health answers 200 for), else 0.",
	}, func() float64 {
		if s := currentStore(); s != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if s.Health(ctx) == nil {
				return 1
			}
		}
		return 0
	})
	halted = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "raftquota",
		Name:      "halted",
		Help:      "1 when this node stopped applying the log (an entry it cannot read), else 0.",
	}, func() float64 {
		if s := currentStore(); s != nil && s.Halted() != nil {
			return 1
		}
		return 0
	})
	appliedIndex = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "raftquota",
		Name:      "applied_index",
		Help:      "The index of the last log entry this node applied; a node far below the others lags.",
	}, func() float64 {
		if s := currentStore(); s != nil {
			return float64(s.Stats().AppliedIndex)
		}
		return 0
	})
	pendingRefunds = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "raftquota",
		Name:      "refunds_pending",
		Help:      "Refunds this node keeps and retries because the leader could not be reached.",
	}, func() float64 {
		if s := currentStore(); s != nil {
			return float64(s.Stats().PendingRefunds)
		}
		return 0
	})
	pendingEvents = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "raftquota",
		Name:      "events_pending",
		Help:      "Threshold events waiting in the replicated outbox for the leader to deliver them.",
	}, func() float64 {
		if s := currentStore(); s != nil {
			return float64(s.Stats().PendingEvents)
		}
		return 0
	})
	deliveredEvents = prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: "raftquota",
		Name:      "events_delivered_total",
		Help:      "Threshold events this node delivered as leader (logged, and posted to the webhook when one is set).",
	}, func() float64 {
		if s := currentStore(); s != nil {
			return float64(s.Stats().EventsDelivered)
		}
		return 0
	})
	failedEvents = prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: "raftquota",
		Name:      "event_delivery_failures_total",
		Help:      "Failed delivery rounds of threshold events on this node (the webhook did not answer 2xx); they are retried.",
	}, func() float64 {
		if s := currentStore(); s != nil {
			return float64(s.Stats().EventsFailed)
		}
		return 0
	})
	openUploads = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "raftquota",
		Name:      "multipart_uploads",
		Help:      "Multipart uploads the cluster holds a charge for (reserved, open or completing), in this node's applied state.",
	}, func() float64 {
		if s := currentStore(); s != nil {
			return float64(s.Uploads().Open())
		}
		return 0
	})
	logChecks = func() []prometheus.Collector {
		var out []prometheus.Collector
		for _, result := range []string{"ok", "failed", "skipped"} {
			out = append(out, prometheus.NewCounterFunc(prometheus.CounterOpts{
				Namespace:   "raftquota",
				Name:        "log_checks_total",
				Help:        "Checks of this node's Raft log against the leader's checksum, one per log checkpoint, by result: ok, failed (the log differs from what the leader wrote, or could not be read back; said at ERROR), skipped (the range is no longer all on this node).",
				ConstLabels: prometheus.Labels{"result": result},
			}, func() float64 {
				s := currentStore()
				if s == nil {
					return 0
				}
				st := s.Stats()
				return float64(map[string]uint64{"ok": st.LogChecksOK, "failed": st.LogChecksFailed, "skipped": st.LogChecksSkipped}[result])
			}))
		}
		return out
	}()
	forwarded = prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: "raftquota",
		Name:      "forwarded_operations_total",
		Help:      "Operations this node forwarded to the leader.",
	}, func() float64 {
		if s := currentStore(); s != nil {
			return float64(s.Stats().Forwarded)
		}
		return 0
	})
)

func registerMetrics(ctx caddy.Context) {
	reg := ctx.GetMetricsRegistry()
	if reg == nil {
		return
	}
	for _, c := range append([]prometheus.Collector{decisions, consumeSeconds, refunds, batchSizes, stepCollector{}, raftLeader, leaderChanges, forwarded, openUploads, pendingEvents, deliveredEvents, failedEvents, healthy, halted, appliedIndex, pendingRefunds}, logChecks...) {
		if err := reg.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				ctx.Logger().Warn("registering quota metric", zap.Error(err))
			}
		}
	}
}

func countDecision(result, reason string) { countDenial(result, reason, "") }

// countDenial counts a decision that quota ("token", "pool:NAME", or ""
// for a refusal before any quota was asked) made; the label holds the
// kind of quota only, never a pool's name.
func countDenial(result, reason, quota string) {
	kind := ""
	switch {
	case strings.HasPrefix(quota, "pool:"):
		kind = "pool"
	case result != "allowed" && reason != "":
		kind = "token"
	}
	decisions.WithLabelValues(result, reason, kind).Inc()
}

func observeBatch(n int, fwd bool) {
	label := "false"
	if fwd {
		label = "true"
	}
	batchSizes.WithLabelValues(label).Observe(float64(n))
}

// handlerStep is one of the handler's own timed steps.
type handlerStep int

const (
	stepPrepare handlerStep = iota
	stepDecide
	stepUpstream
	stepHandler
)

// stepTotals are, per step (the handler's, then the node's), the time
// spent in it and how often it was taken: two atomic adds on the decision
// path, cheaper there than a histogram's Observe (BenchmarkHandler;
// BENCHMARKS.md, eighth session).
var stepTotals = make([]struct{ ns, n atomic.Uint64 }, len(stepHandlerNames)+len(stepNodeNames))

var (
	stepHandlerNames = []string{"prepare", "decide", "upstream", "handler"}
	stepNodeNames    = func() []string {
		var names []string
		for _, st := range raftstore.Steps() {
			names = append(names, st.String())
		}
		return names
	}()
	stepDesc = prometheus.NewDesc("raftquota_step_duration_seconds",
		"Time in each step of a gated request (a summary: _sum and _count, no quantiles). The handler's: prepare (from the handler's start to asking for a decision), decide (the decision, as consume_duration_seconds), upstream (the next handler: the proxy and the backend), handler (all of it). The node's: queue (a consume waiting for its batch), forward (a follower's round trip to the leader per batch), serve_forwarded (the leader's side of it), commit (one log entry through Raft on the leader), apply (the state machine, per entry), log_append (one write to the Raft log).",
		[]string{"step"}, nil)
)

func observeHandlerStep(s handlerStep, d time.Duration) { addStep(int(s), d) }

// observeNodeStep is the node's Config.OnStep.
func observeNodeStep(s raftstore.Step, d time.Duration) { addStep(len(stepHandlerNames)+int(s), d) }

func addStep(i int, d time.Duration) {
	stepTotals[i].ns.Add(uint64(d))
	stepTotals[i].n.Add(1)
}

// stepCollector exposes stepTotals as one summary per step.
type stepCollector struct{}

func (stepCollector) Describe(ch chan<- *prometheus.Desc) { ch <- stepDesc }

func (stepCollector) Collect(ch chan<- prometheus.Metric) {
	for i, name := range slices.Concat(stepHandlerNames, stepNodeNames) {
		t := &stepTotals[i]
		ch <- prometheus.MustNewConstSummary(stepDesc, t.n.Load(), time.Duration(t.ns.Load()).Seconds(), nil, name)
	}
}
