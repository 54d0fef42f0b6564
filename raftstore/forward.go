package raftstore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/rpc"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// Followers forward operations to the leader over net/rpc (gob) on
// connections from the mux, so forwarding shares the Raft port. A client
// multiplexes concurrent calls over one connection; a small pool per leader
// spreads them over a few.

const forwardPoolSize = 4

// ConsumeArgs is a forwarded batch of consumes.
type ConsumeArgs struct{ Reqs []ConsumeRequest }

// ConsumeReply answers ConsumeArgs in order.
type ConsumeReply struct {
	Decisions []Decision
	Code      uint8
	Msg       string
}

// WriteArgs is a forwarded command, in the log's own encoding.
type WriteArgs struct{ Cmd []byte }

// WriteReply answers WriteArgs.
type WriteReply struct {
	Token *Token
	Pool  *Pool
	// Decisions answers commands that decide (multipart reserves and parts).
	Decisions []Decision
	Code      uint8
	Msg       string
}

// Read kinds.
const (
	readToken uint8 = iota + 1
	readList
	readCheck
	readIndex
	readLookup
	readPool
	readPoolByName
	readPools
	readPoolTokens
)

// ReadArgs is a forwarded linearizable read.
type ReadArgs struct {
	Kind   uint8
	ID     string
	Name   string
	Key    TokenKey
	Filter TokenFilter
	Check  ConsumeRequest
}

// ReadReply answers ReadArgs.
type ReadReply struct {
	Token    *Token
	Tokens   []Token
	Pool     *Pool
	Pools    []Pool
	Next     string
	Decision Decision
	// Index is the leader's applied index after the read barrier (raft's,
	// counting entries handed to the FSM); Applied the index of the last
	// command its FSM applied (0: unknown, and from versions before
	// follower reads), and Now the time it would stamp then (readIndex).
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
}

// Empty is an RPC argument or reply that carries nothing.
type Empty struct{}

// Quota is the RPC service a node serves to its peers.
type Quota struct{ s *Store }

func (q *Quota) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), q.s.cfg.ApplyTimeout)
}

func reply(err error) (uint8, string) {
	if err == nil {
		return 0, ""
	}
	return uint8(codeOf(err)), err.Error()
}

// Consume applies a follower's batch on the leader, coalesced with others.
func (q *Quota) Consume(args *ConsumeArgs, out *ConsumeReply) error {
	if !q.s.IsLeader() {
		out.Code, out.Msg = reply(errNotLeader)
		return nil
	}
	ctx, cancel := q.ctx()
	defer cancel()
	d, err := q.s.leaderConsumes.do(ctx, args.Reqs)
	out.Decisions = d
	out.Code, out.Msg = reply(err)
	return nil
}

// Write applies a forwarded command on the leader.
func (q *Quota) Write(args *WriteArgs, out *WriteReply) error {
	if !q.s.IsLeader() {
		out.Code, out.Msg = reply(errNotLeader)
		return nil
	}
	c, err := decodeCommand(args.Cmd)
	if err != nil {
		out.Code, out.Msg = reply(fmt.Errorf("%w: %v", ErrInvalid, err))
		return nil
	}
	res, err := q.s.applyLocal(c)
	if err == nil {
		err = res.Err
		out.Token, out.Pool, out.Decisions = res.Token, res.Pool, res.Decisions
	}
	out.Code, out.Msg = reply(err)
	return nil
}

// Read serves a linearizable read on the leader.
func (q *Quota) Read(args *ReadArgs, out *ReadReply) error {
	ctx, cancel := q.ctx()
	defer cancel()
	out.Code, out.Msg = reply(q.readLocal(ctx, args, out))
	return nil
}

func (q *Quota) readLocal(ctx context.Context, args *ReadArgs, out *ReadReply) error {
	if err := q.s.readBarrier(ctx); err != nil {
		return err
	}
	switch args.Kind {
	case readToken:
		t, ok := q.s.fsm.token(args.ID)
		if !ok {
			return ErrNotFound
		}
		out.Token = t
	case readLookup:
		t, ok := q.s.fsm.lookup(args.Key)
		if !ok {
			return ErrNotFound
		}
		out.Token = t
	case readList:
		out.Tokens, out.Next = page(q.s.fsm.list(), &args.Filter)
	case readPool, readPoolByName:
		var ok bool
		if args.Kind == readPool {
			out.Pool, ok = q.s.fsm.pool(args.ID)
		} else {
			out.Pool, ok = q.s.fsm.poolNamed(args.Name)
		}
		if !ok {
			return errPoolNotFound
		}
	case readPools:
		out.Pools = q.s.fsm.poolList()
	case readPoolTokens:
		if _, ok := q.s.fsm.pool(args.ID); !ok {
			return errPoolNotFound
		}
		args.Filter.Pool = args.ID
		out.Tokens, out.Next = page(q.s.fsm.list(), &args.Filter)
	case readIndex:
		out.Index = q.s.raft.AppliedIndex()
		out.Applied = q.s.fsm.applied.Load()
		out.Now = q.s.clock.stamp(q.s)
	case readCheck:
		// Judged at the time the leader would stamp into a consume now.
		out.Decision = q.s.fsm.check(&args.Check, time.Unix(0, q.s.clock.stamp(q.s)))
	default:
		return fmt.Errorf("%w: unknown read kind %d", ErrInvalid, args.Kind)
	}
	return nil
}

