package raftstore

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/zap"
)

// One port serves both Raft and the forwarding RPC. Every connection opens
// with one byte that says which of the two it is for; the mux reads it and
// hands the connection on. Both ends are ours, so this costs one byte per
// connection and spares a second port in every firewall rule.
const (
	connRaft    byte = 'R'
	connForward byte = 'F'
)

// NewTCPStreamLayer listens on bind and dials peers over plain TCP. advertise
// is the address peers reach this node at (bind when empty). A TLS layer can
// replace it: the store only needs a raft.StreamLayer.
func NewTCPStreamLayer(bind, advertise string) (raft.StreamLayer, error) {
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, fmt.Errorf("listening for raft on %s: %w", bind, err)
	}
	addr := ln.Addr()
	if advertise != "" {
		a, err := net.ResolveTCPAddr("tcp", advertise)
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("advertise address %q: %w", advertise, err)
		}
		addr = a
	}
	if ta, ok := addr.(*net.TCPAddr); ok && ta.IP.IsUnspecified() {
		ln.Close()
		return nil, fmt.Errorf("raft address %s is unspecified: set an advertise address peers can reach", addr)
	}
	return &tcpLayer{Listener: ln, addr: addr}, nil
}

type tcpLayer struct {
	net.Listener
	addr net.Addr
}

func (t *tcpLayer) Addr() net.Addr { return t.addr }

func (t *tcpLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return net.DialTimeout("tcp", string(address), timeout)
}

// mux splits one StreamLayer into a Raft layer and a forwarding listener.
type mux struct {
	base    raft.StreamLayer
	raft    *muxLayer
	forward *muxLayer
	logger  *zap.Logger
	wg      sync.WaitGroup
	// quit ends Raft's dial retries: closed before Raft shuts down, which
	// waits for its replication goroutines, some of which may be dialing.
	quit     chan struct{}
	quitOnce sync.Once
	// onRefused and onConnected, when set before Raft starts, hear of a
	// peer address that refuses Raft's dial, and of one connected again
	// after refusing.
	onRefused, onConnected func(address string)
	// keepDialing, when set before Raft starts, says whether a Raft dial
	// to a refusing address should go on past its timeout (see Dial).
	keepDialing func(address string) bool
}

// stopDialing makes dials fail at once from now on.
func (m *mux) stopDialing() { m.quitOnce.Do(func() { close(m.quit) }) }

func newMux(base raft.StreamLayer, logger *zap.Logger) *mux {
	m := &mux{base: base, logger: logger, quit: make(chan struct{})}
	m.raft = newMuxLayer(m, connRaft)
	m.forward = newMuxLayer(m, connForward)
	m.wg.Add(1)
	go m.serve()
	return m
}

func (m *mux) serve() {
	defer m.wg.Done()
	for {
		conn, err := m.base.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				m.raft.close()
				m.forward.close()
				return
			}
			m.logger.Warn("accepting raft connection", zap.Error(err))
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go m.route(conn)
	}
}

// route reads the connection's first byte and passes it to its layer. A
// peer that sends nothing, or anything else, is dropped.
func (m *mux) route(conn net.Conn) {
	var b [1]byte
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(b[:]); err != nil {
		conn.Close()
		return
	}
	conn.SetReadDeadline(time.Time{})
	var l *muxLayer
	switch b[0] {
	case connRaft:
		l = m.raft
	case connForward:
		l = m.forward
	default:
		m.logger.Warn("dropping connection with unknown protocol byte",
			zap.String("remote_addr", conn.RemoteAddr().String()), zap.Uint8("byte", b[0]))
		conn.Close()
		return
	}
	select {
	case l.conns <- conn:
	case <-l.done:
		conn.Close()
	}
}

func (m *mux) close() error {
	m.stopDialing()
	err := m.base.Close()
	m.wg.Wait()
	return err
}

// muxLayer is one side of the mux: a raft.StreamLayer whose Dial writes the
// side's byte and whose Accept yields the connections routed to it.
type muxLayer struct {
	m     *mux
	kind  byte
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newMuxLayer(m *mux, kind byte) *muxLayer {
	return &muxLayer{m: m, kind: kind, conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *muxLayer) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close is a no-op for a side: the mux closes the shared listener once.
func (l *muxLayer) Close() error { return nil }

func (l *muxLayer) close() { l.once.Do(func() { close(l.done) }) }

func (l *muxLayer) Addr() net.Addr { return l.m.base.Addr() }

// raftDialRetry is how often Raft's dial to a peer that refuses
// connections is retried, within the dial's timeout.
const raftDialRetry = 25 * time.Millisecond

// Dial connects to a peer's side. Raft's dials keep trying a peer that
// refuses connections (down, or restarting), every raftDialRetry: after
// each failed RPC to a peer hashicorp/raft waits before the next, and for
// log replication that wait (replicateTo's backoff) doubles with every
// failure up to 10.24 s and cannot be cut short. A follower back after a
// long absence then sat for up to 10 s before it was sent what it missed
// (BENCHMARKS.md, the catch-up rows), answering no reads and counting for
// no quorum meanwhile.
//
// So a dial that a refusing peer makes wait goes on past its timeout while
// keepDialing says so (the Store: while this node leads and the peer is a
// member); otherwise, as for a candidate's vote requests, it ends at its
// timeout (NetworkTransportConfig.Timeout, 10 s). A restarted peer is
// connected within raftDialRetry of listening again, and a dead one costs
// no failed RPC (and no ERROR line) while it stays dead. stopDialing ends
// every wait at once. Forwarding's dials fail at once: a client is waiting.
//
// A dial that waits hides the peer's absence from Raft's heartbeat
// observations, which the leader's cluster view reads: the mux reports a
// refusal (and a connection after refusals) to the Store itself.
func (l *muxLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	deadline := time.Now().Add(timeout)
	conn, err := l.m.base.Dial(address, timeout)
	refused := false
	for err != nil && l.kind == connRaft && errors.Is(err, syscall.ECONNREFUSED) {
		if time.Until(deadline) <= raftDialRetry && (l.m.keepDialing == nil || !l.m.keepDialing(string(address))) {
			break
		}
		if !refused && l.m.onRefused != nil {
			l.m.onRefused(string(address))
		}
		refused = true
		select {
		case <-l.m.quit:
			return nil, err
		case <-time.After(raftDialRetry):
		}
		// A refusal comes back at once; a peer that stops answering
		// altogether makes this dial fail at its timeout.
		conn, err = l.m.base.Dial(address, timeout)
	}
	if err != nil {
		return nil, err
	}
	if refused && l.m.onConnected != nil {
		l.m.onConnected(string(address))
	}
	conn.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := conn.Write([]byte{l.kind}); err != nil {
		conn.Close()
		return nil, err
	}
	conn.SetWriteDeadline(time.Time{})
	return conn, nil
}
