// Package caddymodule plugs raftquota into Caddy: the "quota" app that owns
// this instance's Raft node, the "quota" HTTP handler that gates uploads
// (S3 mode in s3*.go), the quota_usage and quota_health site handlers, the
// admin API under /quota/, the Caddyfile global option and directive, the
// caddy quota commands, and metrics. It owns everything Caddy-facing; it
// reaches the replicated state only through raftstore's Store, and
// nothing below it (raftstore, internal/clustercert) may import it.
package caddymodule

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/raftquota/raftquota/raftstore"
)

func init() {
	caddy.RegisterModule(App{})
}

// The Raft node outlives config reloads: it lives in this pool, keyed by a
// constant since one Caddy process embeds one node.
var (
	nodes   = caddy.NewUsagePool()
	nodeKey = "raftquota-node"
	// current is the running node, for the admin API and metrics, which are
	// not tied to one config's app instance.
	current atomic.Pointer[node]
)

// node is a running store and the settings it was opened with.
type node struct {
	store    *raftstore.Store
	tls      *raftstore.TLSStreamLayer // nil when plaintext
	identity identity
	// cfg is what the node was opened with, to tell a reload which of its
	// changes wait for a restart.
	cfg raftstore.Config
}

// identity is what a config reload cannot change without a restart.
type identity struct {
	NodeID, DataDir, RaftAddress, Advertise string
	TLS                                     bool
}

func (n *node) Destruct() error {
	current.CompareAndSwap(n, nil)
	return n.store.Close()
}

// App is the quota app: it runs this Caddy instance's Raft node, which holds
// a replica of every token. Every instance of a cluster runs one; any of them
// serves uploads and the admin API.
//
// The node starts when the config starts and is kept across config reloads
// (it is never restarted by a reload); `caddy validate` does not start it.
type App struct {
	// NodeID names this node in the cluster. Default "node1". It cannot
	// change for a data dir.
	NodeID string `json:"node_id,omitempty"`

	// DataDir holds the Raft log and snapshots. Default: "quota/<node_id>"
	// under Caddy's data directory.
	DataDir string `json:"data_dir,omitempty"`

	// RaftAddress is the host:port this node's Raft (and forwarding between
	// nodes) listens on. Default "127.0.0.1:7000".
	RaftAddress string `json:"raft_address,omitempty"`

	// AdvertiseAddress is the address peers dial, when it differs from
	// RaftAddress (e.g. RaftAddress binds 0.0.0.0).
	AdvertiseAddress string `json:"advertise_address,omitempty"`

	// Peers is the initial set of voters, the same on every node, this one
	// included. Used only to bootstrap a new cluster from empty data dirs.
	// Empty: a single-node cluster.
	Peers []raftstore.Peer `json:"peers,omitempty"`

	// DialAddresses overrides, for this node only, where it dials a peer
	// (by id), e.g. through NAT or a proxy. Peers keep their advertised
	// addresses in the cluster's configuration.
	DialAddresses map[string]string `json:"dial_addresses,omitempty"`

	// TLS makes nodes authenticate each other with certificates from one
	// cluster CA (mutual TLS 1.3) on the Raft port. Required for a cluster
	// unless Plaintext is set. `caddy quota certs` makes the files. A config
	// reload re-reads the files, so certificates rotate without a restart.
	TLS *raftstore.TLSFiles `json:"tls,omitempty"`

	// Plaintext accepts Raft and forwarding traffic from anyone who can
	// reach raft_address. Only for a private network you trust; a
	// single node on a loopback address needs neither this nor TLS.
	Plaintext bool `json:"plaintext,omitempty"`

	// Join makes a node with an empty data dir wait to be added to an
	// existing cluster (POST /quota/cluster/members on any member) instead
	// of bootstrapping one.
	Join bool `json:"join,omitempty"`

	// Role is "voter" (default) or "gateway": a node that takes traffic and
	// decides through the voters, never locally, and is not one of them
	// (a Raft non-voter). A gateway's Peers are the voters it joins (it
	// asks them to add it when it starts), without itself; it leaves when
	// Caddy stops. Add gateways, not voters, to scale out.
	Role string `json:"role,omitempty"`

	// GatewayTimeout is how long a gateway may be unreachable from the
	// leader before the leader removes it from the cluster (it asks to join
	// again when it is back). Read by voters. Default 1m.
	GatewayTimeout caddy.Duration `json:"gateway_timeout,omitempty"`

	// Raft timings; defaults suit a LAN: heartbeat 500ms, election 500ms,
	// leader lease 250ms, commit 50ms. The commit timeout is how often an
	// idle leader tells followers its commit index (an AppendEntries to
	// every follower and gateway each time); it does not delay decisions,
	// which the leader answers once a majority has the entry.
	HeartbeatTimeout   caddy.Duration `json:"heartbeat_timeout,omitempty"`
	ElectionTimeout    caddy.Duration `json:"election_timeout,omitempty"`
	LeaderLeaseTimeout caddy.Duration `json:"leader_lease_timeout,omitempty"`
	CommitTimeout      caddy.Duration `json:"commit_timeout,omitempty"`

	// ApplyTimeout bounds one write to the Raft log. Default 2s.
	ApplyTimeout caddy.Duration `json:"apply_timeout,omitempty"`

	// SnapshotThreshold is how many log entries trigger a snapshot. Default 8192.
	SnapshotThreshold uint64 `json:"snapshot_threshold,omitempty"`

	// DedupSize is how many request ids the cluster remembers so a retried
	// request is never charged twice (each costs memory on every node;
	// BENCHMARKS.md says how much). It is replicated state: when this node becomes leader it
	// proposes this value through the log if the cluster's differs. Unset
	// proposes nothing; the cluster starts at 1048576. 1024 to 67108864.
	DedupSize int `json:"dedup_size,omitempty"`

	// MaxBatch caps how many consumes share one log entry. Default 1024.
	MaxBatch int `json:"max_batch,omitempty"`

	// LogStore is where a voter keeps the Raft log: "wal" (default,
	// data_dir/wal, hashicorp/raft-wal: one fsync per append where a bbolt
	// commit takes two) or "boltdb" (in data_dir/raft.db with the term and
	// vote, which stay there either way). Changing it moves the log on the
	// next start, crash-safely. Gateways keep their log in memory and take
	// neither.
	LogStore string `json:"log_store,omitempty"`

	// EventsWebhook is a URL the leader POSTs each threshold event to
	// (tokens' and pools' notify_at): a JSON body with an Idempotency-Key
	// header derived from the quota, its window and the threshold, retried
	// with backoff until the receiver answers 2xx. Events are logged at
	// INFO with or without it. Every voter should have the same: whichever
	// leads delivers.
	EventsWebhook string `json:"events_webhook,omitempty"`

	cfg    raftstore.Config
	logger *zap.Logger
	// node is set by Start; a pointer so App values can be copied.
	node *atomic.Pointer[node]
	// ready is closed when Start has the node: handlers of a starting
	// Caddy hold requests on it rather than refuse them.
	ready chan struct{}
	// defaultDataDir: DataDir was derived from NodeID.
	defaultDataDir bool
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "quota",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision checks the config and works out defaults. It starts nothing:
// Caddy provisions a new config before stopping the old one, and also when
// only validating.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	a.node = new(atomic.Pointer[node])
	a.ready = make(chan struct{})
	registerMetrics(ctx)
	if err := a.provisionConfig(); err != nil {
		return err
	}
	a.cfg.Logger = a.logger
	if running := current.Load(); running != nil && running.identity != a.identity() {
		return fmt.Errorf("quota: the running node is %+v; changing node_id, data_dir, raft_address or advertise_address needs a restart of Caddy, not a reload",
			running.identity)
	}
	return nil
}

