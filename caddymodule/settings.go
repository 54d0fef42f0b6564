package caddymodule

import (
	"fmt"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/raftquota/raftquota/raftstore"
)

// setting is one option of the quota app, in one place: its name (the
// Caddyfile option and the JSON field), how the Caddyfile reads it, how it
// is checked (for a Caddyfile and for JSON alike), how it reaches the
// engine's config, its default, and what a reload does with it. Adding a
// setting is adding an entry to settings; TestReferenceCoversEveryOption
// checks docs/REFERENCE.md against the table.
type setting struct {
	// name is the Caddyfile option; json the app's JSON field when it is
	// not the same.
	name, json string
	// parse reads the option's Caddyfile arguments into the app.
	parse func(d *caddyfile.Dispenser, a *App) error
	// check validates the app's value; nil when parse's own checks are
	// all there is. The Caddyfile parser runs it on the option's line;
	// Provision runs it for JSON configs too. Checks that involve several
	// settings, or files, are Provision's.
	check func(a *App) error
	// engine copies the value into the store's config; nil for settings
	// the app uses itself.
	engine func(a *App, c *raftstore.Config)
	// field is the config field a reload compares, for settings that wait
	// for a restart of Caddy (nil: a reload applies it, or refuses it; see
	// identity).
	field func(c *raftstore.Config) any
	// def is the default as docs/REFERENCE.md shows it ("": none).
	def string
}

// Defaults of the app's own settings (the engine's come from
// raftstore.DefaultConfig).
const (
	defaultNodeID      = "node1"
	defaultRaftAddress = "127.0.0.1:7000"
	defaultDataDir     = "<caddy data dir>/quota/<node_id>"
)

var engineDefaults = raftstore.DefaultConfig()

// settings is every option of the quota app.
var settings = []setting{
	{name: "node_id", parse: str(func(a *App) *string { return &a.NodeID }), def: defaultNodeID},
	{name: "data_dir", parse: str(func(a *App) *string { return &a.DataDir }), def: defaultDataDir},
	{name: "raft_address", parse: str(func(a *App) *string { return &a.RaftAddress }), def: defaultRaftAddress},
	{name: "advertise_address", parse: str(func(a *App) *string { return &a.AdvertiseAddress })},
	{name: "peer", json: "peers", parse: parsePeer,
		engine: func(a *App, c *raftstore.Config) { c.Peers = a.Peers },
		field:  func(c *raftstore.Config) any { return c.Peers }},
	{name: "dial", json: "dial_addresses", parse: parseDial,
		engine: func(a *App, c *raftstore.Config) { c.DialAddresses = a.DialAddresses },
		field:  func(c *raftstore.Config) any { return c.DialAddresses }},
	{name: "tls", parse: parseTLS},
	{name: "plaintext", parse: flag(func(a *App) *bool { return &a.Plaintext })},
	{name: "join", parse: flag(func(a *App) *bool { return &a.Join }),
		engine: func(a *App, c *raftstore.Config) { c.NoBootstrap = a.Join },
		field:  func(c *raftstore.Config) any { return c.NoBootstrap }},
	{name: "role", parse: str(func(a *App) *string { return &a.Role }), check: checkRole, def: "voter",
		engine: func(a *App, c *raftstore.Config) { c.Gateway = a.Role == "gateway" },
		field:  func(c *raftstore.Config) any { return c.Gateway }},
	timing("gateway_timeout", func(a *App) *caddy.Duration { return &a.GatewayTimeout }, func(c *raftstore.Config) *time.Duration { return &c.GatewayTimeout }),
	timing("heartbeat_timeout", func(a *App) *caddy.Duration { return &a.HeartbeatTimeout }, func(c *raftstore.Config) *time.Duration { return &c.HeartbeatTimeout }),
	timing("election_timeout", func(a *App) *caddy.Duration { return &a.ElectionTimeout }, func(c *raftstore.Config) *time.Duration { return &c.ElectionTimeout }),
	timing("leader_lease_timeout", func(a *App) *caddy.Duration { return &a.LeaderLeaseTimeout }, func(c *raftstore.Config) *time.Duration { return &c.LeaderLeaseTimeout }),
	timing("commit_timeout", func(a *App) *caddy.Duration { return &a.CommitTimeout }, func(c *raftstore.Config) *time.Duration { return &c.CommitTimeout }),
	timing("apply_timeout", func(a *App) *caddy.Duration { return &a.ApplyTimeout }, func(c *raftstore.Config) *time.Duration { return &c.ApplyTimeout }),
	{name: "snapshot_threshold", parse: count(func(a *App, n int64) { a.SnapshotThreshold = uint64(n) }),
		def:    strconv.FormatUint(engineDefaults.SnapshotThreshold, 10),
		engine: func(a *App, c *raftstore.Config) { c.SnapshotThreshold = a.SnapshotThreshold },
		field:  func(c *raftstore.Config) any { return c.SnapshotThreshold }},
	{name: "dedup_size", parse: count(func(a *App, n int64) { a.DedupSize = int(n) }), check: checkDedupSize,
		def:    "the cluster's (1048576)",
		engine: func(a *App, c *raftstore.Config) { c.DedupSize = a.DedupSize },
		field:  func(c *raftstore.Config) any { return c.DedupSize }},
	{name: "max_batch", parse: count(func(a *App, n int64) { a.MaxBatch = int(n) }), check: checkMaxBatch,
		def:    strconv.Itoa(engineDefaults.MaxBatch),
		engine: func(a *App, c *raftstore.Config) { c.MaxBatch = a.MaxBatch },
		field:  func(c *raftstore.Config) any { return c.MaxBatch }},
	{name: "log_store", parse: str(func(a *App) *string { return &a.LogStore }), check: checkLogStore, def: engineDefaults.LogStore,
		engine: func(a *App, c *raftstore.Config) { c.LogStore = a.LogStore },
		field:  func(c *raftstore.Config) any { return c.LogStore }},
	{name: "events_webhook", parse: str(func(a *App) *string { return &a.EventsWebhook }), check: checkWebhook,
		engine: func(a *App, c *raftstore.Config) { c.EventsWebhook = a.EventsWebhook },
		field:  func(c *raftstore.Config) any { return c.EventsWebhook }},
}

