package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// The Caddyfiles we ship must adapt cleanly, without warnings, with the
// modules this binary has (the plugin and the examples' storage).
func TestShippedCaddyfilesAdapt(t *testing.T) {
	files := []string{"../../Caddyfile"}
	more, _ := filepath.Glob("../../examples/*/*Caddyfile")
	files = append(files, more...)
	if len(files) < 6 {
		t.Fatalf("found only %v", files)
	}
	for _, f := range files {
		t.Run(f, func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			_, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(b, map[string]any{"filename": f})
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range warnings {
				t.Errorf("%s:%d: %s", f, w.Line, w.Message)
			}
		})
	}
}
