// Package forward carries a node's operations to the leader and serves
// them there: net/rpc (gob) over connections the node's transport hands
// it, so forwarding shares the Raft port. A node serves a Service (Serve)
// and calls its peers with a Client; both speak state's types, and the
// wire types stay here.
//
// It owns the wire protocol (method names and the fields of the wire
// types, stable across versions) and the one mapping of errors onto it.
// It imports state and nothing of the node (raftstore).
package forward
