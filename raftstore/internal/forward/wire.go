package forward

import "github.com/raftquota/raftquota/raftstore/state"

// The wire types. net/rpc encodes them with gob, which matches fields by
// name: nodes of different versions talk to each other in a rolling
// upgrade, so a field is never renamed or retyped, only added. They are
// exported because net/rpc requires it; the package is internal.

// ConsumeArgs is a forwarded batch of consumes.
type ConsumeArgs struct{ Reqs []state.ConsumeRequest }

// ConsumeReply answers ConsumeArgs in order.
type ConsumeReply struct {
	Decisions []state.Decision
	Code      uint8
	Msg       string
}

// WriteArgs is a forwarded command, in the log's own encoding.
type WriteArgs struct{ Cmd []byte }

// WriteReply answers WriteArgs (and MemberArgs, with no fields but the
// error's).
type WriteReply struct {
	Token *state.Token
	Pool  *state.Pool
	// Decisions answers commands that decide (multipart reserves and parts).
	Decisions []state.Decision
	Code      uint8
	Msg       string
}

// ReadArgs is a forwarded linearizable read: a state.Query, or the read
// point (Kind state.ReadPoint).
type ReadArgs struct {
	Kind   uint8
	ID     string
	Name   string
	Key    state.TokenKey
	Filter state.TokenFilter
	Check  state.ConsumeRequest
}

// ReadReply answers ReadArgs.
type ReadReply struct {
	Token    *state.Token
	Tokens   []state.Token
	Pool     *state.Pool
	Pools    []state.Pool
	Next     string
	Decision state.Decision
	// Index, Applied and Now are a read point's (see Point).
	Index   uint64
	Applied uint64
	Now     int64
	Code    uint8
	Msg     string
}

// MemberArgs adds (Add) or removes a voter.
type MemberArgs struct {
	Add     bool
	ID      string
	Address string
	// Gateway adds a non-voter, or removes a member only if it is one.
	Gateway bool
}

// StatusReply reports one node's view of itself.
type StatusReply struct {
	ID           string
	State        string
	CommitIndex  uint64
	AppliedIndex uint64
	// Now is the node's clock (unix nanoseconds), for the leader's clock sync.
	Now int64
	// MaxOp is the highest log op the node applies (state.MaxOp); 0 from
	// versions before it was sent, which apply no op past OpAckEvents.
	MaxOp uint8
}

// Empty is an RPC argument that carries nothing.
type Empty struct{}

// Point is where a linearizable read may be served: once a node's state
// has applied the command at Applied, it holds every write answered before
// the read began (the leader answers a write once its state applied it),
// judged at Now, the time the leader would stamp. Index is raft's applied
// index on the leader after its read barrier (it counts entries handed to
// the FSM). Applied is 0 when the leader cannot say.
type Point struct {
	Index   uint64
	Applied uint64
	Now     int64
}

// Member is a change of the voter set.
type Member = MemberArgs

// Status is a node's report of itself.
type Status = StatusReply

func queryOf(a *ReadArgs) *state.Query {
	return &state.Query{Kind: state.ReadKind(a.Kind), ID: a.ID, Name: a.Name, Key: a.Key, Filter: a.Filter, Check: a.Check}
}

func argsOf(q *state.Query) *ReadArgs {
	return &ReadArgs{Kind: uint8(q.Kind), ID: q.ID, Name: q.Name, Key: q.Key, Filter: q.Filter, Check: q.Check}
}

func (r *ReadReply) answer() state.Answer {
	return state.Answer{Token: r.Token, Tokens: r.Tokens, Next: r.Next, Pool: r.Pool, Pools: r.Pools, Decision: r.Decision}
}

func (r *ReadReply) setAnswer(a *state.Answer) {
	r.Token, r.Tokens, r.Next, r.Pool, r.Pools, r.Decision = a.Token, a.Tokens, a.Next, a.Pool, a.Pools, a.Decision
}
