package robustness

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/raftquota/raftquota/internal/testport"
)

// binary is the real cmd/caddy, built once for the package by TestMain.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "raftquota-robustness-bin-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "caddy")
	build := exec.Command("go", "build", "-o", binary, "../cmd/caddy")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building caddy:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// nodes is how many voters a cluster has.
const nodes = 3

// cluster is three real Caddy processes with raftquota (the voters), any
// number of gateways, and the storage backend, configured from
// examples/three-node with every port moved to a free one and a fault
// proxy on every directed Raft link between two members. Members 0-2 are
// the voters node1-3; members 3.. are the gateways gw1...
type cluster struct {
	t       *testing.T
	dir     string
	ports   map[string]string // contract port (or gwN-http, -admin, -raft) -> free port
	members int
	proxies [][]*faultProxy // [from][to]
	procs   []*exec.Cmd     // the members, then storage
	logs    []*os.File
}

// freePort returns a port nothing listens on (see internal/testport).
func freePort(t testing.TB) string { return fmt.Sprint(testport.Free()) }

func newCluster(t *testing.T) *cluster { return newClusterWith(t, 0) }

// newClusterWith starts the three voters and then gateways gateways.
func newClusterWith(t *testing.T, gateways int) *cluster {
	c := &cluster{t: t, dir: t.TempDir(), ports: map[string]string{"9000": freePort(t)}, members: nodes + gateways}
	for i := 1; i <= nodes; i++ {
		for _, p := range []string{"808", "202", "700"} {
			c.ports[fmt.Sprintf("%s%d", p, i)] = freePort(t)
		}
	}
	for g := 1; g <= gateways; g++ {
		for _, p := range []string{"http", "admin", "raft"} {
			c.ports[fmt.Sprintf("gw%d-%s", g, p)] = freePort(t)
		}
	}
	c.proxies = make([][]*faultProxy, c.members)
	c.procs = make([]*exec.Cmd, c.members+1)
	c.logs = make([]*os.File, c.members+1)
	for i := range c.members {
		c.proxies[i] = make([]*faultProxy, c.members)
		for j := range c.members {
			if i != j {
				c.proxies[i][j] = newFaultProxy(t, "127.0.0.1:"+c.raftPort(j))
			}
		}
	}
	for i := range c.members {
		c.writeConfig(i)
	}
	c.writeFile("storage.Caddyfile", c.template("storage.Caddyfile"))
	certArgs := []string{"quota", "certs", "--dir", filepath.Join(c.dir, "data", "certs")}
	for i := range c.members {
		certArgs = append(certArgs, c.name(i)+"=127.0.0.1")
	}
	if out, err := exec.Command(binary, certArgs...).CombinedOutput(); err != nil {
		t.Fatalf("caddy quota certs: %v\n%s", err, out)
	}
	t.Cleanup(c.stopAll)
	c.startStorage()
	for i := 0; i < nodes; i++ {
		c.start(i)
	}
	c.waitHealthy(30 * time.Second)
	for i := nodes; i < c.members; i++ {
		c.start(i)
	}
	c.waitGateways(30 * time.Second)
	return c
}

// name is member i's node id: node1-3, then gw1...
func (c *cluster) name(i int) string {
	if i < nodes {
		return fmt.Sprintf("node%d", i+1)
	}
	return fmt.Sprintf("gw%d", i-nodes+1)
}

func (c *cluster) port(i int, contract, gateway string) string {
	if i < nodes {
		return c.ports[fmt.Sprintf("%s%d", contract, i+1)]
	}
	return c.ports[fmt.Sprintf("gw%d-%s", i-nodes+1, gateway)]
}

func (c *cluster) raftPort(i int) string { return c.port(i, "700", "raft") }

func (c *cluster) template(name string) string {
	b, err := os.ReadFile(filepath.Join("..", "examples", "three-node", name))
	if err != nil {
		c.t.Fatal(err)
	}
	s := string(b)
	return movePorts(s, c.ports)
}

var portRef = regexp.MustCompile(`:(\d{4,5})\b`)

// movePorts replaces every ":PORT" in s whose port is a key of ports with
// its value, in one pass: a port already replaced is never matched again
// (one replaced by 20236 must not then match ":2023").
func movePorts(s string, ports map[string]string) string {
	return portRef.ReplaceAllStringFunc(s, func(m string) string {
		if to, ok := ports[m[1:]]; ok {
			return ":" + to
		}
		return m
	})
}

func (c *cluster) writeFile(name, content string) {
	if err := os.WriteFile(filepath.Join(c.dir, name), []byte(content), 0o644); err != nil {
		c.t.Fatal(err)
	}
}

