package raftstore

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/raftquota/raftquota/raftstore/internal/forward"
	"github.com/raftquota/raftquota/raftstore/state"
	"go.uber.org/zap"
)

// Peer is one voting member of the cluster.
type Peer struct {
	ID      string `json:"id"`
	Address string `json:"address"`
}

// Config sets up a node. NodeID, DataDir and BindAddr are required.
type Config struct {
	// NodeID names this node in the cluster; it must never change for a data dir.
	NodeID string
	// DataDir holds the Raft log (in raft.db, or wal/ with LogStore "wal"),
	// the stable store (raft.db) and snapshots. Created if missing.
	DataDir string
	// BindAddr is the TCP address Raft and forwarding listen on, e.g. 127.0.0.1:7001.
	BindAddr string
	// AdvertiseAddr is the address peers dial; BindAddr when empty.
	AdvertiseAddr string
	// Peers is the initial voter set used to bootstrap a new cluster. It must
	// be the same on every node and include this node. Empty means a
	// single-node cluster of this node alone.
	Peers []Peer
	// DialAddresses overrides, for this node only, the address it dials to
	// reach a peer (by id): for NAT, or a proxy in between. Raft's
	// configuration keeps the peers' own addresses.
	DialAddresses map[string]string
	// NoBootstrap leaves a fresh node waiting to be added by an existing
	// cluster's leader (POST /quota/cluster/members) instead of bootstrapping.
	NoBootstrap bool
	// Gateway makes this node a gateway: a Raft non-voter that takes
	// traffic and decides through the voters (Peers, which must not include
	// it), never bootstraps, asks a voter to add it when it starts, and
	// asks to be removed when it closes. Gateways never change the voter set.
	Gateway bool
	// GatewayTimeout is how long a gateway may be unreachable from the
	// leader before the leader removes it, so dead gateways do not pile up
	// in the configuration. Default 1m.
	GatewayTimeout time.Duration

	// Raft timings. Zero takes the default, tuned for a LAN.
	HeartbeatTimeout   time.Duration // default 500ms
	ElectionTimeout    time.Duration // default 500ms
	LeaderLeaseTimeout time.Duration // default 250ms
	CommitTimeout      time.Duration // default 50ms; how often an idle leader tells followers its commit index
	// ApplyTimeout bounds one Raft apply or forwarded call. Default 2s.
	ApplyTimeout time.Duration
	// RequestTimeout bounds a whole operation, retries included, when the
	// caller's context has no deadline. Default 5s.
	RequestTimeout time.Duration
	// SnapshotThreshold is how many log entries trigger a snapshot. Default 8192.
	SnapshotThreshold uint64
	// SnapshotInterval is how often to check whether to snapshot. Default 30s.
	SnapshotInterval time.Duration

	// DedupSize proposes how many request ids the cluster remembers. It is
	// replicated state: a node that becomes leader proposes its value when
	// it differs, and every node applies it from the log. Zero proposes
	// nothing (the cluster keeps its value, DefaultDedupSize at first).
	DedupSize int
	// MaxBatch caps how many consumes go in one log entry. Default 1024.
	MaxBatch int
	// UploadSweep is how often the leader looks for multipart uploads past
	// their deadline. Default 1s.
	UploadSweep time.Duration

	// Stream replaces the plain TCP transport (e.g. with TLS). It must listen
	// on BindAddr. When set, BindAddr and AdvertiseAddr are not used to listen.
	Stream raft.StreamLayer
	// Clock is this node's wall clock. Default time.Now. While the node
	// leads, commands are stamped with it corrected to the cluster's median
	// clock (see clock.go).
	Clock func() time.Time
	// Logger receives the store's and Raft's logs. Default: no logs.
	Logger *zap.Logger
	// OnBatch, if set, is told the size of every consume batch this node
	// sends to the log or forwards to the leader.
	OnBatch func(size int, forwarded bool)
	// OnStep, if set, is told how long each step of a decision took on
	// this node (see Step). It is called on the decision path: keep it
	// cheap (the Caddy module adds to two atomic counters).
	OnStep func(step Step, d time.Duration)

	// EventsWebhook, when set, is where the leader POSTs each threshold
	// event (JSON, with an Idempotency-Key header), retrying until it
	// answers 2xx. Events are logged at INFO either way.
	EventsWebhook string

	// LogStore is where a voter keeps the Raft log: "wal" (default;
	// hashicorp/raft-wal, DataDir/wal: one fsync per append where a bbolt
	// commit takes two) or "boltdb" (raft-boltdb, DataDir/raft.db, beside
	// the stable store). Changing it moves the log on the next start.
	LogStore string

	// raftTimeout bounds Raft's RPCs and dials (0: 10 s); tests shorten it
	// to make Raft's failure counts grow fast.
	raftTimeout time.Duration
	// logCheckInterval is how often the leader checkpoints the log for the
	// log check (0: defaultLogCheckInterval); tests shorten it.
	logCheckInterval time.Duration
	// trailingLogs is how many entries a snapshot leaves in the log (0:
	// raft's default, 10240); tests make it small so that a follower falls
	// behind the leader's log and is sent a snapshot.
	trailingLogs uint64
	// holdLogWrites, if set, makes every log write wait until it is
	// closed: tests hold a follower that is in contact with its leader
	// but takes no entries.
	holdLogWrites chan struct{}
	// maxOp is the highest op this node says it applies (0: state.MaxOp);
	// tests set an earlier one to act as a node of an earlier version.
	maxOp state.Op
	// walSegmentSize is the size of the log's segment files (0: raft-wal's
	// default, 64 MiB, preallocated); format fixtures use small ones.
	walSegmentSize int
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.HeartbeatTimeout, 500*time.Millisecond)
	def(&c.ElectionTimeout, 500*time.Millisecond)
	def(&c.LeaderLeaseTimeout, 250*time.Millisecond)
	def(&c.CommitTimeout, 50*time.Millisecond)
	def(&c.ApplyTimeout, 2*time.Second)
	def(&c.RequestTimeout, 5*time.Second)
	def(&c.SnapshotInterval, 30*time.Second)
	def(&c.GatewayTimeout, time.Minute)
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = 8192
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = 1024
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
}

