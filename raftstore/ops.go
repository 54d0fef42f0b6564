package raftstore

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/zap"
)

// Consume charges req.Units and req.Bytes to req.Token if the token allows
// it, as one step of the replicated log. The same req.ID never charges
// twice: a retry returns the first decision with Duplicate set. An error
// means no decision was learned; retrying with the same req.ID is safe.
func (s *Store) Consume(ctx context.Context, req ConsumeRequest) (Decision, error) {
	if err := req.hashName(); err != nil {
		return Decision{}, err
	}
	if err := req.Validate(); err != nil {
		return Decision{}, err
	}
	var d Decision
	err := s.do(ctx, func(ctx context.Context) error {
		b := s.forwardConsumes
		if s.IsLeader() {
			b = s.leaderConsumes
		}
		res, err := b.do(ctx, []ConsumeRequest{req})
		if err == nil {
			d = res[0]
		}
		return err
	})
	return d, err
}

// forwardConsumeBatch sends a batch of consumes to the leader in one RPC.
func (s *Store) forwardConsumeBatch(reqs []ConsumeRequest) ([]Decision, error) {
	id, addr, err := s.leader()
	if err != nil {
		return nil, err
	}
	if id == s.cfg.NodeID {
		return nil, errNotLeader // we are about to lead, or just stopped
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ApplyTimeout)
	defer cancel()
	s.forwarded.Add(uint64(len(reqs)))
	var out ConsumeReply
	if err := s.forward.call(ctx, addr, "Consume", &ConsumeArgs{Reqs: reqs}, &out); err != nil {
		return nil, err
	}
	if err := remoteError(out.Code, out.Msg); err != nil {
		return nil, err
	}
	return out.Decisions, nil
}

// Check decides req exactly as Consume would at this moment, from
// linearizable state, but charges nothing; req.ID is not needed.
func (s *Store) Check(ctx context.Context, req ConsumeRequest) (Decision, error) {
	if err := req.hashName(); err != nil {
		return Decision{}, err
	}
	if err := req.validateCharge(); err != nil {
		return Decision{}, err
	}
	var d Decision
	err := s.do(ctx, func(ctx context.Context) error {
		if s.IsLeader() {
			var out ReadReply
			err := (&Quota{s: s}).readLocal(ctx, &ReadArgs{Kind: readCheck, Check: req}, &out)
			d = out.Decision
			return err
		}
		// A follower judges the check itself, at the leader's read point:
		// one RPC per batch of concurrent checks instead of one per check.
		points, err := s.readPoints.do(ctx, []struct{}{{}})
		if err != nil {
			return err
		}
		p := points[0]
		if ok, err := s.waitApplied(ctx, p.Applied); err != nil {
			return err
		} else if ok {
			d = s.fsm.check(&req, time.Unix(0, p.Now))
			return nil
		}
		// The leader or this node cannot say which commands its FSM
		// applied (a leader of an earlier version, or a snapshot restored
		// since the last command): the leader judges.
		var out ReadReply
		if err := s.forward.call(ctx, p.leader, "Read", &ReadArgs{Kind: readCheck, Check: req}, &out); err != nil {
			return err
		}
		d = out.Decision
		return remoteError(out.Code, out.Msg)
	})
	return d, err
}

// readPoint is where a linearizable read may be served: once a node's FSM
// has applied the command at Applied, its state holds every write answered
// before the read began (the leader answers a write once its FSM applied
// it), judged at Now, the time the leader would stamp. Applied is 0 when
// the leader cannot say.
type readPoint struct {
	Applied uint64
	Now     int64
	leader  string
}

// fetchReadPoint asks the leader for a read point, for a batch of reads.
func (s *Store) fetchReadPoint(batch []struct{}) ([]readPoint, error) {
	_, addr, err := s.leader()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ApplyTimeout)
	defer cancel()
	s.forwarded.Add(1)
	var out ReadReply
	if err := s.forward.call(ctx, addr, "Read", &ReadArgs{Kind: readIndex}, &out); err != nil {
		return nil, err
	}
	if err := remoteError(out.Code, out.Msg); err != nil {
		return nil, err
	}
	p := readPoint{Applied: out.Applied, Now: out.Now, leader: addr}
	res := make([]readPoint, len(batch))
	for i := range res {
		res[i] = p
	}
	return res, nil
}

// waitApplied waits until this node's FSM has applied the command at
// index. It answers false, at once, when index is 0 or this node cannot
// say what its FSM applied (it restored a snapshot and has applied no
// command since).
func (s *Store) waitApplied(ctx context.Context, index uint64) (bool, error) {
	for {
		applied := s.fsm.applied.Load()
		if index == 0 || applied == 0 {
			return false, nil
		}
		if applied >= index {
			return true, nil
		}
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("%w: command %d not applied in time", ErrUnavailable, index)
		case <-s.closed:
			return false, ErrClosed
		default:
		}
		time.Sleep(50 * time.Microsecond) // as readIndex waits; no timer per turn
	}
}

