package forward

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/rpc"
	"sync"
	"sync/atomic"
	"time"

	"github.com/raftquota/raftquota/raftstore/state"
)

// poolSize is how many connections a client keeps to one peer: it
// multiplexes concurrent calls over each.
const poolSize = 4

// Dialer opens a connection to a peer's forwarding port.
type Dialer func(addr string, timeout time.Duration) (net.Conn, error)

// Client calls peers. A call that fails in transport is reported as
// state.ErrUnavailable: it may or may not have been applied, and the
// caller retries with the same request id.
type Client struct {
	dial    Dialer
	timeout time.Duration
	// leaderGone is closed when the leader changes: calls and dials to the
	// old one end then, rather than wait out a black hole.
	leaderGone func() <-chan struct{}

	mu      sync.Mutex
	clients map[string][]*rpc.Client
	next    atomic.Uint64
	closed  bool
}

// NewClient returns a client that dials peers with dial (giving up after
// timeout) and abandons calls when leaderGone's channel closes.
func NewClient(dial Dialer, timeout time.Duration, leaderGone func() <-chan struct{}) *Client {
	return &Client{dial: dial, timeout: timeout, leaderGone: leaderGone, clients: map[string][]*rpc.Client{}}
}

// Consume sends a batch of consumes to the leader at addr.
func (c *Client) Consume(ctx context.Context, addr string, reqs []state.ConsumeRequest) ([]state.Decision, error) {
	var out ConsumeReply
	if err := c.call(ctx, addr, "Consume", &ConsumeArgs{Reqs: reqs}, &out); err != nil {
		return nil, err
	}
	return out.Decisions, remoteError(out.Code, out.Msg)
}

// Write applies cmd on the leader at addr.
func (c *Client) Write(ctx context.Context, addr string, cmd *state.Command) (*state.Result, error) {
	b, err := state.Encode(cmd)
	if err != nil {
		return nil, err
	}
	var out WriteReply
	if err := c.call(ctx, addr, "Write", &WriteArgs{Cmd: b}, &out); err != nil {
		return nil, err
	}
	return &state.Result{Token: out.Token, Pool: out.Pool, Decisions: out.Decisions}, remoteError(out.Code, out.Msg)
}

// Read serves q on the leader at addr.
func (c *Client) Read(ctx context.Context, addr string, q *state.Query) (state.Answer, error) {
	var out ReadReply
	if err := c.call(ctx, addr, "Read", argsOf(q), &out); err != nil {
		return state.Answer{}, err
	}
	return out.answer(), remoteError(out.Code, out.Msg)
}

// Point asks the leader at addr for a read point.
func (c *Client) Point(ctx context.Context, addr string) (Point, error) {
	var out ReadReply
	if err := c.call(ctx, addr, "Read", &ReadArgs{Kind: uint8(state.ReadPoint)}, &out); err != nil {
		return Point{}, err
	}
	return Point{Index: out.Index, Applied: out.Applied, Now: out.Now}, remoteError(out.Code, out.Msg)
}

// Member asks the node at addr to change the voter set.
func (c *Client) Member(ctx context.Context, addr string, m *Member) error {
	var out WriteReply
	if err := c.call(ctx, addr, "Member", m, &out); err != nil {
		return err
	}
	return remoteError(out.Code, out.Msg)
}

// Status asks the node at addr for its own state.
func (c *Client) Status(ctx context.Context, addr string) (Status, error) {
	var out StatusReply
	if err := c.call(ctx, addr, "Status", &Empty{}, &out); err != nil {
		// A call that ended early (deadline, leader change) may still be
		// decoding into out: never read it then.
		return Status{}, err
	}
	return out, nil
}

// remoteError rebuilds the error a peer answered with. A peer that is
// shutting down ("closed") did not decide: to the caller that is a leader
// change like any other, and the operation is retried.
func remoteError(code uint8, msg string) error {
	err := state.ErrorFrom(state.Code(code), msg)
	if errors.Is(err, state.ErrClosed) {
		return fmt.Errorf("%w: the leader is shutting down: %v", state.ErrUnavailable, err)
	}
	return err
}

// client returns a pooled client for addr, dialing when the pool is short.
func (c *Client) client(addr string, gone <-chan struct{}) (*rpc.Client, error) {
	i := int(c.next.Add(1) % poolSize)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, state.ErrClosed
	}
	pool := c.clients[addr]
	if i < len(pool) {
		rc := pool[i]
		c.mu.Unlock()
		return rc, nil
	}
	c.mu.Unlock()
	conn, err := c.dialUnlessGone(addr, gone)
	if err != nil {
		return nil, fmt.Errorf("%w: dialing leader %s: %v", state.ErrUnavailable, addr, err)
	}
	rc := rpc.NewClient(conn)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		rc.Close()
		return nil, state.ErrClosed
	}
	if len(c.clients[addr]) >= poolSize {
		rc.Close()
		return c.clients[addr][i], nil
	}
	c.clients[addr] = append(c.clients[addr], rc)
	return rc, nil
}

// dialUnlessGone connects to addr, giving up when the leader changes: a
// dial to a leader that is black-holed waits out its whole timeout
// otherwise.
func (c *Client) dialUnlessGone(addr string, gone <-chan struct{}) (net.Conn, error) {
	type dialed struct {
		c   net.Conn
		err error
	}
	ch := make(chan dialed, 1)
	go func() {
		conn, err := c.dial(addr, c.timeout)
		ch <- dialed{conn, err}
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

func (c *Client) drop(addr string, rc *rpc.Client) {
	c.mu.Lock()
	defer c.mu.Unlock()
	pool := c.clients[addr]
	for i, pc := range pool {
		if pc == rc {
			c.clients[addr] = append(pool[:i:i], pool[i+1:]...)
			break
		}
	}
	rc.Close()
}

// call runs one RPC against addr.
func (c *Client) call(ctx context.Context, addr, method string, args, out any) error {
	gone := c.leaderGone()
	rc, err := c.client(addr, gone)
	if err != nil {
		return err
	}
	call := rc.Go("Quota."+method, args, out, make(chan *rpc.Call, 1))
	select {
	case <-call.Done:
		if call.Error != nil {
			var se rpc.ServerError
			if !errors.As(call.Error, &se) {
				c.drop(addr, rc)
			}
			return fmt.Errorf("%w: %s to %s: %v", state.ErrUnavailable, method, addr, call.Error)
		}
		return nil
	case <-ctx.Done():
		// The connection may be wedged (a peer that was not yet listening
		// behind a proxy, a half-open socket): calls on it would time out
		// forever. Drop it; the next call dials afresh.
		c.drop(addr, rc)
		return fmt.Errorf("%w: %s to %s: %v", state.ErrUnavailable, method, addr, ctx.Err())
	case <-gone:
		c.drop(addr, rc)
		return fmt.Errorf("%w: %s to %s: the leader changed", state.ErrUnavailable, method, addr)
	}
}

// Close drops every connection; later calls fail with state.ErrClosed.
func (c *Client) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	for _, pool := range c.clients {
		for _, rc := range pool {
			rc.Close()
		}
	}
	c.clients = map[string][]*rpc.Client{}
}
