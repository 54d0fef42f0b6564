package robustness

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

var soak = flag.Duration("soak", 0, "run TestSoak for this long (e.g. 10m); 0 skips it")

// fault is one step of a fault schedule.
type fault struct {
	name string
	do   func(c *cluster)
}

// Whom a fault hits: the leader, or one of the followers.
func leader(c *cluster) int    { return c.leader() }
func follower(c *cluster) int  { return (c.leader() + 1) % nodes }
func follower2(c *cluster) int { return (c.leader() + 2) % nodes }

// hold picks a node, breaks it, waits, and mends it.
func hold(pick func(*cluster) int, breakIt, mend func(*cluster, int), d time.Duration) func(*cluster) {
	return func(c *cluster) {
		i := pick(c)
		breakIt(c, i)
		time.Sleep(d)
		mend(c, i)
	}
}

var (
	faultKillLeader      = hold(leader, (*cluster).kill, (*cluster).start, 2*time.Second)
	faultPartitionLeader = hold(leader, (*cluster).partition, (*cluster).heal, 3*time.Second)
	faultFreezeFollower  = hold(follower, (*cluster).freeze, (*cluster).thaw, 2*time.Second)
	faultKillFollower    = hold(follower2, (*cluster).kill, (*cluster).start, time.Second)
	faultFreezeLeader    = hold(leader, (*cluster).freeze, (*cluster).thaw, 2*time.Second)
)

var shortSchedule = []fault{
	{"kill -9 the leader, restart it", faultKillLeader},
	{"partition the leader from both peers, heal", faultPartitionLeader},
	{"freeze a follower (SIGSTOP), thaw", faultFreezeFollower},
}

var allFaults = append(shortSchedule,
	fault{"kill -9 a follower, restart it", faultKillFollower},
	fault{"freeze the leader (SIGSTOP), thaw", faultFreezeLeader},
)

// gateway picks gateway k (members 3.. of a cluster with gateways).
func gateway(k int) func(*cluster) int { return func(*cluster) int { return nodes + k } }

// faultPartitionGateway cuts the first gateway off from the leader alone:
// it still reaches the followers, which cannot decide for it.
func faultPartitionGateway(c *cluster) {
	g, l := nodes, c.leader()
	c.cut(g, l)
	time.Sleep(3 * time.Second)
	c.mend(g, l)
}

// gatewaySchedule breaks gateways and voters of a cluster with two gateways.
var gatewaySchedule = []fault{
	{"kill -9 a gateway, restart it", hold(gateway(0), (*cluster).kill, (*cluster).start, 2*time.Second)},
	{"freeze a gateway (SIGSTOP), thaw", hold(gateway(1), (*cluster).freeze, (*cluster).thaw, 2*time.Second)},
	{"partition a gateway from the leader, heal", faultPartitionGateway},
	{"kill -9 the leader, restart it", faultKillLeader},
	{"freeze a follower (SIGSTOP), thaw", faultFreezeFollower},
}

// TestFaultsNeverOverAdmitNorLoseCharges is the short robustness run that
// go test ./... includes: concurrent uploads through all three nodes while
// the short fault schedule runs, then every node killed and restarted.
func TestFaultsNeverOverAdmitNorLoseCharges(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a real cluster under faults")
	}
	runFaults(t, shortSchedule, 0, 0)
}

// TestFaultsWithGateways: the same checks with uploads through three
// voters and two gateways while gateways are killed, frozen and cut off
// from the leader, and voters killed and frozen.
func TestFaultsWithGateways(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a real cluster under faults")
	}
	runFaults(t, gatewaySchedule, 0, 2)
}

// TestSoak runs random faults for -soak (go test ./robustness -run Soak -soak 10m).
func TestSoak(t *testing.T) {
	if *soak == 0 {
		t.Skip("set -soak to run")
	}
	runFaults(t, allFaults, *soak, 0)
}

// TestSoakWithGateways runs random faults on voters and gateways for -soak.
func TestSoakWithGateways(t *testing.T) {
	if *soak == 0 {
		t.Skip("set -soak to run")
	}
	runFaults(t, append(append([]fault(nil), gatewaySchedule...), allFaults...), *soak, 2)
}