// Refund gives back what the allowed consume with this id took, at most
// once. Refunding an id whose consume has not been applied yet makes that
// consume charge nothing if it is applied later.
func (s *Store) Refund(ctx context.Context, id RequestID) error {
	if id.IsZero() {
		return invalidf("refund needs a request id")
	}
	_, err := s.write(ctx, &command{Op: opRefund, ID: id})
	return err
}

// CreateToken adds a token. ErrExists if the name is taken. The name is
// hashed here: the log and every replica see only its key.
func (s *Store) CreateToken(ctx context.Context, spec TokenSpec) (*Token, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if err := validExpiry(spec.ExpiresAt); err != nil {
		return nil, err
	}
	key := KeyOf(spec.Name)
	spec.Name = ""
	return s.write(ctx, &command{Op: opCreate, ID: NewRequestID(), Key: &key, Spec: &spec})
}

// validExpiry refuses an expiry the state cannot hold: times are kept as
// unix nanoseconds, which cover 1678 to 2262. Checked where a request is
// proposed, not in Apply, so entries already in a log apply as they did.
func validExpiry(at *time.Time) error {
	if at == nil {
		return nil
	}
	if at.Before(time.Unix(0, 0)) || at.After(time.Unix(0, math.MaxInt64)) {
		return invalidf("expires_at must be between 1970 and 2262, got %s", at.UTC().Format(time.RFC3339))
	}
	return nil
}

// UpdateLimits changes the limits, expiry or metadata of the token with id.
// An exhausted token whose new limits leave room becomes active again.
func (s *Store) UpdateLimits(ctx context.Context, id string, u LimitUpdate) (*Token, error) {
	if err := u.Validate(); err != nil {
		return nil, err
	}
	if u.ExpiresAt != nil && !u.ExpiresAt.IsZero() {
		if err := validExpiry(u.ExpiresAt); err != nil {
			return nil, err
		}
	}
	if !IsTokenID(id) {
		return nil, fmt.Errorf("%w: %q is not a token id", ErrNotFound, id)
	}
	return s.write(ctx, &command{Op: opUpdate, ID: NewRequestID(), TokenID: id, Update: &u})
}

// Revoke stops a token from being used until it is reactivated.
func (s *Store) Revoke(ctx context.Context, id string) (*Token, error) {
	return s.idOp(ctx, opRevoke, id)
}

// Reactivate undoes a revoke (the token is exhausted again if it has no room).
func (s *Store) Reactivate(ctx context.Context, id string) (*Token, error) {
	return s.idOp(ctx, opReactivate, id)
}

// Reset sets a token's usage back to zero.
func (s *Store) Reset(ctx context.Context, id string) (*Token, error) {
	return s.idOp(ctx, opReset, id)
}

// DeleteToken removes a token. Its request ids stay deduplicated.
func (s *Store) DeleteToken(ctx context.Context, id string) error {
	_, err := s.idOp(ctx, opDelete, id)
	return err
}

func (s *Store) idOp(ctx context.Context, o op, id string) (*Token, error) {
	if !IsTokenID(id) {
		return nil, fmt.Errorf("%w: %q is not a token id", ErrNotFound, id)
	}
	return s.write(ctx, &command{Op: o, ID: NewRequestID(), TokenID: id})
}

// write proposes c on the leader, forwarding when this node is not it.
// c.ID is fixed before the first try, so retries are deduplicated.
func (s *Store) write(ctx context.Context, c *command) (*Token, error) {
	res, err := s.propose(ctx, c)
	if err != nil {
		return nil, err
	}
	return res.Token, nil
}

// propose applies c on the leader, forwarding when this node is not it, and
// returns its result; a result's error is returned as the error.
func (s *Store) propose(ctx context.Context, c *command) (*applyResult, error) {
	var out *applyResult
	err := s.do(ctx, func(ctx context.Context) error {
		if s.IsLeader() {
			res, err := s.applyLocal(c)
			if err != nil {
				return err
			}
			out = res
			return res.Err
		}
		_, addr, err := s.leader()
		if err != nil {
			return err
		}
		b, err := encodeCommand(c)
		if err != nil {
			return err
		}
		s.forwarded.Add(1)
		var reply WriteReply
		if err := s.forward.call(ctx, addr, "Write", &WriteArgs{Cmd: b}, &reply); err != nil {
			return err
		}
		out = &applyResult{Token: reply.Token, Pool: reply.Pool, Decisions: reply.Decisions}
		return remoteError(reply.Code, reply.Msg)
	})
	return out, err
}

