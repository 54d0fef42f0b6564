// Command xbuild builds a Caddy binary from the xcaddy.json manifest with
// xcaddy used as a library, the same build a user gets from
// `xcaddy build v2.11.9 --with github.com/raftquota/raftquota=.`.
//
//	go run ./cmd/xbuild -manifest xcaddy.json -o caddy
//
// Replacements whose new side is a relative path are taken relative to the
// manifest's folder.
//
// It imports xcaddy as a library and nothing of raftquota: it builds the
// plugin the way a user would.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"log"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/caddyserver/xcaddy"
)

func main() {
	manifest := flag.String("manifest", "xcaddy.json", "build manifest")
	out := flag.String("o", "caddy", "output binary")
	flag.Parse()

	b, err := os.ReadFile(*manifest)
	if err != nil {
		log.Fatal(err)
	}
	var builder xcaddy.Builder
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&builder); err != nil {
		log.Fatalf("%s: %v", *manifest, err)
	}
	base, err := filepath.Abs(filepath.Dir(*manifest))
	if err != nil {
		log.Fatal(err)
	}
	for i, r := range builder.Replacements {
		if p := string(r.New); strings.HasPrefix(p, ".") {
			builder.Replacements[i].New = xcaddy.ReplacementPath(filepath.Join(base, p))
		}
	}
	if builder.TimeoutGet == 0 {
		builder.TimeoutGet = 10 * time.Minute
	}
	output, err := filepath.Abs(*out)
	if err != nil {
		log.Fatal(err)
	}
	if err := builder.Build(context.Background(), output); err != nil {
		log.Fatalf("building caddy: %v", err)
	}
	log.Printf("built %s", output)
}
