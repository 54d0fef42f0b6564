package robustness

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestThreeNodeExample checks the README's promise on examples/three-node
// as it ships (mutual TLS, certificates from `caddy quota certs`): uploads
// spread over all three nodes at once admit exactly the limit, exactly that
// many objects are stored, and without a quorum the answer is 503 with
// Retry-After.
func TestThreeNodeExample(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary")
	}
	c := newCluster(t)
	c.createToken("example-token", 25)

	var allowed, denied atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 120; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			req, _ := http.NewRequest("PUT", fmt.Sprintf("%s/upload/example/obj-%03d", c.httpURL(i%nodes), i), strings.NewReader(fmt.Sprintf("payload %d", i)))
			req.Header.Set("X-Quota-Token", "example-token")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Errorf("upload %d: %v", i, err)
				return
			}
			resp.Body.Close()
			switch resp.StatusCode {
			case http.StatusOK:
				allowed.Add(1)
			case http.StatusTooManyRequests:
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
	if n := c.stored("example", "obj-"); n != 25 {
		t.Fatalf("%d objects stored, want 25", n)
	}
	// What was admitted reads back whole from storage.
	read := 0
	for i := 0; i < 120 && read == 0; i++ {
		resp, err := http.Get(fmt.Sprintf("%s/example/obj-%03d", c.storageURL(), i))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			if string(body) != fmt.Sprintf("payload %d", i) {
				t.Fatalf("object %d reads back as %q", i, body)
			}
			read++
		}
	}
	if read == 0 {
		t.Fatal("no admitted object could be read back")
	}
	if n := c.usage("example-token"); n != 25 {
		t.Fatalf("usage %d, want 25", n)
	}

	// Without a quorum the answer is 503 with Retry-After, never a guess.
	c.kill(1)
	c.kill(2)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "PUT", c.httpURL(0)+"/upload/example/late", strings.NewReader("x"))
	req.Header.Set("X-Quota-Token", "example-token")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("without quorum: %d (Retry-After %q), want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}
