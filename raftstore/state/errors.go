package state

import (
	"errors"
	"fmt"
)

// Errors returned by the store. Compare with errors.Is.
var (
	// ErrNotFound: the named token does not exist.
	ErrNotFound = errors.New("token not found")
	// ErrExists: a token with that name already exists.
	ErrExists = errors.New("token already exists")
	// ErrInvalid: the request was rejected before anything was applied.
	ErrInvalid = errors.New("invalid request")
	// ErrUnavailable: no leader could be reached with a quorum before the
	// deadline. For a consume this may be ambiguous: retrying with the same
	// request id is safe and returns the first outcome if there was one.
	ErrUnavailable = errors.New("quota cluster unavailable")
	// ErrNoMember: no cluster member has that id.
	ErrNoMember = errors.New("no such cluster member")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("quota store closed")

	// errNotLeader: this node cannot serve the operation; nothing was applied.
	ErrNotLeader = errors.New("not the leader")
)

func Invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Error codes carry errors over the forwarding RPC and through the FSM.
type Code uint8

const (
	codeOK Code = iota
	codeNotFound
	codeExists
	codeInvalid
	codeNotLeader
	codeUnavailable
	codeClosed
	codeNoMember
)

func CodeOf(err error) Code {
	switch {
	case err == nil:
		return codeOK
	case errors.Is(err, ErrNotFound):
		return codeNotFound
	case errors.Is(err, ErrExists):
		return codeExists
	case errors.Is(err, ErrInvalid):
		return codeInvalid
	case errors.Is(err, ErrNotLeader):
		return codeNotLeader
	case errors.Is(err, ErrClosed):
		return codeClosed
	case errors.Is(err, ErrNoMember):
		return codeNoMember
	default:
		return codeUnavailable
	}
}

// errorFrom rebuilds an error from its code and message.
func ErrorFrom(code Code, msg string) error {
	var base error
	switch code {
	case codeOK:
		return nil
	case codeNotFound:
		base = ErrNotFound
	case codeExists:
		base = ErrExists
	case codeInvalid:
		base = ErrInvalid
	case codeNotLeader:
		base = ErrNotLeader
	case codeClosed:
		base = ErrClosed
	case codeNoMember:
		base = ErrNoMember
	default:
		base = ErrUnavailable
	}
	if msg == "" || msg == base.Error() {
		return base
	}
	return &codedError{base: base, msg: msg}
}

type codedError struct {
	base error
	msg  string
}

func (e *codedError) Error() string { return e.msg }
func (e *codedError) Unwrap() error { return e.base }
