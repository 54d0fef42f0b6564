package robustness

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Virtual-hosted-style S3 (the bucket in the Host, the path only the key)
// through the example gate as shipped, whose S3 domain is localhost: the
// clients address http://localhost:PORT and send BUCKET.localhost:PORT.
// Nothing here resolves BUCKET.localhost, so each client is pointed at the
// gate as its HTTP proxy: the gate then receives exactly the requests the
// client would send to a real BUCKET.localhost, Host and signature
// included.

// virtualClients are the real clients in virtual-hosted style.
var virtualClients = []struct {
	name string
	make func(*testing.T, *s3Gate, string) *s3Client
}{
	{"rclone", newRcloneVirtual},
	{"s3cmd", newS3cmdVirtual},
	{"aws-cli", newAWSVirtual},
	{"boto3", func(t *testing.T, g *s3Gate, access string) *s3Client { return newBoto3(t, g, access, "virtual") }},
}

// proxyEnv routes a client's plain-HTTP requests through the gate.
func (g *s3Gate) proxyEnv() []string {
	p := "http://127.0.0.1:" + g.gate
	return []string{"HTTP_PROXY=" + p, "http_proxy=" + p, "NO_PROXY=", "no_proxy="}
}

func newRcloneVirtual(t *testing.T, g *s3Gate, access string) *s3Client {
	bin := lookClient(t, "rclone")
	home := t.TempDir()
	conf := filepath.Join(home, "rclone.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf("[gate]\ntype = s3\nprovider = Other\naccess_key_id = %s\nsecret_access_key = secret\nendpoint = http://localhost:%s\nforce_path_style = false\nregion = us-east-1\n", access, g.gate)), 0o600)
	c := &s3Client{name: "rclone"}
	c.run = func(t *testing.T, args ...string) (string, error) {
		return command(t, clientEnv(home, g.proxyEnv()...), bin, append([]string{"--config", conf}, args...)...)
	}
	c.put = func(t *testing.T, file, bucket, key string) (string, error) {
		return c.run(t, "copyto", file, "gate:"+bucket+"/"+key, "--s3-chunk-size", "5M", "--s3-upload-cutoff", "5M")
	}
	return c
}

func newS3cmdVirtual(t *testing.T, g *s3Gate, access string) *s3Client {
	bin := lookClient(t, "s3cmd")
	home := t.TempDir()
	conf := filepath.Join(home, "s3cfg")
	os.WriteFile(conf, []byte(fmt.Sprintf("[default]\naccess_key = %s\nsecret_key = secret\nhost_base = localhost:%s\nhost_bucket = %%(bucket)s.localhost:%s\nuse_https = False\nsignature_v2 = False\nbucket_location = us-east-1\nproxy_host = 127.0.0.1\nproxy_port = %s\n", access, g.gate, g.gate, g.gate)), 0o600)
	c := &s3Client{name: "s3cmd"}
	c.run = func(t *testing.T, args ...string) (string, error) {
		return command(t, clientEnv(home), bin, append([]string{"-c", conf, "--no-progress"}, args...)...)
	}
	c.put = func(t *testing.T, file, bucket, key string) (string, error) {
		return c.run(t, "put", file, "s3://"+bucket+"/"+key, "--multipart-chunk-size-mb=5")
	}
	return c
}

func newAWSVirtual(t *testing.T, g *s3Gate, access string) *s3Client {
	bin := lookClient(t, "/usr/bin/aws", "aws")
	home := t.TempDir()
	conf := filepath.Join(home, "config")
	os.WriteFile(conf, []byte("[default]\ns3 =\n  multipart_threshold = 5MB\n  multipart_chunksize = 5MB\n  addressing_style = virtual\n"), 0o600)
	env := clientEnv(home, append(g.proxyEnv(), "AWS_ACCESS_KEY_ID="+access, "AWS_SECRET_ACCESS_KEY=secret", "AWS_DEFAULT_REGION=us-east-1", "AWS_CONFIG_FILE="+conf, "AWS_PAGER=")...)
	c := &s3Client{name: "aws-cli"}
	c.run = func(t *testing.T, args ...string) (string, error) {
		return command(t, env, bin, append([]string{"--endpoint-url", "http://localhost:" + g.gate}, args...)...)
	}
	c.put = func(t *testing.T, file, bucket, key string) (string, error) {
		return c.run(t, "s3", "cp", "--only-show-errors", file, "s3://"+bucket+"/"+key)
	}
	return c
}

// boto3Script uploads a file with boto3's managed transfer (multipart in
// 5 MiB parts above 5 MiB) in the addressing style it is given.
const boto3Script = `
import sys, boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
endpoint, style, path, bucket, key = sys.argv[1:6]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  config=Config(s3={"addressing_style": style}, retries={"mode": "standard", "max_attempts": 2}))
mib = 1024 * 1024
s3.upload_file(path, bucket, key, Config=TransferConfig(multipart_threshold=5 * mib, multipart_chunksize=5 * mib, max_concurrency=2))
`

// newBoto3 is boto3 from Debian's python3-boto3, in style "virtual" or
// "path".
func newBoto3(t *testing.T, g *s3Gate, access, style string) *s3Client {
	py := lookClient(t, "/usr/bin/python3")
	if err := exec.Command(py, "-c", "import boto3").Run(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("boto3 not installed (CI installs python3-boto3 from Debian)")
		}
		t.Skip("boto3 not installed; apt-get install python3-boto3")
	}
	home := t.TempDir()
	script := filepath.Join(home, "put.py")
	os.WriteFile(script, []byte(boto3Script), 0o600)
	env := clientEnv(home, "AWS_ACCESS_KEY_ID="+access, "AWS_SECRET_ACCESS_KEY=secret", "AWS_CONFIG_FILE=/dev/null")
	endpoint := "http://127.0.0.1:" + g.gate
	if style == "virtual" {
		env = append(env, g.proxyEnv()...)
		endpoint = "http://localhost:" + g.gate
	}
	c := &s3Client{name: "boto3 " + style}
	c.run = func(t *testing.T, args ...string) (string, error) { return command(t, env, py, args...) }
	c.put = func(t *testing.T, file, bucket, key string) (string, error) {
		return c.run(t, script, endpoint, style, file, bucket, key)
	}
	return c
}