// Token returns the token with id as of now (a linearizable read).
func (s *Store) Token(ctx context.Context, id string) (*Token, error) {
	if !IsTokenID(id) {
		return nil, fmt.Errorf("%w: %q is not a token id", ErrNotFound, id)
	}
	var out ReadReply
	err := s.read(ctx, &ReadArgs{Kind: readToken, ID: id}, &out)
	return out.Token, err
}

// Lookup returns the token with this name (the secret) as of now.
func (s *Store) Lookup(ctx context.Context, name string) (*Token, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	var out ReadReply
	err := s.read(ctx, &ReadArgs{Kind: readLookup, Key: KeyOf(name)}, &out)
	return out.Token, err
}

// TokenFilter selects and pages tokens for Tokens.
type TokenFilter struct {
	// Status keeps tokens with this status ("" for all).
	Status Status
	// RemainingBelow keeps tokens with a usage limit and fewer than this
	// many uploads left (0: no filter).
	RemainingBelow int64
	// CreatedBy keeps tokens made by this creator ("" for all).
	CreatedBy string
	// After starts the page after this id (the previous page's next cursor).
	After string
	// Limit caps the page (0: no cap).
	Limit int
	// Pool keeps the tokens that belong to the pool with this id.
	Pool string
}

func (f *TokenFilter) keep(t *Token) bool {
	if f.Status != "" && t.Status != f.Status {
		return false
	}
	if f.RemainingBelow > 0 && (t.UsageLimit == 0 || t.Remaining() >= f.RemainingBelow) {
		return false
	}
	if f.CreatedBy != "" && t.CreatedBy != f.CreatedBy {
		return false
	}
	if f.Pool != "" && !slices.Contains(t.Pools, f.Pool) {
		return false
	}
	return t.ID > f.After
}

// Tokens lists tokens by id (a linearizable read), filtered and paged: next
// is the cursor of the following page, "" after the last.
func (s *Store) Tokens(ctx context.Context, filter TokenFilter) (page []Token, next string, err error) {
	var out ReadReply
	err = s.read(ctx, &ReadArgs{Kind: readList, Filter: filter}, &out)
	return out.Tokens, out.Next, err
}

// read serves a read on the leader after a read barrier, which makes it
// linearizable: the barrier is committed after the read began, and the
// leader has applied everything up to it.
func (s *Store) read(ctx context.Context, args *ReadArgs, out *ReadReply) error {
	return s.do(ctx, func(ctx context.Context) error {
		*out = ReadReply{}
		if s.IsLeader() {
			return (&Quota{s: s}).readLocal(ctx, args, out)
		}
		_, addr, err := s.leader()
		if err != nil {
			return err
		}
		s.forwarded.Add(1)
		if err := s.forward.call(ctx, addr, "Read", args, out); err != nil {
			return err
		}
		return remoteError(out.Code, out.Msg)
	})
}

// --- membership ---

// Join adds a voter (id at address) to the cluster.
func (s *Store) Join(ctx context.Context, id, address string) error {
	if id == "" || address == "" {
		return invalidf("a member needs an id and an address")
	}
	return s.member(ctx, &MemberArgs{Add: true, ID: id, Address: address})
}

// Remove takes a server out of the cluster.
func (s *Store) Remove(ctx context.Context, id string) error {
	if id == "" {
		return invalidf("a member needs an id")
	}
	return s.member(ctx, &MemberArgs{ID: id})
}

func (s *Store) member(ctx context.Context, args *MemberArgs) error {
	return s.do(ctx, func(ctx context.Context) error {
		if s.IsLeader() {
			return s.changeMember(args)
		}
		_, addr, err := s.leader()
		if err != nil {
			return err
		}
		var out WriteReply
		if err := s.forward.call(ctx, addr, "Member", args, &out); err != nil {
			return err
		}
		return remoteError(out.Code, out.Msg)
	})
}

