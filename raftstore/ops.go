package raftstore

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/raftquota/raftquota/raftstore/internal/forward"
	"github.com/raftquota/raftquota/raftstore/state"
)

// Consume charges req.Units and req.Bytes to req.Token if the token allows
// it, as one step of the replicated log. The same req.ID never charges
// twice: a retry returns the first decision with Duplicate set. An error
// means no decision was learned; retrying with the same req.ID is safe.
func (s *Store) Consume(ctx context.Context, req state.ConsumeRequest) (state.Decision, error) {
	if err := req.HashName(); err != nil {
		return state.Decision{}, err
	}
	if err := req.Validate(); err != nil {
		return state.Decision{}, err
	}
	var d state.Decision
	err := s.do(ctx, func(ctx context.Context) error {
		b := s.forwardConsumes
		if s.IsLeader() {
			b = s.leaderConsumes
		}
		res, err := b.do(ctx, []state.ConsumeRequest{req})
		if err == nil {
			d = res[0]
		}
		return err
	})
	return d, err
}

// forwardConsumeBatch sends a batch of consumes to the leader in one RPC.
func (s *node) forwardConsumeBatch(reqs []state.ConsumeRequest) ([]state.Decision, error) {
	id, addr, err := s.leader()
	if err != nil {
		return nil, err
	}
	if id == s.cfg.NodeID {
		return nil, state.ErrNotLeader // we are about to lead, or just stopped
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ApplyTimeout)
	defer cancel()
	s.forwarded.Add(uint64(len(reqs)))
	start := s.steps.start()
	defer s.steps.since(StepForward, start)
	return s.fwd.Consume(ctx, addr, reqs)
}

// applyLocal stamps the leader's time into c and proposes it to the log.
func (s *node) applyLocal(c *state.Command) (*state.Result, error) {
	c.Time = s.clock.stamp(s.raft.CurrentTerm())
	b, err := state.Encode(c)
	if err != nil {
		return nil, err
	}
	start := s.steps.start()
	f := s.raft.Apply(b, s.cfg.ApplyTimeout)
	err = f.Error()
	s.steps.since(StepCommit, start)
	if err != nil {
		return nil, raftError(err)
	}
	res, ok := f.Response().(*state.Result)
	if !ok {
		return nil, fmt.Errorf("%w: unexpected apply response %T", state.ErrUnavailable, f.Response())
	}
	return res, nil
}

// applyConsumes decides a batch of consumes on the leader: one log entry.
func (s *node) applyConsumes(reqs []state.ConsumeRequest) ([]state.Decision, error) {
	res, err := s.applyLocal(&state.Command{Op: state.OpConsume, Consumes: reqs})
	if err != nil {
		return nil, err
	}
	if res.Err != nil {
		return nil, res.Err
	}
	return res.Decisions, nil
}

// Check decides req exactly as Consume would at this moment, from
// linearizable state, but charges nothing; req.ID is not needed.
func (s *Store) Check(ctx context.Context, req state.ConsumeRequest) (state.Decision, error) {
	if err := req.HashName(); err != nil {
		return state.Decision{}, err
	}
	if err := req.ValidateCharge(); err != nil {
		return state.Decision{}, err
	}
	var d state.Decision
	err := s.do(ctx, func(ctx context.Context) error {
		if s.IsLeader() {
			a, err := s.reads().queryLocal(ctx, state.Query{Kind: state.ReadCheck, Check: req})
			d = a.Decision
			return err
		}
		// A follower judges the check itself, at the leader's read point:
		// one RPC per batch of concurrent checks instead of one per check.
		points, err := s.readPoints.do(ctx, []struct{}{{}})
		if err != nil {
			return err
		}
		p := points[0]
		if ok, err := s.reads().waitApplied(ctx, p.Applied); err != nil {
			return err
		} else if ok {
			d = s.fsm.Check(&req, time.Unix(0, p.Now))
			return nil
		}
		// The leader or this node cannot say which commands its FSM
		// applied (a leader of an earlier version, or a snapshot restored
		// since the last command): the leader judges.
		a, err := s.fwd.Read(ctx, p.leader, &state.Query{Kind: state.ReadCheck, Check: req})
		d = a.Decision
		return err
	})
	return d, err
}

