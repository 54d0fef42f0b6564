package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/raftquota/raftquota/raftstore"
	"github.com/raftquota/raftquota/raftstore/state"
)

func init() {
	caddy.RegisterModule(Usage{})
	httpcaddyfile.RegisterHandlerDirective("quota_usage", parseUsageDirective)
	httpcaddyfile.RegisterDirectiveOrder("quota_usage", httpcaddyfile.Before, "respond")
}

// Usage answers a token holder's question "how much do I have left?" on a
// site route, from the token in the request: its remaining uploads and
// bytes, when its window resets, and the pools it draws on, as JSON with
// the RateLimit headers of the tightest quota. It charges nothing and
// reads linearizably, so the answer includes every upload answered before
// it. Only the caller's own token is ever shown; a missing, unknown,
// revoked or expired token gets the answer an upload route gives it.
//
//	handle /quota/me {
//		quota_usage {
//			key {http.request.header.X-Quota-Token}
//		}
//	}
type Usage struct {
	// Key is where the token is read from, as in the quota handler.
	// Required unless s3 is set.
	Key string `json:"key,omitempty"`

	// S3 reads the token from the request's S3 access key id (SigV4 or
	// V2 Authorization, or a presigned URL), as the quota handler's S3
	// mode does, when key is empty or gives nothing.
	S3 bool `json:"s3,omitempty"`

	// Timeout bounds the wait for the cluster's answer. Default 3s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	app  *App
	gate *Handler // answers refusals as upload routes do
}

// CaddyModule returns the Caddy module information.
func (Usage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.quota_usage",
		New: func() caddy.Module { return new(Usage) },
	}
}

// Provision finds the quota app.
func (u *Usage) Provision(ctx caddy.Context) error {
	if u.Timeout == 0 {
		u.Timeout = caddy.Duration(3 * time.Second)
	}
	app, err := ctx.App("quota")
	if err != nil {
		return fmt.Errorf("quota_usage: loading quota app: %v", err)
	}
	u.app = app.(*App)
	u.gate = &Handler{Key: u.Key, Cost: 1, ChargeOn: "success", OnUnavailable: "deny", Timeout: u.Timeout, PoolMissing: "refuse",
		app: u.app, logger: ctx.Logger(), denials: newDenialLog(), outage: new(everyInterval)}
	return nil
}

// Validate reports a config mistake.
func (u *Usage) Validate() error {
	if u.Key == "" && !u.S3 {
		return errors.New("quota_usage: key is required (or s3), e.g. key {http.request.header.X-Quota-Token}")
	}
	return nil
}

// UsageView is the answer of a usage route.
type UsageView struct {
	Token TokenUsage  `json:"token"`
	Pools []PoolUsage `json:"pools,omitempty"`
	// Quota names the tightest quota: "token" or "pool:NAME".
	Quota string `json:"quota"`
}

// TokenUsage is what a holder sees of their token (never its name).
type TokenUsage struct {
	ID                string         `json:"id"`
	Status            state.Status   `json:"status"`
	UsageLimit        int64          `json:"usage_limit"`
	UsageCount        int64          `json:"usage_count"`
	Remaining         *int64         `json:"remaining"`
	BytesLimit        int64          `json:"bytes_limit"`
	BytesUsed         int64          `json:"bytes_used"`
	BytesRemaining    *int64         `json:"bytes_remaining"`
	RenewEvery        state.Duration `json:"renew_every,omitempty"`
	RenewCalendar     string         `json:"renew_calendar,omitempty"`
	NotifyAt          []int          `json:"notify_at,omitempty"`
	ThresholdsReached []int          `json:"thresholds_reached,omitempty"`
	ResetsAt          *time.Time     `json:"resets_at,omitempty"`
	ExpiresAt         *time.Time     `json:"expires_at,omitempty"`
}

// PoolUsage is what a holder sees of a pool their token draws on.
type PoolUsage struct {
	Name              string         `json:"name"`
	Status            state.Status   `json:"status"`
	UsageLimit        int64          `json:"usage_limit"`
	UsageCount        int64          `json:"usage_count"`
	Remaining         *int64         `json:"remaining"`
	BytesLimit        int64          `json:"bytes_limit"`
	BytesUsed         int64          `json:"bytes_used"`
	BytesRemaining    *int64         `json:"bytes_remaining"`
	RenewEvery        state.Duration `json:"renew_every,omitempty"`
	RenewCalendar     string         `json:"renew_calendar,omitempty"`
	NotifyAt          []int          `json:"notify_at,omitempty"`
	ThresholdsReached []int          `json:"thresholds_reached,omitempty"`
	ResetsAt          *time.Time     `json:"resets_at,omitempty"`
}