// provisionConfig fills in defaults and builds the store's config.
func (a *App) provisionConfig() error {
	if a.NodeID == "" {
		a.NodeID = defaultNodeID
	}
	if a.DataDir == "" {
		a.DataDir = filepath.Join(caddy.AppDataDir(), "quota", a.NodeID)
		a.defaultDataDir = true
	}
	if a.RaftAddress == "" {
		a.RaftAddress = defaultRaftAddress
	}
	if err := a.checkSettings(); err != nil {
		return err
	}
	if a.Role == "gateway" && a.LogStore != "" {
		return fmt.Errorf("quota: log_store is a voter's setting; a gateway keeps its log in memory")
	}
	if a.Role == "gateway" && a.Join {
		return fmt.Errorf("quota: a gateway joins by itself (through its peers); drop join")
	}
	a.DataDir = caddy.NewReplacer().ReplaceKnown(a.DataDir, "")
	a.cfg = a.engineConfig()
	a.cfg.OnBatch = observeBatch
	a.cfg.OnStep = observeNodeStep
	if err := a.cfg.Validate(); err != nil {
		return fmt.Errorf("quota: %w", err)
	}
	if a.TLS != nil {
		if a.Plaintext {
			return fmt.Errorf("quota: tls and plaintext exclude each other")
		}
		if err := raftstore.CheckTLS(*a.TLS); err != nil {
			return fmt.Errorf("quota: tls: %w", err)
		}
		return nil
	}
	if a.Plaintext {
		return nil
	}
	if len(a.Peers) > 0 || a.Join {
		return fmt.Errorf("quota: cluster nodes must authenticate each other: set tls <cert> <key> <ca> (caddy quota certs makes them), or plaintext to accept any peer that can reach %s", a.RaftAddress)
	}
	if host, _, _ := net.SplitHostPort(a.RaftAddress); !isLoopback(host) {
		return fmt.Errorf("quota: raft_address %s is not a loopback address: set tls <cert> <key> <ca>, or plaintext to accept any peer that can reach it", a.RaftAddress)
	}
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (a *App) identity() identity {
	return identity{NodeID: a.NodeID, DataDir: a.DataDir, RaftAddress: a.RaftAddress, Advertise: a.AdvertiseAddress, TLS: a.TLS != nil}
}

// Start opens the node, or takes over the one a previous config opened.
func (a *App) Start() error {
	v, loaded, err := nodes.LoadOrNew(nodeKey, func() (caddy.Destructor, error) {
		a.warnOrphanedState()
		n := &node{identity: a.identity(), cfg: a.cfg}
		cfg := a.cfg
		if a.TLS != nil {
			l, err := raftstore.NewTLSStreamLayer(a.RaftAddress, a.AdvertiseAddress, *a.TLS)
			if err != nil {
				return nil, err
			}
			n.tls, cfg.Stream = l, l
		}
		s, err := raftstore.Open(cfg)
		if err != nil {
			if n.tls != nil {
				n.tls.Close()
			}
			return nil, err
		}
		n.store = s
		current.Store(n)
		return n, nil
	})
	if err != nil {
		return fmt.Errorf("quota: starting raft node: %w", err)
	}
	n := v.(*node)
	if n.identity != a.identity() {
		nodes.Delete(nodeKey)
		return fmt.Errorf("quota: the running node is %+v; changing it needs a restart of Caddy", n.identity)
	}
	if loaded {
		if changed := restartOnly(n.cfg, a.cfg); len(changed) > 0 {
			a.logger.Warn("quota settings changed by this reload take effect after a restart of Caddy",
				zap.Strings("settings", changed))
		}
	}
	if loaded && n.tls != nil {
		if err := n.tls.Reload(*a.TLS); err != nil {
			nodes.Delete(nodeKey)
			return fmt.Errorf("quota: reloading tls files: %w", err)
		}
		a.logger.Info("reloaded tls certificates for new connections between nodes")
	}
	a.node.Store(n)
	close(a.ready)
	if !loaded {
		a.logger.Info("raft node started",
			zap.String("node_id", a.NodeID), zap.String("raft_address", n.store.Addr()), zap.String("data_dir", a.DataDir))
	}
	return nil
}

// warnOrphanedState says so when this node's default data dir is new but
// the default data dir of another node id holds state: a changed node_id
// would otherwise quietly start an empty cluster, all tokens out of view.
func (a *App) warnOrphanedState() {
	if !a.defaultDataDir || raftstore.HasState(a.DataDir) {
		return
	}
	parent := filepath.Dir(a.DataDir)
	entries, _ := os.ReadDir(parent)
	for _, e := range entries {
		other := filepath.Join(parent, e.Name())
		if e.IsDir() && other != a.DataDir && raftstore.HasState(other) {
			a.logger.Warn("this node's data dir is new, but another node id's data dir holds a cluster's state; if node_id changed by mistake, change it back",
				zap.String("node_id", a.NodeID), zap.String("data_dir", a.DataDir), zap.String("data_dir_with_state", other), zap.String("its_node_id", e.Name()))
		}
	}
}

// Stop does nothing: the node must outlive the HTTP servers, which Caddy
// may stop after this app and which finish their requests in flight first.
// Cleanup, which Caddy runs once every app has stopped, lets go of it.
func (a *App) Stop() error { return nil }

// Cleanup lets go of the node. It closes only when no config holds it,
// i.e. on shutdown, never on a reload: then it hands leadership to another
// voter and lets the operations it accepted finish before stopping.
func (a *App) Cleanup() error {
	if a.node == nil || a.node.Swap(nil) == nil {
		return nil
	}
	_, err := nodes.Delete(nodeKey)
	return err
}

// waitStore returns the running store, waiting for Start while ctx lasts.
func (a *App) waitStore(ctx context.Context) *raftstore.Store {
	if s := a.store(); s != nil {
		return s
	}
	select {
	case <-a.ready:
		return a.store()
	case <-ctx.Done():
		return nil
	}
}

// store returns the running store, or nil before Start.
func (a *App) store() *raftstore.Store {
	if a.node == nil {
		return nil
	}
	if n := a.node.Load(); n != nil {
		return n.store
	}
	return nil
}

// currentStore is the running node's store, for modules not tied to an app
// instance (the admin API).
func currentStore() *raftstore.Store {
	if n := current.Load(); n != nil {
		return n.store
	}
	return nil
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
	_ caddy.Destructor   = (*node)(nil)
)