// page keeps the tokens (sorted by id) that filter selects, up to its limit.
func page(all []Token, filter *TokenFilter) ([]Token, string) {
	out := make([]Token, 0, min(len(all), max(filter.Limit, 0)+1))
	for i := range all {
		if !filter.keep(&all[i]) {
			continue
		}
		if filter.Limit > 0 && len(out) == filter.Limit {
			return out, out[len(out)-1].ID
		}
		out = append(out, all[i])
	}
	return out, ""
}

// Member changes the voter set on the leader.
func (q *Quota) Member(args *MemberArgs, out *WriteReply) error {
	out.Code, out.Msg = reply(q.s.changeMember(args))
	return nil
}

// Status reports this node's state.
func (q *Quota) Status(_ *Empty, out *StatusReply) error {
	out.ID = q.s.cfg.NodeID
	out.State = q.s.State()
	out.CommitIndex = q.s.raft.CommitIndex()
	out.AppliedIndex = q.s.raft.AppliedIndex()
	out.Now = q.s.cfg.Clock().UnixNano()
	return nil
}

// forwarder serves the Quota RPC and keeps client connections to peers.
type forwarder struct {
	s      *Store
	server *rpc.Server

	mu      sync.Mutex
	clients map[string][]*rpc.Client
	conns   map[net.Conn]struct{}
	next    atomic.Uint64
	closed  bool
	wg      sync.WaitGroup
}

func newForwarder(s *Store) *forwarder {
	f := &forwarder{s: s, server: rpc.NewServer(), clients: map[string][]*rpc.Client{}, conns: map[net.Conn]struct{}{}}
	if err := f.server.RegisterName("Quota", &Quota{s: s}); err != nil {
		panic("raftstore: registering RPC service: " + err.Error())
	}
	f.wg.Add(1)
	go f.serve()
	return f
}

func (f *forwarder) serve() {
	defer f.wg.Done()
	for {
		conn, err := f.s.mux.forward.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		if f.closed {
			f.mu.Unlock()
			conn.Close()
			return
		}
		f.conns[conn] = struct{}{}
		f.mu.Unlock()
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.server.ServeConn(conn)
			f.mu.Lock()
			delete(f.conns, conn)
			f.mu.Unlock()
		}()
	}
}

// client returns a pooled client for addr, dialing when the pool is short.
func (f *forwarder) client(addr string, gone <-chan struct{}) (*rpc.Client, error) {
	i := int(f.next.Add(1) % forwardPoolSize)
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil, ErrClosed
	}
	pool := f.clients[addr]
	if i < len(pool) {
		c := pool[i]
		f.mu.Unlock()
		return c, nil
	}
	f.mu.Unlock()
	conn, err := f.dial(addr, gone)
	if err != nil {
		return nil, fmt.Errorf("%w: dialing leader %s: %v", ErrUnavailable, addr, err)
	}
	c := rpc.NewClient(conn)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		c.Close()
		return nil, ErrClosed
	}
	if len(f.clients[addr]) >= forwardPoolSize {
		c.Close()
		return f.clients[addr][i], nil
	}
	f.clients[addr] = append(f.clients[addr], c)
	return c, nil
}

// dial connects to addr, giving up when the leader changes: a dial to a
// leader that is black-holed waits out its whole timeout otherwise.
func (f *forwarder) dial(addr string, gone <-chan struct{}) (net.Conn, error) {
	type dialed struct {
		c   net.Conn
		err error
	}
	ch := make(chan dialed, 1)
	go func() {
		c, err := f.s.mux.forward.Dial(raft.ServerAddress(addr), f.s.cfg.ApplyTimeout)
		ch <- dialed{c, err}
	}()
	select {
	case d := <-ch:
		return d.c, d.err
	case <-gone:
		go func() {
			if d := <-ch; d.c != nil {
				d.c.Close()
			}
		}()
		return nil, errors.New("the leader changed while dialing it")
	}
}

func (f *forwarder) drop(addr string, c *rpc.Client) {
	f.mu.Lock()
	defer f.mu.Unlock()
	pool := f.clients[addr]
	for i, pc := range pool {
		if pc == c {
			f.clients[addr] = append(pool[:i:i], pool[i+1:]...)
			break
		}
	}
	c.Close()
}

// call runs one RPC against addr. A transport failure is reported as
// ErrUnavailable: the call may or may not have been applied, and the caller
// retries with the same request id.
func (f *forwarder) call(ctx context.Context, addr, method string, args, out any) error {
	gone := f.s.leaderGoneCh()
	c, err := f.client(addr, gone)
	if err != nil {
		return err
	}
	call := c.Go("Quota."+method, args, out, make(chan *rpc.Call, 1))
	select {
	case <-call.Done:
		if call.Error != nil {
			var se rpc.ServerError
			if !errors.As(call.Error, &se) {
				f.drop(addr, c)
			}
			return fmt.Errorf("%w: %s to %s: %v", ErrUnavailable, method, addr, call.Error)
		}
		return nil
	case <-ctx.Done():
		// The connection may be wedged (a peer that was not yet listening
		// behind a proxy, a half-open socket): calls on it would time out
		// forever. Drop it; the next call dials afresh.
		f.drop(addr, c)
		return fmt.Errorf("%w: %s to %s: %v", ErrUnavailable, method, addr, ctx.Err())
	case <-gone:
		f.drop(addr, c)
		return fmt.Errorf("%w: %s to %s: the leader changed", ErrUnavailable, method, addr)
	}
}

func (f *forwarder) close() {
	f.mu.Lock()
	f.closed = true
	for _, pool := range f.clients {
		for _, c := range pool {
			c.Close()
		}
	}
	f.clients = map[string][]*rpc.Client{}
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
}
