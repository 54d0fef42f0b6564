package caddymodule

import (
	"net/url"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/raftquota/raftquota/raftstore"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("quota", parseGlobalOption)
	httpcaddyfile.RegisterHandlerDirective("quota", parseDirective)
	// After authentication (so unauthenticated requests are never charged),
	// before handle/route blocks and reverse_proxy.
	httpcaddyfile.RegisterDirectiveOrder("quota", httpcaddyfile.After, "forward_auth")
}

// parseGlobalOption parses the quota global option:
//
//	quota {
//	    node_id              <id>
//	    data_dir             <path>
//	    raft_address         <host:port>
//	    advertise_address    <host:port>
//	    peer                 <id> <host:port>     # once per voter, this node included
//	    dial                 <id> <host:port>     # reach peer <id> here instead (NAT, proxy)
//	    join
//	    role                 voter|gateway        # gateway: a non-voter that joins the peers
//	    gateway_timeout      <duration>           # voters: remove a gateway unreachable this long
//	    tls                  <cert_file> <key_file> <ca_file>
//	    plaintext
//	    heartbeat_timeout    <duration>
//	    election_timeout     <duration>
//	    leader_lease_timeout <duration>
//	    commit_timeout       <duration>
//	    apply_timeout        <duration>
//	    snapshot_threshold   <entries>
//	    log_store            wal|boltdb           # voters: where the Raft log lives (default wal)
//	    events_webhook       <url>                # where the leader POSTs threshold events
//	    dedup_size           <entries>
//	    max_batch            <consumes>
//	}
func parseGlobalOption(d *caddyfile.Dispenser, _ any) (any, error) {
	app := new(App)
	d.Next() // the option name
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for d.NextBlock(0) {
		parse, ok := globalOptions[d.Val()]
		if !ok {
			return nil, d.Errf("unrecognized quota option %q", d.Val())
		}
		if err := parse(d, app); err != nil {
			return nil, err
		}
	}
	return httpcaddyfile.App{Name: "quota", Value: caddyconfig.JSON(app, nil)}, nil
}