// TestRealS3ClientsVirtualHosted: each client, in virtual-hosted style,
// stores a 16 MiB object in 5 MiB parts for one unit and exactly its
// bytes, and a small one for one more; then, its token exhausted, it is
// refused and nothing is stored.
func TestRealS3ClientsVirtualHosted(t *testing.T) {
	g := startS3Gate(t, "1h")
	files := t.TempDir()
	big, bigData := randomFile(t, files, "big.bin", 16*mib)
	small, _ := randomFile(t, files, "small.bin", 1000)
	for i, cl := range virtualClients {
		t.Run(cl.name, func(t *testing.T) {
			access := fmt.Sprintf("AKIAVIRTUAL%09d", i)
			c := cl.make(t, g, access)
			bucket := fmt.Sprintf("vbucket-%d", i)
			g.token(access, 2, 0)
			if out, err := c.put(t, big, bucket, "dir/big.bin"); err != nil {
				t.Fatalf("16 MiB upload: %v\n%s", err, out)
			}
			n, b := g.usage(access)
			t.Logf("%s, virtual-hosted: a 16 MiB object in 5 MiB parts cost %d unit(s) and %d bytes", c.name, n, b)
			if n != 1 || b != 16*mib {
				t.Fatalf("16 MiB multipart object: %d units and %d bytes charged, want 1 and %d", n, b, 16*mib)
			}
			if got, ok := g.object(bucket, "dir/big.bin"); !ok || !bytes.Equal(got, bigData) {
				t.Fatal("the stored object differs from the file (or is not in the bucket the Host named)")
			}
			if out, err := c.put(t, small, bucket, "small.bin"); err != nil {
				t.Fatalf("small upload: %v\n%s", err, out)
			}
			g.waitUsage(access, 2, 16*mib+1000, time.Second)
			out, err := c.put(t, small, bucket, "refused.bin")
			t.Logf("%s, virtual-hosted, exhausted token: exit %v", c.name, err)
			if err == nil {
				t.Fatalf("upload with an exhausted token succeeded:\n%s", out)
			}
			if _, ok := g.object(bucket, "refused.bin"); ok {
				t.Fatal("a refused object was stored")
			}
			g.waitUsage(access, 2, 16*mib+1000, time.Second)
		})
	}
}