// readPoint is a read point (forward.Point) and the leader that gave it.
type readPoint struct {
	forward.Point
	leader string
}

// Refund gives back what the allowed consume with this id took, at most
// once. Refunding an id whose consume has not been applied yet makes that
// consume charge nothing if it is applied later.
func (s *Store) Refund(ctx context.Context, id state.RequestID) error {
	if id.IsZero() {
		return state.Invalidf("refund needs a request id")
	}
	_, err := s.write(ctx, &state.Command{Op: state.OpRefund, ID: id})
	return err
}

// CreateToken adds a token. ErrExists if the name is taken. The name is
// hashed here: the log and every replica see only its key.
func (s *Store) CreateToken(ctx context.Context, spec state.TokenSpec) (*state.Token, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if err := validExpiry(spec.ExpiresAt); err != nil {
		return nil, err
	}
	key := state.KeyOf(spec.Name)
	spec.Name = ""
	return s.write(ctx, &state.Command{Op: state.OpCreate, ID: state.NewRequestID(), Key: &key, Spec: &spec})
}

// validExpiry refuses an expiry the state cannot hold: times are kept as
// unix nanoseconds, which cover 1678 to 2262. Checked where a request is
// proposed, not in Apply, so entries already in a log apply as they did.
func validExpiry(at *time.Time) error {
	if at == nil {
		return nil
	}
	if at.Before(time.Unix(0, 0)) || at.After(time.Unix(0, math.MaxInt64)) {
		return state.Invalidf("expires_at must be between 1970 and 2262, got %s", at.UTC().Format(time.RFC3339))
	}
	return nil
}

// UpdateLimits changes the limits, expiry or metadata of the token with id.
// An exhausted token whose new limits leave room becomes active again.
func (s *Store) UpdateLimits(ctx context.Context, id string, u state.LimitUpdate) (*state.Token, error) {
	if err := u.Validate(); err != nil {
		return nil, err
	}
	if u.ExpiresAt != nil && !u.ExpiresAt.IsZero() {
		if err := validExpiry(u.ExpiresAt); err != nil {
			return nil, err
		}
	}
	if !state.IsTokenID(id) {
		return nil, fmt.Errorf("%w: %q is not a token id", state.ErrNotFound, id)
	}
	return s.write(ctx, &state.Command{Op: state.OpUpdate, ID: state.NewRequestID(), TokenID: id, Update: &u})
}

// Revoke stops a token from being used until it is reactivated.
func (s *Store) Revoke(ctx context.Context, id string) (*state.Token, error) {
	return s.idOp(ctx, state.OpRevoke, id)
}

// Reactivate undoes a revoke (the token is exhausted again if it has no room).
func (s *Store) Reactivate(ctx context.Context, id string) (*state.Token, error) {
	return s.idOp(ctx, state.OpReactivate, id)
}

// Reset sets a token's usage back to zero.
func (s *Store) Reset(ctx context.Context, id string) (*state.Token, error) {
	return s.idOp(ctx, state.OpReset, id)
}

// DeleteToken removes a token. Its request ids stay deduplicated.
func (s *Store) DeleteToken(ctx context.Context, id string) error {
	_, err := s.idOp(ctx, state.OpDelete, id)
	return err
}

func (s *node) idOp(ctx context.Context, o state.Op, id string) (*state.Token, error) {
	if !state.IsTokenID(id) {
		return nil, fmt.Errorf("%w: %q is not a token id", state.ErrNotFound, id)
	}
	return s.write(ctx, &state.Command{Op: o, ID: state.NewRequestID(), TokenID: id})
}

// write proposes c on the leader, forwarding when this node is not it.
// c.ID is fixed before the first try, so retries are deduplicated.
func (s *node) write(ctx context.Context, c *state.Command) (*state.Token, error) {
	res, err := s.propose(ctx, c)
	if err != nil {
		return nil, err
	}
	return res.Token, nil
}

