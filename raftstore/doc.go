// Package raftstore is raftquota's replicated quota engine: a state machine
// of upload tokens and the pools they share, replicated with hashicorp/raft,
// that any node can ask to consume and that never admits past a limit.
//
// One idea a file: the state (fsm.go, token.go, tokentable.go, pool.go,
// calendar.go, events.go, dedup*.go, multipart.go, command.go,
// snapshot.go), the node (store.go, ops.go, batch.go, clock.go,
// refundqueue.go, datadir.go, logstore.go, backup.go, gateway.go), and
// forwarding and transport (forward.go, transport.go, tls.go).
//
// # How a consume is decided
//
// A consume is one command in the Raft log. The leader stamps its clock into
// the command and appends it; once a quorum has it on disk, every node's FSM
// applies it in log order: look up the token, renew its window if the
// stamped time has passed it, check both limits, charge or deny. Because
// decisions are made by applying the log in order, two concurrent consumes
// can never both see the last unit: the second is applied after the first.
// This is what the seed system's read-check-write over several storage calls
// lacked.
//
// The FSM is deterministic. Time enters only as the leader's stamp (and never
// moves backwards in the FSM, even if a new leader's clock is behind);
// nothing in Apply reads a clock, draws randomness or ranges over a map.
// Snapshots encode tokens in creation order and dedup entries oldest first, so nodes
// that applied the same log write byte-identical snapshots.
//
// # Exactly-once charging
//
// Every write carries a request id. The FSM remembers the first outcome of
// each id in a bounded table (its size is replicated state, set through the
// log; part of every snapshot): a repeated id gets the first outcome and charges nothing. A
// Raft apply that fails with ErrLeadershipLost or a timeout may still have
// been committed, so the store retries such failures with the same id until
// the request's deadline: the retry either finds the first outcome or is
// the first. Refund(id) gives back what one allowed consume took, at most
// once; a refund that reaches the log before its consume leaves a tombstone
// so the consume charges nothing.
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
// # Names are secrets
//
// A token's name is what clients send to spend it. The store hashes a name
// (KeyOf) on the node that receives it; forwarding, the log, snapshots and
// backups carry only the hash, and admin commands address tokens by a
// short id (an HMAC of the hash under a secret in the replicated state).
// Entries and snapshots of versions that held names are hashed as they are
// read.
//
// # Unknown entries halt
//
// Commands dispatch through one table of ops (command.go). An entry this
// build cannot decode, an op or a field it does not know, stops the FSM at
// that index instead of being skipped, so a replica never diverges in a
// rolling upgrade; the node reports it and hands off leadership.
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
// Nothing of Caddy and nothing of this module's caddymodule: the engine is
// usable, and tested, without an HTTP server. Test rigs (rapid) appear only
// in its tests.
package raftstore
