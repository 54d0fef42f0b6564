// Package state is raftquota's deterministic core: the quota state machine
// of tokens, the pools they share, request ids, multipart uploads and
// threshold events, the commands of the replicated log that change it, the
// reads that look at it, and its snapshot format.
//
// Its API is narrow: Machine.Apply(index, entry) → Result,
// Machine.Query(read) → Answer, Snapshot/Restore. Commands dispatch
// through one table of ops (command.go), reads through one table of
// queries (query.go).
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
// # Names are secrets
//
// A token's name is what clients send to spend it. The store hashes a name
// (KeyOf) on the node that receives it; forwarding, the log, snapshots and
// backups carry only the hash, and admin commands address tokens by a
// short id (an HMAC of the hash under a secret in the replicated state).
// Entries and snapshots of versions that held names are hashed as they are
// read.
//
// # Unknown entries
//
// An entry this build cannot decode, an op or a field it does not know, is
// an error from Apply that changes nothing (ErrUnknownCommand). The node
// (raftstore) stops applying there rather than skip it, so a replica never
// diverges in a rolling upgrade.
//
// # What it may import
//
// Nothing of the node (raftstore), of hashicorp/raft or of Caddy: it is a
// pure function of the log, usable and tested without a network or a
// disk. zap only for the one warning Apply writes.
package state
