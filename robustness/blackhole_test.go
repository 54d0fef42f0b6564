package robustness

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"
)

// Partitions that drop packets, on the real binary. Every directed link
// between two members goes through its own proxy port (the harness's dial
// lines), so an iptables rule that drops the packets of one port
// black-holes exactly one direction of connections: SYNs go unanswered,
// open connections hang until their timeouts, nothing is refused. This is
// the partition a cut cable or a firewall makes, unlike the proxy's
// block, which refuses and closes at once.

// firewall holds the test's own iptables chain, jumped to from OUTPUT.
type firewall struct {
	t     *testing.T
	chain string
	ports map[string]bool
}

func newFirewall(t *testing.T) *firewall {
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Skip("iptables is not installed (apt-get install iptables); black-hole partitions need it")
	}
	fw := &firewall{t: t, chain: fmt.Sprintf("RQ-BH-%d", os.Getpid()), ports: map[string]bool{}}
	if out, err := exec.Command("iptables", "-N", fw.chain).CombinedOutput(); err != nil {
		t.Skipf("iptables cannot run here (needs root and netfilter): %v: %s", err, out)
	}
	if out, err := exec.Command("iptables", "-I", "OUTPUT", "-j", fw.chain).CombinedOutput(); err != nil {
		exec.Command("iptables", "-X", fw.chain).Run()
		t.Skipf("iptables cannot run here: %v: %s", err, out)
	}
	t.Cleanup(func() {
		exec.Command("iptables", "-D", "OUTPUT", "-j", fw.chain).Run()
		exec.Command("iptables", "-F", fw.chain).Run()
		exec.Command("iptables", "-X", fw.chain).Run()
	})
	return fw
}

func (fw *firewall) rule(op, port string) {
	for _, dir := range []string{"--dport", "--sport"} {
		if out, err := exec.Command("iptables", op, fw.chain, "-o", "lo", "-p", "tcp", dir, port, "-j", "DROP").CombinedOutput(); err != nil {
			fw.t.Fatalf("iptables %s %s %s: %v: %s", op, dir, port, err, out)
		}
	}
}

// drop black-holes every packet to and from the proxy at addr.
func (fw *firewall) drop(addr string) {
	_, port, _ := net.SplitHostPort(addr)
	if !fw.ports[port] {
		fw.rule("-A", port)
		fw.ports[port] = true
	}
}

func (fw *firewall) pass(addr string) {
	_, port, _ := net.SplitHostPort(addr)
	if fw.ports[port] {
		fw.rule("-D", port)
		delete(fw.ports, port)
	}
}

// isolate black-holes every link of member i; heal mends them.
func (fw *firewall) isolate(c *cluster, i int) {
	for j := range c.members {
		if j != i {
			fw.drop(c.proxies[i][j].addr())
			fw.drop(c.proxies[j][i].addr())
		}
	}
}

func (fw *firewall) healAll(c *cluster) {
	for i := range c.members {
		for j := range c.members {
			if i != j {
				fw.pass(c.proxies[i][j].addr())
			}
		}
	}
}

// window is one fault: when, and which member it cut off (-1: none whole).
type window struct {
	name     string
	from, to int64 // ns since the workload started
	cut      int
}