// jsonName is the setting's field in the app's JSON.
func (s *setting) jsonName() string {
	if s.json != "" {
		return s.json
	}
	return s.name
}

// settingNamed finds a setting by its Caddyfile name.
func settingNamed(name string) (*setting, bool) {
	for i := range settings {
		if settings[i].name == name {
			return &settings[i], true
		}
	}
	return nil, false
}

// checkSettings runs every setting's own check.
func (a *App) checkSettings() error {
	for _, s := range settings {
		if s.check != nil {
			if err := s.check(a); err != nil {
				return fmt.Errorf("quota: %w", err)
			}
		}
	}
	return nil
}

// engineConfig copies the app's settings into a store config.
func (a *App) engineConfig() raftstore.Config {
	c := raftstore.Config{NodeID: a.NodeID, DataDir: a.DataDir, BindAddr: a.RaftAddress, AdvertiseAddr: a.AdvertiseAddress}
	for _, s := range settings {
		if s.engine != nil {
			s.engine(a, &c)
		}
	}
	return c
}

// restartOnly names the settings whose change a reload cannot apply to a
// running node: they take effect when Caddy restarts.
func restartOnly(running, next raftstore.Config) []string {
	var changed []string
	for _, s := range settings {
		if s.field != nil && !reflect.DeepEqual(s.field(&running), s.field(&next)) {
			changed = append(changed, s.name)
		}
	}
	return changed
}

// Parsers of the common shapes.

func str(field func(a *App) *string) func(d *caddyfile.Dispenser, a *App) error {
	return func(d *caddyfile.Dispenser, a *App) error { return oneArg(d, field(a)) }
}

func flag(field func(a *App) *bool) func(d *caddyfile.Dispenser, a *App) error {
	return func(d *caddyfile.Dispenser, a *App) error { return flagArg(d, field(a)) }
}

func count(set func(a *App, n int64)) func(d *caddyfile.Dispenser, a *App) error {
	return func(d *caddyfile.Dispenser, a *App) error { return countArg(d, func(n int64) { set(a, n) }) }
}

// timing is a Raft timing: a positive duration, copied into the engine,
// waiting for a restart when a reload changes it.
func timing(name string, app func(a *App) *caddy.Duration, cfg func(c *raftstore.Config) *time.Duration) setting {
	return setting{
		name:   name,
		parse:  func(d *caddyfile.Dispenser, a *App) error { return durationArg(d, app(a)) },
		def:    shortDuration(*cfg(&engineDefaults)),
		engine: func(a *App, c *raftstore.Config) { *cfg(c) = time.Duration(*app(a)) },
		field:  func(c *raftstore.Config) any { return *cfg(c) },
	}
}

func parsePeer(d *caddyfile.Dispenser, a *App) error {
	args := d.RemainingArgs()
	if len(args) != 2 {
		return d.Errf("peer takes an id and an address: peer <id> <host:port>")
	}
	a.Peers = append(a.Peers, raftstore.Peer{ID: args[0], Address: args[1]})
	return nil
}

func parseDial(d *caddyfile.Dispenser, a *App) error {
	args := d.RemainingArgs()
	if len(args) != 2 {
		return d.Errf("dial takes a peer id and an address: dial <id> <host:port>")
	}
	if a.DialAddresses == nil {
		a.DialAddresses = map[string]string{}
	}
	a.DialAddresses[args[0]] = args[1]
	return nil
}

func parseTLS(d *caddyfile.Dispenser, a *App) error {
	args := d.RemainingArgs()
	if len(args) != 3 {
		return d.Errf("tls takes three files: tls <cert_file> <key_file> <ca_file>")
	}
	a.TLS = &raftstore.TLSFiles{CertFile: args[0], KeyFile: args[1], CAFile: args[2]}
	return nil
}

// Checks, for a Caddyfile and for JSON alike.

func checkRole(a *App) error {
	if a.Role != "" && a.Role != "voter" && a.Role != "gateway" {
		return fmt.Errorf("role is voter or gateway, got %q", a.Role)
	}
	return nil
}

func checkDedupSize(a *App) error {
	if a.DedupSize < 0 {
		return fmt.Errorf("dedup_size must not be negative")
	}
	return nil
}

func checkMaxBatch(a *App) error {
	if a.MaxBatch < 0 {
		return fmt.Errorf("max_batch must not be negative")
	}
	return nil
}

func checkLogStore(a *App) error {
	if a.LogStore != "" && a.LogStore != raftstore.LogStoreBolt && a.LogStore != raftstore.LogStoreWAL {
		return fmt.Errorf("log_store is %s or %s, got %q", raftstore.LogStoreBolt, raftstore.LogStoreWAL, a.LogStore)
	}
	return nil
}

func checkWebhook(a *App) error {
	if a.EventsWebhook == "" {
		return nil
	}
	if u, err := url.Parse(a.EventsWebhook); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("events_webhook must be an http:// or https:// URL, got %q", a.EventsWebhook)
	}
	return nil
}

// shortDuration writes d as a Caddyfile would: 1m, not 1m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
