package caddymodule

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestReferenceCoversEveryOption: every Caddyfile option the parsers take
// (the quota global option and directive, the s3 block, quota_usage) is in
// docs/REFERENCE.md, so adding one without documenting it fails.
func TestReferenceCoversEveryOption(t *testing.T) {
	ref, err := os.ReadFile(filepath.Join("..", "docs", "REFERENCE.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(ref)
	for _, file := range []string{"caddyfile.go", "usage.go"} {
		src, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range regexp.MustCompile(`(?m)case "([a-z_0-9]+)"|^\t"([a-z_0-9]+)":\s+func`).FindAllStringSubmatch(string(src), -1) {
			opt := m[1] + m[2]
			if !regexp.MustCompile(`(?m)(^\s+` + opt + `\b|` + "`" + opt + "[` ])").MatchString(doc) {
				t.Errorf("%s option %q is not in docs/REFERENCE.md", file, opt)
			}
		}
	}
	for _, route := range []string{"/quota/tokens", "/quota/pools", "/quota/cluster", "/quota/health", "/quota/backup"} {
		if !strings.Contains(doc, route) {
			t.Errorf("admin route %s is not in docs/REFERENCE.md", route)
		}
	}
}
