// Package raftstore is raftquota's replicated quota engine: one node of a
// Raft cluster (hashicorp/raft) that any client can ask to consume, and
// that never admits past a limit. The state it replicates, and every
// decision, is package state's; this package runs the node around it.
//
// One idea a file: the node's life (store.go: open, start, stop; replica.go:
// the raft.FSM that feeds the log to the state and halts on an entry it
// cannot read), its operations (ops.go, pools.go, uploads.go), linearizable
// reads (reads.go) and membership (members.go, gateway.go) — each a face
// of the node's data, as hraftd's `type fsm Store` — the background duties
// (duties.go, refundqueue.go, clock.go), storage (logstore.go, datadir.go,
// backup.go), and serving peers (serve.go over internal/forward,
// transport.go, tls.go).
//
// # Exactly-once charging
//
// Every write carries a request id that the state deduplicates. A Raft
// apply that fails with ErrLeadershipLost or a timeout may still have been
// committed, so the node retries such failures with the same id until the
// request's deadline: the retry either finds the first outcome or is the
// first.
//
// # Any node serves
//
// A follower forwards operations to the leader over net/rpc, multiplexed on
// the Raft port: each connection's first byte says whether it carries Raft
// or forwarding traffic. Consumes are coalesced: concurrent consumes on the
// leader go into one log entry (one fsync for the batch), and concurrent
// consumes on a follower go to the leader in one RPC, where they merge with
// the leader's own. A batch is flushed as soon as a flush slot is free, so a
// lone request never waits for a batch to fill.
//
// Reads (Token, Lookup, Tokens, Check) are linearizable without writing the
// log: they run on the leader once it has confirmed with a quorum that it
// still leads (one heartbeat round, shared by concurrent reads). The leader
// answers a write only after its FSM applied it, and serves reads only
// after a barrier of its own term has been applied, so a read sees every
// write answered before it began. Until that barrier returns, reads take a
// Raft barrier each. A follower judges Check itself: it asks the leader for
// a read point (the index of the last command the leader's FSM applied
// after that confirmation, and the time it would stamp), once per batch of
// concurrent checks, and answers once its own FSM has applied that command.
//
// # Unknown entries halt
//
// When the state cannot read an entry (state.ErrUnknownCommand) the node's
// FSM stops at that index instead of skipping it, reports it, and hands
// off leadership.
//
// # Storage
//
// A voter keeps its log in hashicorp/raft-wal (DataDir/wal: one fsync per
// append where a bbolt commit takes two) or, with Config.LogStore
// "boltdb", in raft-boltdb/v2 (DataDir/raft.db, which holds the stable
// store either way; logstore.go moves the log when the setting changes),
// behind a log cache, and snapshots in
// DataDir/snapshots. A gateway keeps all of it in memory. A new data dir
// bootstraps the cluster from Config.Peers (or alone, with no peers); a data
// dir with state simply rejoins. Snapshot captures handles (a frozen token
// map with a copy-on-write overlay, the dedup table's chunk list), so taking
// one never holds Apply up; Persist encodes while Apply goes on.
//
// # What it may import
//
// state and internal/forward; nothing of Caddy and nothing of this
// module's caddymodule: the engine is usable, and tested, without an HTTP
// server. Test rigs (rapid) appear only in its tests.
package raftstore