// writeConfig makes member i dial every other member through its proxy. A
// gateway's config is node1's with the gateway's id, ports, files and
// role: its peer lines are the voters.
func (c *cluster) writeConfig(i int) {
	s := c.template("node1.Caddyfile")
	if i < nodes {
		s = c.template(fmt.Sprintf("node%d.Caddyfile", i+1))
	} else {
		g := c.name(i)
		for _, r := range [][2]string{
			{"node_id node1", "node_id " + g + "\n\t\trole gateway"},
			{"./data/node1/", "./data/" + g + "/"},
			{"raft_address 127.0.0.1:" + c.ports["7001"], "raft_address 127.0.0.1:" + c.raftPort(i)},
			{"admin 127.0.0.1:" + c.ports["2021"], "admin 127.0.0.1:" + c.port(i, "202", "admin")},
			{":" + c.ports["8081"] + " {", ":" + c.port(i, "808", "http") + " {"},
			{"certs/node1", "certs/" + g},
		} {
			if !strings.Contains(s, r[0]) {
				c.t.Fatalf("node1.Caddyfile has no %q to make a gateway's config from", r[0])
			}
			s = strings.ReplaceAll(s, r[0], r[1])
		}
	}
	var dials strings.Builder
	for j := range c.members {
		if j != i {
			fmt.Fprintf(&dials, "\t\tdial %s %s\n", c.name(j), c.proxies[i][j].addr())
		}
	}
	marker := fmt.Sprintf("\t\tpeer node3 127.0.0.1:%s\n", c.ports["7003"])
	if !strings.Contains(s, marker) {
		c.t.Fatalf("%s's Caddyfile has no peer node3 line to put dial lines after", c.name(i))
	}
	s = strings.Replace(s, marker, marker+dials.String(), 1)
	c.writeFile(c.name(i)+".Caddyfile", s)
}

func (c *cluster) run(slot int, config string) {
	cmd := exec.Command(binary, "run", "--config", filepath.Join(c.dir, config), "--adapter", "caddyfile")
	cmd.Dir = c.dir
	cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+filepath.Join(c.dir, "xdg"), "XDG_CONFIG_HOME="+filepath.Join(c.dir, "xdg"))
	if c.logs[slot] == nil {
		f, err := os.Create(filepath.Join(c.dir, config+".log"))
		if err != nil {
			c.t.Fatal(err)
		}
		c.logs[slot] = f
	}
	cmd.Stdout, cmd.Stderr = c.logs[slot], c.logs[slot]
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.procs[slot] = cmd
}

func (c *cluster) startStorage() { c.run(c.members, "storage.Caddyfile") }

func (c *cluster) start(i int) { c.run(i, c.name(i)+".Caddyfile") }

// kill stops node i with SIGKILL: no leadership transfer, no clean close.
func (c *cluster) kill(i int) {
	if p := c.procs[i]; p != nil {
		p.Process.Kill()
		p.Wait()
		c.procs[i] = nil
	}
}

func (c *cluster) restart(i int) {
	c.kill(i)
	c.start(i)
}

func (c *cluster) freeze(i int) { c.procs[i].Process.Signal(syscall.SIGSTOP) }
func (c *cluster) thaw(i int)   { c.procs[i].Process.Signal(syscall.SIGCONT) }

// partition cuts member i off from every other member, in both directions.
func (c *cluster) partition(i int) {
	for j := range c.members {
		if j != i {
			c.cut(i, j)
		}
	}
}

func (c *cluster) heal(i int) {
	for j := range c.members {
		if j != i {
			c.mend(i, j)
		}
	}
}

// cut blocks the link between members i and j, both ways; mend unblocks it.
func (c *cluster) cut(i, j int)  { c.proxies[i][j].block(); c.proxies[j][i].block() }
func (c *cluster) mend(i, j int) { c.proxies[i][j].unblock(); c.proxies[j][i].unblock() }

func (c *cluster) stopAll() {
	for i, p := range c.procs {
		if p == nil {
			continue
		}
		p.Process.Signal(syscall.SIGCONT)
		p.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			p.Process.Kill()
			<-done
		}
		c.procs[i] = nil
	}
	for i, f := range c.logs {
		if f == nil {
			continue
		}
		f.Close()
		if c.t.Failed() {
			b, _ := os.ReadFile(f.Name())
			if len(b) > 4000 {
				b = b[len(b)-4000:]
			}
			c.t.Logf("--- log of process %d (tail) ---\n%s", i, b)
		}
	}
}

func (c *cluster) httpURL(i int) string  { return "http://127.0.0.1:" + c.port(i, "808", "http") }
func (c *cluster) adminURL(i int) string { return "http://127.0.0.1:" + c.port(i, "202", "admin") }
func (c *cluster) storageURL() string    { return "http://127.0.0.1:" + c.ports["9000"] }

type clusterInfo struct {
	Leader string `json:"leader"`
	Nodes  []struct {
		ID    string `json:"id"`
		Role  string `json:"role"`
		State string `json:"state"`
	} `json:"nodes"`
}

func (c *cluster) info(i int) (clusterInfo, error) { return clusterAt(c.adminURL(i)) }

// clusterAt asks the node whose admin API is at adminURL for the cluster.
func clusterAt(adminURL string) (clusterInfo, error) {
	var ci clusterInfo
	cl := http.Client{Timeout: 2 * time.Second}
	resp, err := cl.Get(adminURL + "/quota/cluster")
	if err != nil {
		return ci, err
	}
	defer resp.Body.Close()
	return ci, json.NewDecoder(resp.Body).Decode(&ci)
}

