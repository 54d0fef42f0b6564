package raftstore

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
)

// RequestID names one request for deduplication. The same id never charges
// twice: a retry gets the first outcome.
type RequestID [16]byte

// NewRequestID returns a random id.
func NewRequestID() RequestID {
	var id RequestID
	if _, err := rand.Read(id[:]); err != nil {
		panic("raftstore: no randomness: " + err.Error())
	}
	return id
}

// DeriveRequestID turns a caller's idempotency key into a request id, scoped
// to the token, so two tokens cannot collide on the same key.
func DeriveRequestID(token, key string) RequestID {
	h := sha256.New()
	h.Write([]byte("raftquota/idempotency/v1\x00"))
	h.Write([]byte(token))
	h.Write([]byte{0})
	h.Write([]byte(key))
	var id RequestID
	copy(id[:], h.Sum(nil))
	return id
}

// IsZero reports whether the id was never set.
func (id RequestID) IsZero() bool { return id == RequestID{} }

func (id RequestID) String() string { return hex.EncodeToString(id[:]) }

// MarshalText writes the id as 32 hex digits.
func (id RequestID) MarshalText() ([]byte, error) {
	b := make([]byte, 32)
	hex.Encode(b, id[:])
	return b, nil
}

// UnmarshalText reads 32 hex digits.
func (id *RequestID) UnmarshalText(b []byte) error {
	if len(b) != 32 {
		return fmt.Errorf("request id must be 32 hex digits, got %d characters", len(b))
	}
	_, err := hex.Decode(id[:], b)
	return err
}

// op is the kind of a Raft command.
type op uint8

const (
	opCreate op = iota + 1
	opConsume
	opRefund
	opUpdate
	opRevoke
	opReactivate
	opReset
	opDelete
	opSetSecret
)

func (o op) String() string {
	switch o {
	case opCreate:
		return "create"
	case opConsume:
		return "consume"
	case opRefund:
		return "refund"
	case opUpdate:
		return "update_limit"
	case opRevoke:
		return "revoke"
	case opReactivate:
		return "reactivate"
	case opReset:
		return "reset"
	case opDelete:
		return "delete"
	case opSetSecret:
		return "set_secret"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// ConsumeRequest asks to charge units and bytes to a token, once per ID.
type ConsumeRequest struct {
	ID    RequestID `json:"id"`
	Token string    `json:"token"`
	Units int64     `json:"units"`
	Bytes int64     `json:"bytes"`
}

// Validate rejects what must never reach the log: a bad name, negative or
// zero-and-zero charges, a missing id.
func (r *ConsumeRequest) Validate() error {
	if r.ID.IsZero() {
		return invalidf("consume needs a request id")
	}
	if err := ValidateName(r.Token); err != nil {
		return err
	}
	if r.Units < 0 {
		return invalidf("units must not be negative, got %d", r.Units)
	}
	if r.Bytes < 0 {
		return invalidf("bytes must not be negative, got %d", r.Bytes)
	}
	return nil
}

// command is one entry in the Raft log. Time is stamped by the leader just
// before it is appended; the FSM never reads a clock.
type command struct {
	Op       op               `json:"op"`
	Time     int64            `json:"t"`
	ID       RequestID        `json:"id"`
	Name     string           `json:"name,omitempty"`
	Spec     *TokenSpec       `json:"spec,omitempty"`
	Update   *LimitUpdate     `json:"update,omitempty"`
	Consumes []ConsumeRequest `json:"consumes,omitempty"`
	Secret   []byte           `json:"secret,omitempty"`
}

// codecVersion is the first byte of every encoded command, so the format can
// change without misreading old logs.
const codecVersion = 1

func encodeCommand(c *command) ([]byte, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	return append([]byte{codecVersion}, b...), nil
}

func decodeCommand(b []byte) (*command, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("empty command")
	}
	if b[0] != codecVersion {
		return nil, fmt.Errorf("unknown command encoding version %d", b[0])
	}
	var c command
	if err := json.Unmarshal(b[1:], &c); err != nil {
		return nil, fmt.Errorf("decoding command: %w", err)
	}
	if c.Op < opCreate || c.Op > opSetSecret {
		return nil, fmt.Errorf("unknown command op %d", c.Op)
	}
	return &c, nil
}
