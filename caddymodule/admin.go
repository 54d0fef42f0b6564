package caddymodule

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/raftquota/raftquota/raftstore"
	"github.com/raftquota/raftquota/raftstore/state"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// AdminAPI serves token and cluster management under /quota/ on Caddy's
// admin endpoint, on every node (followers forward to the leader). Reads
// are linearizable; errors are JSON ({"error": "..."}); a rejected request
// changes nothing.
//
//	POST   /quota/tokens                      create (201 with the name, this once; 409 exists; 400 bad input)
//	POST   /quota/tokens/lookup               {"name"}: the token with that name (404)
//	GET    /quota/tokens                      a page: ?status= ?remaining_below= ?created_by= ?limit= ?cursor=
//	GET    /quota/tokens/{id}                 one token, with remaining (404)
//	PATCH  /quota/tokens/{id}                 update usage_limit, bytes_limit, expires_at, renew_every, metadata, pools
//	POST   /quota/tokens/{id}/revoke          also /reactivate and /reset
//	DELETE /quota/tokens/{id}                 204
//	/quota/pools...                           shared quotas (adminpools.go)
//
// Token names are secrets: they travel only in request and response
// bodies, never in URLs (which Caddy's admin log records), and are stored
// only as hashes. Tokens are addressed by their id.
//
//	GET    /quota/cluster                     leader, members and their state, indexes
//	POST   /quota/cluster/members             {"id","address"}: add a voter
//	DELETE /quota/cluster/members/{id}        remove a member
//	GET    /quota/health                      200 when this node can decide (a leader with quorum is reached), else 503
//	GET    /quota/backup                      a consistent backup of the cluster's state (caddy quota backup)
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.quota",
		New: func() caddy.Module { return new(AdminAPI) },
	}
}

// Routes returns the admin routes.
func (a AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/quota/", Handler: caddy.AdminHandlerFunc(a.serve)}}
}

// maxAdminBody caps a request body; tokens are small.
const maxAdminBody = 1 << 20

// adminTimeout bounds one admin operation, retries included.
const adminTimeout = 10 * time.Second

// TokenView is a token as the admin API shows it.
type TokenView struct {
	// Name is the secret, shown only in the answer to its creation.
	Name string `json:"name,omitempty"`
	state.Token
	// Remaining is the uploads left; null when unlimited.
	Remaining *int64 `json:"remaining"`
	// BytesRemaining is the bytes left; null when unlimited.
	BytesRemaining *int64 `json:"bytes_remaining"`
	Expired        bool   `json:"expired"`
}

func viewOf(t *state.Token) TokenView {
	v := TokenView{Token: *t}
	if r := t.Remaining(); r >= 0 {
		v.Remaining = &r
	}
	if r := t.BytesRemaining(); r >= 0 {
		v.BytesRemaining = &r
	}
	v.Expired = t.ExpiresAt != nil && !time.Now().Before(*t.ExpiresAt)
	return v
}

// serve answers a request; a client's mistake (a 4xx) is answered here,
// as Caddy's admin API would, but not logged at ERROR as Caddy logs the
// errors handlers return: ERROR is for faults of this node.
func (a AdminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	err := a.route(w, r)
	var ae caddy.APIError
	if errors.As(err, &ae) && ae.HTTPStatus >= 400 && ae.HTTPStatus < 500 {
		return writeJSON(w, ae.HTTPStatus, map[string]string{"error": ae.Message})
	}
	return err
}

func (a AdminAPI) route(w http.ResponseWriter, r *http.Request) error {
	store := currentStore()
	if store == nil {
		return apiError(http.StatusServiceUnavailable, errors.New("the quota app is not running in this Caddy instance"))
	}
	ctx, cancel := context.WithTimeout(r.Context(), adminTimeout)
	defer cancel()
	c := &adminReq{ctx: ctx, store: store, w: w, r: r}
	parts := strings.Split(strings.Trim(strings.TrimPrefix(r.URL.Path, "/quota/"), "/"), "/")
	switch {
	case parts[0] == "tokens" && len(parts) == 1:
		return c.tokens()
	case parts[0] == "tokens" && len(parts) == 2 && parts[1] == "lookup":
		return c.lookup()
	case parts[0] == "tokens" && len(parts) == 2:
		return c.token(parts[1])
	case parts[0] == "tokens" && len(parts) == 3:
		return c.tokenAction(parts[1], parts[2])
	case parts[0] == "pools":
		return c.servePools(parts[1:])
	case parts[0] == "cluster" && len(parts) == 1:
		if r.Method != http.MethodGet {
			return methodNotAllowed(r, "GET")
		}
		return writeJSON(w, http.StatusOK, store.Cluster(ctx))
	case parts[0] == "cluster" && len(parts) >= 2 && parts[1] == "members":
		return c.members(parts[2:])
	case parts[0] == "health" && len(parts) == 1:
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			return methodNotAllowed(r, "GET")
		}
		return writeHealth(ctx, store, w)
	case parts[0] == "backup" && len(parts) == 1:
		if r.Method != http.MethodGet {
			return methodNotAllowed(r, "GET")
		}
		return c.backup()
	}
	return apiError(http.StatusNotFound, fmt.Errorf("no quota endpoint %s", r.URL.Path))
}

