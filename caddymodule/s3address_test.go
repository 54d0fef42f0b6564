package caddymodule

import (
	"net/http/httptest"
	"strings"
	"testing"
)

// Every write the gate meets is read the same way in both addressing
// styles, or refused: a virtual-hosted PutObject is never mistaken for an
// uncharged bucket write.
func TestS3AddressingStyles(t *testing.T) {
	domains := []string{"s3.example.com", "localhost"}
	copyFrom := map[string]string{"X-Amz-Copy-Source": "src/a.bin"}
	form := map[string]string{"Content-Type": "multipart/form-data; boundary=x"}
	tests := []struct {
		method, host, target string
		header               map[string]string
		want                 s3Op
		style                s3Style
		bucket, key          string
	}{
		// Path-style: the configured domain itself, or an IP.
		{"PUT", "s3.example.com", "/b/o", nil, s3Put, stylePath, "b", "o"},
		{"PUT", "S3.Example.COM.:443", "/b/o", nil, s3Put, stylePath, "b", "o"},
		{"PUT", "s3.example.com", "/b", nil, s3OtherWrite, stylePath, "b", ""},
		{"PUT", "127.0.0.1:8333", "/b", nil, s3OtherWrite, stylePath, "b", ""},
		{"PUT", "[::1]:8333", "/b/o", nil, s3Put, stylePath, "b", "o"},
		{"PUT", "localhost:8333", "/b", nil, s3OtherWrite, stylePath, "b", ""},
		// Virtual-hosted: BUCKET.DOMAIN, the path is the key.
		{"PUT", "b.s3.example.com", "/o", nil, s3Put, styleVirtual, "b", "o"},
		{"PUT", "my.dotted.bucket.s3.example.com:8333", "/dir/o", nil, s3Put, styleVirtual, "my.dotted.bucket", "dir/o"},
		{"PUT", "vh5d.localhost", "/vobj4.txt", nil, s3Put, styleVirtual, "vh5d", "vobj4.txt"},
		{"PUT", "b.s3.example.com", "/o", copyFrom, s3Copy, styleVirtual, "b", "o"},
		{"PUT", "b.s3.example.com", "/o?partNumber=1&uploadId=u", nil, s3Part, styleVirtual, "b", "o"},
		{"PUT", "b.s3.example.com", "/o?partNumber=1&uploadId=u", copyFrom, s3PartCopy, styleVirtual, "b", "o"},
		{"POST", "b.s3.example.com", "/o?uploads", nil, s3Create, styleVirtual, "b", "o"},
		{"POST", "b.s3.example.com", "/o?uploadId=u", nil, s3Complete, styleVirtual, "b", "o"},
		{"DELETE", "b.s3.example.com", "/o?uploadId=u", nil, s3Abort, styleVirtual, "b", "o"},
		{"POST", "b.s3.example.com", "/", form, s3PostObject, styleVirtual, "b", ""},
		{"PUT", "b.s3.example.com", "/", nil, s3OtherWrite, styleVirtual, "b", ""}, // CreateBucket
		{"PUT", "b.s3.example.com", "/o?tagging", nil, s3OtherWrite, styleVirtual, "b", "o"},
		{"DELETE", "b.s3.example.com", "/o", nil, s3OtherWrite, styleVirtual, "b", "o"},
		{"GET", "b.s3.example.com", "/o", nil, s3Read, styleVirtual, "b", "o"},
		// Unknown Host: served only when both readings agree.
		{"PUT", "other.example.net", "/b/o", nil, s3Put, styleUnknown, "", ""},
		{"PUT", "other.example.net", "/b/o?partNumber=1&uploadId=u", nil, s3Part, styleUnknown, "", ""},
		{"GET", "other.example.net", "/o", nil, s3Read, styleUnknown, "", ""},
		{"DELETE", "other.example.net", "/o", nil, s3OtherWrite, styleUnknown, "", ""},
		{"PUT", "other.example.net", "/o?tagging", nil, s3OtherWrite, styleUnknown, "", ""},
		{"PUT", "other.example.net", "/", nil, s3OtherWrite, styleUnknown, "", ""},
		{"PUT", "other.example.net", "/o", nil, s3Ambiguous, styleUnknown, "", ""},
		{"PUT", "other.example.net", "/o", copyFrom, s3Ambiguous, styleUnknown, "", ""},
		{"PUT", "other.example.net", "/o?partNumber=1&uploadId=u", nil, s3Ambiguous, styleUnknown, "", ""},
		{"POST", "other.example.net", "/o?uploads", nil, s3Ambiguous, styleUnknown, "", ""},
		{"POST", "other.example.net", "/o?uploadId=u", nil, s3Ambiguous, styleUnknown, "", ""},
		{"DELETE", "other.example.net", "/o?uploadId=u", nil, s3Ambiguous, styleUnknown, "", ""},
		{"PUT", "", "/o", nil, s3Ambiguous, styleUnknown, "", ""},
		// A name that merely ends like a domain is not under it.
		{"PUT", "evils3.example.com", "/o", nil, s3Ambiguous, styleUnknown, "", ""},
	}
	for _, tt := range tests {
		r := httptest.NewRequest(tt.method, tt.target, nil)
		r.Host = tt.host
		for k, v := range tt.header {
			r.Header.Set(k, v)
		}
		a := addressOf(r, domains)
		if a.style != tt.style {
			t.Errorf("%s %s%s: style %v, want %v", tt.method, tt.host, tt.target, a.style, tt.style)
		}
		if got := classify(r, a); got != tt.want {
			t.Errorf("%s %s%s: op %d, want %d", tt.method, tt.host, tt.target, got, tt.want)
		}
		if tt.style != styleUnknown && (a.bucket != tt.bucket || a.key != tt.key) {
			t.Errorf("%s %s%s: bucket %q key %q, want %q %q", tt.method, tt.host, tt.target, a.bucket, a.key, tt.bucket, tt.key)
		}
	}
}

