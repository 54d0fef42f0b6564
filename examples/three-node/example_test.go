package threenode

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestThreeNodeExample builds the real binary, starts this folder's three
// node Caddyfiles and the storage backend (ports moved to free ones, data in
// a temp dir), and checks the README's promise: uploads spread over all
// three nodes admit exactly the limit, and exactly that many objects are
// stored. Then it takes two nodes away and expects 503 with Retry-After.
func TestThreeNodeExample(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the real binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "caddy")
	build := exec.Command("go", "build", "-o", bin, "../../cmd/caddy")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		t.Fatalf("building caddy: %v", err)
	}

	// The contract's fixed ports, each moved to a free one.
	ports := map[string]string{"9000": freePort(t)}
	for i := 1; i <= 3; i++ {
		for _, p := range []string{"808", "202", "700"} {
			ports[fmt.Sprintf("%s%d", p, i)] = freePort(t)
		}
	}
	rewrite := func(name string) string {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		for from, to := range ports {
			s = strings.ReplaceAll(s, ":"+from, ":"+to)
		}
		out := filepath.Join(dir, name)
		if err := os.WriteFile(out, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return out
	}

	start := func(name string) *exec.Cmd {
		cmd := exec.Command(bin, "run", "--config", rewrite(name), "--adapter", "caddyfile")
		cmd.Dir = dir // ./data/... paths land in the temp dir
		cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+filepath.Join(dir, "xdg"), "XDG_CONFIG_HOME="+filepath.Join(dir, "xdg"))
		logf, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-done
			}
			logf.Close()
			if t.Failed() {
				b, _ := os.ReadFile(logf.Name())
				t.Logf("--- %s log (tail) ---\n%s", name, tail(string(b), 3000))
			}
		})
		return cmd
	}
	certs := exec.Command(bin, "quota", "certs", "--dir", filepath.Join(dir, "data", "certs"), "node1=127.0.0.1", "node2=127.0.0.1", "node3=127.0.0.1")
	if out, err := certs.CombinedOutput(); err != nil {
		t.Fatalf("caddy quota certs: %v\n%s", err, out)
	}
	start("storage.Caddyfile")
	nodes := []*exec.Cmd{start("node1.Caddyfile"), start("node2.Caddyfile"), start("node3.Caddyfile")}

	admin := "http://127.0.0.1:" + ports["2021"]
	waitFor(t, 30*time.Second, func() bool {
		resp, err := http.Get(admin + "/quota/cluster")
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode == 200 && strings.Contains(string(b), `"state":"Leader"`) && !strings.Contains(string(b), "unreachable")
	})

	resp, err := http.Post(admin+"/quota/tokens", "application/json", strings.NewReader(`{"name":"example-token","usage_limit":25}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("creating token: %d", resp.StatusCode)
	}

	var allowed, denied atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 120; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			node := ports[fmt.Sprintf("808%d", i%3+1)]
			url := fmt.Sprintf("http://127.0.0.1:%s/upload/example/obj-%03d", node, i)
			req, _ := http.NewRequest("PUT", url, strings.NewReader(fmt.Sprintf("payload %d", i)))
			req.Header.Set("X-Quota-Token", "example-token")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Errorf("upload %d: %v", i, err)
				return
			}
			resp.Body.Close()
			switch resp.StatusCode {
			case 200:
				allowed.Add(1)
			case 429:
				denied.Add(1)
			default:
				t.Errorf("upload %d: status %d", i, resp.StatusCode)
			}
		}(i)
	}
	wg.Wait()
	if allowed.Load() != 25 || denied.Load() != 95 {
		t.Fatalf("allowed %d denied %d, want exactly 25 and 95", allowed.Load(), denied.Load())
	}
	stored := 0
	for i := 0; i < 120; i++ {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%s/example/obj-%03d", ports["9000"], i))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == 200 {
			stored++
		}
	}
	if stored != 25 {
		t.Fatalf("%d objects stored, want 25", stored)
	}

	// Without a quorum the answer is 503 with Retry-After, never a guess.
	nodes[1].Process.Kill()
	nodes[2].Process.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "PUT", "http://127.0.0.1:"+ports["8081"]+"/upload/example/late", strings.NewReader("x"))
	req.Header.Set("X-Quota-Token", "example-token")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("without quorum: %d (Retry-After %q), want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
}

func waitFor(t *testing.T, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if ok() {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("cluster did not come up in time")
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
