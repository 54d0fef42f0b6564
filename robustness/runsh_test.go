package robustness

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/raftquota/raftquota/internal/clustertest"
)

// syncBuffer collects a process's output for the test to read while it runs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRunScriptSurvivesANodesDeath runs examples/three-node/run.sh as
// shipped (copied next to its Caddyfiles, with ports moved to free ones):
// kill -9 of the leader leaves the others and storage serving, the script
// says which node died and how to start it, `run.sh start NODE` brings it
// back into the cluster, and SIGTERM to the script stops everything.
func TestRunScriptSurvivesANodesDeath(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary")
	}
	c, rs := startThreeNodeExample(t)
	out, env := rs.out, rs.env
	c.createToken("ex", 0)
	ci, err := c.info(0)
	if err != nil {
		t.Fatal(err)
	}
	var leader int
	fmt.Sscanf(ci.Leader, "node%d", &leader)
	leader--

	pid := nodePID(t, c.dir, fmt.Sprintf("node%d.Caddyfile", leader+1))
	syscall.Kill(pid, syscall.SIGKILL)
	want := fmt.Sprintf("node%d died", leader+1)
	clustertest.Eventually(t, 10*time.Second, "run.sh says "+want, func() bool { return strings.Contains(out.String(), want) })
	if !strings.Contains(out.String(), fmt.Sprintf("run.sh start node%d", leader+1)) {
		t.Fatalf("run.sh did not say how to start node%d again", leader+1)
	}
	for i := 0; i < nodes; i++ {
		if i == leader {
			continue
		}
		clustertest.Eventually(t, 10*time.Second, fmt.Sprintf("an upload through node %d", i+1), func() bool { return upload(c, i, "ex", fmt.Sprintf("after-kill-%d", i)) == http.StatusOK })
	}

	start := exec.Command("bash", "./run.sh", "start", fmt.Sprintf("node%d", leader+1))
	start.Dir, start.Env = c.dir, env
	if b, err := start.CombinedOutput(); err != nil {
		t.Fatalf("run.sh start: %v\n%s", err, b)
	}
	c.waitNodeHealthy(leader, 30*time.Second)
	if code := upload(c, leader, "ex", "after-restart"); code != http.StatusOK {
		t.Fatalf("restarted node answered %d", code)
	}
	if n := c.usage("ex"); n != nodes {
		t.Fatalf("usage %d, want %d", n, nodes)
	}

	if !rs.stop() {
		t.Fatal("run.sh did not stop on SIGTERM")
	}
	for _, p := range []string{"8081", "8082", "8083", "9000"} {
		if conn, err := net.DialTimeout("tcp", "127.0.0.1:"+c.ports[p], time.Second); err == nil {
			conn.Close()
			t.Errorf("port %s still served after run.sh stopped", p)
		}
	}
}

// runScript is an example's run.sh running in the foreground.
type runScript struct {
	out  *syncBuffer // what it and its nodes printed
	env  []string    // its environment, for `run.sh start NAME`
	stop func() bool // SIGTERM, then wait up to 30s: whether it exited
}

// startRunScript copies examples/<example>/run.sh (what a link points at)
// into dir, beside the Caddyfiles the test wrote there, and runs it as a
// user would, with the test's binary. The test's cleanup stops it if the
// test did not, and shows the tail of its output when the test failed.
func startRunScript(t *testing.T, example, dir string) *runScript {
	t.Helper()
	script, err := os.ReadFile(filepath.Join("..", "examples", example, "run.sh"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "run.sh"), script, 0o755); err != nil {
		t.Fatal(err)
	}
	rs := &runScript{out: &syncBuffer{}, env: append(os.Environ(), "CADDY="+binary, "XDG_DATA_HOME="+filepath.Join(dir, "xdg"), "XDG_CONFIG_HOME="+filepath.Join(dir, "xdg"))}
	run := exec.Command("bash", "./run.sh")
	run.Dir, run.Env = dir, rs.env
	run.Stdout, run.Stderr = rs.out, rs.out
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- run.Wait() }()
	var once sync.Once
	var stopped bool
	rs.stop = func() bool {
		once.Do(func() {
			run.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
				stopped = true
			case <-time.After(30 * time.Second):
				run.Process.Kill()
			}
		})
		return stopped
	}
	t.Cleanup(func() {
		rs.stop()
		if t.Failed() {
			s := rs.out.String()
			t.Logf("--- run.sh output (tail) ---\n%s", s[max(0, len(s)-4000):])
		}
	})
	return rs
}

func upload(c *cluster, i int, token, object string) int {
	req, _ := http.NewRequest("PUT", fmt.Sprintf("%s/upload/ex/%s", c.httpURL(i), object), strings.NewReader(object))
	req.Header.Set("X-Quota-Token", token)
	cl := http.Client{Timeout: 10 * time.Second}
	resp, err := cl.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// nodePID finds the caddy process run.sh started with config in dir.
func nodePID(t *testing.T, dir, config string) int {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		cwd, _ := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		args := strings.Split(string(cmdline), "\x00")
		if cwd == dir && len(args) > 0 && args[0] == binary && strings.Contains(string(cmdline), "\x00"+config+"\x00") {
			return pid
		}
	}
	t.Fatalf("no caddy process for %s", config)
	return 0
}

