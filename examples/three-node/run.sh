#!/usr/bin/env bash
# Starts a local raftquota cluster in the foreground: one Caddy for every
# *.Caddyfile beside this script (storage.Caddyfile first); Ctrl-C (or
# SIGTERM) stops everything it started. examples/edge-fleet/run.sh is a link
# to this file and starts 3 voters, 4 gateways and storage the same way.
#
# In examples/three-node:
#
#   node   HTTP             admin            raft
#   node1  127.0.0.1:8081   127.0.0.1:2021   127.0.0.1:7001
#   node2  127.0.0.1:8082   127.0.0.1:2022   127.0.0.1:7002
#   node3  127.0.0.1:8083   127.0.0.1:2023   127.0.0.1:7003
#   storage 127.0.0.1:9000
#
# When a node dies (try `kill -9`), the others and storage keep running and
# this script says which one died. Start it again from another terminal:
#
#   ./run.sh start node2
#
# which asks this script to start node2 again (so Ctrl-C here still stops
# it); the node rejoins the cluster from its data dir. With no run.sh in the
# foreground, `./run.sh start node2` runs the node itself, in the foreground.
#
# Data lives under data/ beside the Caddyfiles. Set CADDY to use a binary
# you built already; otherwise this builds one from ./cmd/caddy.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
mkdir -p data
members=()
for f in *.Caddyfile; do
	[[ "$f" == storage.Caddyfile ]] || members+=("${f%.Caddyfile}")
done
nodes=("${members[@]}")
[[ -f storage.Caddyfile ]] && members=(storage "${members[@]}")

config_of() {
	[[ -n "$1" && "$1" != */* && -f "$1.Caddyfile" ]] && echo "$1.Caddyfile"
}

if [[ "${1:-}" == "start" ]]; then
	name="${2:-}"
	if ! config_of "$name" >/dev/null; then
		echo "usage: $0 start $(
			IFS='|'
			echo "${members[*]}"
		)" >&2
		exit 2
	fi
	if [[ -f data/run.pid ]] && kill -0 "$(cat data/run.pid)" 2>/dev/null; then
		touch "data/start-$name"
		kill -USR1 "$(cat data/run.pid)"
		echo "asked run.sh (pid $(cat data/run.pid)) to start $name" >&2
		exit 0
	fi
	caddy="${CADDY:-$here/data/caddy}"
	exec "$caddy" run --config "$(config_of "$name")" --adapter caddyfile
fi

caddy="${CADDY:-}"
if [[ -z "$caddy" ]]; then
	echo "building caddy with raftquota..." >&2
	(cd "$here/../.." && go build -o "$here/data/caddy" ./cmd/caddy)
	caddy="$here/data/caddy"
fi

if [[ ! -f data/certs/ca.pem ]]; then
	echo "making the cluster CA and node certificates in data/certs..." >&2
	"$caddy" quota certs --dir data/certs "${nodes[@]/%/=127.0.0.1}" >/dev/null
fi

declare -A pids=()
start() {
	"$caddy" run --config "$(config_of "$1")" --adapter caddyfile &
	pids[$1]=$!
	echo "$!" >"data/$1.pid" # for `kill -9 "$(cat data/node1.pid)"`
}

stopping=0
stop() {
	stopping=1
	trap - INT TERM EXIT USR1
	echo "stopping..." >&2
	for name in "${!pids[@]}"; do kill -TERM "${pids[$name]}" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -f data/run.pid data/start-*
	for name in "${members[@]}"; do rm -f "data/$name.pid"; done
}
trap stop INT TERM EXIT
# `run.sh start NAME` leaves data/start-NAME and sends USR1.
trap : USR1

rm -f data/start-*
echo $$ >data/run.pid
for name in "${members[@]}"; do start "$name"; done
echo "started ${members[*]}; Ctrl-C stops them" >&2

while ((!stopping)); do
	for req in data/start-*; do
		[[ -e "$req" ]] || continue
		rm -f "$req"
		name="${req#data/start-}"
		if [[ -n "${pids[$name]:-}" ]]; then
			echo "$name is already running (pid ${pids[$name]})" >&2
		elif config_of "$name" >/dev/null; then
			echo "starting $name again" >&2
			start "$name"
		fi
	done
	if ((${#pids[@]} == 0)); then
		sleep 1 || true
		continue
	fi
	died=""
	status=0
	wait -n -p died "${pids[@]}" 2>/dev/null || status=$? # our own line says which died, not bash's "Killed"
	[[ -n "${died:-}" ]] || continue # woken by a start request
	for name in "${!pids[@]}"; do
		if [[ "${pids[$name]}" == "$died" ]]; then
			unset "pids[$name]"
			rm -f "data/$name.pid"
			if ((status == 0)); then
				echo "$name stopped; the others keep running. Start it again with: $0 start $name" >&2
			else
				echo "$name died (exit status $status); the others keep running. Start it again with: $0 start $name" >&2
			fi
		fi
	done
done