func runFaults(t *testing.T, schedule []fault, duration time.Duration, gateways int) {
	c := newClusterWith(t, gateways)
	limits := map[string]int{}
	var tokens []string
	// Half the tokens run out early (the limit is tested under faults), half
	// never do (admission goes on through every fault).
	for i := 0; i < 6; i++ {
		name := fmt.Sprintf("rb-token-%d", i)
		limits[name] = 60
		if i >= 3 {
			// Enough for the whole run at ~20 uploads/s per token.
			limits[name] = max(400, int(duration.Seconds())*20)
		}
		tokens = append(tokens, name)
		c.createToken(name, limits[name])
	}
	w := workload{tokens: tokens, clients: 8, pace: 40 * time.Millisecond}
	for i := range c.members {
		w.urls = append(w.urls, c.httpURL(i))
	}

	ctx, stop := context.WithCancel(context.Background())
	var ops []op
	done := make(chan struct{})
	go func() { ops = w.run(ctx); close(done) }()

	time.Sleep(time.Second)
	rounds := 0
	deadline := time.Now().Add(duration)
	for {
		for _, f := range schedule {
			if duration > 0 {
				f = schedule[rand.IntN(len(schedule))]
			}
			t.Logf("fault: %s", f.name)
			f.do(c)
			rounds++
			time.Sleep(1500 * time.Millisecond)
		}
		if time.Now().After(deadline) {
			break
		}
	}
	stop()
	<-done

	// Durability: kill every member at once and bring them all back.
	t.Logf("fault: kill -9 all %d members, restart all", c.members)
	for i := range c.members {
		c.kill(i)
	}
	for i := range c.members {
		c.start(i)
	}
	c.waitHealthy(60 * time.Second)

	v := check(t, ops, limits)
	t.Logf("%d fault rounds; %s", rounds, v)
	if v.allowed == 0 {
		t.Fatal("nothing was admitted: the run proved nothing")
	}
	byDoor := make([]int, c.members)
	for _, o := range ops {
		if o.out == allowed {
			byDoor[o.via]++
		}
	}
	for i, n := range byDoor {
		if n == 0 {
			t.Errorf("nothing was admitted through %s", c.name(i))
		}
	}
	t.Logf("admitted through node1-3 then gateways: %v", byDoor)
	if !v.ok() {
		t.Errorf("history not acceptable: %s; visualization: %s", v, v.visualization)
	}
	for _, tok := range tokens {
		answered := 0
		for _, o := range ops {
			if o.token == tok && o.out == allowed {
				answered++
			}
		}
		used := c.usage(tok)
		stored := c.stored("rb", tok+"-")
		if used > limits[tok] {
			t.Errorf("%s: usage %d over limit %d", tok, used, limits[tok])
		}
		if used < answered {
			t.Errorf("%s: %d uploads answered allowed but usage after restart is %d (lost charges)", tok, answered, used)
		}
		if stored < answered || stored > used {
			t.Errorf("%s: %d objects stored; want between %d answered allowed and %d charged", tok, stored, answered, used)
		}
	}
}

// seedGate is the system raftquota replaces: read the usage, compare, write
// it back, as separate steps with storage latency between them.
type seedGate struct {
	mu     sync.Mutex
	used   map[string]int
	limits map[string]int
}

func (g *seedGate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	tok := r.Header.Get("X-Quota-Token")
	g.mu.Lock()
	used := g.used[tok] // read
	g.mu.Unlock()
	time.Sleep(2 * time.Millisecond) // a storage round trip
	if used >= g.limits[tok] {       // check
		w.WriteHeader(http.StatusTooManyRequests)
		return
	}
	time.Sleep(2 * time.Millisecond)
	g.mu.Lock()
	g.used[tok] = used + 1 // write back
	g.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

// TestCheckerCatchesReadCheckWrite runs the same workload and checker
// against the seed system's read-check-write gate: the checker must report
// it. Without this, a green robustness run would prove nothing.
func TestCheckerCatchesReadCheckWrite(t *testing.T) {
	limits := map[string]int{"seed-a": 20, "seed-b": 20}
	gate := &seedGate{used: map[string]int{}, limits: limits}
	srv := httptest.NewServer(http.StripPrefix("/upload", gate))
	defer srv.Close()
	w := workload{urls: []string{srv.URL, srv.URL, srv.URL}, tokens: []string{"seed-a", "seed-b"}, clients: 8, pace: time.Millisecond}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	ops := w.run(ctx)
	v := check(t, ops, limits)
	t.Logf("read-check-write gate: %s", v)
	if v.ok() {
		t.Fatal("the checker passed a read-check-write gate; it cannot be trusted")
	}
	if len(v.overAdmitted) == 0 || v.linearizable != porcupine.Illegal {
		t.Fatalf("want both over-admission and a linearizability violation, got %s", v)
	}
	if !strings.HasSuffix(v.visualization, ".html") {
		t.Fatalf("no visualization written: %q", v.visualization)
	}
	t.Logf("visualization of the violation: %s (removed after the test)", v.visualization)
	t.Cleanup(func() { os.RemoveAll(filepath.Dir(v.visualization)) })
}
