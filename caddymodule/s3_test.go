package caddymodule

import (
	"bytes"
	"cmp"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/raftquota/raftquota/raftstore/state"
)

func TestClassifyS3(t *testing.T) {
	tests := []struct {
		method, target string
		header         map[string]string
		want           s3Op
	}{
		{"GET", "/b/o", nil, s3Read},
		{"HEAD", "/b/o", nil, s3Read},
		{"GET", "/b?list-type=2", nil, s3Read},
		{"PUT", "/b/o", nil, s3Put},
		{"PUT", "/b/dir/o.txt", nil, s3Put},
		{"PUT", "/b/o", map[string]string{"X-Amz-Copy-Source": "/b/src"}, s3Copy},
		{"PUT", "/b/o?partNumber=3&uploadId=u", nil, s3Part},
		{"PUT", "/b/o?partNumber=3&uploadId=u", map[string]string{"X-Amz-Copy-Source": "b/src"}, s3PartCopy},
		{"PUT", "/b/o?tagging", nil, s3OtherWrite},
		{"PUT", "/b/o?acl", nil, s3OtherWrite},
		{"PUT", "/b", nil, s3OtherWrite},
		{"PUT", "/b/", nil, s3OtherWrite},
		{"POST", "/b/o?uploads", nil, s3Create},
		{"POST", "/b/o?uploadId=u", nil, s3Complete},
		{"POST", "/b", map[string]string{"Content-Type": "multipart/form-data; boundary=x"}, s3PostObject},
		{"POST", "/b?delete", nil, s3OtherWrite},
		{"POST", "/b", nil, s3OtherWrite},
		{"DELETE", "/b/o?uploadId=u", nil, s3Abort},
		{"DELETE", "/b/o", nil, s3OtherWrite},
		{"DELETE", "/b", nil, s3OtherWrite},
		{"PATCH", "/b/o", nil, s3OtherWrite},
	}
	for _, tt := range tests {
		r := httptest.NewRequest(tt.method, tt.target, nil)
		r.Host = "127.0.0.1:9000" // an IP: path-style
		for k, v := range tt.header {
			r.Header.Set(k, v)
		}
		if got := classify(r, addressOf(r, nil)); got != tt.want {
			t.Errorf("%s %s %v: %d, want %d", tt.method, tt.target, tt.header, got, tt.want)
		}
	}
}