// TestBlackHolePartitions: concurrent uploads through all three nodes of
// the three-node example while iptables black-holes the leader, a
// follower, one direction of a link, and a flapping node. No upload is
// admitted past a limit, no acknowledged charge is lost, the history is
// linearizable, uploads through the majority keep succeeding, and the
// cut-off node answers 503 within its timeout.
func TestBlackHolePartitions(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a real cluster under partitions")
	}
	fw := newFirewall(t)
	c := newCluster(t)
	limits := map[string]int{}
	var tokens []string
	for i := range 6 {
		name := fmt.Sprintf("bh-token-%d", i)
		limits[name] = 60
		if i >= 3 {
			limits[name] = 1000
		}
		tokens = append(tokens, name)
		c.createToken(name, limits[name])
	}
	w := workload{tokens: tokens, clients: 8, pace: 40 * time.Millisecond}
	for i := range nodes {
		w.urls = append(w.urls, c.httpURL(i))
	}
	ctx, stop := context.WithCancel(context.Background())
	start := time.Now()
	var ops []op
	done := make(chan struct{})
	go func() { ops = w.run(ctx); close(done) }()
	since := func() int64 { return int64(time.Since(start)) }

	var windows []window
	hold := func(name string, cut int, breakIt func(), d time.Duration) {
		t.Logf("fault: %s", name)
		wd := window{name: name, from: since(), cut: cut}
		breakIt()
		time.Sleep(d)
		fw.healAll(c)
		wd.to = since()
		windows = append(windows, wd)
		time.Sleep(2 * time.Second)
	}
	time.Sleep(time.Second)
	l := c.leader()
	hold("black-hole the leader", l, func() { fw.isolate(c, l) }, 4*time.Second)
	c.waitHealthy(30 * time.Second)
	f := (c.leader() + 1) % nodes
	hold("black-hole a follower", f, func() { fw.isolate(c, f) }, 4*time.Second)
	c.waitHealthy(30 * time.Second)
	l = c.leader()
	f = (l + 1) % nodes
	hold("one way: the leader cannot reach a follower, the follower reaches the leader", -1, func() { fw.drop(c.proxies[l][f].addr()) }, 4*time.Second)
	c.waitHealthy(30 * time.Second)
	for range 3 {
		l = c.leader()
		hold("flapping: the leader black-holed for 1.5 s", l, func() { fw.isolate(c, l) }, 1500*time.Millisecond)
		c.waitHealthy(30 * time.Second)
	}
	stop()
	<-done
	c.waitHealthy(30 * time.Second)

	v := check(t, ops, limits)
	t.Logf("%s", v)
	if v.allowed == 0 {
		t.Fatal("nothing was admitted: the run proved nothing")
	}
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
		if used := c.usage(tok); used > limits[tok] || used < answered {
			t.Errorf("%s: usage %d; %d answered allowed, limit %d", tok, used, answered, limits[tok])
		}
	}
	reportWindows(t, ops, windows)
}

// reportWindows says, for each fault, how the clients fared: the longest
// stretch without a 200 through the majority's nodes, the first 200 after
// the fault began, and how long the cut-off node took to refuse.
func reportWindows(t *testing.T, ops []op, windows []window) {
	sort.Slice(ops, func(i, j int) bool { return ops[i].ret < ops[j].ret })
	const timeout = 3 * time.Second // the example's handler timeout (the default)
	for _, wd := range windows {
		var gap, last int64 = 0, wd.from
		firstOK := int64(-1)
		var slowest, slowestOK time.Duration
		var cutAnswers, majorityFailed []string
		for _, o := range ops {
			if o.ret < wd.from || o.call > wd.to+int64(2*time.Second) {
				continue
			}
			if o.via == wd.cut {
				if o.call >= wd.from && o.call <= wd.to && o.out != allowed {
					d := time.Duration(o.ret - o.call)
					slowest = max(slowest, d)
					cutAnswers = append(cutAnswers, fmt.Sprint(o.status))
				}
				continue
			}
			if o.call >= wd.from && o.call <= wd.to && o.out == unknown {
				majorityFailed = append(majorityFailed, fmt.Sprint(o.status))
			}
			if o.out == allowed {
				if o.call >= wd.from {
					slowestOK = max(slowestOK, time.Duration(o.ret-o.call))
				}
				if firstOK < 0 && o.call >= wd.from {
					firstOK = o.ret - wd.from
				}
				gap = max(gap, o.ret-last)
				last = o.ret
			}
		}
		// The stretch counts client time too: a client waiting on the
		// cut-off node's 503 sends nothing to the majority meanwhile.
		t.Logf("%s: majority side: first 200 %v after the fault began, slowest 200 %v, %d without a decision (%s), longest stretch without a 200 %v; cut-off node: %d refusals (%s), slowest %v",
			wd.name, time.Duration(firstOK).Round(time.Millisecond), slowestOK.Round(time.Millisecond), len(majorityFailed), summarize(majorityFailed),
			time.Duration(gap).Round(time.Millisecond), len(cutAnswers), summarize(cutAnswers), slowest.Round(time.Millisecond))
		if slowest > timeout+time.Second {
			t.Errorf("%s: the cut-off node took %v to refuse, over its %v timeout", wd.name, slowest, timeout)
		}
		if firstOK < 0 {
			t.Errorf("%s: no upload through the majority succeeded", wd.name)
		}
	}
}

func summarize(statuses []string) string {
	n := map[string]int{}
	for _, s := range statuses {
		n[s]++
	}
	var out []string
	for s, k := range n {
		out = append(out, fmt.Sprintf("%s×%d", s, k))
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}
