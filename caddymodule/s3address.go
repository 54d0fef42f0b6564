package caddymodule

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// S3 requests name their bucket in one of two ways: path-style
// (Host: s3.example.com, PUT /bucket/key) or virtual-hosted-style
// (Host: bucket.s3.example.com, PUT /key). The two read the same path
// differently — PUT /photo.jpg is CreateBucket in one and PutObject in the
// other — so the gate must know which style a request uses before it can
// tell what the request does. It knows from the Host: one of the
// configured domains is path-style, BUCKET.DOMAIN virtual-hosted, and an IP
// address path-style (a bucket cannot be an IP's subdomain). Any other
// Host leaves the style unknown; such a request is served only when both
// readings give the same operation, and refused otherwise.

// s3Style is how a request names its bucket.
type s3Style int

const (
	styleUnknown s3Style = iota
	stylePath
	styleVirtual
)

func (s s3Style) String() string {
	switch s {
	case stylePath:
		return "path"
	case styleVirtual:
		return "virtual"
	}
	return "unknown"
}

// s3Target is where an S3 request points: its bucket and object key
// (empty for bucket-level requests), as the gate reads its address.
type s3Target struct {
	style  s3Style
	bucket string
	key    string
	// domain is the configured domain a virtual-hosted Host ends in.
	domain string
	// port is the Host's port, if it had one.
	port string
}

// object is the target's canonical path, /bucket/key: the same for a
// path-style and a virtual-hosted request to one object, so a multipart
// upload is keyed alike in both styles.
func (t s3Target) object() string {
	return "/" + t.bucket + "/" + t.key
}

// hostOf is an object's Host for a request in t's style: BUCKET.DOMAIN
// when virtual-hosted.
func (t s3Target) hostOf(bucket string) string {
	h := bucket + "." + t.domain
	if t.port != "" {
		h = net.JoinHostPort(h, t.port)
	}
	return h
}

// splitHost is the Host's name, lower-cased and without a port or a
// trailing dot, and its port.
func splitHost(hostport string) (host, port string) {
	host = hostport
	if h, p, err := net.SplitHostPort(hostport); err == nil {
		host, port = h, p
	}
	host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	return host, port
}

// addressOf reads r's address with the configured domains.
func addressOf(r *http.Request, domains []string) s3Target {
	host, port := splitHost(r.Host)
	path := strings.TrimPrefix(r.URL.Path, "/")
	for _, d := range domains {
		if host == d {
			return pathTarget(path, port)
		}
		if bucket, ok := strings.CutSuffix(host, "."+d); ok && bucket != "" {
			return s3Target{style: styleVirtual, bucket: bucket, key: path, domain: d, port: port}
		}
	}
	if net.ParseIP(host) != nil {
		return pathTarget(path, port)
	}
	t := pathTarget(path, port)
	t.style = styleUnknown
	return t
}

func pathTarget(path, port string) s3Target {
	bucket, key, _ := strings.Cut(path, "/")
	return s3Target{style: stylePath, bucket: bucket, key: key, port: port}
}

// s3Ambiguous is a write whose operation depends on an addressing style
// the gate cannot determine.
const s3Ambiguous s3Op = -1

// classify names r's S3 operation. With the style unknown it reads r both
// ways and returns s3Ambiguous when the readings differ.
func classify(r *http.Request, t s3Target) s3Op {
	if t.style != styleUnknown {
		return classifyS3(r, t.key != "")
	}
	asPath := classifyS3(r, t.key != "")
	asVirtual := classifyS3(r, strings.TrimPrefix(r.URL.Path, "/") != "")
	if asPath != asVirtual {
		return s3Ambiguous
	}
	return asPath
}

// ambiguityMessage is the S3 error message of a refused ambiguous write:
// what the gate saw and how to configure it.
func ambiguityMessage(r *http.Request, domains []string) string {
	host, _ := splitHost(r.Host)
	if len(host) > 100 {
		host = host[:100] + "..."
	}
	conf := "no S3 domain is configured"
	if len(domains) > 0 {
		conf = "the configured S3 domains are " + strings.Join(domains, ", ")
	}
	return fmt.Sprintf("The quota gate cannot tell whether this request is path-style or virtual-hosted-style, which decides what it writes: "+
		"its Host %q is neither an IP address, an S3 domain nor a bucket under one, and %s. "+
		"Give the quota handler the endpoint's domain (s3 { domain s3.example.com }), or send path-style requests to it.", host, conf)
}

// normalizeDomain checks one configured S3 domain and returns it in the
// form Hosts are compared with.
func normalizeDomain(d string) (string, error) {
	n := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(d)), ".")
	switch {
	case n == "":
		return "", fmt.Errorf("an s3 domain is empty")
	case strings.Contains(n, "://"):
		return "", fmt.Errorf("s3 domain %q: give the name alone, without a scheme (e.g. s3.example.com)", d)
	case strings.ContainsAny(n, ":/[]"):
		return "", fmt.Errorf("s3 domain %q: give the name alone, without a port or path (e.g. s3.example.com)", d)
	case strings.HasPrefix(n, "*."):
		return "", fmt.Errorf("s3 domain %q: give the endpoint's own name without *.; its buckets' names are recognised under it", d)
	case net.ParseIP(n) != nil:
		return "", fmt.Errorf("s3 domain %q is an IP address; requests to an IP are path-style already", d)
	}
	for _, label := range strings.Split(n, ".") {
		if label == "" || len(label) > 63 || strings.HasPrefix(label, "-") || strings.HasSuffix(label, "-") ||
			strings.TrimFunc(label, func(r rune) bool { return r == '-' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' }) != "" {
			return "", fmt.Errorf("s3 domain %q is not a DNS name", d)
		}
	}
	return n, nil
}

// copySource is a copy's source object as a request the backend
// understands in t's style: the path and Host of a HEAD for its size.
func copySource(header string, t s3Target) (path, host string, ok bool) {
	src, err := url.PathUnescape(strings.SplitN(header, "?", 2)[0])
	if err != nil {
		return "", "", false
	}
	src = strings.TrimPrefix(src, "/")
	if t.style != styleVirtual {
		return "/" + src, "", true
	}
	bucket, key, found := strings.Cut(src, "/")
	if !found || bucket == "" || key == "" {
		return "", "", false
	}
	return "/" + key, t.hostOf(bucket), true
}

// uploadObject is the object a multipart upload is keyed by: the
// canonical /bucket/key when the style is known (a path-style request's
// own path is that already), else the path as sent.
func uploadObject(r *http.Request, t s3Target) string {
	if t.style == styleVirtual {
		return t.object()
	}
	return r.URL.Path
}
