package robustness

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// The S3 gate as shipped (examples/s3-gateway/Caddyfile, ports moved to
// free ones) driven by the S3 clients people use: rclone, s3cmd and
// aws-cli, from Debian's packages. CI installs them; elsewhere the test is
// skipped when one is missing.

// s3Gate is the example's Caddy: the gate and the store behind it.
type s3Gate struct {
	t                    *testing.T
	dir                  string
	gate, admin, storage string
}

// startS3Gate runs the example with multipart_expiry set to expiry and
// each edit (pairs of text and its replacement) applied.
func startS3Gate(t *testing.T, expiry string, edits ...string) *s3Gate {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "examples", "s3-gateway", "Caddyfile"))
	if err != nil {
		t.Fatal(err)
	}
	g := &s3Gate{t: t, dir: t.TempDir(), gate: freePort(t), admin: freePort(t), storage: freePort(t)}
	s := string(b)
	for _, from := range []string{":8333", ":2333", ":9333", ":7333", "multipart_expiry 24h"} {
		if !strings.Contains(s, from) {
			t.Fatalf("the example Caddyfile has no %q", from)
		}
	}
	s = movePorts(s, map[string]string{"8333": g.gate, "2333": g.admin, "9333": g.storage, "7333": freePort(t)})
	s = strings.Replace(s, "multipart_expiry 24h", "multipart_expiry "+expiry, 1)
	for i := 0; i+1 < len(edits); i += 2 {
		if !strings.Contains(s, edits[i]) {
			t.Fatalf("the example Caddyfile has no %q", edits[i])
		}
		s = strings.Replace(s, edits[i], edits[i+1], 1)
	}
	if err := os.WriteFile(filepath.Join(g.dir, "Caddyfile"), []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	_, exited := spawn(t, g.dir, "gate", "run", "--config", "Caddyfile")
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-exited:
			t.Fatalf("the S3 gate exited: %v", err)
		default:
		}
		resp, err := http.Get("http://127.0.0.1:" + g.admin + "/quota/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return g
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the S3 gate did not become healthy")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// token creates a token whose name is an access key id.
func (g *s3Gate) token(name string, limit, bytesLimit int64) {
	g.t.Helper()
	body := fmt.Sprintf(`{"name":%q,"usage_limit":%d,"bytes_limit":%d}`, name, limit, bytesLimit)
	resp, err := http.Post("http://127.0.0.1:"+g.admin+"/quota/tokens", "application/json", strings.NewReader(body))
	if err != nil {
		g.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 201 {
		g.t.Fatalf("creating token: %s", resp.Status)
	}
}

// usage is a token's units and bytes charged.
func (g *s3Gate) usage(name string) (int64, int64) {
	g.t.Helper()
	resp, err := http.Post("http://127.0.0.1:"+g.admin+"/quota/tokens/lookup", "application/json", strings.NewReader(fmt.Sprintf(`{"name":%q}`, name)))
	if err != nil {
		g.t.Fatal(err)
	}
	defer resp.Body.Close()
	var tok struct {
		UsageCount int64 `json:"usage_count"`
		BytesUsed  int64 `json:"bytes_used"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil {
		g.t.Fatal(err)
	}
	return tok.UsageCount, tok.BytesUsed
}

// waitUsage waits until a token's usage is units and bytes.
func (g *s3Gate) waitUsage(name string, units, bytes int64, within time.Duration) {
	g.t.Helper()
	deadline := time.Now().Add(within)
	for {
		n, b := g.usage(name)
		if n == units && b == bytes {
			return
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("token %s: %d units and %d bytes charged, want %d and %d", name, n, b, units, bytes)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// metric is the value of an unlabelled metric on the gate's admin endpoint.
func (g *s3Gate) metric(name string) string {
	g.t.Helper()
	resp, err := http.Get("http://127.0.0.1:" + g.admin + "/metrics")
	if err != nil {
		g.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	return ""
}

// object reads an object back from the store itself.
func (g *s3Gate) object(bucket, key string) ([]byte, bool) {
	resp, err := http.Get("http://127.0.0.1:" + g.storage + "/" + bucket + "/" + key)
	if err != nil {
		g.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return b, resp.StatusCode == 200
}

// objects lists a bucket's keys in the store.
func (g *s3Gate) objects(bucket string) []string {
	return listObjects(g.t, "http://127.0.0.1:"+g.storage, bucket, "")
}

// s3Client is one of the real clients, configured for one access key.
type s3Client struct {
	name string
	run  func(t *testing.T, args ...string) (string, error)
	// put uploads file as bucket/key, in 5 MiB parts above 5 MiB.
	put func(t *testing.T, file, bucket, key string) (string, error)
}

// clientEnv is a clean environment for a client: its own HOME, and none of
// this machine's AWS settings (a CA bundle, say) leaking in.
func clientEnv(home string, extra ...string) []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home, "LANG=C.UTF-8", "TZ=UTC"}
	return append(env, extra...)
}

func lookClient(t *testing.T, names ...string) string {
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s not installed (CI installs rclone, s3cmd and awscli from Debian)", names[len(names)-1])
	}
	t.Skipf("%s not installed; apt-get install rclone s3cmd awscli", names[len(names)-1])
	return ""
}

func command(t *testing.T, env []string, bin string, args ...string) (string, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Dir = t.TempDir()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func newRclone(t *testing.T, g *s3Gate, access string) *s3Client {
	bin := lookClient(t, "rclone")
	home := t.TempDir()
	conf := filepath.Join(home, "rclone.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf("[gate]\ntype = s3\nprovider = Other\naccess_key_id = %s\nsecret_access_key = secret\nendpoint = http://127.0.0.1:%s\nforce_path_style = true\nregion = us-east-1\n", access, g.gate)), 0o600)
	c := &s3Client{name: "rclone"}
	c.run = func(t *testing.T, args ...string) (string, error) {
		return command(t, clientEnv(home), bin, append([]string{"--config", conf}, args...)...)
	}
	c.put = func(t *testing.T, file, bucket, key string) (string, error) {
		return c.run(t, "copyto", file, "gate:"+bucket+"/"+key, "--s3-chunk-size", "5M", "--s3-upload-cutoff", "5M")
	}
	return c
}

func newS3cmd(t *testing.T, g *s3Gate, access string) *s3Client {
	bin := lookClient(t, "s3cmd")
	home := t.TempDir()
	conf := filepath.Join(home, "s3cfg")
	os.WriteFile(conf, []byte(fmt.Sprintf("[default]\naccess_key = %s\nsecret_key = secret\nhost_base = 127.0.0.1:%s\nhost_bucket = 127.0.0.1:%s\nuse_https = False\nsignature_v2 = False\nbucket_location = us-east-1\n", access, g.gate, g.gate)), 0o600)
	c := &s3Client{name: "s3cmd"}
	c.run = func(t *testing.T, args ...string) (string, error) {
		return command(t, clientEnv(home), bin, append([]string{"-c", conf, "--no-progress"}, args...)...)
	}
	c.put = func(t *testing.T, file, bucket, key string) (string, error) {
		return c.run(t, "put", file, "s3://"+bucket+"/"+key, "--multipart-chunk-size-mb=5")
	}
	return c
}

func newAWS(t *testing.T, g *s3Gate, access string) *s3Client {
	// Debian's aws-cli, ahead of any other on PATH.
	bin := lookClient(t, "/usr/bin/aws", "aws")
	home := t.TempDir()
	conf := filepath.Join(home, "config")
	os.WriteFile(conf, []byte("[default]\ns3 =\n  multipart_threshold = 5MB\n  multipart_chunksize = 5MB\n  addressing_style = path\n"), 0o600)
	env := clientEnv(home, "AWS_ACCESS_KEY_ID="+access, "AWS_SECRET_ACCESS_KEY=secret", "AWS_DEFAULT_REGION=us-east-1", "AWS_CONFIG_FILE="+conf, "AWS_PAGER=")
	c := &s3Client{name: "aws-cli"}
	c.run = func(t *testing.T, args ...string) (string, error) {
		return command(t, env, bin, append([]string{"--endpoint-url", "http://127.0.0.1:" + g.gate}, args...)...)
	}
	c.put = func(t *testing.T, file, bucket, key string) (string, error) {
		return c.run(t, "s3", "cp", "--only-show-errors", file, "s3://"+bucket+"/"+key)
	}
	return c
}

var s3Clients = []struct {
	name string
	make func(*testing.T, *s3Gate, string) *s3Client
}{{"rclone", newRclone}, {"s3cmd", newS3cmd}, {"aws-cli", newAWS}}

func randomFile(t *testing.T, dir, name string, size int) (string, []byte) {
	b := make([]byte, size)
	rand.Read(b)
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p, b
}

const mib = 1 << 20

// TestRealS3ClientsThroughTheGate: with each client, a 16 MiB object in
// 5 MiB parts is one unit and exactly its bytes; a small one is one more;
// an exhausted token fails the client within 30 s; a byte limit reached
// mid-object leaves nothing charged once the upload is aborted or expires.
func TestRealS3ClientsThroughTheGate(t *testing.T) {
	g := startS3Gate(t, "8s")
	files := t.TempDir()
	big, bigData := randomFile(t, files, "big.bin", 16*mib)
	small, _ := randomFile(t, files, "small.bin", 1000)
	for i, cl := range s3Clients {
		t.Run(cl.name, func(t *testing.T) {
			access := fmt.Sprintf("AKIAGATETEST%08d", i)
			c := cl.make(t, g, access)
			bucket := fmt.Sprintf("bucket-%d", i)
			g.token(access, 2, 0)

			if out, err := c.put(t, big, bucket, "big.bin"); err != nil {
				t.Fatalf("16 MiB upload: %v\n%s", err, out)
			}
			n, b := g.usage(access)
			t.Logf("%s: a 16 MiB object in 5 MiB parts cost %d unit(s) and %d bytes", c.name, n, b)
			if n != 1 || b != 16*mib {
				t.Fatalf("16 MiB multipart object: %d units and %d bytes charged, want 1 and %d", n, b, 16*mib)
			}
			if got, ok := g.object(bucket, "big.bin"); !ok || !bytes.Equal(got, bigData) {
				t.Fatal("the stored object differs from the file")
			}
			if out, err := c.put(t, small, bucket, "small.bin"); err != nil {
				t.Fatalf("small upload: %v\n%s", err, out)
			}
			g.waitUsage(access, 2, 16*mib+1000, time.Second)

			// Exhausted, and no renewal: the client must give up at once.
			start := time.Now()
			out, err := c.put(t, small, bucket, "refused.bin")
			took := time.Since(start)
			t.Logf("%s: exhausted token: exit %v after %v", c.name, err, took.Round(10*time.Millisecond))
			if err == nil {
				t.Fatalf("upload with an exhausted token succeeded:\n%s", out)
			}
			if took > 30*time.Second {
				t.Errorf("the client took %v to give up on an exhausted token, want under 30s", took)
			}
			if _, ok := g.object(bucket, "refused.bin"); ok {
				t.Fatal("a refused object was stored")
			}
			g.waitUsage(access, 2, 16*mib+1000, time.Second)

			// A byte limit reached in the middle of an object.
			limited := fmt.Sprintf("AKIALIMITED%09d", i)
			lc := cl.make(t, g, limited)
			g.token(limited, 10, 12*mib)
			if out, err := lc.put(t, big, bucket, "too-big.bin"); err == nil {
				t.Fatalf("a 16 MiB upload fit a 12 MiB limit:\n%s", out)
			}
			n, b = g.usage(limited)
			t.Logf("%s: 16 MiB over a 12 MiB limit: %d unit(s), %d bytes charged when the client exited", c.name, n, b)
			// Clients that abort give it all back now; an upload left
			// behind gives it back when it expires (8s here).
			g.waitUsage(limited, 0, 0, 20*time.Second)
			if _, ok := g.object(bucket, "too-big.bin"); ok {
				t.Fatal("the refused object was stored")
			}
		})
	}
}

// TestS3ObjectCountsAreExactUnderConcurrency: many clients' uploads at
// once, single-part and multipart, against a count limit: exactly the
// limit's number of objects is stored and charged.
func TestS3ObjectCountsAreExactUnderConcurrency(t *testing.T) {
	g := startS3Gate(t, "1h")
	dir := t.TempDir()
	for i := range 24 {
		randomFile(t, dir, fmt.Sprintf("f%02d.bin", i), 2000)
	}
	g.token("AKIACONCURRENT000001", 10, 0)
	c := newRclone(t, g, "AKIACONCURRENT000001")
	c.run(t, "copy", dir, "gate:many", "--transfers", "12", "--retries", "1")
	if got := len(g.objects("many")); got != 10 {
		t.Fatalf("%d single-part objects stored with a limit of 10", got)
	}
	g.waitUsage("AKIACONCURRENT000001", 10, 20000, time.Second)

	// Multipart: six 6 MiB objects at once, room for three.
	big := t.TempDir()
	for i := range 6 {
		randomFile(t, big, fmt.Sprintf("m%d.bin", i), 6*mib)
	}
	g.token("AKIACONCURRENT000002", 3, 0)
	a := newAWS(t, g, "AKIACONCURRENT000002")
	a.run(t, "s3", "cp", "--only-show-errors", "--recursive", big, "s3://multi/")
	stored := g.objects("multi")
	if len(stored) != 3 {
		t.Fatalf("%d multipart objects stored with a limit of 3: %v", len(stored), stored)
	}
	// Refused uploads were aborted by aws-cli: only the stored bytes stay.
	g.waitUsage("AKIACONCURRENT000002", 3, 3*6*mib, 10*time.Second)
}

// TestS3MultipartAbortAndExpiry drives the multipart calls one by one with
// aws-cli's s3api: an aborted upload and an abandoned one give back their
// unit and bytes, and an expired upload can no longer be completed.
func TestS3MultipartAbortAndExpiry(t *testing.T) {
	g := startS3Gate(t, "3s")
	const key = "AKIAMULTIPART0000001"
	g.token(key, 5, 0)
	a := newAWS(t, g, key)
	part, _ := randomFile(t, t.TempDir(), "part.bin", 5*mib)
	a.run(t, "s3api", "create-bucket", "--bucket", "mp")
	create := func(object string) string {
		out, err := a.run(t, "s3api", "create-multipart-upload", "--bucket", "mp", "--key", object, "--query", "UploadId", "--output", "text")
		if err != nil {
			t.Fatalf("create-multipart-upload: %v\n%s", err, out)
		}
		id := strings.TrimSpace(out)
		if out, err := a.run(t, "s3api", "upload-part", "--bucket", "mp", "--key", object, "--upload-id", id, "--part-number", "1", "--body", part); err != nil {
			t.Fatalf("upload-part: %v\n%s", err, out)
		}
		return id
	}
	aborted := create("aborted")
	g.waitUsage(key, 1, 5*mib, time.Second)
	if got := g.metric("raftquota_multipart_uploads"); got != "1" {
		t.Fatalf("raftquota_multipart_uploads %q with one upload open, want 1", got)
	}
	if out, err := a.run(t, "s3api", "abort-multipart-upload", "--bucket", "mp", "--key", "aborted", "--upload-id", aborted); err != nil {
		t.Fatalf("abort: %v\n%s", err, out)
	}
	g.waitUsage(key, 0, 0, time.Second)

	abandoned := create("abandoned")
	g.waitUsage(key, 1, 5*mib, time.Second)
	g.waitUsage(key, 0, 0, 15*time.Second) // expiry gives it back
	parts := `{"Parts":[{"PartNumber":1,"ETag":"x"}]}`
	out, err := a.run(t, "s3api", "complete-multipart-upload", "--bucket", "mp", "--key", "abandoned", "--upload-id", abandoned, "--multipart-upload", parts)
	if err == nil || !strings.Contains(out, "NoSuchUpload") {
		t.Fatalf("completing an expired upload: %v\n%s", err, out)
	}
	if _, ok := g.object("mp", "abandoned"); ok {
		t.Fatal("an expired upload was completed")
	}
	g.waitUsage(key, 0, 0, time.Second)
}

// TestS3CopyAndBrowserUploads: CopyObject (and UploadPartCopy) is charged
// the source's size, a
// browser form upload (POST Object) one unit and the file's bytes, keyed
// by the form's credential, and a presigned PUT by its URL's credential.
func TestS3CopyAndBrowserUploads(t *testing.T) {
	g := startS3Gate(t, "1h")
	const key = "AKIACOPYPOST00000001"
	g.token(key, 10, 0)
	a := newAWS(t, g, key)
	src, _ := randomFile(t, t.TempDir(), "src.bin", 300000)
	if out, err := a.run(t, "s3", "cp", "--only-show-errors", src, "s3://cp/src.bin"); err != nil {
		t.Fatalf("upload: %v\n%s", err, out)
	}
	if out, err := a.run(t, "s3", "cp", "--only-show-errors", "s3://cp/src.bin", "s3://cp/copy.bin"); err != nil {
		t.Fatalf("copy: %v\n%s", err, out)
	}
	g.waitUsage(key, 2, 600000, time.Second)

	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	mw.WriteField("key", "form.bin")
	mw.WriteField("X-Amz-Credential", key+"/20260101/us-east-1/s3/aws4_request")
	mw.WriteField("X-Amz-Algorithm", "AWS4-HMAC-SHA256")
	fw, _ := mw.CreateFormFile("file", "form.bin")
	fw.Write(bytes.Repeat([]byte("x"), 4321))
	mw.Close()
	resp, err := http.Post("http://127.0.0.1:"+g.gate+"/cp", mw.FormDataContentType(), &body)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("POST Object: %s %s", resp.Status, b)
	}
	if got, ok := g.object("cp", "form.bin"); !ok || len(got) != 4321 {
		t.Fatalf("the form's object: stored %v, %d bytes", ok, len(got))
	}
	g.waitUsage(key, 3, 604321, time.Second)

	// A presigned PUT URL (as SDKs make them) names its key in the query.
	presigned := "http://127.0.0.1:" + g.gate + "/cp/presigned.bin?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=" + key +
		"%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20260101T000000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=00"
	req, _ := http.NewRequest("PUT", presigned, strings.NewReader(strings.Repeat("y", 999)))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("presigned PUT: %s", resp.Status)
	}
	g.waitUsage(key, 4, 605320, time.Second)

	// Above aws-cli's multipart threshold a copy is CreateMultipartUpload
	// and UploadPartCopy with ranges: still one unit and the source's bytes.
	bigSrc, bigData := randomFile(t, t.TempDir(), "big.bin", 6*mib)
	if out, err := a.run(t, "s3", "cp", "--only-show-errors", bigSrc, "s3://cp/big.bin"); err != nil {
		t.Fatalf("upload: %v\n%s", err, out)
	}
	if out, err := a.run(t, "s3", "cp", "--only-show-errors", "s3://cp/big.bin", "s3://cp/big-copy.bin"); err != nil {
		t.Fatalf("multipart copy: %v\n%s", err, out)
	}
	if got, ok := g.object("cp", "big-copy.bin"); !ok || !bytes.Equal(got, bigData) {
		t.Fatal("the multipart copy differs from its source")
	}
	g.waitUsage(key, 6, 605320+2*6*mib, time.Second)
}

// TestS3WritesWithoutAKeyNeverPass: no shape of write request gets past
// the gate without a token, and answers are S3 XML errors.
func TestS3WritesWithoutAKeyNeverPass(t *testing.T) {
	g := startS3Gate(t, "1h")
	var wg sync.WaitGroup
	for _, req := range []struct{ method, path string }{
		{"PUT", "/b/o"}, {"PUT", "/b"}, {"POST", "/b/o?uploads"}, {"PUT", "/b/o?partNumber=1&uploadId=x"},
		{"POST", "/b/o?uploadId=x"}, {"DELETE", "/b/o"}, {"POST", "/b?delete"}, {"PUT", "/b/o?tagging"}, {"PATCH", "/b/o"},
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, _ := http.NewRequest(req.method, "http://127.0.0.1:"+g.gate+req.path, strings.NewReader("<x/>"))
			resp, err := http.DefaultClient.Do(r)
			if err != nil {
				t.Error(err)
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode < 400 || !strings.Contains(string(b), "<Error>") {
				t.Errorf("%s %s without a key: %s %s", req.method, req.path, resp.Status, b)
			}
		}()
	}
	wg.Wait()
	if keys := g.objects("b"); len(keys) != 0 {
		t.Fatalf("objects stored without a key: %v", keys)
	}
}

// TestS3RenewingTokenIsRetried: a renewing token out of uploads answers
// 503 SlowDown with Retry-After, which S3 clients retry: the upload goes
// through once the window renews, without the user doing anything.
func TestS3RenewingTokenIsRetried(t *testing.T) {
	g := startS3Gate(t, "1h")
	const key = "AKIARENEWING00000001"
	body := fmt.Sprintf(`{"name":%q,"usage_limit":1,"renew_every":"3s"}`, key)
	resp, err := http.Post("http://127.0.0.1:"+g.admin+"/quota/tokens", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("creating a renewing token: %s", resp.Status)
	}
	c := newRclone(t, g, key)
	small, _ := randomFile(t, t.TempDir(), "small.bin", 100)
	if out, err := c.put(t, small, "renew", "one.bin"); err != nil {
		t.Fatalf("first upload: %v\n%s", err, out)
	}
	start := time.Now()
	if out, err := c.put(t, small, "renew", "two.bin"); err != nil {
		t.Fatalf("the upload after the window renewed: %v\n%s", err, out)
	}
	t.Logf("rclone waited %v for the window to renew", time.Since(start).Round(10*time.Millisecond))
	if _, ok := g.object("renew", "two.bin"); !ok {
		t.Fatal("the retried upload was not stored")
	}
}

// TestS3HeaderTokens: with a key placeholder, a header names the token. s3cmd
// sends --add-header only on CreateMultipartUpload, not on the parts; the
// parts are charged to the token that reserved the upload, and the access
// key (which names no token here) is never charged.
func TestS3HeaderTokens(t *testing.T) {
	g := startS3Gate(t, "1h", "\tquota {\n\t\ts3 {", "\tquota {\n\t\tkey {http.request.header.X-Quota-Token}\n\t\ts3 {")
	g.token("header-token", 5, 0)
	c := newS3cmd(t, g, "AKIANOTATOKEN0000001")
	big, _ := randomFile(t, t.TempDir(), "big.bin", 12*mib)
	if out, err := c.run(t, "put", big, "s3://hdr/big.bin", "--multipart-chunk-size-mb=5", "--add-header=X-Quota-Token:header-token"); err != nil {
		t.Fatalf("s3cmd multipart with a header token: %v\n%s", err, out)
	}
	g.waitUsage("header-token", 1, 12*mib, time.Second)
	if _, ok := g.object("hdr", "big.bin"); !ok {
		t.Fatal("the object was not stored")
	}
	// Without the header, the access key is the token: unknown here.
	if out, err := c.put(t, big, "hdr", "refused.bin"); err == nil {
		t.Fatalf("an upload under an access key that is no token went through:\n%s", out)
	}
	g.waitUsage("header-token", 1, 12*mib, time.Second)
}
