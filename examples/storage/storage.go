// Package storage is the examples' storage backend: a small S3-compatible
// object store (github.com/johannesboyne/gofakes3 over a bbolt file) served
// by Caddy as the handler http.handlers.s3_storage. Buckets are created on
// first upload; objects are read back with GET /{bucket}/{object}
// (path-style). It is there so `go run ./cmd/caddy run` and the three-node
// example have real storage behind the quota gate; point reverse_proxy at
// your own S3-compatible storage in production.
//
// It imports Caddy, gofakes3 and bbolt, nothing of raftquota: the gate and the
// storage meet only over HTTP, as a user's would.
package storage

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3bolt"
	bolt "go.etcd.io/bbolt"
)

func init() {
	caddy.RegisterModule(S3Storage{})
	httpcaddyfile.RegisterDirective("s3_storage", parseDirective)
	httpcaddyfile.RegisterDirectiveOrder("s3_storage", httpcaddyfile.Before, "file_server")
}

// parseDirective is RegisterHandlerDirective's parsing, plus one check:
// Caddy reads a first argument that starts with "/" as a path matcher, so
// `s3_storage /var/lib/s3.db` would silently use the default file.
func parseDirective(h httpcaddyfile.Helper) ([]httpcaddyfile.ConfigValue, error) {
	if !h.Next() {
		return nil, h.ArgErr()
	}
	if h.NextArg() {
		v := h.Val()
		if strings.HasPrefix(v, "/") && !strings.ContainsAny(v, "*") && (strings.HasSuffix(v, ".db") || strings.HasSuffix(v, ".bolt")) {
			return nil, h.Errf("s3_storage %s: Caddy reads an argument that starts with / as a path matcher; give the file in a block: s3_storage { path %s }", v, v)
		}
		h.Prev()
	}
	matcherSet, err := h.ExtractMatcherSet()
	if err != nil {
		return nil, err
	}
	s := new(S3Storage)
	if err := s.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return h.NewRoute(matcherSet, s), nil
}

// The database file stays open across config reloads (bbolt locks it).
var dbs = caddy.NewUsagePool()

type db struct {
	bolt    *bolt.DB
	backend *s3bolt.Backend
}

func (d db) Destruct() error { return d.bolt.Close() }

// S3Storage serves an S3-compatible object store from one bbolt file.
type S3Storage struct {
	// Path is the database file. Default "s3.db" under Caddy's data directory.
	Path string `json:"path,omitempty"`

	// Domains are the store's own names for virtual-hosted-style requests:
	// a Host of BUCKET.DOMAIN addresses BUCKET, and the path is the key.
	// Requests to any other Host are path-style.
	Domains []string `json:"domains,omitempty"`

	handler http.Handler
	backend *s3bolt.Backend
	buckets *bucketCache
}

// bucketCache serialises creating buckets on first upload: gofakes3's own
// auto-create races when the first uploads to a bucket run at once (some of
// them get NoSuchBucket).
type bucketCache struct {
	mu    sync.Mutex
	known sync.Map
}

// CaddyModule returns the Caddy module information.
func (S3Storage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.s3_storage", New: func() caddy.Module { return new(S3Storage) }}
}

// Provision opens (or shares) the database file.
func (s *S3Storage) Provision(ctx caddy.Context) error {
	if s.Path == "" {
		s.Path = filepath.Join(caddy.AppDataDir(), "s3.db")
	}
	path, err := filepath.Abs(s.Path)
	if err != nil {
		return err
	}
	s.Path = path
	v, _, err := dbs.LoadOrNew(path, func() (caddy.Destructor, error) {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, err
		}
		// gofakes3's bolt backend returns object bytes that alias bbolt's
		// memory map after their transaction ends, and its CopyObject reads
		// the source's hash after writing the copy: when that write grew
		// the file, bbolt remapped and the read faulted (SIGSEGV in a CI
		// run of TestS3CopyAndBrowserUploads). A 1 GiB initial map (address
		// space, not memory) keeps a store below that size from remapping.
		b, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second, InitialMmapSize: 1 << 30})
		if err != nil {
			return nil, fmt.Errorf("opening storage %s: %w", path, err)
		}
		return db{bolt: b, backend: s3bolt.New(b)}, nil
	})
	if err != nil {
		return err
	}
	s.backend = v.(db).backend
	s.buckets = new(bucketCache)
	faker := gofakes3.New(s.backend, gofakes3.WithAutoBucket(true), gofakes3.WithTimeSkewLimit(0))
	s.handler = faker.Server()
	return nil
}

// Cleanup lets go of the database file.
func (s *S3Storage) Cleanup() error {
	_, err := dbs.Delete(s.Path)
	return err
}