// TestBoto3PathStyle: boto3 in path style, the same charges.
func TestBoto3PathStyle(t *testing.T) {
	g := startS3Gate(t, "1h")
	big, bigData := randomFile(t, t.TempDir(), "big.bin", 16*mib)
	const access = "AKIABOTOPATH00000001"
	c := newBoto3(t, g, access, "path")
	g.token(access, 1, 0)
	if out, err := c.put(t, big, "pbucket", "big.bin"); err != nil {
		t.Fatalf("16 MiB upload: %v\n%s", err, out)
	}
	n, b := g.usage(access)
	t.Logf("boto3, path-style: a 16 MiB object in 5 MiB parts cost %d unit(s) and %d bytes", n, b)
	if n != 1 || b != 16*mib {
		t.Fatalf("%d units and %d bytes charged, want 1 and %d", n, b, 16*mib)
	}
	if got, ok := g.object("pbucket", "big.bin"); !ok || !bytes.Equal(got, bigData) {
		t.Fatal("the stored object differs from the file")
	}
	if out, err := c.put(t, big, "pbucket", "again.bin"); err == nil {
		t.Fatalf("upload with an exhausted token succeeded:\n%s", out)
	}
}

// s3Raw sends one request to the gate with Host host, signed (as far as
// the gate reads signatures) by access.
func (g *s3Gate) s3Raw(method, host, target, access string, body string, header ...string) (int, string) {
	g.t.Helper()
	req, err := http.NewRequest(method, "http://127.0.0.1:"+g.gate+target, strings.NewReader(body))
	if err != nil {
		g.t.Fatal(err)
	}
	req.Host = host
	req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential="+access+"/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		g.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestS3NoWritePassesUnclassified: the bypass that a one-segment
// virtual-hosted PUT was (an exhausted token's object stored as an
// uncharged CreateBucket) is a 403 QuotaExceeded now; writes to a Host the
// gate cannot place are refused with a message that says how to configure
// it; bucket-level writes pass only where the style is known.
func TestS3NoWritePassesUnclassified(t *testing.T) {
	g := startS3Gate(t, "1h")
	const spent = "AKIASPENT00000000001"
	g.token(spent, 1, 0)
	if st, body := g.s3Raw("PUT", "vh5d.localhost:"+g.gate, "/vobj3.txt", spent, "one"); st != 200 {
		t.Fatalf("virtual-hosted PUT with a token that has room: %d %s", st, body)
	}
	if got, ok := g.object("vh5d", "vobj3.txt"); !ok || string(got) != "one" {
		t.Fatal("the virtual-hosted PUT was not stored as vh5d/vobj3.txt")
	}
	g.waitUsage(spent, 1, 3, time.Second)
	st, body := g.s3Raw("PUT", "vh5d.localhost:"+g.gate, "/vobj4.txt", spent, "two")
	t.Logf("exhausted token, virtual-hosted PUT /vobj4.txt: %d %s", st, body)
	if st != 403 || !strings.Contains(body, "<Code>QuotaExceeded</Code>") {
		t.Fatalf("exhausted token's virtual-hosted PUT: %d %s, want 403 QuotaExceeded", st, body)
	}

	const room = "AKIAROOM000000000001"
	g.token(room, 100, 0)
	for _, req := range []struct{ method, host, target string }{
		{"PUT", "vh5d.elsewhere.test", "/obj"},
		{"PUT", "elsewhere.test", "/obj"},
		{"POST", "vh5d.elsewhere.test", "/obj?uploads"},
		{"PUT", "vh5d.elsewhere.test", "/obj?partNumber=1&uploadId=x"},
		{"POST", "vh5d.elsewhere.test", "/obj?uploadId=x"},
		{"DELETE", "vh5d.elsewhere.test", "/obj?uploadId=x"},
	} {
		st, body := g.s3Raw(req.method, req.host, req.target, room, "<x/>")
		if st != 400 || !strings.Contains(body, "<Code>InvalidRequest</Code>") || !strings.Contains(body, "domain") {
			t.Errorf("%s %s%s: %d %s, want 400 InvalidRequest naming the domain setting", req.method, req.host, req.target, st, body)
		}
	}
	g.waitUsage(room, 0, 0, time.Second)
	if keys := g.objects("vh5d"); len(keys) != 1 {
		t.Fatalf("bucket vh5d holds %v, want only vobj3.txt", keys)
	}
	// Where the style is known, a bucket-level write is one.
	if st, body := g.s3Raw("PUT", "newbucket.localhost:"+g.gate, "/", room, ""); st != 200 {
		t.Fatalf("virtual-hosted CreateBucket: %d %s", st, body)
	}
	if st, body := g.s3Raw("PUT", "127.0.0.1:"+g.gate, "/otherbucket", room, ""); st != 200 {
		t.Fatalf("path-style CreateBucket: %d %s", st, body)
	}
	// Two path segments are an object in either reading: charged.
	if st, body := g.s3Raw("PUT", "elsewhere.test", "/b2/obj", room, "12345"); st != 200 {
		t.Fatalf("two-segment PUT to an unknown Host: %d %s", st, body)
	}
	g.waitUsage(room, 1, 5, time.Second)
}

// TestS3IncompleteBody: a PutObject whose body ends before its
// Content-Length gets S3's IncompleteBody and charges nothing.
func TestS3IncompleteBody(t *testing.T) {
	g := startS3Gate(t, "1h")
	const access = "AKIASHORTBODY0000001"
	g.token(access, 5, 0)
	for _, host := range []string{"127.0.0.1:" + g.gate, "sb.localhost:" + g.gate} {
		target := "/sb/short.bin"
		if strings.HasPrefix(host, "sb.") {
			target = "/short.bin"
		}
		status, body := shortPut(t, g.gate, host, target, access)
		t.Logf("Host %s, 50 of 100 bytes: %s", host, body)
		if status != "400" || !strings.Contains(body, "<Code>IncompleteBody</Code>") {
			t.Fatalf("a body shorter than its Content-Length (Host %s): %s %s", host, status, body)
		}
	}
	g.waitUsage(access, 0, 0, 5*time.Second)
	if _, ok := g.object("sb", "short.bin"); ok {
		t.Fatal("a short body was stored")
	}
}

// shortPut sends a PUT that declares 100 bytes, sends 50 and closes its
// side of the connection; it returns the answer's status and body.
func shortPut(t *testing.T, port, host, target, access string) (string, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", "127.0.0.1:"+port, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(conn, "PUT %s HTTP/1.1\r\nHost: %s\r\nAuthorization: AWS4-HMAC-SHA256 Credential=%s/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00\r\nContent-Length: 100\r\n\r\n%s",
		target, host, access, strings.Repeat("x", 50))
	conn.(*net.TCPConn).CloseWrite()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the answer to a short body: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strconv.Itoa(resp.StatusCode), string(b)
}