// DefaultConfig is the config Open fills in for settings left zero: the
// one source of the engine's defaults (the Caddy app's settings table and
// its reference test read them from here).
func DefaultConfig() Config {
	var c Config
	c.setDefaults()
	c.LogStore = LogStoreWAL
	return c
}

// Validate reports the first thing wrong with the config.
func (c *Config) Validate() error {
	if c.NodeID == "" {
		return fmt.Errorf("node id is required")
	}
	if c.DataDir == "" {
		return fmt.Errorf("data dir is required")
	}
	switch c.LogStore {
	case "", LogStoreBolt, LogStoreWAL:
	default:
		return fmt.Errorf("log store %q: use %q or %q", c.LogStore, LogStoreBolt, LogStoreWAL)
	}
	if c.Stream == nil {
		if _, _, err := net.SplitHostPort(c.BindAddr); err != nil {
			return fmt.Errorf("raft address %q: %v", c.BindAddr, err)
		}
	}
	if len(c.Peers) > 0 {
		self := false
		seen := map[string]bool{}
		for _, p := range c.Peers {
			if p.ID == "" || p.Address == "" {
				return fmt.Errorf("every peer needs an id and an address")
			}
			if seen[p.ID] {
				return fmt.Errorf("peer id %q is listed twice", p.ID)
			}
			seen[p.ID] = true
			if _, _, err := net.SplitHostPort(p.Address); err != nil {
				return fmt.Errorf("peer %s address %q: %v", p.ID, p.Address, err)
			}
			self = self || p.ID == c.NodeID
		}
		if !self && !c.Gateway {
			return fmt.Errorf("peers must include this node (%s)", c.NodeID)
		}
		if self && c.Gateway {
			return fmt.Errorf("a gateway is not a voter: peers lists the voters it joins, without this node (%s)", c.NodeID)
		}
	}
	if c.Gateway && len(c.Peers) == 0 {
		return fmt.Errorf("a gateway needs the voters it joins (peers)")
	}
	if c.DedupSize != 0 && (c.DedupSize < state.MinDedupSize || c.DedupSize > state.MaxDedupSize) {
		return fmt.Errorf("dedup size must be between %d and %d, got %d", state.MinDedupSize, state.MaxDedupSize, c.DedupSize)
	}
	for id, a := range c.DialAddresses {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("dial address for %s %q: %v", id, a, err)
		}
	}
	return nil
}

// Store is one node of the replicated quota cluster, as its users see it:
// tokens and consumes (ops.go), pools (Pools), multipart uploads (Uploads),
// membership, backup and health. Every method is safe for concurrent use
// and may be called on any node: followers forward to the leader.
type Store struct {
	*node
}

