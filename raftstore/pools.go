package raftstore

import (
	"context"
	"fmt"

	"github.com/raftquota/raftquota/raftstore/state"
)

// CreatePool makes a pool. Its name must be unique.
func (s *Store) CreatePool(ctx context.Context, spec state.PoolSpec) (*state.Pool, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if err := validExpiry(spec.ExpiresAt); err != nil {
		return nil, err
	}
	return s.writePool(ctx, &state.Command{Op: state.OpCreatePool, ID: state.NewRequestID(), Pool: &spec})
}

// UpdatePool changes a pool's limits, window or expiry; an exhausted pool
// whose new limits leave room becomes active again.
func (s *Store) UpdatePool(ctx context.Context, id string, u state.PoolUpdate) (*state.Pool, error) {
	if err := u.Validate(); err != nil {
		return nil, err
	}
	if u.ExpiresAt != nil && !u.ExpiresAt.IsZero() {
		if err := validExpiry(u.ExpiresAt); err != nil {
			return nil, err
		}
	}
	return s.poolOp(ctx, &state.Command{Op: state.OpUpdatePool, PoolUpdate: &u}, id)
}

// ResetPool sets a pool's usage back to zero.
func (s *Store) ResetPool(ctx context.Context, id string) (*state.Pool, error) {
	return s.poolOp(ctx, &state.Command{Op: state.OpResetPool}, id)
}

// DeletePool removes a pool no token belongs to.
func (s *Store) DeletePool(ctx context.Context, id string) error {
	_, err := s.poolOp(ctx, &state.Command{Op: state.OpDeletePool}, id)
	return err
}

func (s *Store) poolOp(ctx context.Context, c *state.Command, id string) (*state.Pool, error) {
	if !state.IsPoolID(id) {
		return nil, fmt.Errorf("%w: %q is not a pool id", state.ErrPoolNotFound, id)
	}
	c.ID, c.PoolID = state.NewRequestID(), id
	return s.writePool(ctx, c)
}

func (s *Store) writePool(ctx context.Context, c *state.Command) (*state.Pool, error) {
	res, err := s.propose(ctx, c)
	if err != nil {
		return nil, err
	}
	return res.Pool, nil
}

// Pool returns the pool with id as of now (a linearizable read).
func (s *Store) Pool(ctx context.Context, id string) (*state.Pool, error) {
	if !state.IsPoolID(id) {
		return nil, fmt.Errorf("%w: %q is not a pool id", state.ErrPoolNotFound, id)
	}
	a, err := s.query(ctx, state.Query{Kind: state.ReadPool, ID: id})
	return a.Pool, err
}

// LookupPool returns the pool named name as of now.
func (s *Store) LookupPool(ctx context.Context, name string) (*state.Pool, error) {
	if err := state.ValidatePoolName(name); err != nil {
		return nil, err
	}
	a, err := s.query(ctx, state.Query{Kind: state.ReadPoolByName, Name: name})
	return a.Pool, err
}

// Pools lists every pool by id (a linearizable read).
func (s *Store) Pools(ctx context.Context) ([]state.Pool, error) {
	a, err := s.query(ctx, state.Query{Kind: state.ReadPools})
	return a.Pools, err
}

// PoolTokens lists the tokens that belong to the pool with id, filtered
// and paged as Tokens does.
func (s *Store) PoolTokens(ctx context.Context, id string, filter state.TokenFilter) ([]state.Token, string, error) {
	if !state.IsPoolID(id) {
		return nil, "", fmt.Errorf("%w: %q is not a pool id", state.ErrPoolNotFound, id)
	}
	a, err := s.query(ctx, state.Query{Kind: state.ReadPoolTokens, ID: id, Filter: filter})
	return a.Tokens, a.Next, err
}