// adminReq is one admin request: what every route's handler needs.
type adminReq struct {
	ctx   context.Context
	store *raftstore.Store
	w     http.ResponseWriter
	r     *http.Request
}

// TokenPage is a page of GET /quota/tokens.
type TokenPage struct {
	Tokens []TokenView `json:"tokens"`
	// NextCursor fetches the following page (?cursor=); empty after the last.
	NextCursor string `json:"next_cursor,omitempty"`
}

// maxPage caps a page of tokens; limit defaults to it.
const maxPage = 1000

func (c *adminReq) tokens() error {
	ctx, s, w, r := c.ctx, c.store, c.w, c.r

	switch r.Method {
	case http.MethodGet:
		filter, err := tokenFilter(r)
		if err != nil {
			return err
		}
		return writeTokenPage(w)(s.Tokens(ctx, filter))
	case http.MethodPost:
		var spec state.TokenSpec
		if err := decodeBody(r, &spec); err != nil {
			return err
		}
		if spec.Name == "" {
			spec.Name = state.GenerateName()
		}
		t, err := s.CreateToken(ctx, spec)
		if err != nil {
			return storeError(err)
		}
		v := viewOf(t)
		v.Name = spec.Name
		return writeJSON(w, http.StatusCreated, v)
	}
	return methodNotAllowed(r, "GET, POST")
}

// writeTokenPage answers with a page of tokens, or the store's error.
func writeTokenPage(w http.ResponseWriter) func([]state.Token, string, error) error {
	return func(toks []state.Token, next string, err error) error {
		if err != nil {
			return storeError(err)
		}
		page := TokenPage{Tokens: make([]TokenView, len(toks)), NextCursor: next}
		for i := range toks {
			page.Tokens[i] = viewOf(&toks[i])
		}
		return writeJSON(w, http.StatusOK, page)
	}
}

// tokenFilter reads the list filters from the query string.
func tokenFilter(r *http.Request) (state.TokenFilter, error) {
	q := r.URL.Query()
	f := state.TokenFilter{
		Status:    state.Status(q.Get("status")),
		CreatedBy: q.Get("created_by"),
		After:     q.Get("cursor"),
		Limit:     maxPage,
	}
	switch f.Status {
	case "", state.StatusActive, state.StatusExhausted, state.StatusRevoked:
	default:
		return f, apiError(http.StatusBadRequest, fmt.Errorf("status must be active, exhausted or revoked, got %q", f.Status))
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxPage {
			return f, apiError(http.StatusBadRequest, fmt.Errorf("limit must be 1 to %d, got %q", maxPage, v))
		}
		f.Limit = n
	}
	if v := q.Get("remaining_below"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			return f, apiError(http.StatusBadRequest, fmt.Errorf("remaining_below must be a positive integer, got %q", v))
		}
		f.RemainingBelow = n
	}
	return f, nil
}

// lookupRequest is the body of POST /quota/tokens/lookup.
type lookupRequest struct {
	Name string `json:"name"`
}

func (c *adminReq) lookup() error {
	ctx, s, w, r := c.ctx, c.store, c.w, c.r

	if r.Method != http.MethodPost {
		return methodNotAllowed(r, "POST")
	}
	var req lookupRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	t, err := s.Lookup(ctx, req.Name)
	if err != nil {
		return storeError(err)
	}
	return writeJSON(w, http.StatusOK, viewOf(t))
}