// node is the engine under a Store: Raft's lifecycle, batching, forwarding,
// linearizable reads and the leader's duties.
type node struct {
	cfg    Config
	logger *zap.Logger
	// newDataDir: this start bootstrapped an empty data dir with peers.
	newDataDir bool
	// duties are the background loops (duties.go).
	duties *duties
	// leaderGone is closed when the leader this node knows changes
	// (leaderMoved): forwarded calls to the old one end and are re-sent.
	leaderGone atomic.Pointer[chan struct{}]

	fsm       *replica
	raft      *raft.Raft
	stores    *logStores // a voter's log and stable store
	snaps     raft.SnapshotStore
	mux       *mux
	transport *raft.NetworkTransport
	fwd       *forward.Client
	fwdServer *forward.Server

	leaderConsumes  *batcher[state.ConsumeRequest, state.Decision]
	forwardConsumes *batcher[state.ConsumeRequest, state.Decision]
	barriers        *batcher[struct{}, struct{}]
	readPoints      *batcher[struct{}, readPoint] // a follower's checks

	observer      *raft.Observer
	steps         stepTimer
	logChecks     logChecks
	fingerprints  fingerprints
	clock         clockSync
	leaderChanges atomic.Uint64
	forwarded     atomic.Uint64

	// raftNode is raft once NewRaft returned, for the transport's address
	// lookups, which may run before.
	raftNode atomic.Pointer[raft.Raft]
	// peers tracks replication contact with each peer (leader only).
	peers peerContact
	// warnedDedup is the replicated dedup size this node last warned about.
	warnedDedup atomic.Int64
	// readyTerm is the term in which this node, leading, has committed and
	// applied an entry of its own: from then on its commit index covers
	// everything committed before it led, and reads can use it.
	readyTerm atomic.Uint64

	// ops counts operations in flight, so Close can let them finish;
	// draining refuses new ones.
	opsMu    sync.RWMutex
	ops      sync.WaitGroup
	draining bool

	closed    chan struct{}
	closeOnce sync.Once
	closeErr  error
	wg        sync.WaitGroup
}

// Open starts a node: it opens (or creates) the data dir, starts Raft and the
// forwarding server, and bootstraps a new cluster when the data dir is empty
// and bootstrapping is on. It does not wait for a leader; see WaitForLeader.
func Open(cfg Config) (*Store, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(cfg.DataDir, "snapshots"), 0o700); err != nil {
		return nil, fmt.Errorf("creating data dir: %w", err)
	}
	if err := claimDataDir(cfg.DataDir, cfg.NodeID); err != nil {
		return nil, err
	}
	logger := cfg.Logger.With(zap.String("node_id", cfg.NodeID))
	s := &Store{&node{cfg: cfg, logger: logger, closed: make(chan struct{}), steps: cfg.OnStep}}
	s.fsm = newReplica(state.New(logger), logger, s.onHalt)
	s.fsm.steps = s.steps
	if err := s.start(); err != nil {
		s.shutdown()
		return nil, err
	}
	return s, nil
}

