#!/usr/bin/env bash
# Starts a local three-node raftquota cluster and its storage backend in the
# foreground; Ctrl-C (or SIGTERM) stops everything it started.
#
#   node   HTTP             admin            raft
#   node1  127.0.0.1:8081   127.0.0.1:2021   127.0.0.1:7001
#   node2  127.0.0.1:8082   127.0.0.1:2022   127.0.0.1:7002
#   node3  127.0.0.1:8083   127.0.0.1:2023   127.0.0.1:7003
#   storage 127.0.0.1:9000
#
# Data lives under examples/three-node/data/. Set CADDY to use a binary you
# built already; otherwise this builds one from ./cmd/caddy.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
mkdir -p data

caddy="${CADDY:-}"
if [[ -z "$caddy" ]]; then
	echo "building caddy with raftquota..." >&2
	(cd ../.. && go build -o examples/three-node/data/caddy ./cmd/caddy)
	caddy="$here/data/caddy"
fi

if [[ ! -f data/certs/ca.pem ]]; then
	echo "making the cluster CA and node certificates in data/certs..." >&2
	"$caddy" quota certs --dir data/certs node1=127.0.0.1 node2=127.0.0.1 node3=127.0.0.1 >/dev/null
fi

pids=()
stop() {
	trap - INT TERM EXIT
	echo "stopping..." >&2
	for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
trap stop INT TERM EXIT

"$caddy" run --config storage.Caddyfile --adapter caddyfile &
pids+=($!)
for i in 1 2 3; do
	"$caddy" run --config "node$i.Caddyfile" --adapter caddyfile &
	pids+=($!)
done

echo "three nodes on :8081 :8082 :8083, storage on :9000; Ctrl-C stops them" >&2
# Exit (and stop the rest) as soon as any of them exits.
wait -n "${pids[@]}"
