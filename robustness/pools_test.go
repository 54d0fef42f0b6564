package robustness

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// Pools through the product as shipped: the three-node example, the S3
// gateway with a real client, and the sgraph-send example.

// adminJSON sends a JSON body to an admin API and decodes the answer.
func adminJSON(t testing.TB, method, url string, body any, want int, out any) {
	t.Helper()
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, url, r)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("%s %s: %d %s, want %d", method, url, resp.StatusCode, b, want)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v in %s", method, url, err, b)
		}
	}
}

type poolAnswer struct {
	ID         string `json:"id"`
	UsageCount int64  `json:"usage_count"`
	BytesUsed  int64  `json:"bytes_used"`
	Tokens     int64  `json:"tokens"`
}

func createPool(t testing.TB, admin string, spec map[string]any) poolAnswer {
	t.Helper()
	var p poolAnswer
	adminJSON(t, "POST", admin+"/quota/pools", spec, http.StatusCreated, &p)
	return p
}

func poolNamed(t testing.TB, admin, name string) poolAnswer {
	t.Helper()
	var p poolAnswer
	adminJSON(t, "POST", admin+"/quota/pools/lookup", map[string]string{"name": name}, http.StatusOK, &p)
	return p
}

// pooledInput is one upload as the pool model sees it: the counters it
// charges (its token's and its pools') and their limits.
type pooledInput struct {
	token  string
	quotas []int // indexes into the model's counters
	limits []int
}

// poolCountersModel is the specification of shared quotas: an upload is
// admitted only while every counter it charges is below its limit, and
// then increments them all; one with an unknown outcome may or may not
// have. The state is every counter, in a fixed order.
func poolCountersModel(n int) porcupine.Model {
	encode := func(c []int) string {
		var b strings.Builder
		for _, v := range c {
			b.WriteString(strconv.Itoa(v))
			b.WriteByte(',')
		}
		return b.String()
	}
	decode := func(s string) []int {
		out := make([]int, 0, n)
		for _, f := range strings.Split(strings.TrimSuffix(s, ","), ",") {
			v, _ := strconv.Atoi(f)
			out = append(out, v)
		}
		return out
	}
	m := porcupine.NondeterministicModel{
		Init: func() []any { return []any{encode(make([]int, n))} },
		Step: func(state, input, output any) []any {
			c, in := decode(state.(string)), input.(pooledInput)
			room := true
			for i, q := range in.quotas {
				room = room && c[q] < in.limits[i]
			}
			charged := func() string {
				next := append([]int(nil), c...)
				for _, q := range in.quotas {
					next[q]++
				}
				return encode(next)
			}
			switch output.(outcome) {
			case allowed:
				if room {
					return []any{charged()}
				}
				return nil
			case denied:
				if !room {
					return []any{state}
				}
				return nil
			}
			if room {
				return []any{state, charged()}
			}
			return []any{state}
		},
		Hash: func(state any) uint64 {
			var h uint64 = 14695981039346656037
			for _, b := range []byte(state.(string)) {
				h = (h ^ uint64(b)) * 1099511628211
			}
			return h
		},
		DescribeOperation: func(input, output any) string {
			return fmt.Sprintf("upload(%s) -> %s", input.(pooledInput).token, output.(outcome))
		},
		DescribeState: func(state any) string { return state.(string) },
	}
	return m.ToModel()
}