// claimDataDir records which node owns a data dir, so a dir is never opened
// under another node's id (that would fork the cluster's history).
func claimDataDir(dir, id string) error {
	path := filepath.Join(dir, "node-id")
	b, err := os.ReadFile(path)
	if err == nil {
		if got := strings.TrimSpace(string(b)); got != id {
			return fmt.Errorf("data dir %s belongs to node %q, not %q: use another data dir or the same node id", dir, got, id)
		}
		return nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return os.WriteFile(path, []byte(id+"\n"), 0o600)
}

func (s *node) start() error {
	hl := newHCLog(s.logger.Named("raft"))
	logs, stable, snaps, err := s.openStores(hl)
	if err != nil {
		return err
	}
	s.snaps = snaps
	if err := s.openTransport(hl); err != nil {
		return err
	}
	rc := s.raftConfig(hl)
	if err := s.bootstrapIfNew(rc, logs, stable, snaps); err != nil {
		return err
	}
	r, err := raft.NewRaft(rc, s.fsm, logs, stable, snaps, s.transport)
	if err != nil {
		return fmt.Errorf("starting raft: %w", err)
	}
	s.raft = r
	s.raftNode.Store(r)
	s.startWorkers(r)
	return nil
}

// openStores opens the log, stable and snapshot stores: a voter's data
// dir, checked first, or a gateway's memory.
func (s *node) openStores(hl hclog.Logger) (raft.LogStore, raft.StableStore, raft.SnapshotStore, error) {
	cfg := s.cfg
	// A gateway keeps its copy of the log in memory: it never votes, so
	// nothing it holds is needed for a commit, and a restarted gateway is
	// sent the state again by the leader. Fsyncing every entry on every
	// gateway would only load the disks (on one machine, the voters' disk).
	var logs raft.LogStore
	var stable raft.StableStore
	var snaps raft.SnapshotStore
	if cfg.Gateway {
		mem := raft.NewInmemStore()
		logs, stable, snaps = mem, mem, raft.NewInmemSnapshotStore()
	} else {
		check, err := CheckDataDir(cfg.DataDir, true)
		if err != nil {
			return nil, nil, nil, err
		}
		for _, p := range check.MovedAside {
			s.logger.Warn("a damaged snapshot was moved aside; starting from the newest good one",
				zap.String("path", p), zap.String("data_dir", cfg.DataDir))
		}
		stores, err := openLogStores(cfg.DataDir, cfg.LogStore, hl, s.logger, cfg.walSegmentSize)
		if err != nil {
			return nil, nil, nil, err
		}
		s.stores = stores
		if logs, err = stores.logs(s.steps, s.logChecks.report(s.logger), cfg.holdLogWrites); err != nil {
			return nil, nil, nil, err
		}
		stores.stable = &closableStable{StableStore: stores.bolt}
		stable = stores.stable
		if snaps, err = raft.NewFileSnapshotStoreWithLogger(filepath.Join(cfg.DataDir, "snapshots"), 2, hl); err != nil {
			return nil, nil, nil, fmt.Errorf("opening snapshot store: %w", err)
		}
	}
	return logs, stable, snaps, nil
}

// openTransport listens (or takes the configured stream layer), shares the
// port between Raft and forwarding, and makes Raft's transport.
func (s *node) openTransport(hl hclog.Logger) error {
	cfg := s.cfg
	stream := cfg.Stream
	if stream == nil {
		var err error
		stream, err = NewTCPStreamLayer(cfg.BindAddr, cfg.AdvertiseAddr)
		if err != nil {
			return err
		}
	}
	s.mux = newMux(stream, s.logger)
	s.mux.onRefused = func(addr string) {
		if id, ok := s.members().peerAt(addr); ok {
			s.peers.failed(id, time.Now())
		}
	}
	s.mux.onConnected = func(addr string) {
		if id, ok := s.members().peerAt(addr); ok {
			s.peers.resumed(id)
		}
	}
	s.mux.keepDialing = s.members().leadsMemberAt
	// MaxRPCsInFlight 1: no pipelined replication. Each AppendEntries waits
	// for the last one's answer, which with our batching decides more per
	// second, with a lower p99, than pipelining, and a lagging follower is
	// sent batch after batch instead of one batch per commit_timeout
	// (BENCHMARKS.md, "Changes and what they bought").
	tc := &raft.NetworkTransportConfig{Stream: s.mux.raft, MaxPool: 3, Timeout: cmp.Or(cfg.raftTimeout, 10*time.Second), Logger: hl, MaxRPCsInFlight: 1}
	if len(cfg.DialAddresses) > 0 {
		// Only with overrides: without one the transport dials the
		// configuration's address directly, with nothing to look up.
		tc.ServerAddressProvider = dialProvider{overrides: cfg.DialAddresses, raft: &s.raftNode, peers: cfg.Peers}
	}
	s.transport = raft.NewNetworkTransportWithConfig(tc)

	return nil
}

// raftConfig is hashicorp/raft's configuration from the node's.
func (s *node) raftConfig(hl hclog.Logger) *raft.Config {
	cfg := s.cfg
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	rc.CommitTimeout = cfg.CommitTimeout
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	// Entries per AppendEntries: raft's largest. With its default of 64 a
	// follower far behind an idle leader catches up one small batch per
	// commit_timeout (BENCHMARKS.md, the catch-up rows).
	rc.MaxAppendEntries = 1024
	rc.SnapshotInterval = cfg.SnapshotInterval
	if cfg.trailingLogs > 0 {
		rc.TrailingLogs = cfg.trailingLogs
	}
	rc.Logger = hl
	// A gateway the leader removed (it was unreachable) asks to join again
	// when it is back, instead of stopping.
	rc.ShutdownOnRemove = !cfg.Gateway

	return rc
}

// bootstrapIfNew writes the first configuration into an empty voter's
// data dir: itself alone, or the configured peers.
func (s *node) bootstrapIfNew(rc *raft.Config, logs raft.LogStore, stable raft.StableStore, snaps raft.SnapshotStore) error {
	cfg := s.cfg
	if cfg.NoBootstrap || cfg.Gateway {
		return nil
	}
	has, err := raft.HasExistingState(logs, stable, snaps)
	if err != nil {
		return err
	}
	if !has {
		servers := []raft.Server{{ID: rc.LocalID, Address: s.transport.LocalAddr(), Suffrage: raft.Voter}}
		if len(cfg.Peers) > 0 {
			servers = servers[:0]
			for _, p := range cfg.Peers {
				servers = append(servers, raft.Server{ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.Address), Suffrage: raft.Voter})
			}
		}
		if err := raft.BootstrapCluster(rc, logs, stable, snaps, s.transport, raft.Configuration{Servers: servers}); err != nil {
			return fmt.Errorf("bootstrapping cluster: %w", err)
		}
		if len(cfg.Peers) == 0 {
			// A new cluster on a node that was meant to hold data (a
			// changed node_id or data_dir) would look like lost tokens:
			// say it loudly.
			s.logger.Warn("bootstrapped a new, empty cluster in this data dir; if this node should have joined an existing cluster or kept its data, stop it and check node_id and data_dir",
				zap.String("data_dir", cfg.DataDir), zap.Int("voters", len(servers)))
		} else {
			// With peers, an empty data dir is either a new cluster's
			// first start or a member rejoining after its data dir was
			// lost: which one shows once a leader is known.
			s.newDataDir = true
		}
	}
	return nil
}

