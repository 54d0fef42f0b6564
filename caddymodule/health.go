package caddymodule

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(Health{})
	httpcaddyfile.RegisterHandlerDirective("quota_health", parseHealthDirective)
	httpcaddyfile.RegisterDirectiveOrder("quota_health", httpcaddyfile.Before, "respond")
}

// Health answers a site's health checks for load balancers: 200 with
// {"status":"ok"} when this node can take part in quota decisions (it has
// not halted and reaches a leader that has a quorum), 503 with the reason
// when it cannot. The admin endpoint's GET /quota/health answers the same.
//
//	handle /healthz {
//		quota_health
//	}
type Health struct {
	app *App
}

// CaddyModule returns the Caddy module information.
func (Health) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.quota_health",
		New: func() caddy.Module { return new(Health) },
	}
}

// Provision finds the quota app.
func (h *Health) Provision(ctx caddy.Context) error {
	app, err := ctx.App("quota")
	if err != nil {
		return fmt.Errorf("quota_health: loading quota app: %v", err)
	}
	h.app = app.(*App)
	return nil
}

func (h *Health) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	s := h.app.waitStore(ctx)
	if s == nil {
		w.Header().Set("Cache-Control", "no-store")
		return writeJSON(w, http.StatusServiceUnavailable, healthView{Status: "unavailable", Error: "quota node not started"})
	}
	return writeHealth(ctx, s, w)
}

// UnmarshalCaddyfile reads `quota_health`, which takes no arguments.
func (h *Health) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("quota_health takes no options")
	}
	return nil
}

func parseHealthDirective(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	hh := new(Health)
	err := hh.UnmarshalCaddyfile(h.Dispenser)
	return hh, err
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Health)(nil)
	_ caddyhttp.MiddlewareHandler = (*Health)(nil)
	_ caddyfile.Unmarshaler       = (*Health)(nil)
)