// TestS3GatewayWalkthroughRunsAsWritten runs the sh blocks of
// examples/s3-gateway/README.md after its first (which builds and runs
// Caddy: the test's binary runs the example's Caddyfile, ports moved)
// with bash, in a directory holding ./photos and big.iso, the clients'
// settings in a HOME of its own; then checks what the token was charged.
func TestS3GatewayWalkthroughRunsAsWritten(t *testing.T) {
	for _, c := range []string{"rclone", "s3cmd"} {
		lookClient(t, c)
	}
	lookClient(t, "/usr/bin/aws", "aws")
	g := startS3Gate(t, "24h")
	b, err := os.ReadFile(filepath.Join("..", "examples", "s3-gateway", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	os.Mkdir(filepath.Join(work, "photos"), 0o755)
	for i := range 3 {
		randomFile(t, filepath.Join(work, "photos"), fmt.Sprintf("p%d.jpg", i), 1000)
	}
	randomFile(t, work, "big.iso", 6*mib)
	os.WriteFile(filepath.Join(work, "report.pdf"), []byte("pdf"), 0o644)
	ports := map[string]string{"8333": g.gate, "2333": g.admin, "9333": g.storage}
	var script strings.Builder
	blocks := regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(string(b), -1)
	for _, blk := range blocks[1:] { // the first builds and runs Caddy
		s := blk[1]
		s = strings.ReplaceAll(s, "./caddy ", binary+" ")
		for from, to := range ports {
			s = strings.ReplaceAll(s, ":"+from, ":"+to)
		}
		script.WriteString(s + "\n")
	}
	home := t.TempDir()
	cmd := exec.Command("bash", "-e", "-c", script.String())
	cmd.Dir = work
	cmd.Env = clientEnv(home, "PATH=/usr/bin:"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the walkthrough: %v\n%s", err, out)
	}
	// 3 photos, big.iso by rclone and by aws-cli, the copy, s3cmd's put,
	// and the virtual-hosted curl.
	n, by := g.usage("AKIAEXAMPLEGATE00001")
	t.Logf("the walkthrough charged %d uploads and %d bytes", n, by)
	if want := int64(3*1000 + 6*mib*4 + 3); n != 8 || by != want {
		t.Fatalf("the walkthrough charged %d uploads and %d bytes, want 8 and %d\n%s", n, by, want, out)
	}
}

// TestS3VirtualHostedShapes: the request shapes SDKs and browsers send,
// virtual-hosted: a presigned PUT (the credential in the query), a POST
// Object form to the bucket's root, and an aws-chunked body (charged its
// decoded length). Each is charged one unit and the object's bytes and
// stored in the bucket the Host names.
func TestS3VirtualHostedShapes(t *testing.T) {
	g := startS3Gate(t, "1h")
	const key = "AKIAVHSHAPES00000001"
	g.token(key, 10, 0)
	host := "shapes.localhost:" + g.gate
	send := func(req *http.Request) {
		t.Helper()
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode >= 300 {
			t.Fatalf("%s %s: %s %s", req.Method, req.URL, resp.Status, b)
		}
	}

	presigned, _ := http.NewRequest("PUT", "http://127.0.0.1:"+g.gate+"/presigned.bin?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential="+key+
		"%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20260101T000000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=00", strings.NewReader(strings.Repeat("p", 700)))
	send(presigned)
	g.waitUsage(key, 1, 700, time.Second)

	var form bytes.Buffer
	mw := multipart.NewWriter(&form)
	mw.WriteField("key", "form.bin")
	mw.WriteField("X-Amz-Credential", key+"/20260101/us-east-1/s3/aws4_request")
	fw, _ := mw.CreateFormFile("file", "form.bin")
	fw.Write(bytes.Repeat([]byte("f"), 1234))
	mw.Close()
	post, _ := http.NewRequest("POST", "http://127.0.0.1:"+g.gate+"/", &form)
	post.Header.Set("Content-Type", mw.FormDataContentType())
	send(post)
	g.waitUsage(key, 2, 700+1234, time.Second)

	// aws-chunked: one 300-byte chunk and the final empty one.
	payload := strings.Repeat("c", 300)
	chunked := fmt.Sprintf("%x;chunk-signature=%s\r\n%s\r\n0;chunk-signature=%s\r\n\r\n", len(payload), strings.Repeat("0", 64), payload, strings.Repeat("0", 64))
	put, _ := http.NewRequest("PUT", "http://127.0.0.1:"+g.gate+"/chunked.bin", strings.NewReader(chunked))
	put.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential="+key+"/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00")
	put.Header.Set("X-Amz-Content-Sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")
	put.Header.Set("Content-Encoding", "aws-chunked")
	put.Header.Set("X-Amz-Decoded-Content-Length", "300")
	send(put)
	g.waitUsage(key, 3, 700+1234+300, time.Second)

	for obj, size := range map[string]int{"presigned.bin": 700, "form.bin": 1234} {
		if got, ok := g.object("shapes", obj); !ok || len(got) != size {
			t.Errorf("shapes/%s: stored %v, %d bytes; want %d", obj, ok, len(got), size)
		}
	}
	if _, ok := g.object("shapes", "chunked.bin"); !ok {
		t.Error("the aws-chunked object was not stored in the Host's bucket")
	}
}