// startWorkers starts the batchers, forwarding and the node's goroutines
// on a running Raft.
func (s *node) startWorkers(r *raft.Raft) {
	cfg := s.cfg
	s.leaderConsumes = newBatcher(cfg.MaxBatch, 1, s.applyConsumes)
	s.leaderConsumes.batchSize = func(n int) { s.onBatch(n, false) }
	s.leaderConsumes.queued = s.steps
	// One forwarded batch in flight, as one entry on the leader: what
	// queues meanwhile goes in the next RPC, so batches are larger and RPCs
	// fewer (BENCHMARKS.md, eighth session).
	s.forwardConsumes = newBatcher(cfg.MaxBatch, 1, s.forwardConsumeBatch)
	s.forwardConsumes.batchSize = func(n int) { s.onBatch(n, true) }
	s.forwardConsumes.queued = s.steps
	s.barriers = newBatcher(1<<16, 1, s.reads().readIndex)
	s.readPoints = newBatcher(1<<12, 1, s.reads().fetchReadPoint)
	s.startForwarding()
	s.clock.now, s.clock.sample, s.clock.logger = cfg.Clock, s.members().clockDiffs, s.logger

	obsCh := make(chan raft.Observation, 64)
	s.observer = raft.NewObserver(obsCh, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.LeaderObservation, raft.FailedHeartbeatObservation, raft.ResumedHeartbeatObservation:
			return true
		}
		return false
	})
	r.RegisterObserver(s.observer)
	s.wg.Add(1)
	go s.watchLeader(obsCh)
	if s.newDataDir {
		s.wg.Add(1)
		go s.members().sayWhatWasJoined()
	}
	s.duties = &duties{
		cfg: s.cfg, logger: s.logger, state: s.fsm.Machine, closed: s.closed,
		leading: s.IsLeader,
		ready:   func() bool { return s.IsLeader() && s.readyTerm.Load() == s.raft.CurrentTerm() },
		apply:   s.applyLocal,
		write: func(ctx context.Context, c *state.Command) error {
			_, err := s.write(ctx, c)
			return err
		},
		refunds: newRefundQueue(),
	}
	s.duties.start(&s.wg)
	if s.stores != nil { // a voter: its log is checked
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.duties.checkpointLog(cmp.Or(cfg.logCheckInterval, defaultLogCheckInterval), s.members().allKnow)
		}()
	}
	if cfg.Gateway {
		s.wg.Add(1)
		go s.members().joinAsGateway()
	}
	s.wg.Add(1)
	go s.members().reapGateways()
}

func (s *node) onBatch(n int, forwarded bool) {
	if s.cfg.OnBatch != nil {
		s.cfg.OnBatch(n, forwarded)
	}
}

// watchLeader counts leader changes, does a new leader's duties, and keeps
// track of which peers the leader has lost contact with.
func (s *node) watchLeader(ch chan raft.Observation) {
	defer s.wg.Done()
	for {
		select {
		case <-s.closed:
			return
		case o := <-ch:
			switch d := o.Data.(type) {
			case raft.FailedHeartbeatObservation:
				s.peers.failed(string(d.PeerID), d.LastContact)
			case raft.ResumedHeartbeatObservation:
				s.peers.resumed(string(d.PeerID))
			case raft.LeaderObservation:
				s.leaderMoved()
				s.leaderChanges.Add(1)
				s.clock.invalidate()
				s.peers.reset()
				s.logger.Info("raft leader changed", zap.String("leader_id", string(d.LeaderID)), zap.String("leader_address", string(d.LeaderAddr)))
				if string(d.LeaderID) == s.cfg.NodeID {
					s.wg.Add(1)
					go s.leaderDuties()
				} else {
					s.warnConfigDiffers()
				}
			}
		}
	}
}

