package caddymodule

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("quota", parseGlobalOption)
	httpcaddyfile.RegisterHandlerDirective("quota", parseDirective)
	// After authentication (so unauthenticated requests are never charged),
	// before handle/route blocks and reverse_proxy.
	httpcaddyfile.RegisterDirectiveOrder("quota", httpcaddyfile.After, "forward_auth")
}

// parseGlobalOption parses the quota global option, quota { <option>
// <args>... }, whose options are the entries of the settings table
// (settings.go; docs/REFERENCE.md lists them with their defaults).
func parseGlobalOption(d *caddyfile.Dispenser, _ any) (any, error) {
	app := new(App)
	d.Next() // the option name
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for d.NextBlock(0) {
		s, ok := settingNamed(d.Val())
		if !ok {
			return nil, d.Errf("unrecognized quota option %q", d.Val())
		}
		if err := s.parse(d, app); err != nil {
			return nil, err
		}
		if s.check != nil {
			if err := s.check(app); err != nil {
				return nil, d.Errf("%v", err)
			}
		}
	}
	return httpcaddyfile.App{Name: "quota", Value: caddyconfig.JSON(app, nil)}, nil
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
