package robustness

import (
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/raftquota/raftquota/internal/clustertest"
)

// TestGatewayJoinsServesAndLeaves runs the real binary as a gateway
// (`role gateway`, the three voters as its peers, mTLS): it joins by itself
// as a non-voter, serves uploads decided by the voters, is listed with its
// role, and leaves the configuration when stopped with SIGTERM; the voter
// set stays three.
func TestGatewayJoinsServesAndLeaves(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary")
	}
	c := newCluster(t)
	c.createToken("gw-token", 2)
	certDir := filepath.Join(c.dir, "data", "certs")
	if out, err := exec.Command(binary, "quota", "certs", "--dir", certDir, "gw1=127.0.0.1").CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	raftAddr, httpPort, adminPort := "127.0.0.1:"+freePort(t), freePort(t), freePort(t)
	var peers strings.Builder
	for i := 1; i <= nodes; i++ {
		fmt.Fprintf(&peers, "\t\tpeer node%d 127.0.0.1:%s\n", i, c.ports[fmt.Sprintf("700%d", i)])
	}
	cfg := fmt.Sprintf("{\n\tadmin 127.0.0.1:%s\n\tpersist_config off\n\tstorage file_system ./data/gw1/caddy\n\tquota {\n\t\tnode_id gw1\n\t\tdata_dir ./data/gw1/raft\n\t\traft_address %s\n\t\trole gateway\n%s\t\ttls ./data/certs/gw1.pem ./data/certs/gw1-key.pem ./data/certs/ca.pem\n\t}\n}\n\n:%s {\n\tbind 127.0.0.1\n\thandle_path /upload/* {\n\t\tquota {\n\t\t\tkey {http.request.header.X-Quota-Token}\n\t\t}\n\t\treverse_proxy 127.0.0.1:%s\n\t}\n}\n",
		adminPort, raftAddr, peers.String(), httpPort, c.ports["9000"])
	c.writeFile("gw1.Caddyfile", cfg)
	cmd, exited := spawn(t, c.dir, "gw1", "run", "--config", filepath.Join(c.dir, "gw1.Caddyfile"), "--adapter", "caddyfile")

	roles := func() map[string]string {
		out, err := c.quota(0, "cluster")
		if err != nil {
			return nil
		}
		m := map[string]string{}
		for _, id := range []string{"node1", "node2", "node3", "gw1"} {
			i := strings.Index(out, `"id": "`+id+`"`)
			if i < 0 {
				continue
			}
			if j := strings.Index(out[i:], `"role": "`); j >= 0 {
				rest := out[i+j+len(`"role": "`):]
				m[id] = rest[:strings.Index(rest, `"`)]
			}
		}
		return m
	}
	clustertest.Eventually(t, 30*time.Second, "gw1 is a gateway", func() bool { return roles()["gw1"] == "gateway" })
	if r := roles(); r["node1"] != "voter" || r["node2"] != "voter" || r["node3"] != "voter" {
		t.Fatalf("roles with a gateway: %v", r)
	}

	var codes []int
	for i := 0; i < 4; i++ {
		req, _ := http.NewRequest("PUT", fmt.Sprintf("http://127.0.0.1:%s/upload/gw/o%d", httpPort, i), strings.NewReader("x"))
		req.Header.Set("X-Quota-Token", "gw-token")
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		codes = append(codes, resp.StatusCode)
	}
	if fmt.Sprint(codes) != "[200 200 429 429]" {
		t.Fatalf("uploads through the gateway: %v, want two allowed then the limit", codes)
	}
	if n := c.usage("gw-token"); n != 2 {
		t.Fatalf("usage %d through the gateway, want 2", n)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		t.Fatal("gateway did not stop on SIGTERM")
	}
	clustertest.Eventually(t, 15*time.Second, "gw1 left", func() bool { _, ok := roles()["gw1"]; return !ok })
	if r := roles(); len(r) != 3 {
		t.Fatalf("members after the gateway left: %v", r)
	}
}
