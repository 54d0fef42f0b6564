package caddymodule

import (
	"bytes"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/raftquota/raftquota/raftstore/state"
)

// FuzzCaddyfile adapts arbitrary Caddyfiles built around the quota global
// option and directive: the parser may reject them, never panic.
func FuzzCaddyfile(f *testing.F) {
	for _, g := range goldenFiles(f) {
		f.Add(g.input)
	}
	f.Add("{\n\tquota {\n\t\tpeer\n\t}\n}")
	f.Add(":80 {\n\tquota {\n\t\tkey\n\t\tcost 99999999999999999999\n\t}\n}")
	adapter := caddyconfig.GetAdapter("caddyfile")
	f.Fuzz(func(t *testing.T, input string) {
		adapter.Adapt([]byte(input), nil)
	})
}

// FuzzAdminJSON sends arbitrary bodies to the admin API's decoder for token
// specs and limit updates: bad input is refused with a 4xx error, never a
// panic, and what is accepted validates or is refused by validation.
func FuzzAdminJSON(f *testing.F) {
	f.Add(`{"name":"a","usage_limit":3,"bytes_limit":10,"metadata":{"k":"v"},"renew_every":"1h","expires_at":"2030-01-01T00:00:00Z"}`)
	f.Add(`{"usage_limit":7,"metadata":{}}`)
	f.Add(`{"name":"a","surprise":true}`)
	f.Add(`{"renew_every":-1}`)
	f.Add(`[]`)
	f.Fuzz(func(t *testing.T, body string) {
		for _, v := range []interface{ Validate() error }{new(state.TokenSpec), new(state.LimitUpdate)} {
			req := httptest.NewRequest("POST", "/quota/tokens", bytes.NewBufferString(body))
			err := decodeBody(req, v)
			if err != nil {
				if !strings.Contains(err.Error(), " ") {
					t.Fatalf("unclear error %q", err)
				}
				continue
			}
			v.Validate()
		}
	})
}