// propose applies c on the leader, forwarding when this node is not it, and
// returns its result; a result's error is returned as the error.
func (s *node) propose(ctx context.Context, c *state.Command) (*state.Result, error) {
	var out *state.Result
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
		s.forwarded.Add(1)
		out, err = s.fwd.Write(ctx, addr, c)
		return err
	})
	return out, err
}

// Token returns the token with id as of now (a linearizable read).
func (s *Store) Token(ctx context.Context, id string) (*state.Token, error) {
	if !state.IsTokenID(id) {
		return nil, fmt.Errorf("%w: %q is not a token id", state.ErrNotFound, id)
	}
	a, err := s.reads().query(ctx, state.Query{Kind: state.ReadToken, ID: id})
	return a.Token, err
}

// Lookup returns the token with this name (the secret) as of now.
func (s *Store) Lookup(ctx context.Context, name string) (*state.Token, error) {
	if err := state.ValidateName(name); err != nil {
		return nil, err
	}
	a, err := s.reads().query(ctx, state.Query{Kind: state.ReadLookup, Key: state.KeyOf(name)})
	return a.Token, err
}

// Tokens lists tokens by id (a linearizable read), filtered and paged: next
// is the cursor of the following page, "" after the last.
func (s *Store) Tokens(ctx context.Context, filter state.TokenFilter) (page []state.Token, next string, err error) {
	a, err := s.reads().query(ctx, state.Query{Kind: state.ReadList, Filter: filter})
	return a.Tokens, a.Next, err
}

// --- membership ---

// Join adds a voter (id at address) to the cluster.
func (s *Store) Join(ctx context.Context, id, address string) error {
	if id == "" || address == "" {
		return state.Invalidf("a member needs an id and an address")
	}
	return s.members().member(ctx, &forward.Member{Add: true, ID: id, Address: address})
}

// Remove takes a server out of the cluster.
func (s *Store) Remove(ctx context.Context, id string) error {
	if id == "" {
		return state.Invalidf("a member needs an id")
	}
	return s.members().member(ctx, &forward.Member{ID: id})
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
	servers := s.members().configuration()
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
			n.State = s.members().askState(ctx, n.ID, n.Address)
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

// Stats are a node's counters and gauges, for metrics.
type Stats struct {
	// AppliedIndex is the last log index this node has applied.
	AppliedIndex uint64
	// LeaderChanges counts the leader changes this node has observed,
	// Forwarded the operations it forwarded to the leader.
	LeaderChanges, Forwarded uint64
	// PendingRefunds wait for a leader (RefundLater).
	PendingRefunds int
	// PendingEvents wait in the replicated outbox; DroppedEvents had no
	// room there (replicated). EventsDelivered and EventsFailed count this
	// node's deliveries, as leader.
	PendingEvents                                int
	DroppedEvents, EventsDelivered, EventsFailed uint64
	// LogChecksOK, LogChecksFailed and LogChecksSkipped count the log
	// checks of this node (logcheck.go): ranges that matched the leader's
	// checksum, that did not (or could not be read), and that were no
	// longer all on this node.
	LogChecksOK, LogChecksFailed, LogChecksSkipped uint64
}

// Stats reports this node's counters.
func (s *Store) Stats() Stats {
	c := s.fsm.Counts()
	q := s.duties.refunds
	q.mu.Lock()
	refunds := len(q.pending)
	q.mu.Unlock()
	return Stats{
		AppliedIndex:     s.raft.AppliedIndex(),
		LeaderChanges:    s.leaderChanges.Load(),
		Forwarded:        s.forwarded.Load(),
		PendingRefunds:   refunds,
		PendingEvents:    c.PendingEvents,
		DroppedEvents:    c.DroppedEvents,
		EventsDelivered:  s.duties.eventsDelivered.Load(),
		EventsFailed:     s.duties.eventsFailed.Load(),
		LogChecksOK:      s.logChecks.ok.Load(),
		LogChecksFailed:  s.logChecks.failed.Load(),
		LogChecksSkipped: s.logChecks.skipped.Load(),
	}
}