// TestThreeNodesNeverOverAdmitAPoolExample: on the three-node example, ten
// tokens of ten uploads each share a 50-upload pool; 32 clients upload
// through all three nodes: exactly 50 are admitted and stored, the pool
// and the tokens say 50, and the history is linearizable against a model
// in which each upload charges two counters.
func TestThreeNodesNeverOverAdmitAPoolExample(t *testing.T) {
	c := newCluster(t)
	admin := c.adminURL(0)
	pool := createPool(t, admin, map[string]any{"name": "customer-7", "usage_limit": 50})
	var tokens []string
	for i := range 10 {
		name := fmt.Sprintf("pool-dev-%d", i)
		tokens = append(tokens, name)
		adminJSON(t, "POST", c.adminURL(i%3)+"/quota/tokens", map[string]any{"name": name, "usage_limit": 10, "pools": []string{pool.ID}}, http.StatusCreated, nil)
	}
	var mu sync.Mutex
	var ops []op
	start := time.Now()
	var wg sync.WaitGroup
	httpc := &http.Client{Timeout: 4 * time.Second}
	for cl := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := range 8 {
				tok := tokens[(cl+seq)%10]
				obj := fmt.Sprintf("%s-c%02d-%d", tok, cl, seq)
				o := op{client: cl, via: (cl + seq) % 3, token: tok, object: obj}
				o.upload(httpc, c.httpURL(o.via)+"/upload/pools/"+obj, start)
				mu.Lock()
				ops = append(ops, o)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	admitted, unknowns := 0, 0
	history := make([]porcupine.Operation, 0, len(ops))
	index := map[string]int{"pool": 0}
	for i, tok := range tokens {
		index[tok] = i + 1
	}
	for _, o := range ops {
		ret := o.ret
		switch o.out {
		case allowed:
			admitted++
		case unknown:
			unknowns++
			ret = 1 << 62
		}
		history = append(history, porcupine.Operation{ClientId: o.client, Call: o.call, Return: ret, Output: o.out,
			Input: pooledInput{token: o.token, quotas: []int{index[o.token], 0}, limits: []int{10, 50}}})
	}
	t.Logf("%d uploads, %d admitted, %d without an answer", len(ops), admitted, unknowns)
	if unknowns > 0 {
		t.Fatalf("%d uploads got no decision on a healthy cluster", unknowns)
	}
	if admitted != 50 {
		t.Fatalf("%d uploads admitted through a 50-upload pool", admitted)
	}
	if n := c.stored("pools", ""); n != 50 {
		t.Fatalf("%d objects stored, want 50", n)
	}
	if p := poolNamed(t, c.adminURL(2), "customer-7"); p.UsageCount != 50 || p.Tokens != 10 {
		t.Fatalf("the pool says %+v", p)
	}
	sum := 0
	for _, tok := range tokens {
		sum += c.usage(tok)
	}
	if sum != 50 {
		t.Fatalf("the tokens were charged %d in all", sum)
	}
	res := porcupine.CheckOperationsTimeout(poolCountersModel(11), history, time.Minute)
	if res != porcupine.Ok {
		t.Fatalf("the history is %s against the pool model", res)
	}
}

// TestS3BucketPool: the S3 gateway with a pool per bucket
// (pool {http.quota.s3.bucket}, pool_missing skip): rclone's multipart
// upload costs the bucket's pool one unit and its bytes, like the token;
// the bucket's cap refuses the next object whoever sends it, and buckets
// without a pool are not held.
func TestS3BucketPool(t *testing.T) {
	g := startS3Gate(t, "1h", "\tquota {\n\t\ts3 {", "\tquota {\n\t\tpool {http.quota.s3.bucket}\n\t\tpool_missing skip\n\t\ts3 {")
	pool := createPool(t, "http://127.0.0.1:"+g.admin, map[string]any{"name": "capped", "usage_limit": 2, "bytes_limit": 20 * mib})
	big, _ := randomFile(t, t.TempDir(), "big.bin", 16*mib)
	small, _ := randomFile(t, t.TempDir(), "small.bin", 1000)
	g.token("AKIABUCKETPOOL000001", 10, 0)
	g.token("AKIABUCKETPOOL000002", 10, 0)
	one := newRclone(t, g, "AKIABUCKETPOOL000001")
	two := newAWSVirtual(t, g, "AKIABUCKETPOOL000002")
	if out, err := one.put(t, big, "capped", "big.bin"); err != nil {
		t.Fatalf("16 MiB into the capped bucket: %v\n%s", err, out)
	}
	p := poolNamed(t, "http://127.0.0.1:"+g.admin, "capped")
	t.Logf("rclone: a 16 MiB multipart object cost the bucket's pool %d unit(s) and %d bytes", p.UsageCount, p.BytesUsed)
	if p.UsageCount != 1 || p.BytesUsed != 16*mib || p.ID != pool.ID {
		t.Fatalf("the bucket's pool after one multipart object: %+v", p)
	}
	if out, err := two.put(t, small, "capped", "small.bin"); err != nil {
		t.Fatalf("a second object (virtual-hosted): %v\n%s", err, out)
	}
	if out, err := two.put(t, small, "capped", "third.bin"); err == nil {
		t.Fatalf("a third object went into a 2-object bucket:\n%s", out)
	}
	if _, ok := g.object("capped", "third.bin"); ok {
		t.Fatal("the refused object was stored")
	}
	if out, err := two.put(t, small, "free", "x.bin"); err != nil {
		t.Fatalf("a bucket without a pool: %v\n%s", err, out)
	}
	g.waitUsage("AKIABUCKETPOOL000002", 2, 2000, time.Second)
	st, body := g.s3Raw("PUT", "127.0.0.1:"+g.gate, "/capped/raw.bin", "AKIABUCKETPOOL000001", "x")
	if st != 403 || !strings.Contains(body, "Pool capped") {
		t.Fatalf("the refusal does not name the pool: %d %s", st, body)
	}
	// With a pool per bucket, the bucket must be known: a write to a Host
	// the gate cannot place is refused, never charged to no pool.
	if st, body := g.s3Raw("PUT", "elsewhere.test", "/capped/obj", "AKIABUCKETPOOL000001", "x"); st != 400 {
		t.Fatalf("a write whose bucket is unknown: %d %s", st, body)
	}
}

// TestSgraphSendExampleWithACustomerPool runs examples/sgraph-send as
// shipped, in front of a stand-in app server, with a customer's pool of 4
// transfers beside two per-transfer tokens of 3: the completes admitted
// stop at the pool's 4, a repeated complete charges once, and the
// check-only routes refuse once the pool is spent.
func TestSgraphSendExampleWithACustomerPool(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "examples", "sgraph-send", "Caddyfile"))
	if err != nil {
		t.Fatal(err)
	}
	app := http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, `{"ok":true}`) })}
	appPort := freePort(t)
	l, err := net.Listen("tcp", "127.0.0.1:"+appPort)
	if err != nil {
		t.Fatal(err)
	}
	go app.Serve(l)
	t.Cleanup(func() { app.Close() })
	dir := t.TempDir()
	front, admin := freePort(t), freePort(t)
	s := movePorts(string(b), map[string]string{"8090": front, "2019": admin, "9100": appPort})
	s = strings.Replace(s, "\tpersist_config off\n", "\tpersist_config off\n\tquota {\n\t\tdata_dir ./raft\n\t\traft_address 127.0.0.1:"+freePort(t)+"\n\t}\n", 1)
	if err := os.WriteFile(filepath.Join(dir, "Caddyfile"), []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	_, exited := spawn(t, dir, "sgraph", "run", "--config", "Caddyfile")
	adminURL := "http://127.0.0.1:" + admin
	waitHealth(t, adminURL, exited)
	pool := createPool(t, adminURL, map[string]any{"name": "customer-acme", "usage_limit": 4})
	for _, tok := range []string{"acme-transfer-1", "acme-transfer-2"} {
		adminJSON(t, "POST", adminURL+"/quota/tokens", map[string]any{"name": tok, "usage_limit": 3, "pools": []string{pool.ID}}, http.StatusCreated, nil)
	}
	post := func(path, tok string) int {
		req, _ := http.NewRequest("POST", "http://127.0.0.1:"+front+path, strings.NewReader("{}"))
		req.Header.Set("x-sgraph-access-token", tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	completed := 0
	for i := range 6 {
		tok := []string{"acme-transfer-1", "acme-transfer-2"}[i%2]
		if st := post("/api/transfers/create", tok); st != 200 && completed < 4 {
			t.Fatalf("create with room in the pool: %d", st)
		}
		id := fmt.Sprintf("tx-%d", i)
		st := post("/api/transfers/complete/"+id, tok)
		if st == 200 {
			completed++
			if again := post("/api/transfers/complete/"+id, tok); again != 200 {
				t.Fatalf("a repeated complete: %d", again)
			}
		}
	}
	if completed != 4 {
		t.Fatalf("%d transfers completed against a 4-transfer customer pool", completed)
	}
	if st := post("/api/transfers/create", "acme-transfer-2"); st != http.StatusTooManyRequests {
		t.Fatalf("check-only create with the customer's pool spent: %d", st)
	}
	if p := poolNamed(t, adminURL, "customer-acme"); p.UsageCount != 4 {
		t.Fatalf("the pool says %+v", p)
	}
}

// waitHealth waits for a single node's health route.
func waitHealth(t *testing.T, adminURL string, exited <-chan error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-exited:
			t.Fatalf("caddy exited: %v", err)
		default:
		}
		if resp, err := http.Get(adminURL + "/quota/health"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("caddy did not become healthy")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
