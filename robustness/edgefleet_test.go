package robustness

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/raftquota/raftquota/internal/clustertest"
)

// fleet is examples/edge-fleet as shipped, copied to a temp dir with every
// port moved to a free one, run by its run.sh.
type fleet struct {
	t     *testing.T
	dir   string
	ports map[string]string // the example's port -> the test's
	env   []string
	out   *syncBuffer
}

var fleetMembers = []string{"voter1", "voter2", "voter3", "gw1", "gw2", "gw3", "gw4"}

// examplePorts are the ports an example's files name.
var examplePorts = regexp.MustCompile(`127\.0\.0\.1:(\d{4})\b|^:(\d{4}) \{`)

func startFleet(t *testing.T) *fleet {
	src := filepath.Join("..", "examples", "edge-fleet")
	f := &fleet{t: t, dir: t.TempDir(), ports: map[string]string{}}
	files, _ := filepath.Glob(filepath.Join(src, "*.Caddyfile"))
	if len(files) != len(fleetMembers)+1 {
		t.Fatalf("the example has %d Caddyfiles, want %d", len(files), len(fleetMembers)+1)
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		for _, line := range strings.Split(s, "\n") {
			for _, m := range examplePorts.FindAllStringSubmatch(strings.TrimSpace(line), -1) {
				p := m[1] + m[2]
				if f.ports[p] == "" {
					f.ports[p] = freePort(t)
				}
			}
		}
		s = movePorts(s, f.ports)
		os.WriteFile(filepath.Join(f.dir, filepath.Base(name)), []byte(s), 0o644)
	}
	// run.sh is a link to three-node's script; the copy is what it points at.
	rs := startRunScript(t, "edge-fleet", f.dir)
	f.out, f.env = rs.out, rs.env
	t.Cleanup(func() { // runs before startRunScript's: stop, then check the ports
		if !rs.stop() {
			t.Error("run.sh did not stop on SIGTERM")
		}
		for example, port := range f.ports {
			if conn, err := net.DialTimeout("tcp", "127.0.0.1:"+port, time.Second); err == nil {
				conn.Close()
				t.Errorf("port %s (the example's %s) still served after run.sh stopped", port, example)
			}
		}
	})
	return f
}

// member i's HTTP and admin addresses (voters 818i/212i, gateways 819i/213i).
func (f *fleet) http(name string) string {
	return "http://127.0.0.1:" + f.ports[f.examplePort(name, "818", "819")]
}
func (f *fleet) admin(name string) string {
	return "http://127.0.0.1:" + f.ports[f.examplePort(name, "212", "213")]
}

func (f *fleet) examplePort(name, voter, gateway string) string {
	if n, ok := strings.CutPrefix(name, "voter"); ok {
		return voter + n
	}
	return gateway + strings.TrimPrefix(name, "gw")
}

func (f *fleet) cluster(via string) (clusterInfo, error) { return clusterAt(f.admin(via)) }

// health is member name's /health answer (0 when it does not answer).
func (f *fleet) health(name string) int { return statusOf(f.http(name) + "/health") }

