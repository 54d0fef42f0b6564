// Command caddy is Caddy with its standard modules, the raftquota plugin and
// the examples' S3-compatible storage backend.
//
//	go run ./cmd/caddy run              # serves ./Caddyfile: one embedded node + storage
//	go run ./cmd/caddy list-modules     # shows quota, http.handlers.quota, admin.api.quota
//
// It only assembles modules: no logic of its own, and nothing imports it.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/raftquota/raftquota"
	_ "github.com/raftquota/raftquota/examples/storage"
)

func main() {
	caddycmd.Main()
}