func (c *adminReq) token(id string) error {
	ctx, s, w, r := c.ctx, c.store, c.w, c.r

	var t *state.Token
	var err error
	switch r.Method {
	case http.MethodGet:
		t, err = s.Token(ctx, id)
	case http.MethodPatch:
		var u state.LimitUpdate
		if err := decodeBody(r, &u); err != nil {
			return err
		}
		t, err = s.UpdateLimits(ctx, id, u)
	case http.MethodDelete:
		if err := s.DeleteToken(ctx, id); err != nil {
			return storeError(err)
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	default:
		return methodNotAllowed(r, "GET, PATCH, DELETE")
	}
	if err != nil {
		return storeError(err)
	}
	return writeJSON(w, http.StatusOK, viewOf(t))
}

func (c *adminReq) tokenAction(id, action string) error {
	ctx, s, w, r := c.ctx, c.store, c.w, c.r

	actions := map[string]func(context.Context, string) (*state.Token, error){
		"revoke": s.Revoke, "reactivate": s.Reactivate, "reset": s.Reset,
	}
	do, ok := actions[action]
	if !ok {
		return apiError(http.StatusNotFound, fmt.Errorf("unknown token action %q: use revoke, reactivate or reset", action))
	}
	if r.Method != http.MethodPost {
		return methodNotAllowed(r, "POST")
	}
	t, err := do(ctx, id)
	if err != nil {
		return storeError(err)
	}
	return writeJSON(w, http.StatusOK, viewOf(t))
}

// healthView is the body of a health answer.
type healthView struct {
	Status string `json:"status"`
	NodeID string `json:"node_id"`
	Leader string `json:"leader,omitempty"`
	Error  string `json:"error,omitempty"`
}

// writeHealth answers 200 when the node can take part in decisions, 503
// with the reason when it cannot: for load balancers' health checks.
func writeHealth(ctx context.Context, s *raftstore.Store, w http.ResponseWriter) error {
	hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	v := healthView{Status: "ok", NodeID: s.NodeID(), Leader: s.Leader()}
	w.Header().Set("Cache-Control", "no-store")
	if err := s.Health(hctx); err != nil {
		v.Status, v.Error = "unavailable", err.Error()
		return writeJSON(w, http.StatusServiceUnavailable, v)
	}
	return writeJSON(w, http.StatusOK, v)
}

// backup streams a backup. It is built in memory first, so a failure is a
// clean JSON error rather than a truncated download.
func (c *adminReq) backup() error {
	ctx, s, w := c.ctx, c.store, c.w

	var buf bytes.Buffer
	info, err := s.Backup(ctx, &buf)
	if err != nil {
		return storeError(err)
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="raftquota-%s.backup"`, info.CreatedAt.Format("20060102T150405Z")))
	w.Header().Set("Content-Length", fmt.Sprint(buf.Len()))
	w.Header().Set("Cache-Control", "no-store")
	_, err = buf.WriteTo(w)
	return err
}

// memberRequest is the body of POST /quota/cluster/members.
type memberRequest struct {
	ID      string `json:"id"`
	Address string `json:"address"`
}

func (c *adminReq) members(rest []string) error {
	ctx, s, w, r := c.ctx, c.store, c.w, c.r

	switch {
	case len(rest) == 0 && r.Method == http.MethodPost:
		var m memberRequest
		if err := decodeBody(r, &m); err != nil {
			return err
		}
		if err := s.Join(ctx, m.ID, m.Address); err != nil {
			return storeError(err)
		}
		return writeJSON(w, http.StatusOK, s.Cluster(ctx))
	case len(rest) == 1 && r.Method == http.MethodDelete:
		if err := s.Remove(ctx, rest[0]); err != nil {
			return storeError(err)
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	case len(rest) == 0:
		return methodNotAllowed(r, "POST")
	case len(rest) == 1:
		return methodNotAllowed(r, "DELETE")
	}
	return apiError(http.StatusNotFound, fmt.Errorf("no quota endpoint %s", r.URL.Path))
}

// decodeBody reads one JSON object, rejecting unknown fields, trailing data
// and bodies over maxAdminBody.
func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, maxAdminBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return apiError(http.StatusRequestEntityTooLarge, fmt.Errorf("request body is larger than %d bytes", maxAdminBody))
		}
		if errors.Is(err, io.EOF) {
			return apiError(http.StatusBadRequest, errors.New("request body is empty; send a JSON object"))
		}
		return apiError(http.StatusBadRequest, fmt.Errorf("invalid JSON body: %v", err))
	}
	if dec.More() {
		return apiError(http.StatusBadRequest, errors.New("request body has data after the JSON object"))
	}
	return nil
}

func storeError(err error) error {
	switch {
	case errors.Is(err, state.ErrNotFound), errors.Is(err, state.ErrNoMember):
		return apiError(http.StatusNotFound, err)
	case errors.Is(err, state.ErrExists):
		return apiError(http.StatusConflict, err)
	case errors.Is(err, state.ErrInvalid):
		return apiError(http.StatusBadRequest, err)
	}
	return apiError(http.StatusServiceUnavailable, err)
}

func apiError(status int, err error) error {
	return caddy.APIError{HTTPStatus: status, Err: err, Message: err.Error()}
}

func methodNotAllowed(r *http.Request, allow string) error {
	return apiError(http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed here; use %s", r.Method, allow))
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}

// Interface guard
var _ caddy.AdminRouter = AdminAPI{}
