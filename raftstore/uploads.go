package raftstore

import (
	"context"
	"fmt"
	"time"

	"github.com/raftquota/raftquota/raftstore/state"
)

// Uploads is the multipart half of a Store's API: an upload is charged one
// unit when it is created and its parts' bytes as they arrive; an abort
// or an expiry gives everything back.
type Uploads struct{ s *Store }

// Uploads returns the store's multipart uploads.
func (s *Store) Uploads() Uploads { return Uploads{s} }

// Reserve charges units (one object) to the token named by key for a
// multipart upload the caller is about to create, and remembers the upload
// for expiry. Bind it to the backend's upload id with BindUpload, or Refund
// id when the backend did not create it.
func (u Uploads) Reserve(ctx context.Context, req state.ConsumeRequest, expiry time.Duration) (state.Decision, error) {
	if err := req.HashName(); err != nil {
		return state.Decision{}, err
	}
	if err := req.Validate(); err != nil || expiry <= 0 {
		return state.Decision{}, state.Invalidf("reserve needs a request id, a token, units and an expiry")
	}
	return u.decide(ctx, &state.Command{Op: state.OpReserveUpload, ID: req.ID, Upload: &state.UploadOp{Token: &req.Key, Units: req.Units, Expiry: int64(expiry),
		Pools: req.Pools, SkipMissingPools: req.SkipMissingPools}})
}

// Bind names the upload reserved by id with the backend's upload.
func (u Uploads) Bind(ctx context.Context, id state.RequestID, upload state.UploadKey) error {
	_, err := u.s.propose(ctx, &state.Command{Op: state.OpBindUpload, ID: id, Upload: &state.UploadOp{Key: upload}})
	return err
}

// ChargePart charges a part's bytes to the token that reserved upload. When
// key is not zero it must be that token. The same id never charges twice.
func (u Uploads) ChargePart(ctx context.Context, id state.RequestID, upload state.UploadKey, part int32, bytes int64, key state.TokenKey) (state.Decision, error) {
	if id.IsZero() || part < 1 || bytes < 0 {
		return state.Decision{}, state.Invalidf("a part needs a request id, a part number and bytes")
	}
	o := &state.UploadOp{Key: upload, Part: part, Bytes: bytes}
	if !key.IsZero() {
		o.Token = &key
	}
	return u.decide(ctx, &state.Command{Op: state.OpChargePart, ID: id, Upload: o})
}

// BeginComplete marks upload completing: no parts or aborts until
// EndComplete, or until timeout passes (then its charges stay).
func (u Uploads) BeginComplete(ctx context.Context, upload state.UploadKey, key state.TokenKey, timeout time.Duration) error {
	o := &state.UploadOp{Key: upload, Expiry: int64(timeout)}
	if !key.IsZero() {
		o.Token = &key
	}
	_, err := u.s.propose(ctx, &state.Command{Op: state.OpCompleteBegin, ID: state.NewRequestID(), Upload: o})
	return err
}

// EndComplete says how a complete ended: ok with the parts the object is
// made of (charges of other attempts go back), or failed (the upload is
// open again until it expires).
func (u Uploads) EndComplete(ctx context.Context, upload state.UploadKey, ok bool, parts []int32) error {
	_, err := u.s.propose(ctx, &state.Command{Op: state.OpCompleteEnd, ID: state.NewRequestID(), Upload: &state.UploadOp{Key: upload, OK: ok, Parts: parts}})
	return err
}

// Abort gives back the unit and every byte upload charged.
func (u Uploads) Abort(ctx context.Context, upload state.UploadKey, key state.TokenKey) error {
	o := &state.UploadOp{Key: upload}
	if !key.IsZero() {
		o.Token = &key
	}
	_, err := u.s.propose(ctx, &state.Command{Op: state.OpAbortUpload, ID: state.NewRequestID(), Upload: o})
	return err
}

// List lists the multipart uploads this node's state holds.
func (u Uploads) List() []state.UploadInfo { return u.s.fsm.Uploads() }

// Open counts the multipart uploads this node's state holds.
func (u Uploads) Open() int {
	return u.s.fsm.Counts().Uploads
}

// decide proposes a command answered with one decision.
func (u Uploads) decide(ctx context.Context, c *state.Command) (state.Decision, error) {
	res, err := u.s.propose(ctx, c)
	if err != nil {
		return state.Decision{}, err
	}
	if len(res.Decisions) != 1 {
		return state.Decision{}, fmt.Errorf("%w: %s answered %d decisions", state.ErrUnavailable, c.Op, len(res.Decisions))
	}
	return res.Decisions[0], nil
}
