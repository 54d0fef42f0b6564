// Package storage is the examples' storage backend: a small S3-compatible
// object store (github.com/johannesboyne/gofakes3 over a bbolt file) served
// by Caddy as the handler http.handlers.s3_storage. Buckets are created on
// first upload; objects are read back with GET /{bucket}/{object}
// (path-style). It is there so `go run ./cmd/caddy run` and the three-node
// example have real storage behind the quota gate; point reverse_proxy at
// your own S3-compatible storage in production.
package storage

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
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
		b, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
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