// A multipart upload is keyed by /bucket/key in either style, and a copy's
// size is asked of its source in the request's own style.
func TestS3AddressesAgreeAcrossStyles(t *testing.T) {
	domains := []string{"s3.example.com"}
	path := httptest.NewRequest("PUT", "/b/dir/o?partNumber=1&uploadId=u", nil)
	path.Host = "s3.example.com"
	virtual := httptest.NewRequest("PUT", "/dir/o?partNumber=1&uploadId=u", nil)
	virtual.Host = "b.s3.example.com:8443"
	pa, va := addressOf(path, domains), addressOf(virtual, domains)
	if a, b := uploadObject(path, pa), uploadObject(virtual, va); a != b || a != "/b/dir/o" {
		t.Fatalf("upload keyed %q path-style and %q virtual-hosted", a, b)
	}
	p, h, ok := copySource("/src/a%20b.bin?versionId=3", va)
	if !ok || p != "/a b.bin" || h != "src.s3.example.com:8443" {
		t.Fatalf("virtual-hosted copy source: %q %q %v", p, h, ok)
	}
	p, h, ok = copySource("src/a.bin", pa)
	if !ok || p != "/src/a.bin" || h != "" {
		t.Fatalf("path-style copy source: %q %q %v", p, h, ok)
	}
	if _, _, ok := copySource("nokey", va); ok {
		t.Fatal("a copy source without a key was accepted")
	}
}

func TestS3DomainSetting(t *testing.T) {
	for in, want := range map[string]string{"S3.Example.com": "s3.example.com", "s3.example.com.": "s3.example.com", "localhost": "localhost"} {
		if got, err := normalizeDomain(in); err != nil || got != want {
			t.Errorf("%q: %q %v, want %q", in, got, err, want)
		}
	}
	for in, why := range map[string]string{
		"":                       "empty",
		"https://s3.example.com": "scheme",
		"s3.example.com:9000":    "port",
		"*.s3.example.com":       "*.",
		"10.0.0.1":               "IP",
		"s3..example.com":        "not a DNS name",
		"s3_example.com":         "not a DNS name",
	} {
		if _, err := normalizeDomain(in); err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("%q: %v, want an error about %s", in, err, why)
		}
	}
}