// leaderMoved ends the calls forwarded to the leader this node knew: they
// return ErrUnavailable and are retried, with the same request ids, with
// whichever leader is known next, instead of waiting out their timeouts
// on a leader that is gone (a black-holed one answers nothing).
func (s *node) leaderMoved() {
	ch := make(chan struct{})
	if old := s.leaderGone.Swap(&ch); old != nil {
		close(*old)
	}
}

// leaderGoneCh is closed when the current leader changes.
func (s *node) leaderGoneCh() <-chan struct{} {
	if p := s.leaderGone.Load(); p != nil {
		return *p
	}
	return nil
}

// leaderDuties runs when this node becomes leader: it proposes the
// cluster's fingerprint secret if there is none, and this node's dedup size
// if it differs from the replicated one. Both go through the log, so every
// replica applies the same value at the same index.
func (s *node) leaderDuties() {
	defer s.wg.Done()
	// Wait until the entries of earlier terms are applied here, so the
	// comparisons below look at the cluster's current state.
	term := s.raft.CurrentTerm()
	if err := s.raft.Barrier(s.cfg.ApplyTimeout).Error(); err != nil {
		return
	}
	if s.raft.CurrentTerm() == term {
		s.readyTerm.Store(term)
	}
	if s.fsm.Secret() == nil {
		secret := make([]byte, 32)
		rand.Read(secret)
		if _, err := s.applyLocal(&state.Command{Op: state.OpSetSecret, Secret: secret}); err != nil {
			s.logger.Info("proposing fingerprint secret", zap.Error(err))
		}
	}
	if want := s.cfg.DedupSize; want != 0 && want != s.fsm.DedupSize() {
		if _, err := s.applyLocal(&state.Command{Op: state.OpSetDedupSize, DedupSize: want}); err != nil {
			s.logger.Info("proposing dedup size", zap.Error(err))
			return
		}
		s.logger.Info("dedup size of the cluster set from this node's config", zap.Int("dedup_size", want))
	}
}

// warnConfigDiffers says once per value when this node's dedup_size is not
// the cluster's: the cluster's is what applies.
func (s *node) warnConfigDiffers() {
	want, have := s.cfg.DedupSize, s.fsm.DedupSize()
	if want == 0 || want == have || s.warnedDedup.Swap(int64(have)) == int64(have) {
		return
	}
	s.logger.Warn("this node's dedup_size differs from the cluster's; the cluster's value applies (a leader proposes its own config's value when it takes over)",
		zap.Int("config_dedup_size", want), zap.Int("cluster_dedup_size", have))
}

// onHalt hands leadership away from a node that can no longer apply the log.
func (s *node) onHalt(err error) {
	if s.raft != nil && s.raft.State() == raft.Leader {
		s.raft.LeadershipTransfer()
	}
}

// Halted returns why this node stopped applying the log, or nil.
func (s *node) Halted() error { return s.fsm.haltedErr() }

// Close leaves the cluster gracefully: it hands leadership to another voter
// when it can, then stops Raft and closes the data dir. Safe to call twice.
func (s *Store) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.shutdown() })
	return s.closeErr
}