func TestAccessKey(t *testing.T) {
	tests := []struct {
		name, auth, target, want string
	}{
		{"sigv4", "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=abc", "/b/o", "AKIAEXAMPLE"},
		{"sigv4 without spaces", "AWS4-HMAC-SHA256 Credential=AKIA2/20260101/us-east-1/s3/aws4_request,SignedHeaders=host,Signature=abc", "/b/o", "AKIA2"},
		{"sigv2", "AWS AKIAV2:c2lnbmF0dXJl", "/b/o", "AKIAV2"},
		{"presigned v4", "", "/b/o?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAPRE%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature=x", "AKIAPRE"},
		{"presigned v2", "", "/b/o?AWSAccessKeyId=AKIAPRE2&Signature=x&Expires=1", "AKIAPRE2"},
		{"credential without scope", "AWS4-HMAC-SHA256 Credential=AKIA3, Signature=abc", "/b/o", ""},
		{"bearer is no access key", "Bearer xyz", "/b/o", ""},
		{"nothing", "", "/b/o", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("PUT", tt.target, nil)
			if tt.auth != "" {
				r.Header.Set("Authorization", tt.auth)
			}
			if got := accessKey(r); got != tt.want {
				t.Fatalf("accessKey = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestObjectBytes(t *testing.T) {
	r := httptest.NewRequest("PUT", "/b/o", strings.NewReader("0123456789"))
	if n, ok := objectBytes(r); !ok || n != 10 {
		t.Fatalf("plain body: %d %v", n, ok)
	}
	// aws-chunked: the object is the decoded length, not the wire's.
	r.Header.Set("X-Amz-Decoded-Content-Length", "7")
	if n, ok := objectBytes(r); !ok || n != 7 {
		t.Fatalf("aws-chunked body: %d %v", n, ok)
	}
	r.Header.Set("X-Amz-Decoded-Content-Length", "-1")
	if _, ok := objectBytes(r); ok {
		t.Fatal("a negative decoded length was accepted")
	}
	r = httptest.NewRequest("PUT", "/b/o", nil)
	r.ContentLength = -1
	if _, ok := objectBytes(r); ok {
		t.Fatal("a body of unknown length was accepted")
	}
}

// S3 clients retry 503 and give up on 403: tokens that cannot recover must
// get 403, renewing ones 503 SlowDown.
func TestS3DenialsAreFinalOnlyWhenTheTokenCannotRecover(t *testing.T) {
	renewing := &state.Decision{ResetAt: 1}
	tests := []struct {
		kind       string
		d          *state.Decision
		wantStatus int
		wantCode   string
	}{
		{"exhausted", &state.Decision{}, 403, "QuotaExceeded"},
		{"bytes_exhausted", &state.Decision{}, 403, "QuotaExceeded"},
		{"exhausted", renewing, 503, "SlowDown"},
		{"bytes_exhausted", renewing, 503, "SlowDown"},
		{"revoked", nil, 403, "AccessDenied"},
		{"expired", nil, 403, "AccessDenied"},
		{"unknown", nil, 403, "AccessDenied"},
		{"missing_key", nil, 403, "AccessDenied"},
		{"invalid_key", nil, 403, "AccessDenied"},
		{"unavailable", nil, 503, "SlowDown"},
		{"too_many_uploads", nil, 503, "SlowDown"},
		{"no_such_upload", nil, 404, "NoSuchUpload"},
		{"length_required", nil, 411, "MissingContentLength"},
	}
	for _, tt := range tests {
		status, code := s3Denial(0, tt.kind, tt.d)
		if status != tt.wantStatus || code != tt.wantCode {
			t.Errorf("%s (renewing %v): %d %s, want %d %s", tt.kind, tt.d == renewing, status, code, tt.wantStatus, tt.wantCode)
		}
	}
}

func TestPostObjectSize(t *testing.T) {
	file := bytes.Repeat([]byte("z"), 70000) // longer than one read
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	mw.WriteField("key", "uploads/${filename}")
	mw.WriteField("Policy", strings.Repeat("p", 5000))
	mw.WriteField("X-Amz-Credential", "AKIAFORM/20260101/us-east-1/s3/aws4_request")
	// A field whose file name is "file" is not the file field.
	decoy, _ := mw.CreateFormFile("notes", "file")
	decoy.Write([]byte("decoy"))
	fw, _ := mw.CreateFormFile("file", "a.bin")
	fw.Write(file)
	mw.Close()
	whole := bytes.Clone(body.Bytes())
	r := httptest.NewRequest("POST", "/b", bytes.NewReader(whole))
	r.Header.Set("Content-Type", mw.FormDataContentType())
	size, access := postObjectSize(r)
	if size != int64(len(file)) || access != "AKIAFORM" {
		t.Fatalf("size %d access %q, want %d and AKIAFORM", size, access, len(file))
	}
	// The body goes on whole.
	got, _ := io.ReadAll(r.Body)
	if !bytes.Equal(got, whole) {
		t.Fatal("the form's body changed")
	}

	// No file field: the size is not known.
	body.Reset()
	mw = multipart.NewWriter(&body)
	mw.WriteField("key", "x")
	mw.Close()
	r = httptest.NewRequest("POST", "/b", bytes.NewReader(body.Bytes()))
	r.Header.Set("Content-Type", mw.FormDataContentType())
	if size, _ := postObjectSize(r); size != -1 {
		t.Fatalf("a form without a file: size %d", size)
	}
	// Chunked, no length: unknown.
	r = httptest.NewRequest("POST", "/b", bytes.NewReader(whole))
	r.Header.Set("Content-Type", "multipart/form-data; boundary="+mw.Boundary())
	r.ContentLength = -1
	if size, _ := postObjectSize(r); size != -1 {
		t.Fatalf("a form of unknown length: size %d", size)
	}
}

func TestS3ErrorIsXML(t *testing.T) {
	w := httptest.NewRecorder()
	x := &exchange{h: &Handler{S3: &S3{}}, w: w, r: httptest.NewRequest("PUT", "/b/o", nil)}
	x.s3Error(http.StatusServiceUnavailable, "SlowDown", "later")
	if w.Code != 503 || w.Header().Get("Retry-After") == "" || w.Header().Get("Content-Type") != "application/xml" {
		t.Fatalf("status %d headers %v", w.Code, w.Header())
	}
	if !strings.Contains(w.Body.String(), "<Error><Code>SlowDown</Code><Message>later</Message><Resource>/b/o</Resource></Error>") {
		t.Fatalf("body %s", w.Body)
	}
}

func TestS3ModeRejectsSettingsItReplaces(t *testing.T) {
	tests := []struct {
		name string
		h    Handler
		want string
	}{
		{"bytes", Handler{S3: &S3{}, Bytes: "{http.request.header.Content-Length}"}, "remove bytes"},
		{"check_only", Handler{S3: &S3{}, CheckOnly: true}, "do not go together"},
		{"idempotency_key", Handler{S3: &S3{}, IdempotencyKey: "{http.request.header.X}"}, "remove idempotency_key"},
		{"charge_on attempt", Handler{S3: &S3{}, ChargeOn: "attempt"}, "charge_on attempt does not apply"},
	}
	for _, tt := range tests {
		tt.h.ChargeOn = cmp.Or(tt.h.ChargeOn, "success")
		tt.h.OnUnavailable = "deny"
		if err := tt.h.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.want)
		}
	}
	// No key is needed: the access key is the token.
	h := Handler{S3: &S3{}, ChargeOn: "success", OnUnavailable: "deny"}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
}
