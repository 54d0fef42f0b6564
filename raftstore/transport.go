package raftstore

import (
	"errors"
	"fmt"
	"net"
	"sync"
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
}

func newMux(base raft.StreamLayer, logger *zap.Logger) *mux {
	m := &mux{base: base, logger: logger}
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

func (l *muxLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	conn, err := l.m.base.Dial(address, timeout)
	if err != nil {
		return nil, err
	}
	conn.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := conn.Write([]byte{l.kind}); err != nil {
		conn.Close()
		return nil, err
	}
	conn.SetWriteDeadline(time.Time{})
	return conn, nil
}
