package caddymodule

import (
	"os"
	"path/filepath"
	"reflect"
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
	for _, file := range []string{"caddyfile.go", "usage.go", "settings.go"} {
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
	for _, s := range settings {
		row := regexp.MustCompile("(?m)^\\| `" + s.jsonName() + "`.*\\| `" + s.name + "[ `].*\\|(.*)\\|$").FindStringSubmatch(doc)
		if row == nil {
			t.Errorf("setting %s (JSON %s) has no row in docs/REFERENCE.md's app table", s.name, s.jsonName())
			continue
		}
		if s.def != "" && !strings.Contains(row[1], "`"+s.def+"`") {
			t.Errorf("docs/REFERENCE.md gives %s the default %s; the settings table says %q", s.name, strings.TrimSpace(row[1]), s.def)
		}
	}
	for _, route := range []string{"/quota/tokens", "/quota/pools", "/quota/cluster", "/quota/health", "/quota/backup"} {
		if !strings.Contains(doc, route) {
			t.Errorf("admin route %s is not in docs/REFERENCE.md", route)
		}
	}
}

// TestSettingsTableCoversTheApp: every JSON field of the quota app is an
// entry of the settings table, so none is parsed, checked or copied into
// the engine's config outside it.
func TestSettingsTableCoversTheApp(t *testing.T) {
	names := map[string]bool{}
	for _, s := range settings {
		if names[s.jsonName()] {
			t.Errorf("setting %s is in the table twice", s.jsonName())
		}
		names[s.jsonName()] = true
	}
	app := reflect.TypeOf(App{})
	for i := range app.NumField() {
		f := app.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if !f.IsExported() || name == "" {
			continue
		}
		if !names[name] {
			t.Errorf("the app's JSON field %s is not in the settings table", name)
		}
		delete(names, name)
	}
	for name := range names {
		t.Errorf("setting %s is no field of the app", name)
	}
}