func (s *Store) changeMember(args *MemberArgs) error {
	if !s.IsLeader() {
		return errNotLeader
	}
	var current *raft.Server
	for _, srv := range s.configuration() {
		if string(srv.ID) == args.ID {
			current = &srv
		}
	}
	if args.Gateway && current != nil && current.Suffrage != raft.Nonvoter {
		// A gateway never changes the voter set, even under a voter's id.
		return invalidf("%q is a voter, not a gateway", args.ID)
	}
	var f raft.IndexFuture
	switch {
	case args.Add && args.Gateway:
		f = s.raft.AddNonvoter(raft.ServerID(args.ID), raft.ServerAddress(args.Address), 0, s.cfg.ApplyTimeout)
	case args.Add:
		f = s.raft.AddVoter(raft.ServerID(args.ID), raft.ServerAddress(args.Address), 0, s.cfg.ApplyTimeout)
	case current == nil:
		return fmt.Errorf("%w: %q", ErrNoMember, args.ID)
	default:
		f = s.raft.RemoveServer(raft.ServerID(args.ID), 0, s.cfg.ApplyTimeout)
	}
	if err := f.Error(); err != nil {
		return raftError(err)
	}
	if n := s.voters(); n%2 == 0 && !args.Gateway {
		s.logger.Warn("the cluster now has an even number of voters: it needs a majority of them for every decision yet tolerates no more failures than one voter fewer would; add or remove one",
			zap.Int("voters", n), zap.Int("quorum", n/2+1), zap.Int("tolerated_failures", (n-1)/2))
	}
	return nil
}

func (s *Store) configuration() []raft.Server {
	f := s.raft.GetConfiguration()
	if f.Error() != nil {
		return nil
	}
	return f.Configuration().Servers
}

// Node is one member as the cluster sees it.
type Node struct {
	ID       string `json:"id"`
	Address  string `json:"address"`
	Suffrage string `json:"suffrage"`
	// Role is "voter" or "gateway" (a non-voter that takes traffic).
	Role string `json:"role"`
	// State is the node's own report (Leader, Follower, Candidate), or
	// "unreachable" when it neither answered nor, seen from the leader,
	// takes replication.
	State string `json:"state"`
	// LastContact is when the leader last reached this node, set only
	// while the leader has lost contact with it.
	LastContact *time.Time `json:"last_contact,omitempty"`
}

// ClusterInfo describes the cluster from this node's point of view.
type ClusterInfo struct {
	Leader        string `json:"leader"`
	LeaderAddress string `json:"leader_address"`
	Nodes         []Node `json:"nodes"`
	CommitIndex   uint64 `json:"commit_index"`
	AppliedIndex  uint64 `json:"applied_index"`
	// Halted says why this node stopped applying the log, if it did.
	Halted string `json:"halted,omitempty"`
}

// Cluster reports the members and each one's state. Each peer is asked
// for its own state (twice, the second time on a fresh connection). When
// one does not answer and this node leads, replication contact decides: a
// peer that takes replication is a follower, one the leader lost contact
// with is unreachable, with when it was last reached.
func (s *Store) Cluster(ctx context.Context) ClusterInfo {
	addr, id := s.raft.LeaderWithID()
	info := ClusterInfo{
		Leader:        string(id),
		LeaderAddress: string(addr),
		CommitIndex:   s.raft.CommitIndex(),
		AppliedIndex:  s.raft.AppliedIndex(),
	}
	if err := s.Halted(); err != nil {
		info.Halted = err.Error()
	}
	leading := s.IsLeader()
	servers := s.configuration()
	info.Nodes = make([]Node, len(servers))
	var wg sync.WaitGroup
	for i, srv := range servers {
		n := &info.Nodes[i]
		*n = Node{ID: string(srv.ID), Address: string(srv.Address), Suffrage: srv.Suffrage.String(), Role: "voter"}
		if srv.Suffrage == raft.Nonvoter {
			n.Role = "gateway"
		}
		if n.ID == s.cfg.NodeID {
			n.State = s.State()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.State = s.askState(ctx, n.ID, n.Address)
			if !leading || n.State != "unreachable" {
				return // it answered for itself
			}
			// No answer: the leader's replication contact decides. A
			// follower that takes replication is a follower, whatever one
			// probe met; one the leader lost is unreachable since then.
			if last, lost := s.peers.lostSince(n.ID); lost {
				n.LastContact = &last
			} else {
				n.State = raft.Follower.String()
			}
		}()
	}
	wg.Wait()
	return info
}

func (s *Store) askState(ctx context.Context, id, addr string) string {
	for range 2 {
		cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		var out StatusReply
		err := s.forward.call(cctx, s.dialAddr(id, addr), "Status", &Empty{}, &out)
		cancel()
		if err == nil {
			return out.State
		}
	}
	return "unreachable"
}

// Snapshot makes this node write a snapshot of its state now (Raft also
// does so on its own, every SnapshotThreshold entries) and returns how long
// it took.
func (s *Store) Snapshot() (time.Duration, error) {
	start := time.Now()
	if err := s.raft.Snapshot().Error(); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// AppliedIndex is the last log index this node has applied.
func (s *Store) AppliedIndex() uint64 { return s.raft.AppliedIndex() }