// leader returns the index of the node every live node agrees leads.
func (c *cluster) leader() int {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		for i := 0; i < nodes; i++ {
			if c.procs[i] == nil {
				continue
			}
			if ci, err := c.info(i); err == nil && ci.Leader != "" {
				var n int
				fmt.Sscanf(ci.Leader, "node%d", &n)
				return n - 1
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.t.Fatal("no leader")
	return -1
}

// waitHealthy waits until every voter reports all three voters reachable.
func (c *cluster) waitHealthy(d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		healthy := 0
		for i := 0; i < nodes; i++ {
			ci, err := c.info(i)
			if err != nil || ci.Leader == "" {
				continue
			}
			voters := 0
			ok := true
			for _, n := range ci.Nodes {
				if n.Role == "gateway" {
					continue
				}
				voters++
				ok = ok && (n.State == "Leader" || n.State == "Follower")
			}
			ok = ok && voters == nodes
			if ok {
				healthy++
			}
		}
		if healthy == nodes {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.t.Fatal("cluster did not become healthy")
}

// waitGateways waits until every gateway is a member and knows the leader.
func (c *cluster) waitGateways(d time.Duration) {
	deadline := time.Now().Add(d)
	for i := nodes; i < c.members; i++ {
		for {
			ci, err := c.info(i)
			member := false
			for _, n := range ci.Nodes {
				member = member || n.ID == c.name(i)
			}
			if err == nil && ci.Leader != "" && member {
				break
			}
			if time.Now().After(deadline) {
				c.t.Fatalf("%s did not join", c.name(i))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// spawn runs the binary with args outside the cluster's slots (an extra
// node, a differently configured Caddy), with its own XDG dirs under dir,
// and kills it when the test ends, showing its log if the test failed. It
// returns the process and a channel that yields its exit.
func spawn(t *testing.T, dir, name string, args ...string) (*exec.Cmd, <-chan error) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Dir = dir
	xdg := filepath.Join(dir, "xdg-"+name)
	cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+xdg, "XDG_CONFIG_HOME="+xdg)
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited, done := make(chan error, 1), make(chan struct{})
	go func() { exited <- cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("--- %s log ---\n%s", name, b)
		}
	})
	return cmd, exited
}

func (c *cluster) createToken(name string, limit int) {
	body := fmt.Sprintf(`{"name":%q,"usage_limit":%d}`, name, limit)
	resp, err := http.Post(c.adminURL(0)+"/quota/tokens", "application/json", strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		b, _ := io.ReadAll(resp.Body)
		c.t.Fatalf("creating %s: %d %s", name, resp.StatusCode, b)
	}
}

func (c *cluster) usage(name string) int {
	for attempt := 0; attempt < 50; attempt++ {
		for i := 0; i < nodes; i++ {
			resp, err := http.Post(c.adminURL(i)+"/quota/tokens/lookup", "application/json", strings.NewReader(fmt.Sprintf(`{"name":%q}`, name)))
			if err != nil {
				continue
			}
			var tok struct {
				UsageCount int `json:"usage_count"`
			}
			err = json.NewDecoder(resp.Body).Decode(&tok)
			resp.Body.Close()
			if err == nil && resp.StatusCode == 200 {
				return tok.UsageCount
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.t.Fatalf("could not read usage of %s", name)
	return -1
}

// stored counts the objects in the backend whose names start with prefix.
func (c *cluster) stored(bucket, prefix string) int {
	return len(listObjects(c.t, c.storageURL(), bucket, prefix))
}

// listObjects lists the keys in a bucket of the examples' store (at
// storageURL) that start with prefix; none when the bucket does not exist.
func listObjects(t testing.TB, storageURL, bucket, prefix string) []string {
	t.Helper()
	// The store answers at most 1000 keys a page: follow the markers.
	var page struct {
		IsTruncated bool     `xml:"IsTruncated"`
		NextMarker  string   `xml:"NextMarker"`
		Keys        []string `xml:"Contents>Key"`
	}
	var keys []string
	marker := ""
	for {
		q := url.Values{"prefix": {prefix}, "max-keys": {"1000"}}
		if marker != "" {
			q.Set("marker", marker)
		}
		resp, err := http.Get(storageURL + "/" + bucket + "?" + q.Encode())
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusNotFound {
			return nil
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("listing bucket: %d %s", resp.StatusCode, b)
		}
		page.IsTruncated, page.NextMarker, page.Keys = false, "", nil
		if err := xml.Unmarshal(b, &page); err != nil {
			t.Fatalf("listing bucket: %v", err)
		}
		keys = append(keys, page.Keys...)
		if !page.IsTruncated || len(page.Keys) == 0 {
			return keys
		}
		marker = page.NextMarker
		if marker == "" {
			marker = page.Keys[len(page.Keys)-1]
		}
	}
}
