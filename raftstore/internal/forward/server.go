package forward

import (
	"context"
	"fmt"
	"net"
	"net/rpc"
	"sync"
	"time"

	"github.com/raftquota/raftquota/raftstore/state"
)

// Service is what a node serves its peers. Consume and Write are only
// called while IsLeader; the others answer on any node (Read and Point
// fail on one that does not lead).
type Service interface {
	IsLeader() bool
	Consume(ctx context.Context, reqs []state.ConsumeRequest) ([]state.Decision, error)
	Write(ctx context.Context, c *state.Command) (*state.Result, error)
	Read(ctx context.Context, q *state.Query) (state.Answer, error)
	Point(ctx context.Context) (Point, error)
	Member(ctx context.Context, m *Member) error
	Status() Status
}

// Server serves a Service on the connections a listener accepts.
type Server struct {
	rpc *rpc.Server
	l   net.Listener

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// Serve answers peers' calls on l until Close. Every call runs under
// timeout.
func Serve(l net.Listener, svc Service, timeout time.Duration) *Server {
	s := &Server{rpc: rpc.NewServer(), l: l, conns: map[net.Conn]struct{}{}}
	if err := s.rpc.RegisterName("Quota", &quota{svc: svc, timeout: timeout}); err != nil {
		panic("forward: registering the RPC service: " + err.Error())
	}
	s.wg.Add(1)
	go s.accept()
	return s
}

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		conn, err := s.l.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			conn.Close()
			return
		}
		s.conns[conn] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.rpc.ServeConn(conn)
			s.mu.Lock()
			delete(s.conns, conn)
			s.mu.Unlock()
		}()
	}
}

// Close drops every connection. The accept loop ends when its listener
// closes; Wait waits for it.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
}

// Wait waits for the accept loop and the connections to end.
func (s *Server) Wait() { s.wg.Wait() }

// quota is the RPC service. Its method names and argument types are the
// wire protocol: never renamed.
type quota struct {
	svc     Service
	timeout time.Duration
}

// reply encodes err: the one mapping of errors onto the wire (state.CodeOf
// and, on the client, state.ErrorFrom).
func reply(err error) (uint8, string) {
	if err == nil {
		return 0, ""
	}
	return uint8(state.CodeOf(err)), err.Error()
}

func (q *quota) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), q.timeout)
}

// Consume applies a follower's batch on the leader.
func (q *quota) Consume(args *ConsumeArgs, out *ConsumeReply) error {
	if !q.svc.IsLeader() {
		out.Code, out.Msg = reply(state.ErrNotLeader)
		return nil
	}
	ctx, cancel := q.ctx()
	defer cancel()
	d, err := q.svc.Consume(ctx, args.Reqs)
	out.Decisions = d
	out.Code, out.Msg = reply(err)
	return nil
}

// Write applies a forwarded command on the leader.
func (q *quota) Write(args *WriteArgs, out *WriteReply) error {
	if !q.svc.IsLeader() {
		out.Code, out.Msg = reply(state.ErrNotLeader)
		return nil
	}
	c, err := state.Decode(args.Cmd)
	if err != nil {
		out.Code, out.Msg = reply(fmt.Errorf("%w: %v", state.ErrInvalid, err))
		return nil
	}
	ctx, cancel := q.ctx()
	defer cancel()
	res, err := q.svc.Write(ctx, c)
	if err == nil {
		err = res.Err
		out.Token, out.Pool, out.Decisions = res.Token, res.Pool, res.Decisions
	}
	out.Code, out.Msg = reply(err)
	return nil
}

// Read serves a linearizable read, or the read point, on the leader.
func (q *quota) Read(args *ReadArgs, out *ReadReply) error {
	ctx, cancel := q.ctx()
	defer cancel()
	var err error
	if state.ReadKind(args.Kind) == state.ReadPoint {
		var p Point
		p, err = q.svc.Point(ctx)
		out.Index, out.Applied, out.Now = p.Index, p.Applied, p.Now
	} else {
		var a state.Answer
		a, err = q.svc.Read(ctx, queryOf(args))
		out.setAnswer(&a)
	}
	out.Code, out.Msg = reply(err)
	return nil
}

// Member changes the voter set on the leader.
func (q *quota) Member(args *MemberArgs, out *WriteReply) error {
	ctx, cancel := q.ctx()
	defer cancel()
	out.Code, out.Msg = reply(q.svc.Member(ctx, args))
	return nil
}

// Status reports this node's state.
func (q *quota) Status(_ *Empty, out *StatusReply) error {
	*out = q.svc.Status()
	return nil
}