func (f *fleet) upload(via, object string) int {
	req, _ := http.NewRequest("PUT", f.http(via)+"/upload/fleet/"+object, strings.NewReader(object))
	req.Header.Set("X-Quota-Token", "fleet")
	cl := http.Client{Timeout: 10 * time.Second}
	resp, err := cl.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestEdgeFleetExample runs examples/edge-fleet/run.sh as shipped: 3
// voters and 4 gateways take uploads through every member under a count
// limit while a gateway and then the leading voter are killed with kill -9
// and started again with `run.sh start`; exactly the limit is admitted,
// every admitted upload is charged and stored, the gateways are listed
// with their role, and SIGTERM stops everything.
func TestEdgeFleetExample(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary")
	}
	f := startFleet(t)
	clustertest.Eventually(t, 60*time.Second, "the voters see every gateway", func() bool {
		ci, err := f.cluster("voter1")
		if err != nil {
			return false
		}
		gateways := 0
		for _, n := range ci.Nodes {
			if n.Role == "gateway" {
				gateways++
			}
		}
		return ci.Leader != "" && gateways == 4
	})
	const limit = 3000
	resp, err := http.Post(f.admin("gw3")+"/quota/tokens", "application/json", strings.NewReader(fmt.Sprintf(`{"name":"fleet","usage_limit":%d}`, limit)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("creating the token through a gateway: %s", resp.Status)
	}

	var allowed, denied, failed atomic.Int64
	var next atomic.Int64
	count := func(code int) int {
		switch code {
		case 200:
			allowed.Add(1)
		case 429:
			denied.Add(1)
		default:
			failed.Add(1) // refused connections to a killed member, 503s while the voters elect
		}
		return code
	}
	put := func(via string) int { return count(f.upload(via, fmt.Sprint(next.Add(1)))) }
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for c := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := c; ; i++ {
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
				put(fleetMembers[i%len(fleetMembers)])
			}
		}()
	}
	serving := func(names ...string) {
		t.Helper()
		for _, name := range names {
			last := 0
			deadline := time.Now().Add(30 * time.Second)
			for last = put(name); last != 200; last = put(name) {
				if time.Now().After(deadline) {
					ci, err := f.cluster(name)
					t.Fatalf("%s did not admit an upload within 30s; last answer %d; health %d; its view of the cluster: %+v %v", name, last, f.health(name), ci, err)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	kill := func(name string) {
		t.Helper()
		syscall.Kill(nodePID(t, f.dir, name+".Caddyfile"), syscall.SIGKILL)
		clustertest.Eventually(t, 10*time.Second, "run.sh says "+name+" died", func() bool { return strings.Contains(f.out.String(), name+" died") })
		if !strings.Contains(f.out.String(), "run.sh start "+name) {
			t.Fatalf("run.sh did not say how to start %s again", name)
		}
	}
	restart := func(name string) {
		t.Helper()
		start := exec.Command("bash", "./run.sh", "start", name)
		start.Dir, start.Env = f.dir, f.env
		if b, err := start.CombinedOutput(); err != nil {
			t.Fatalf("run.sh start %s: %v\n%s", name, err, b)
		}
	}
	// Ready as an operator would check: every member's health route.
	for _, m := range fleetMembers {
		clustertest.Eventually(t, 60*time.Second, m+" healthy again", func() bool { return f.health(m) == 200 })
	}
	serving(fleetMembers...)
	kill("gw2")
	serving("gw1", "gw3", "gw4", "voter1")
	ci, err := f.cluster("gw1")
	if err != nil || ci.Leader == "" {
		t.Fatalf("no leader: %v", err)
	}
	kill(ci.Leader)
	serving("gw1", "gw3", "gw4")
	restart("gw2")
	restart(ci.Leader)
	serving("gw2", ci.Leader)
	close(stop)
	wg.Wait()
	t.Logf("under faults: allowed %d, denied %d, failed %d", allowed.Load(), denied.Load(), failed.Load())
	if denied.Load() != 0 {
		t.Fatalf("%d uploads denied before the limit was reached", denied.Load())
	}

	// Use up the rest through every member at once: exactly the limit.
	for c := range 14 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := c; put(fleetMembers[i%len(fleetMembers)]) != 429; i++ {
			}
		}()
	}
	wg.Wait()
	var tok struct {
		UsageCount int64 `json:"usage_count"`
	}
	resp, err = http.Post(f.admin("gw4")+"/quota/tokens/lookup", "application/json", strings.NewReader(`{"name":"fleet"}`))
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	stored := len(listObjects(t, "http://127.0.0.1:"+f.ports["9100"], "fleet", ""))
	t.Logf("allowed %d, denied %d, failed %d; usage %d; stored %d (limit %d)", allowed.Load(), denied.Load(), failed.Load(), tok.UsageCount, stored, limit)
	if tok.UsageCount != limit {
		t.Fatalf("usage %d, want the limit %d", tok.UsageCount, limit)
	}
	// Every 200 is charged; a charge whose answer was lost with a killed
	// member may have no 200 (and its object may or may not be stored).
	if got := allowed.Load(); got > limit {
		t.Fatalf("%d uploads admitted past a limit of %d", got, limit)
	}
	if stored < int(allowed.Load()) || stored > limit {
		t.Fatalf("%d objects stored; %d were answered 200 and %d charged", stored, allowed.Load(), limit)
	}
	ci, err = f.cluster("gw1")
	if err != nil {
		t.Fatal(err)
	}
	roles := map[string]string{}
	for _, n := range ci.Nodes {
		roles[n.ID] = n.Role
	}
	for _, m := range fleetMembers {
		want := "voter"
		if strings.HasPrefix(m, "gw") {
			want = "gateway"
		}
		if roles[m] != want {
			t.Errorf("%s listed as %q, want %q (%v)", m, roles[m], want, roles)
		}
	}
}
