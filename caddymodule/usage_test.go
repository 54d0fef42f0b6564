package caddymodule

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddytest"
)

// TestUsageForAnS3AccessKey: quota_usage with s3 answers for the token the
// request's access key names (SigV4 header or a presigned URL), as the S3
// gate charges it, and refuses an unknown key as the gate would.
func TestUsageForAnS3AccessKey(t *testing.T) {
	tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{AdminPort: adminPort})
	load(tester, config("", `quota_usage {
		s3
	}`))
	if st, _ := admin(t, "POST", "/quota/tokens", `{"name":"AKIAUSAGE00000000001","usage_limit":5}`); st != 201 {
		t.Fatalf("create: %d", st)
	}
	get := func(auth, query string) (int, string) {
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/usage%s", httpPort, query), nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tt := range []struct{ auth, query string }{
		{"AWS4-HMAC-SHA256 Credential=AKIAUSAGE00000000001/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00", ""},
		{"", "?X-Amz-Credential=AKIAUSAGE00000000001%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature=00"},
	} {
		st, body := get(tt.auth, tt.query)
		var v struct {
			Token struct {
				Remaining int64 `json:"remaining"`
			} `json:"token"`
		}
		if st != 200 || json.Unmarshal([]byte(body), &v) != nil || v.Token.Remaining != 5 || strings.Contains(body, "AKIAUSAGE") {
			t.Fatalf("usage for an access key (%q %q): %d %s", tt.auth, tt.query, st, body)
		}
	}
	if st, _ := get("AWS4-HMAC-SHA256 Credential=AKIANOSUCHKEY0000001/20260101/us-east-1/s3/aws4_request, Signature=00", ""); st != 403 {
		t.Fatalf("usage for an unknown access key: %d", st)
	}
	if st, _ := get("", ""); st != 401 {
		t.Fatalf("usage without a key: %d", st)
	}
}