// shutdown stops the node in the order a rolling restart needs: refuse new
// operations, hand leadership to another voter, let the operations already
// accepted finish (retried through the new leader), and only then stop
// the batchers, Raft and the data dir.
func (s *node) shutdown() error {
	if s.raft != nil && s.cfg.Gateway {
		s.members().leaveAsGateway()
	}
	s.opsMu.Lock()
	s.draining = true
	s.opsMu.Unlock()
	if s.raft != nil && s.raft.State() == raft.Leader && s.members().voters() > 1 {
		if err := s.raft.LeadershipTransfer().Error(); err != nil {
			s.logger.Info("leadership transfer before shutdown failed", zap.Error(err))
		} else {
			s.logger.Info("handed leadership to another voter before shutting down")
		}
	}
	drained := make(chan struct{})
	go func() { s.ops.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(s.cfg.RequestTimeout + time.Second):
		s.logger.Warn("operations still running at shutdown after the request timeout")
	}

	select {
	case <-s.closed:
	default:
		close(s.closed)
	}
	s.fsm.shutdown()
	var errs []error
	if s.leaderConsumes != nil {
		s.leaderConsumes.close()
		s.forwardConsumes.close()
		s.barriers.close()
		s.readPoints.close()
	}
	raftStopped, err := s.stopRaft()
	if err != nil {
		errs = append(errs, err)
	}
	s.wg.Wait()
	if s.fwd != nil {
		s.fwd.Close()
		s.fwdServer.Close()
	}
	if s.transport != nil {
		s.transport.Close()
	}
	if s.mux != nil {
		s.mux.close()
	}
	if s.fwdServer != nil {
		s.fwdServer.Wait() // its accept loop ends with the mux
	}
	if s.stores != nil && raftStopped {
		// Closing the stores under a Raft that is still running would make
		// it panic on its next write (hashicorp/raft#717). A log check still
		// reading when the log closes fails; that is not the disk's fault.
		s.logChecks.closing.Store(true)
		if err := s.stores.close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// raftShutdownTimeout bounds how long Close waits for Raft to stop.
const raftShutdownTimeout = 15 * time.Second

// stopRaft shuts Raft down, within raftShutdownTimeout; stopped is false
// when it did not stop in time.
func (s *node) stopRaft() (stopped bool, err error) {
	if s.raft != nil {
		if s.observer != nil {
			s.raft.DeregisterObserver(s.observer)
		}
		// hashicorp/raft can leave a goroutine blocked after a leadership
		// transfer races a step-down (hashicorp/raft#696), and then
		// Shutdown never returns. A node that is stopping must stop: give
		// Raft a bounded time, then let go of it.
		done := make(chan error, 1)
		if s.mux != nil {
			s.mux.stopDialing() // a replication goroutine may be dialing a down peer
		}
		go func() { done <- s.raft.Shutdown().Error() }()
		select {
		case err := <-done:
			if err != nil {
				return true, err
			}
		case <-time.After(raftShutdownTimeout):
			s.logger.Error("raft did not shut down in time; stopping without it (the data dir is left open until the process exits)",
				zap.Duration("waited", raftShutdownTimeout))
			return false, nil
		}
	}
	return true, nil
}

// enter admits an operation unless the node is shutting down; leave ends it.
func (s *node) enter() bool {
	s.opsMu.RLock()
	defer s.opsMu.RUnlock()
	if s.draining {
		return false
	}
	s.ops.Add(1)
	return true
}

func (s *node) leave() { s.ops.Done() }

// NodeID returns this node's id.
func (s *node) NodeID() string { return s.cfg.NodeID }

// Addr returns the address peers reach this node's Raft at.
func (s *node) Addr() string { return string(s.transport.LocalAddr()) }

// IsLeader reports whether this node is the Raft leader right now.
func (s *node) IsLeader() bool { return s.raft.State() == raft.Leader }

// State returns this node's Raft state: Leader, Follower, Candidate or Shutdown.
func (s *node) State() string { return s.raft.State().String() }

// WaitForLeader blocks until the cluster has a leader this node knows of.
func (s *Store) WaitForLeader(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if addr, _ := s.raft.LeaderWithID(); addr != "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: no leader elected: %v", state.ErrUnavailable, ctx.Err())
		case <-s.closed:
			return state.ErrClosed
		case <-t.C:
		}
	}
}

// Fingerprint returns what logs print for a token name: the id of the
// token with that name, safe to log (see tokenID). For a token created
// before the cluster's secret was set, the token's own id (in Decision)
// differs; prefer that when there is one.
func (s *Store) Fingerprint(name string) string { return s.FingerprintOf(state.KeyOf(name)) }

// FingerprintOf is Fingerprint for a name already hashed with KeyOf.
func (s *Store) FingerprintOf(key state.TokenKey) string {
	return s.fingerprints.of(s.fsm.Secret(), key)
}

// raftError maps raft's errors onto ours, keeping them wrapped so the retry
// policy can tell what may have been applied.
func raftError(err error) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return fmt.Errorf("%w: %v", state.ErrNotLeader, err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return state.ErrClosed
	}
	return fmt.Errorf("%w: %w", state.ErrUnavailable, err)
}

// retryable reports whether an operation may be tried again. Every write
// carries a request id that the FSM deduplicates, so trying again is safe
// even after an ambiguous failure (leadership lost, timeout, broken
// connection): if the first try was applied, the retry returns its outcome.
func retryable(err error) bool {
	return errors.Is(err, state.ErrNotLeader) || errors.Is(err, state.ErrUnavailable)
}

// do runs fn until it succeeds, fails for good, or ctx ends. Without a
// deadline in ctx, RequestTimeout bounds it.
func (s *node) do(ctx context.Context, fn func(ctx context.Context) error) error {
	if !s.enter() {
		return state.ErrClosed
	}
	defer s.leave()
	if err := s.fsm.haltedErr(); err != nil {
		return fmt.Errorf("%w: %v", state.ErrUnavailable, err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.cfg.RequestTimeout)
		defer cancel()
	}
	backoff := 5 * time.Millisecond
	for {
		err := fn(ctx)
		if err == nil || !retryable(err) {
			return err
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			if errors.Is(err, state.ErrUnavailable) {
				return err
			}
			return fmt.Errorf("%w: %v", state.ErrUnavailable, err)
		case <-s.closed:
			t.Stop()
			return state.ErrClosed
		case <-t.C:
		}
		backoff = min(backoff*2, 100*time.Millisecond)
	}
}

