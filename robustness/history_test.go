package robustness

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

type outcome int

const (
	allowed outcome = iota
	denied
	// unknown: the request was sent but no decision came back (timeout,
	// broken connection, 503). It may or may not have been charged.
	unknown
)

func (o outcome) String() string { return [...]string{"allowed", "denied", "unknown"}[o] }

// op is one upload as a client saw it.
type op struct {
	client int
	via    int // the front door (index in workload.urls)
	token  string
	object string
	call   int64 // ns since the workload started
	ret    int64
	out    outcome
	status int
}

// workload uploads from many clients through the given front doors until
// ctx ends, and returns every operation.
type workload struct {
	urls    []string // one per node; clients spread over them
	tokens  []string
	clients int
	pace    time.Duration
}

func (w workload) run(ctx context.Context) []op {
	start := time.Now()
	var mu sync.Mutex
	var ops []op
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 4 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	for c := 0; c < w.clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(c), 42))
			for seq := 0; ctx.Err() == nil; seq++ {
				tok := w.tokens[rng.IntN(len(w.tokens))]
				obj := fmt.Sprintf("%s-c%02d-%06d", tok, c, seq)
				via := (c + seq) % len(w.urls)
				url := w.urls[via] + "/upload/rb/" + obj
				o := op{client: c, via: via, token: tok, object: obj}
				o.upload(client, url, start)
				mu.Lock()
				ops = append(ops, o)
				mu.Unlock()
				select {
				case <-ctx.Done():
				case <-time.After(w.pace):
				}
			}
		}(c)
	}
	wg.Wait()
	return ops
}

// upload PUTs o's object to url with o's token and records when it was
// called and answered (since start) and what the answer means.
func (o *op) upload(client *http.Client, url string, start time.Time) {
	o.call = int64(time.Since(start))
	req, _ := http.NewRequest("PUT", url, strings.NewReader(o.object))
	req.Header.Set("X-Quota-Token", o.token)
	resp, err := client.Do(req)
	o.ret = int64(time.Since(start))
	switch {
	case err != nil:
		o.out = unknown
	case resp.StatusCode == http.StatusOK:
		o.out = allowed
	case resp.StatusCode == http.StatusTooManyRequests:
		o.out = denied
	default:
		o.out = unknown
	}
	if resp != nil {
		o.status = resp.StatusCode
		resp.Body.Close()
	}
}

// consumeInput is what porcupine sees of one upload.
type consumeInput struct {
	token string
	limit int
}

// quotaModel is the specification: a token admits an upload while fewer
// than limit have been admitted. The state is the number admitted. An
// upload with an unknown outcome may or may not have taken effect.
var quotaModel = porcupine.NondeterministicModel{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		by := map[string][]porcupine.Operation{}
		var keys []string
		for _, o := range history {
			k := o.Input.(consumeInput).token
			if _, ok := by[k]; !ok {
				keys = append(keys, k)
			}
			by[k] = append(by[k], o)
		}
		sort.Strings(keys)
		out := make([][]porcupine.Operation, len(keys))
		for i, k := range keys {
			out[i] = by[k]
		}
		return out
	},
	Init: func() []any { return []any{0} },
	Step: func(state, input, output any) []any {
		used, in := state.(int), input.(consumeInput)
		switch output.(outcome) {
		case allowed:
			if used < in.limit {
				return []any{used + 1}
			}
			return nil
		case denied:
			if used >= in.limit {
				return []any{used}
			}
			return nil
		default:
			if used < in.limit {
				return []any{used, used + 1}
			}
			return []any{used}
		}
	},
	Hash: func(state any) uint64 { return uint64(state.(int)) },
	DescribeOperation: func(input, output any) string {
		return fmt.Sprintf("consume(%s) -> %s", input.(consumeInput).token, output.(outcome))
	},
	DescribeState: func(state any) string { return fmt.Sprintf("%d admitted", state.(int)) },
}

// verdict is what the checker found.
type verdict struct {
	ops, allowed, unknown int
	overAdmitted          []string // tokens admitted past their limit
	linearizable          porcupine.CheckResult
	visualization         string // written when not linearizable
	checkTime             time.Duration
}

func (v verdict) String() string {
	return fmt.Sprintf("%d ops (%d allowed, %d ambiguous), linearizable=%s in %s, over-admitted=%v",
		v.ops, v.allowed, v.unknown, v.linearizable, v.checkTime.Round(time.Millisecond), v.overAdmitted)
}

func (v verdict) ok() bool { return len(v.overAdmitted) == 0 && v.linearizable == porcupine.Ok }

// check runs both checks on a history: per-token admitted counts against
// the limits, and linearizability against quotaModel with porcupine.
func check(t testing.TB, ops []op, limits map[string]int) verdict {
	v := verdict{ops: len(ops)}
	perToken := map[string]int{}
	history := make([]porcupine.Operation, 0, len(ops))
	for _, o := range ops {
		ret := o.ret
		switch o.out {
		case allowed:
			v.allowed++
			perToken[o.token]++
		case unknown:
			v.unknown++
			ret = math.MaxInt64 // it may take effect at any time after the call
		}
		history = append(history, porcupine.Operation{
			ClientId: o.client, Input: consumeInput{token: o.token, limit: limits[o.token]},
			Call: o.call, Output: o.out, Return: ret,
		})
	}
	for tok, n := range perToken {
		if n > limits[tok] {
			v.overAdmitted = append(v.overAdmitted, fmt.Sprintf("%s: %d > %d", tok, n, limits[tok]))
		}
	}
	sort.Strings(v.overAdmitted)
	start := time.Now()
	model := quotaModel.ToModel()
	res, info := porcupine.CheckOperationsVerbose(model, history, 2*time.Minute)
	v.checkTime = time.Since(start)
	v.linearizable = res
	if res == porcupine.Illegal {
		dir, err := os.MkdirTemp("", "raftquota-porcupine-")
		if err == nil {
			path := filepath.Join(dir, "history.html")
			if err := porcupine.VisualizePath(model, info, path); err == nil {
				v.visualization = path
			}
		}
	}
	return v
}