// globalOptions reads each option of the quota global option into the app
// (one entry an option; TestReferenceCoversEveryOption checks each is in
// docs/REFERENCE.md).
var globalOptions = map[string]func(d *caddyfile.Dispenser, app *App) error{
	"node_id":           func(d *caddyfile.Dispenser, a *App) error { return oneArg(d, &a.NodeID) },
	"data_dir":          func(d *caddyfile.Dispenser, a *App) error { return oneArg(d, &a.DataDir) },
	"raft_address":      func(d *caddyfile.Dispenser, a *App) error { return oneArg(d, &a.RaftAddress) },
	"advertise_address": func(d *caddyfile.Dispenser, a *App) error { return oneArg(d, &a.AdvertiseAddress) },

	"heartbeat_timeout":    func(d *caddyfile.Dispenser, a *App) error { return durationArg(d, &a.HeartbeatTimeout) },
	"election_timeout":     func(d *caddyfile.Dispenser, a *App) error { return durationArg(d, &a.ElectionTimeout) },
	"leader_lease_timeout": func(d *caddyfile.Dispenser, a *App) error { return durationArg(d, &a.LeaderLeaseTimeout) },
	"commit_timeout":       func(d *caddyfile.Dispenser, a *App) error { return durationArg(d, &a.CommitTimeout) },
	"apply_timeout":        func(d *caddyfile.Dispenser, a *App) error { return durationArg(d, &a.ApplyTimeout) },
	"gateway_timeout":      func(d *caddyfile.Dispenser, a *App) error { return durationArg(d, &a.GatewayTimeout) },

	"snapshot_threshold": func(d *caddyfile.Dispenser, a *App) error {
		return countArg(d, func(n int64) { a.SnapshotThreshold = uint64(n) })
	},
	"dedup_size": func(d *caddyfile.Dispenser, a *App) error { return countArg(d, func(n int64) { a.DedupSize = int(n) }) },
	"max_batch":  func(d *caddyfile.Dispenser, a *App) error { return countArg(d, func(n int64) { a.MaxBatch = int(n) }) },

	"plaintext": func(d *caddyfile.Dispenser, a *App) error { return flagArg(d, &a.Plaintext) },
	"join":      func(d *caddyfile.Dispenser, a *App) error { return flagArg(d, &a.Join) },

	"peer": func(d *caddyfile.Dispenser, a *App) error {
		args := d.RemainingArgs()
		if len(args) != 2 {
			return d.Errf("peer takes an id and an address: peer <id> <host:port>")
		}
		a.Peers = append(a.Peers, raftstore.Peer{ID: args[0], Address: args[1]})
		return nil
	},
	"dial": func(d *caddyfile.Dispenser, a *App) error {
		args := d.RemainingArgs()
		if len(args) != 2 {
			return d.Errf("dial takes a peer id and an address: dial <id> <host:port>")
		}
		if a.DialAddresses == nil {
			a.DialAddresses = map[string]string{}
		}
		a.DialAddresses[args[0]] = args[1]
		return nil
	},
	"tls": func(d *caddyfile.Dispenser, a *App) error {
		args := d.RemainingArgs()
		if len(args) != 3 {
			return d.Errf("tls takes three files: tls <cert_file> <key_file> <ca_file>")
		}
		a.TLS = &raftstore.TLSFiles{CertFile: args[0], KeyFile: args[1], CAFile: args[2]}
		return nil
	},
	"role": func(d *caddyfile.Dispenser, a *App) error {
		if err := oneArg(d, &a.Role); err != nil {
			return err
		}
		if a.Role != "voter" && a.Role != "gateway" {
			return d.Errf("role is voter or gateway, got %q", a.Role)
		}
		return nil
	},
	"events_webhook": func(d *caddyfile.Dispenser, a *App) error {
		if err := oneArg(d, &a.EventsWebhook); err != nil {
			return err
		}
		if u, err := url.Parse(a.EventsWebhook); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return d.Errf("events_webhook must be an http:// or https:// URL, got %q", a.EventsWebhook)
		}
		return nil
	},
	"log_store": func(d *caddyfile.Dispenser, a *App) error {
		if err := oneArg(d, &a.LogStore); err != nil {
			return err
		}
		if a.LogStore != raftstore.LogStoreBolt && a.LogStore != raftstore.LogStoreWAL {
			return d.Errf("log_store is %s or %s, got %q", raftstore.LogStoreBolt, raftstore.LogStoreWAL, a.LogStore)
		}
		return nil
	},
}

// countArg reads a whole number of at least 1 and gives it to set.
func countArg(d *caddyfile.Dispenser, set func(int64)) error {
	var n int64
	if err := intArg(d, &n, 1); err != nil {
		return err
	}
	set(n)
	return nil
}

// flagArg reads an option that takes no value.
func flagArg(d *caddyfile.Dispenser, dst *bool) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	*dst = true
	return nil
}

// parseDirective parses the quota directive:
//
//	quota [<matcher>] {
//	    key             <placeholder>
//	    cost            <units>
//	    bytes           <placeholder>
//	    charge_on       success|attempt
//	    idempotency_key <placeholder>
//	    on_unavailable  deny|allow
//	    check_only
//	    dry_run
//	    timeout         <duration>
//	    pool            <placeholder>   # repeatable: pools named by the request
//	    pool_missing    refuse|skip
//	    s3 {
//	        multipart_expiry <duration>
//	        domain           <name>    # repeatable
//	    }
//	}
//
// With s3 the key is optional: the token is then the request's S3 access
// key id. s3 alone (no block) takes the defaults.
func parseDirective(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	q := new(Handler)
	return q, q.UnmarshalCaddyfile(h.Dispenser)
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens.
func (q *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.Errf("quota takes its settings in a block, e.g. quota { key {http.request.header.X-Quota-Token} } or quota { s3 }")
	}
	for d.NextBlock(0) {
		parse, ok := directiveOptions[d.Val()]
		if !ok {
			return d.Errf("unrecognized quota subdirective %q", d.Val())
		}
		if err := parse(d, q); err != nil {
			return err
		}
	}
	if q.Key == "" && q.S3 == nil {
		return d.Err("quota needs a key, e.g. key {http.request.header.X-Quota-Token}")
	}
	return nil
}