// TestFailOverRunsAsWritten runs the README's "Trying fail-over" blocks
// with bash against examples/three-node/run.sh (copied, ports moved): the
// leader found, killed by its pid file, the survivors answering 200 and
// the dead node nothing, and `run.sh start` bringing it back healthy.
func TestFailOverRunsAsWritten(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary")
	}
	c, rs := startThreeNodeExample(t)
	b, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	at := strings.Index(readme, "### Trying fail-over")
	var script strings.Builder
	for range 2 {
		start := strings.Index(readme[at:], "```sh\n") + at + 6
		end := strings.Index(readme[start:], "```") + start
		script.WriteString(readme[start:end])
		at = end + 3
	}
	s := script.String()
	s = strings.ReplaceAll(s, "examples/three-node/data/caddy", binary)
	s = strings.ReplaceAll(s, "examples/three-node/", "./")
	for i := 1; i <= nodes; i++ {
		s = strings.ReplaceAll(s, fmt.Sprintf("127.0.0.1:202%d", i), "127.0.0.1:"+c.ports[fmt.Sprintf("202%d", i)])
		s = strings.ReplaceAll(s, fmt.Sprintf("808%d", i), c.ports[fmt.Sprintf("808%d", i)])
	}
	cmd := exec.Command("bash", "-c", s)
	cmd.Dir, cmd.Env = c.dir, rs.env
	out, err := cmd.Output()
	t.Logf("the fail-over blocks printed:\n%s", out)
	if err != nil {
		t.Fatalf("the fail-over blocks: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	leader := ""
	for _, l := range lines {
		if regexp.MustCompile(`^node[1-3]$`).MatchString(l) {
			leader = l
		}
	}
	if leader == "" {
		t.Fatal("the blocks printed no leader")
	}
	ok, none := 0, 0
	for _, l := range lines {
		switch {
		case strings.HasSuffix(l, " 200"):
			ok++
		case strings.HasSuffix(l, " 000"):
			none++
		}
	}
	if ok != 2 || none != 1 {
		t.Fatalf("after killing %s: %d answered 200 and %d nothing, want 2 and 1", leader, ok, none)
	}
	if !strings.Contains(rs.out.String(), leader+" died") || strings.Contains(rs.out.String(), "Killed") {
		t.Fatalf("run.sh did not say %s died in its own words only", leader)
	}
	i := int(leader[len(leader)-1] - '1')
	c.waitNodeHealthy(i, 60*time.Second)
}

// TestBackupAndRestoreRunAsWritten runs docs/OPERATIONS.md's backup and
// restore blocks against examples/three-node/run.sh (copied, ports moved):
// a backup under the running cluster, run.sh stopped, every data dir
// emptied and restored with the documented command (node1's as written,
// node2's and node3's the same with their names), run.sh started again:
// the token's usage is the backup's.
func TestBackupAndRestoreRunAsWritten(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary")
	}
	c, rs := startThreeNodeExample(t)
	c.createToken("kept", 100)
	for i := range 7 {
		if st := upload(c, i%3, "kept", fmt.Sprintf("o%d", i)); st != 200 {
			t.Fatalf("upload: %d", st)
		}
	}
	b, err := os.ReadFile(filepath.Join("..", "docs", "OPERATIONS.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	doc = doc[strings.Index(doc, "## Backup and restore"):]
	blocks := regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(doc, 2)
	fix := func(s string) string {
		s = strings.ReplaceAll(s, "caddy quota", binary+" quota")
		s = strings.ReplaceAll(s, "examples/three-node/", "")
		s = strings.ReplaceAll(s, "127.0.0.1:2021", "127.0.0.1:"+c.ports["2021"])
		for i := 1; i <= nodes; i++ {
			s = strings.ReplaceAll(s, fmt.Sprintf("127.0.0.1:700%d", i), "127.0.0.1:"+c.ports[fmt.Sprintf("700%d", i)])
		}
		return s
	}
	run := func(s string) string {
		cmd := exec.Command("bash", "-e", "-c", s)
		cmd.Dir, cmd.Env = c.dir, rs.env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", s, err, out)
		}
		return string(out)
	}
	if out := run(fix(blocks[0][1])); !strings.Contains(out, "backup of 1 tokens") {
		t.Fatalf("backup said: %s", out)
	}
	if !rs.stop() {
		t.Fatal("run.sh did not stop")
	}
	restore := fix(blocks[1][1])
	for i := 1; i <= nodes; i++ {
		name := fmt.Sprintf("node%d", i)
		os.RemoveAll(filepath.Join(c.dir, "data", name, "raft"))
		run(strings.NewReplacer("data/node1/raft", "data/"+name+"/raft", "--node-id node1", "--node-id "+name).Replace(restore))
	}
	startRunScript(t, "three-node", c.dir)
	for i := 0; i < nodes; i++ {
		c.waitNodeHealthy(i, 60*time.Second)
	}
	if n := c.usage("kept"); n != 7 {
		t.Fatalf("after restore the token has %d uploads, the backup 7", n)
	}
}

// startThreeNodeExample runs a copy of examples/three-node/run.sh with its
// Caddyfiles, ports moved to free ones, and waits until every node is
// healthy.
func startThreeNodeExample(t *testing.T) (*cluster, *runScript) {
	c := &cluster{t: t, dir: t.TempDir(), ports: map[string]string{"9000": freePort(t)}}
	for i := 1; i <= nodes; i++ {
		for _, p := range []string{"808", "202", "700"} {
			c.ports[fmt.Sprintf("%s%d", p, i)] = freePort(t)
		}
	}
	for _, name := range []string{"node1.Caddyfile", "node2.Caddyfile", "node3.Caddyfile", "storage.Caddyfile"} {
		c.writeFile(name, c.template(name))
	}
	rs := startRunScript(t, "three-node", c.dir)
	for i := 0; i < nodes; i++ {
		c.waitNodeHealthy(i, 60*time.Second)
	}
	return c, rs
}
