package robustness

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// stop ends node i gracefully, as systemd or Ctrl-C does: SIGTERM, then
// wait for the process to exit.
func (c *cluster) stop(i int) {
	c.t.Helper()
	p := c.procs[i]
	if p == nil {
		return
	}
	p.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- p.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			c.t.Errorf("node%d exited after SIGTERM with %v", i+1, err)
		}
	case <-time.After(30 * time.Second):
		c.t.Errorf("node%d did not exit within 30s of SIGTERM", i+1)
		p.Process.Kill()
		<-done
	}
	c.procs[i] = nil
}

// health asks node i's admin endpoint whether it can decide.
func (c *cluster) health(i int) int { return statusOf(c.adminURL(i) + "/quota/health") }

// statusOf is the status of a GET of url, 0 when nothing answers in 5s.
func statusOf(url string) int {
	cl := http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func (c *cluster) waitNodeHealthy(i int, d time.Duration) {
	c.t.Helper()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if c.health(i) == http.StatusOK {
			return
		}
	}
	c.t.Fatalf("node%d not healthy after %s", i+1, d)
}

// uploadLoad is clients uploading through every node until stopped, each
// answer recorded by the node that gave it.
type uploadLoad struct {
	ok        atomic.Int64
	mu        sync.Mutex
	failures  []string // answers >= 500, and transport errors on a node that was up
	refused   [nodes]int
	closed    [nodes]int
	down      [nodes]atomic.Bool
	stopped   chan struct{}
	wg        sync.WaitGroup
	perStatus map[int]int
}

func startUploads(t *testing.T, c *cluster, token string, workers int) *uploadLoad {
	l := &uploadLoad{stopped: make(chan struct{}), perStatus: map[int]int{}}
	tr := &http.Transport{MaxIdleConnsPerHost: workers}
	cl := &http.Client{Transport: tr, Timeout: 20 * time.Second}
	for w := 0; w < workers; w++ {
		l.wg.Add(1)
		go func(w int) {
			defer l.wg.Done()
			node := w % nodes
			for n := 0; ; n++ {
				select {
				case <-l.stopped:
					return
				default:
				}
				body := fmt.Sprintf("w%d-%d", w, n)
				req, _ := http.NewRequest("PUT", fmt.Sprintf("%s/upload/roll/%s", c.httpURL(node), body), strings.NewReader(body))
				req.Header.Set("X-Quota-Token", token)
				wasDown := l.down[node].Load()
				resp, err := cl.Do(req)
				l.mu.Lock()
				switch {
				case err != nil && (wasDown || l.down[node].Load()) && isRefused(err):
					l.refused[node]++
					l.mu.Unlock()
					time.Sleep(20 * time.Millisecond)
					continue
				case err != nil && isClosedUnread(err):
					// A kept-alive connection the server closed as idle (a
					// reload swaps servers) just as this request went out:
					// Go's client does not retry a PUT. Not an answer, and
					// not taken: the usage check at the end proves it.
					l.closed[node]++
					l.mu.Unlock()
					time.Sleep(20 * time.Millisecond)
					continue
				case err != nil:
					l.failures = append(l.failures, fmt.Sprintf("node%d: %v", node+1, err))
				default:
					l.perStatus[resp.StatusCode]++
					if resp.StatusCode == http.StatusOK {
						l.ok.Add(1)
					} else {
						l.failures = append(l.failures, fmt.Sprintf("node%d: status %d", node+1, resp.StatusCode))
					}
					resp.Body.Close()
				}
				l.mu.Unlock()
			}
		}(w)
	}
	return l
}

// isRefused reports a connection refused by a node that is down.
func isRefused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || strings.Contains(err.Error(), "connection refused") || isClosedUnread(err)
}

// isClosedUnread reports a connection closed before any answer: an idle
// kept-alive connection the server closed (graceful stop or reload) as the
// request was sent. A request the node took and then dropped would be
// charged without an answer, which the usage check at the end catches.
func isClosedUnread(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) ||
		strings.Contains(err.Error(), "server closed idle connection") ||
		strings.Contains(err.Error(), "connection reset") || strings.HasSuffix(err.Error(), ": EOF")
}

func (l *uploadLoad) stop() {
	close(l.stopped)
	l.wg.Wait()
}

// TestRollingRestartFailsNoUpload stops every node in turn with SIGTERM,
// leader first, and starts it again, then reloads one, while 32 clients
// upload through all three nodes. No answer may be a 5xx: not from the
// nodes that stay up, not for requests the stopping node had accepted,
// not from a node that is starting. The only errors allowed are refused
// connections to a node while it is down. Usage must equal the uploads
// answered 200: no charge for an upload that was not stored.
func TestRollingRestartFailsNoUpload(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary")
	}
	c := newCluster(t)
	c.createToken("roll", 0)
	l := startUploads(t, c, "roll", 32)
	time.Sleep(time.Second)

	first := c.leader()
	order := []int{first, (first + 1) % nodes, (first + 2) % nodes}
	for _, i := range order {
		l.down[i].Store(true)
		t.Logf("SIGTERM node%d", i+1)
		c.stop(i)
		time.Sleep(500 * time.Millisecond)
		c.start(i)
		c.waitNodeHealthy(i, 30*time.Second)
		l.down[i].Store(false)
		time.Sleep(time.Second)
	}

	// A config reload under load.
	reload := exec.Command(binary, "reload", "--config", filepath.Join(c.dir, "node2.Caddyfile"), "--adapter", "caddyfile", "--address", strings.TrimPrefix(c.adminURL(1), "http://"))
	reload.Dir = c.dir
	if out, err := reload.CombinedOutput(); err != nil {
		t.Fatalf("caddy reload: %v\n%s", err, out)
	}
	time.Sleep(time.Second)
	l.stop()

	l.mu.Lock()
	defer l.mu.Unlock()
	t.Logf("answers by status %v; connections refused while down per node %v; idle connections closed under a request per node %v", l.perStatus, l.refused, l.closed)
	if len(l.failures) > 0 {
		t.Fatalf("%d uploads failed through a rolling restart, e.g. %v", len(l.failures), l.failures[:min(10, len(l.failures))])
	}
	if l.ok.Load() < 1000 {
		t.Fatalf("only %d uploads went through: the test proved little", l.ok.Load())
	}
	if u := c.usage("roll"); int64(u) != l.ok.Load() {
		t.Fatalf("usage %d, but %d uploads were answered 200", u, l.ok.Load())
	}
}
