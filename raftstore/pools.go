package raftstore

import (
	"context"
	"fmt"

	"github.com/raftquota/raftquota/raftstore/state"
)

// Pools is the pools half of a Store's API: quotas that several tokens
// share. Every method is a linearizable read or a write through the log.
type Pools struct{ s *Store }

// Pools returns the store's pools.
func (s *Store) Pools() Pools { return Pools{s} }

// Create makes a pool. Its name must be unique.
func (p Pools) Create(ctx context.Context, spec state.PoolSpec) (*state.Pool, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if err := validExpiry(spec.ExpiresAt); err != nil {
		return nil, err
	}
	return p.write(ctx, &state.Command{Op: state.OpCreatePool, ID: state.NewRequestID(), Pool: &spec})
}

// Update changes a pool's limits, window or expiry; an exhausted pool
// whose new limits leave room becomes active again.
func (p Pools) Update(ctx context.Context, id string, u state.PoolUpdate) (*state.Pool, error) {
	if err := u.Validate(); err != nil {
		return nil, err
	}
	if u.ExpiresAt != nil && !u.ExpiresAt.IsZero() {
		if err := validExpiry(u.ExpiresAt); err != nil {
			return nil, err
		}
	}
	return p.op(ctx, &state.Command{Op: state.OpUpdatePool, PoolUpdate: &u}, id)
}

// Reset sets a pool's usage back to zero.
func (p Pools) Reset(ctx context.Context, id string) (*state.Pool, error) {
	return p.op(ctx, &state.Command{Op: state.OpResetPool}, id)
}

// Delete removes a pool no token belongs to.
func (p Pools) Delete(ctx context.Context, id string) error {
	_, err := p.op(ctx, &state.Command{Op: state.OpDeletePool}, id)
	return err
}

func (p Pools) op(ctx context.Context, c *state.Command, id string) (*state.Pool, error) {
	if !state.IsPoolID(id) {
		return nil, fmt.Errorf("%w: %q is not a pool id", state.ErrPoolNotFound, id)
	}
	c.ID, c.PoolID = state.NewRequestID(), id
	return p.write(ctx, c)
}

func (p Pools) write(ctx context.Context, c *state.Command) (*state.Pool, error) {
	res, err := p.s.propose(ctx, c)
	if err != nil {
		return nil, err
	}
	return res.Pool, nil
}

// Get returns the pool with id as of now (a linearizable read).
func (p Pools) Get(ctx context.Context, id string) (*state.Pool, error) {
	if !state.IsPoolID(id) {
		return nil, fmt.Errorf("%w: %q is not a pool id", state.ErrPoolNotFound, id)
	}
	a, err := p.s.reads().query(ctx, state.Query{Kind: state.ReadPool, ID: id})
	return a.Pool, err
}

// Lookup returns the pool named name as of now.
func (p Pools) Lookup(ctx context.Context, name string) (*state.Pool, error) {
	if err := state.ValidatePoolName(name); err != nil {
		return nil, err
	}
	a, err := p.s.reads().query(ctx, state.Query{Kind: state.ReadPoolByName, Name: name})
	return a.Pool, err
}

// List lists every pool by id (a linearizable read).
func (p Pools) List(ctx context.Context) ([]state.Pool, error) {
	a, err := p.s.reads().query(ctx, state.Query{Kind: state.ReadPools})
	return a.Pools, err
}

// Tokens lists the tokens that belong to the pool with id, filtered
// and paged as Tokens does.
func (p Pools) Tokens(ctx context.Context, id string, filter state.TokenFilter) ([]state.Token, string, error) {
	if !state.IsPoolID(id) {
		return nil, "", fmt.Errorf("%w: %q is not a pool id", state.ErrPoolNotFound, id)
	}
	a, err := p.s.reads().query(ctx, state.Query{Kind: state.ReadPoolTokens, ID: id, Filter: filter})
	return a.Tokens, a.Next, err
}