func (s *S3Storage) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if bucket := s.hostBucket(r.Host); bucket != "" {
		p := r.URL.Path
		r.URL.Path, r.URL.RawPath = "/"+bucket, ""
		if p != "/" {
			r.URL.Path += p
		}
	}
	if q := r.URL.Query(); r.Method == http.MethodPut && q.Has("uploadId") && q.Has("partNumber") && r.Header.Get("X-Amz-Copy-Source") != "" {
		s.uploadPartCopy(w, r)
		return nil
	}
	if q := r.URL.Query(); r.Method == http.MethodGet && q.Has("tagging") {
		// gofakes3 answers GetObjectTagging with the object; objects here
		// have no tags (aws-cli asks before a multipart copy).
		w.Header().Set("Content-Type", "application/xml")
		fmt.Fprintf(w, "%s<Tagging><TagSet></TagSet></Tagging>", xml.Header)
		return nil
	}
	if r.Method == http.MethodPut {
		if bucket, _, ok := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/"); ok && bucket != "" {
			if err := s.ensureBucket(bucket); err != nil {
				return caddyhttp.Error(http.StatusInternalServerError, err)
			}
		}
	}
	s.handler.ServeHTTP(w, r)
	return nil
}

// uploadPartCopy serves UploadPartCopy, which gofakes3 lacks (aws-cli uses
// it for copies above its multipart threshold): it reads the source range
// and uploads it as the part.
func (s *S3Storage) uploadPartCopy(w http.ResponseWriter, r *http.Request) {
	src, err := url.PathUnescape(strings.SplitN(r.Header.Get("X-Amz-Copy-Source"), "?", 2)[0])
	if err != nil {
		http.Error(w, "bad x-amz-copy-source", http.StatusBadRequest)
		return
	}
	get, _ := http.NewRequestWithContext(r.Context(), http.MethodGet, "/"+strings.TrimPrefix(src, "/"), nil)
	if rng := r.Header.Get("X-Amz-Copy-Source-Range"); rng != "" {
		get.Header.Set("Range", rng)
	}
	source := &recorder{header: http.Header{}}
	s.handler.ServeHTTP(source, get)
	source.done()
	if source.status != http.StatusOK && source.status != http.StatusPartialContent {
		source.copyTo(w)
		return
	}
	put := r.Clone(r.Context())
	put.Body, put.ContentLength = io.NopCloser(bytes.NewReader(source.body.Bytes())), int64(source.body.Len())
	for _, k := range []string{"X-Amz-Copy-Source", "X-Amz-Copy-Source-Range", "X-Amz-Content-Sha256", "Content-Md5", "X-Amz-Decoded-Content-Length"} {
		put.Header.Del(k)
	}
	put.Header.Set("Content-Length", strconv.Itoa(source.body.Len()))
	part := &recorder{header: http.Header{}}
	s.handler.ServeHTTP(part, put)
	part.done()
	if part.status != http.StatusOK {
		part.copyTo(w)
		return
	}
	w.Header().Set("Content-Type", "application/xml")
	fmt.Fprintf(w, "%s<CopyPartResult><LastModified>%s</LastModified><ETag>%s</ETag></CopyPartResult>",
		xml.Header, time.Now().UTC().Format("2006-01-02T15:04:05.000Z"), html.EscapeString(part.header.Get("ETag")))
}

// recorder keeps a response of the store's own handler.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
}
func (r *recorder) Write(b []byte) (int, error) {
	r.WriteHeader(http.StatusOK)
	return r.body.Write(b)
}

// done sets the status a handler that wrote nothing answered: 200.
func (r *recorder) done() { r.WriteHeader(http.StatusOK) }

func (r *recorder) copyTo(w http.ResponseWriter) {
	for k, v := range r.header {
		w.Header()[k] = v
	}
	w.WriteHeader(r.status)
	w.Write(r.body.Bytes())
}

// hostBucket is the bucket a virtual-hosted Host names, or "".
func (s *S3Storage) hostBucket(hostport string) string {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	for _, d := range s.Domains {
		if b, ok := strings.CutSuffix(host, "."+strings.ToLower(d)); ok && b != "" {
			return b
		}
	}
	return ""
}

func (s *S3Storage) ensureBucket(name string) error {
	if _, ok := s.buckets.known.Load(name); ok {
		return nil
	}
	s.buckets.mu.Lock()
	defer s.buckets.mu.Unlock()
	exists, err := s.backend.BucketExists(name)
	if err != nil {
		return err
	}
	if !exists {
		if err := s.backend.CreateBucket(name); err != nil && !gofakes3.IsAlreadyExists(err) {
			return err
		}
	}
	s.buckets.known.Store(name, struct{}{})
	return nil
}

// UnmarshalCaddyfile parses:
//
//	s3_storage [<relative path>]
//	s3_storage {
//	    path <path>
//	    domain <name>   # repeatable: virtual-hosted BUCKET.<name>
//	}
//
// An absolute path must go in the block: Caddy reads a first argument that
// starts with / as a path matcher.
func (s *S3Storage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() {
		s.Path = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "path":
			if !d.NextArg() {
				return d.ArgErr()
			}
			s.Path = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "domain":
			if !d.NextArg() {
				return d.ArgErr()
			}
			s.Domains = append(s.Domains, d.Val())
			if d.NextArg() {
				return d.ArgErr()
			}
		default:
			return d.Errf("unrecognized s3_storage option %q", d.Val())
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*S3Storage)(nil)
	_ caddy.CleanerUpper          = (*S3Storage)(nil)
	_ caddyhttp.MiddlewareHandler = (*S3Storage)(nil)
	_ caddyfile.Unmarshaler       = (*S3Storage)(nil)
)