func orNil(n int64) *int64 {
	if n < 0 {
		return nil
	}
	return &n
}

func (u *Usage) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	name := ""
	if u.Key != "" {
		name = repl.ReplaceAll(u.Key, "")
	}
	if name == "" && u.S3 {
		name = accessKey(r)
	}
	x := &exchange{h: u.gate, w: w, r: r, next: next, repl: repl}
	if name == "" {
		return x.refuse(http.StatusUnauthorized, "missing_key", "Missing quota token", "The request carries no quota token.")
	}
	if state.ValidateName(name) != nil {
		return x.refuse(http.StatusUnauthorized, "invalid_key", "Invalid quota token", "The quota token is not well-formed.")
	}
	ctx, cancel := context.WithTimeout(r.Context(), time.Duration(u.Timeout))
	defer cancel()
	store := u.app.waitStore(ctx)
	if store == nil {
		return x.unavailable(errors.New("quota node not started"))
	}
	d, err := store.Check(ctx, state.ConsumeRequest{Token: name})
	if err != nil {
		return x.unavailable(err)
	}
	x.c.fp = d.TokenID
	switch {
	case d.Reason == state.ReasonUnknown,
		(d.Reason == state.ReasonRevoked || d.Reason == state.ReasonExpired) && d.Quota == "token":
		// As an upload route answers: 403, nothing about the token.
		return x.exceeded(d)
	}
	view, err := u.view(ctx, store, name, d)
	if err != nil {
		return x.unavailable(err)
	}
	setRateLimitHeaders(w.Header(), d, time.Now())
	w.Header().Set("Cache-Control", "no-store")
	repl.Set("http.quota.token_fingerprint", d.TokenID)
	u.gate.logger.Debug("usage answered", zap.String("token_fingerprint", d.TokenID))
	return writeJSON(w, http.StatusOK, view)
}

// view reads the token and its pools (linearizable reads) into the answer.
func (u *Usage) view(ctx context.Context, s *raftstore.Store, name string, d state.Decision) (UsageView, error) {
	t, err := s.Lookup(ctx, name)
	if err != nil {
		return UsageView{}, err
	}
	v := UsageView{Quota: d.Quota, Token: TokenUsage{
		ID: t.ID, Status: t.Status, UsageLimit: t.UsageLimit, UsageCount: t.UsageCount, Remaining: orNil(t.Remaining()),
		BytesLimit: t.BytesLimit, BytesUsed: t.BytesUsed, BytesRemaining: orNil(t.BytesRemaining()),
		RenewEvery: t.RenewEvery, RenewCalendar: t.RenewCalendar, ResetsAt: t.ResetsAt, ExpiresAt: t.ExpiresAt,
		NotifyAt: t.NotifyAt, ThresholdsReached: t.ThresholdsReached,
	}}
	for _, id := range t.Pools {
		p, err := s.Pools().Get(ctx, id)
		if err != nil {
			return UsageView{}, err
		}
		v.Pools = append(v.Pools, PoolUsage{
			Name: p.Name, Status: p.Status, UsageLimit: p.UsageLimit, UsageCount: p.UsageCount, Remaining: orNil(p.Remaining()),
			BytesLimit: p.BytesLimit, BytesUsed: p.BytesUsed, BytesRemaining: orNil(p.BytesRemaining()),
			RenewEvery: p.RenewEvery, RenewCalendar: p.RenewCalendar, ResetsAt: p.ResetsAt,
			NotifyAt: p.NotifyAt, ThresholdsReached: p.ThresholdsReached,
		})
	}
	return v, nil
}

// UnmarshalCaddyfile parses:
//
//	quota_usage [<matcher>] {
//	    key     <placeholder>
//	    s3
//	    timeout <duration>
//	}
func (u *Usage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() {
		return d.Errf("quota_usage takes its settings in a block, e.g. quota_usage { key {http.request.header.X-Quota-Token} }")
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "key":
			if err := oneArg(d, &u.Key); err != nil {
				return err
			}
		case "s3":
			if d.NextArg() {
				return d.ArgErr()
			}
			u.S3 = true
		case "timeout":
			if err := durationArg(d, &u.Timeout); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized quota_usage setting %q", d.Val())
		}
	}
	return u.Validate()
}

func parseUsageDirective(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	u := new(Usage)
	err := u.UnmarshalCaddyfile(h.Dispenser)
	return u, err
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Usage)(nil)
	_ caddy.Validator             = (*Usage)(nil)
	_ caddyhttp.MiddlewareHandler = (*Usage)(nil)
	_ caddyfile.Unmarshaler       = (*Usage)(nil)
)