// directiveOptions reads each setting of the quota directive into the
// handler (one entry a setting).
var directiveOptions = map[string]func(d *caddyfile.Dispenser, q *Handler) error{
	"key":             func(d *caddyfile.Dispenser, q *Handler) error { return oneArg(d, &q.Key) },
	"cost":            func(d *caddyfile.Dispenser, q *Handler) error { return intArg(d, &q.Cost, 1) },
	"bytes":           func(d *caddyfile.Dispenser, q *Handler) error { return oneArg(d, &q.Bytes) },
	"idempotency_key": func(d *caddyfile.Dispenser, q *Handler) error { return oneArg(d, &q.IdempotencyKey) },
	"check_only":      func(d *caddyfile.Dispenser, q *Handler) error { return flagArg(d, &q.CheckOnly) },
	"dry_run":         func(d *caddyfile.Dispenser, q *Handler) error { return flagArg(d, &q.DryRun) },
	"timeout":         func(d *caddyfile.Dispenser, q *Handler) error { return durationArg(d, &q.Timeout) },
	"charge_on": func(d *caddyfile.Dispenser, q *Handler) error {
		return choiceArg(d, &q.ChargeOn, "success", "attempt")
	},
	"on_unavailable": func(d *caddyfile.Dispenser, q *Handler) error {
		return choiceArg(d, &q.OnUnavailable, "deny", "allow")
	},
	"pool_missing": func(d *caddyfile.Dispenser, q *Handler) error {
		return choiceArg(d, &q.PoolMissing, "refuse", "skip")
	},
	"pool": func(d *caddyfile.Dispenser, q *Handler) error {
		var v string
		if err := oneArg(d, &v); err != nil {
			return err
		}
		q.Pools = append(q.Pools, v)
		return nil
	},
	"s3": parseS3Block,
}

// choiceArg reads one of two values.
func choiceArg(d *caddyfile.Dispenser, dst *string, a, b string) error {
	name := d.Val()
	if err := oneArg(d, dst); err != nil {
		return err
	}
	if *dst != a && *dst != b {
		return d.Errf("%s must be %s or %s, got %q", name, a, b, *dst)
	}
	return nil
}

// parseS3Block reads `s3` and its block of settings.
func parseS3Block(d *caddyfile.Dispenser, q *Handler) error {
	if d.NextArg() {
		return d.Errf("s3 takes its settings in a block, e.g. s3 { multipart_expiry 24h }")
	}
	q.S3 = new(S3)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "multipart_expiry":
			if err := durationArg(d, &q.S3.MultipartExpiry); err != nil {
				return err
			}
		case "domain":
			var v string
			if err := oneArg(d, &v); err != nil {
				return err
			}
			n, err := normalizeDomain(v)
			if err != nil {
				return d.Err(err.Error())
			}
			q.S3.Domains = append(q.S3.Domains, n)
		default:
			return d.Errf("unrecognized s3 setting %q", d.Val())
		}
	}
	return nil
}

func oneArg(d *caddyfile.Dispenser, dst *string) error {
	name := d.Val()
	if !d.NextArg() {
		return d.Errf("%s needs a value", name)
	}
	*dst = d.Val()
	if d.NextArg() {
		return d.Errf("%s takes one value", name)
	}
	return nil
}

func intArg(d *caddyfile.Dispenser, dst *int64, minimum int64) error {
	name := d.Val()
	var s string
	if err := oneArg(d, &s); err != nil {
		return err
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < minimum {
		return d.Errf("%s must be a whole number of at least %d, got %q", name, minimum, s)
	}
	*dst = n
	return nil
}

func durationArg(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	name := d.Val()
	var s string
	if err := oneArg(d, &s); err != nil {
		return err
	}
	v, err := caddy.ParseDuration(s)
	if err != nil || v <= 0 {
		return d.Errf("%s must be a positive duration such as 500ms or 2s, got %q", name, s)
	}
	*dst = caddy.Duration(v)
	return nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
