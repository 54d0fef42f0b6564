package caddymodule

import (
	"fmt"
	"net/http"

	"github.com/raftquota/raftquota/raftstore/state"
)

// The pool routes of the admin API:
//
//	POST   /quota/pools                {"name","usage_limit","bytes_limit","renew_every","expires_at"}: 201; 409 name exists
//	POST   /quota/pools/lookup         {"name"}: the pool with that name (404)
//	GET    /quota/pools                every pool, by id
//	GET    /quota/pools/{id}           one pool, with remaining (404)
//	PATCH  /quota/pools/{id}           update usage_limit, bytes_limit, expires_at, renew_every
//	POST   /quota/pools/{id}/reset     usage back to zero
//	DELETE /quota/pools/{id}           204; 409 while a token belongs to it
//	GET    /quota/pools/{id}/tokens    the pool's tokens (paged as GET /quota/tokens)
//
// A token joins pools with "pools": ["<pool id>", ...] in POST
// /quota/tokens or PATCH /quota/tokens/{id}.

// PoolView is a pool as the admin API shows it.
type PoolView struct {
	state.Pool
	// Remaining is the uploads left; null when unlimited.
	Remaining *int64 `json:"remaining"`
	// BytesRemaining is the bytes left; null when unlimited.
	BytesRemaining *int64 `json:"bytes_remaining"`
}

func poolView(p *state.Pool) PoolView {
	v := PoolView{Pool: *p}
	if r := p.Remaining(); r >= 0 {
		v.Remaining = &r
	}
	if r := p.BytesRemaining(); r >= 0 {
		v.BytesRemaining = &r
	}
	return v
}

// PoolList is the body of GET /quota/pools.
type PoolList struct {
	Pools []PoolView `json:"pools"`
}

// servePools routes /quota/pools/... (parts after "pools").
func (c *adminReq) servePools(rest []string) error {
	ctx, s, w, r := c.ctx, c.store, c.w, c.r

	switch {
	case len(rest) == 0:
		return c.pools()
	case len(rest) == 1 && rest[0] == "lookup":
		if r.Method != http.MethodPost {
			return methodNotAllowed(r, "POST")
		}
		var req lookupRequest
		if err := decodeBody(r, &req); err != nil {
			return err
		}
		return writePool(w, http.StatusOK)(s.Pools().Lookup(ctx, req.Name))
	case len(rest) == 1:
		return c.pool(rest[0])
	case len(rest) == 2 && rest[1] == "reset":
		if r.Method != http.MethodPost {
			return methodNotAllowed(r, "POST")
		}
		return writePool(w, http.StatusOK)(s.Pools().Reset(ctx, rest[0]))
	case len(rest) == 2 && rest[1] == "tokens":
		if r.Method != http.MethodGet {
			return methodNotAllowed(r, "GET")
		}
		filter, err := tokenFilter(r)
		if err != nil {
			return err
		}
		return writeTokenPage(w)(s.Pools().Tokens(ctx, rest[0], filter))
	}
	return apiError(http.StatusNotFound, fmt.Errorf("no quota endpoint %s", r.URL.Path))
}

func (c *adminReq) pools() error {
	ctx, s, w, r := c.ctx, c.store, c.w, c.r

	switch r.Method {
	case http.MethodGet:
		all, err := s.Pools().List(ctx)
		if err != nil {
			return storeError(err)
		}
		out := PoolList{Pools: make([]PoolView, len(all))}
		for i := range all {
			out.Pools[i] = poolView(&all[i])
		}
		return writeJSON(w, http.StatusOK, out)
	case http.MethodPost:
		var spec state.PoolSpec
		if err := decodeBody(r, &spec); err != nil {
			return err
		}
		return writePool(w, http.StatusCreated)(s.Pools().Create(ctx, spec))
	}
	return methodNotAllowed(r, "GET, POST")
}

func (c *adminReq) pool(id string) error {
	ctx, s, w, r := c.ctx, c.store, c.w, c.r

	switch r.Method {
	case http.MethodGet:
		return writePool(w, http.StatusOK)(s.Pools().Get(ctx, id))
	case http.MethodPatch:
		var u state.PoolUpdate
		if err := decodeBody(r, &u); err != nil {
			return err
		}
		return writePool(w, http.StatusOK)(s.Pools().Update(ctx, id, u))
	case http.MethodDelete:
		if err := s.Pools().Delete(ctx, id); err != nil {
			return storeError(err)
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	return methodNotAllowed(r, "GET, PATCH, DELETE")
}

// writePool answers with a pool, or the store's error.
func writePool(w http.ResponseWriter, status int) func(*state.Pool, error) error {
	return func(p *state.Pool, err error) error {
		if err != nil {
			return storeError(err)
		}
		return writeJSON(w, status, poolView(p))
	}
}
