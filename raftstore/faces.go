package raftstore

// The node's faces. As hraftd's `type fsm Store` gives the FSM a face of
// its own on the store's data, reads and members are the node's data seen
// by one protocol each; s.n() is the node again.

// reads is how the node makes reads linearizable without writing the log
// (see the package doc): read barriers on the leader, read points for a
// follower's checks.
type reads node

func (s *node) reads() *reads { return (*reads)(s) }
func (s *reads) n() *node     { return (*node)(s) }

// members is the node's membership: the voter set, gateways joining and
// leaving, and which peer is at which address.
type members node

func (s *node) members() *members { return (*members)(s) }
func (s *members) n() *node       { return (*node)(s) }