// leader returns the leader's id and the address to dial it at, or
// unavailability when there is none yet.
func (s *node) leader() (string, string, error) {
	addr, id := s.raft.LeaderWithID()
	if addr == "" {
		return "", "", fmt.Errorf("%w: no leader known", state.ErrUnavailable)
	}
	return string(id), s.members().dialAddr(string(id), string(addr)), nil
}

type dialProvider struct {
	overrides map[string]string // Config.DialAddresses
	raft      *atomic.Pointer[raft.Raft]
	peers     []Peer
}

func (d dialProvider) ServerAddr(id raft.ServerID) (raft.ServerAddress, error) {
	if a, ok := d.overrides[string(id)]; ok {
		return raft.ServerAddress(a), nil
	}
	if r := d.raft.Load(); r != nil {
		for _, srv := range r.GetConfiguration().Configuration().Servers {
			if srv.ID == id {
				return srv.Address, nil
			}
		}
	}
	for _, p := range d.peers {
		if p.ID == string(id) {
			return raft.ServerAddress(p.Address), nil
		}
	}
	return "", fmt.Errorf("no address known for %s", id)
}

// Health reports whether this node can take part in decisions now: it has
// not halted, and it is a leader confirmed by a quorum, or a follower in
// recent contact with one.
func (s *Store) Health(ctx context.Context) error {
	if err := s.Halted(); err != nil {
		return err
	}
	if s.stores != nil {
		if err := s.stores.watch.writeError(); err != nil {
			return fmt.Errorf("%w: this node cannot write its log (%v); free the disk or fix it", state.ErrUnavailable, err)
		}
	}
	addr, id := s.raft.LeaderWithID()
	if addr == "" {
		return fmt.Errorf("%w: no leader known", state.ErrUnavailable)
	}
	if string(id) == s.cfg.NodeID {
		f := s.raft.VerifyLeader()
		done := make(chan error, 1)
		go func() { done <- f.Error() }()
		select {
		case err := <-done:
			if err != nil {
				return fmt.Errorf("%w: leadership not confirmed by a quorum: %v", state.ErrUnavailable, err)
			}
			return nil
		case <-ctx.Done():
			return fmt.Errorf("%w: leadership not confirmed by a quorum in time", state.ErrUnavailable)
		}
	}
	if since := time.Since(s.raft.LastContact()); since > 2*s.cfg.HeartbeatTimeout {
		return fmt.Errorf("%w: no contact with leader %s for %s", state.ErrUnavailable, id, since.Round(time.Millisecond))
	}
	return s.caughtUp(ctx)
}

// HealthLag is how long a follower may take to apply what its leader had
// applied when asked, before health reports it behind.
const HealthLag = time.Second

// caughtUp reports a follower that cannot apply, within HealthLag, the
// commands its leader had applied: one whose log writes fail, or that
// fell far behind. Such a node would answer every linearizable read late.
func (s *node) caughtUp(ctx context.Context) error {
	points, err := s.readPoints.do(ctx, []struct{}{{}})
	if err != nil {
		return fmt.Errorf("%w: cannot reach the leader: %v", state.ErrUnavailable, err)
	}
	p := points[0]
	wctx, cancel := context.WithTimeout(ctx, HealthLag)
	defer cancel()
	behind := func(mine, leaders uint64) error {
		return fmt.Errorf("%w: this node has applied the log to %d, the leader to %d, and did not catch up within %s", state.ErrUnavailable, mine, leaders, HealthLag)
	}
	ok, err := s.reads().waitApplied(wctx, p.Applied)
	if err != nil {
		return behind(s.fsm.Applied(), p.Applied)
	}
	if ok {
		return nil
	}
	// This node restored a snapshot and has applied no command since (or
	// the leader is of an earlier version): Raft's indexes say instead.
	// A follower that cannot take entries after a snapshot stays here.
	for s.raft.AppliedIndex() < p.Index {
		select {
		case <-wctx.Done():
			return behind(s.raft.AppliedIndex(), p.Index)
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}

// Leader returns the id of the leader this node knows of, or "".
func (s *Store) Leader() string {
	_, id := s.raft.LeaderWithID()
	return string(id)
}
