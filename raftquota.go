// Package raftquota registers the raftquota Caddy modules, so a custom build
// needs only this import:
//
//	xcaddy build --with github.com/raftquota/raftquota
package raftquota

import (
	_ "github.com/raftquota/raftquota/caddymodule"
)
