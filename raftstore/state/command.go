package state

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"
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

// op is the kind of a Raft command. Values are written in the log: never
// renumber or reuse one.
type Op uint8

const (
	OpCreate Op = iota + 1
	OpConsume
	OpRefund
	OpUpdate
	OpRevoke
	OpReactivate
	OpReset
	OpDelete
	OpSetSecret
	OpSetDedupSize
	OpReserveUpload
	OpBindUpload
	OpChargePart
	OpCompleteBegin
	OpCompleteEnd
	OpAbortUpload
	OpExpireUploads
	OpCreatePool
	OpUpdatePool
	OpResetPool
	OpDeletePool
	OpAckEvents
	// OpLogCheckpoint marks a point in the log for raft-wal's verifier
	// (raftstore's log check): it changes nothing in the state.
	OpLogCheckpoint
)

// MaxOp is the highest op this build applies. A node says it in its status
// so a leader proposes an op of its own accord (a log checkpoint) only once
// every member can apply it.
const MaxOp = OpLogCheckpoint

// commandDef is how the FSM applies one op.
type commandDef struct {
	name  string
	apply func(f *Machine, c *Command, now time.Time) *Result
	// dedup: the command's ID is remembered generically, so a retry gets
	// the first outcome (admin commands). Consumes and refunds keep their
	// own, richer entries.
	dedup bool
}

// commands is every op this build can apply. The log may only hold these:
// an op missing here halts the node rather than be skipped (see fsm.halt).
var commands = map[Op]commandDef{
	OpCreate:       {"create", (*Machine).applyCreate, true},
	OpConsume:      {"consume", (*Machine).applyConsumes, false},
	OpRefund:       {"refund", (*Machine).applyRefund, false},
	OpUpdate:       {"update_limit", (*Machine).applyUpdate, true},
	OpRevoke:       {"revoke", (*Machine).applyStatus, true},
	OpReactivate:   {"reactivate", (*Machine).applyStatus, true},
	OpReset:        {"reset", (*Machine).applyStatus, true},
	OpDelete:       {"delete", (*Machine).applyDelete, true},
	OpSetSecret:    {"set_secret", (*Machine).applySetSecret, false},
	OpSetDedupSize: {"set_dedup_size", (*Machine).applySetDedupSize, false},
	// Multipart uploads (multipart.go). Reserves and parts keep consume
	// entries of their own, and a bind (whose ID is its reserve's) is
	// idempotent; the others are remembered generically.
	OpReserveUpload: {"reserve_upload", onUploads((*uploadOps).applyReserveUpload), false},
	OpBindUpload:    {"bind_upload", onUploads((*uploadOps).applyBindUpload), false},
	OpChargePart:    {"charge_part", onUploads((*uploadOps).applyChargePart), false},
	OpCompleteBegin: {"complete_begin", onUploads((*uploadOps).applyCompleteBegin), true},
	OpCompleteEnd:   {"complete_end", onUploads((*uploadOps).applyCompleteEnd), true},
	OpAbortUpload:   {"abort_upload", onUploads((*uploadOps).applyAbortUpload), true},
	OpExpireUploads: {"expire_uploads", onUploads((*uploadOps).applyExpireUploads), false},
	// Pools (pool.go).
	OpCreatePool: {"create_pool", onPools((*poolOps).applyCreatePool), true},
	OpUpdatePool: {"update_pool", onPools((*poolOps).applyUpdatePool), true},
	OpResetPool:  {"reset_pool", onPools((*poolOps).applyResetPool), true},
	OpDeletePool: {"delete_pool", onPools((*poolOps).applyDeletePool), true},
	// Threshold events (events.go).
	OpAckEvents: {"ack_events", (*Machine).applyAckEvents, false},
	// The log's own checks (IsCheckpoint).
	OpLogCheckpoint: {"log_checkpoint", func(*Machine, *Command, time.Time) *Result { return &Result{} }, false},
}

// onUploads and onPools fit a handler of a face of the machine into the
// op table.
func onUploads(h func(f *uploadOps, c *Command, now time.Time) *Result) func(*Machine, *Command, time.Time) *Result {
	return func(f *Machine, c *Command, now time.Time) *Result { return h(f.uploadOps(), c, now) }
}

func onPools(h func(f *poolOps, c *Command, now time.Time) *Result) func(*Machine, *Command, time.Time) *Result {
	return func(f *Machine, c *Command, now time.Time) *Result { return h(f.poolOps(), c, now) }
}

func (o Op) String() string {
	if d, ok := commands[o]; ok {
		return d.name
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Bounds of the replicated dedup size.
const (
	MinDedupSize = 1024
	MaxDedupSize = 1 << 26
)

// ConsumeRequest asks to charge units and bytes to a token, once per ID.
// Callers name the token by Token (its name, the secret); the store hashes
// it into Key on the node that took the request, and only Key travels
// further and reaches the log.
type ConsumeRequest struct {
	ID    RequestID `json:"id"`
	Token string    `json:"token,omitempty"`
	Key   TokenKey  `json:"key"`
	Units int64     `json:"units"`
	Bytes int64     `json:"bytes"`
	// Pools names pools to charge besides the token's own (the handler's
	// pool placeholders); a name with no pool refuses the charge unless
	// SkipMissingPools.
	Pools            []string `json:"pools,omitempty"`
	SkipMissingPools bool     `json:"skip_missing_pools,omitempty"`
}

// hashName checks the name and replaces it with its key.
func (r *ConsumeRequest) HashName() error {
	if r.Token != "" || r.Key.IsZero() {
		if err := ValidateName(r.Token); err != nil {
			return err
		}
		r.Key, r.Token = KeyOf(r.Token), ""
	}
	return nil
}

// Validate rejects what must never reach the log: no token, negative or
// zero-and-zero charges, a missing id.
func (r *ConsumeRequest) Validate() error {
	if r.ID.IsZero() {
		return Invalidf("consume needs a request id")
	}
	return r.ValidateCharge()
}

// validateCharge checks what a check and a consume share: the token and
// the amounts.
func (r *ConsumeRequest) ValidateCharge() error {
	if r.Key.IsZero() {
		return Invalidf("consume needs a token")
	}
	if r.Units < 0 {
		return Invalidf("units must not be negative, got %d", r.Units)
	}
	if r.Bytes < 0 {
		return Invalidf("bytes must not be negative, got %d", r.Bytes)
	}
	if len(r.Pools) > MaxTokenPools {
		return Invalidf("a request names at most %d pools, got %d", MaxTokenPools, len(r.Pools))
	}
	for _, n := range r.Pools {
		if err := ValidatePoolName(n); err != nil {
			return err
		}
	}
	return nil
}

// command is one entry in the Raft log. Time is stamped by the leader just
// before it is appended; the FSM never reads a clock.
type Command struct {
	Op   Op        `json:"op"`
	Time int64     `json:"t"`
	ID   RequestID `json:"id"`
	// Name is a token's name in clear: only in entries of versions before
	// names were hashed; read, never written.
	Name string `json:"name,omitempty"`
	// Key names the token a create makes, TokenID the one an admin command
	// changes.
	Key      *TokenKey        `json:"key,omitempty"`
	TokenID  string           `json:"token_id,omitempty"`
	Spec     *TokenSpec       `json:"spec,omitempty"`
	Update   *LimitUpdate     `json:"update,omitempty"`
	Consumes []ConsumeRequest `json:"consumes,omitempty"`
	Secret   []byte           `json:"secret,omitempty"`
	// DedupSize is the new capacity of the dedup table (set_dedup_size).
	DedupSize int `json:"dedup_size,omitempty"`
	// Upload carries the multipart commands' fields.
	Upload *UploadOp `json:"upload,omitempty"`
	// Pool, PoolID and PoolUpdate carry the pool commands' fields.
	Pool       *PoolSpec   `json:"pool,omitempty"`
	PoolID     string      `json:"pool_id,omitempty"`
	PoolUpdate *PoolUpdate `json:"pool_update,omitempty"`
	// EventSeq acknowledges the delivered events up to it (ack_events).
	EventSeq uint64 `json:"event_seq,omitempty"`
}

// The first byte of every encoded command names its encoding, so the format
// can change without misreading old logs: 1 is JSON (every command but
// consumes), 3 a compact binary form for consume batches, the hot path, and
// 2 the binary form of versions that logged token names.
const (
	codecJSON          = 1
	codecBinaryConsume = 2 // tokens by name: read only, from older logs
	codecConsumeKeys   = 3 // tokens by key
	codecConsumePools  = 4 // tokens by key, and the pools each request names
	codecCheckpoint    = 5 // a log checkpoint: the leader's time, nothing else
)

// checkpointLen is an encoded checkpoint's length: the codec and the time.
const checkpointLen = 1 + 8

// IsCheckpoint says whether a log entry's data is a log checkpoint
// (OpLogCheckpoint), without decoding it: raft-wal's verifier asks this
// of every entry it writes.
func IsCheckpoint(data []byte) bool {
	return len(data) == checkpointLen && data[0] == codecCheckpoint
}

// maxDecodedBatch bounds a decoded batch, so a forged length cannot make a
// node allocate without limit.
const maxDecodedBatch = 1 << 20

func Encode(c *Command) ([]byte, error) {
	switch c.Op {
	case OpConsume:
		return encodeConsumes(c), nil
	case OpLogCheckpoint:
		return binary.BigEndian.AppendUint64([]byte{codecCheckpoint}, uint64(c.Time)), nil
	}
	b, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	return append([]byte{codecJSON}, b...), nil
}

// encodeConsumes writes: version, time (8 bytes), count (uvarint), then per
// consume: id (16 bytes), token key (32 bytes), units and bytes (varints),
// and in version 4 a flags byte (1: skip missing pools), the count of pool
// names and each name (uvarint length, bytes). A batch that names no pool
// is written as version 3, which nodes from before pools read.
func encodeConsumes(c *Command) []byte {
	withPools := slices.ContainsFunc(c.Consumes, func(r ConsumeRequest) bool { return len(r.Pools) > 0 })
	b := make([]byte, 0, 1+8+binary.MaxVarintLen64+len(c.Consumes)*(16+32+2*binary.MaxVarintLen64))
	if withPools {
		b = append(b, codecConsumePools)
	} else {
		b = append(b, codecConsumeKeys)
	}
	b = binary.BigEndian.AppendUint64(b, uint64(c.Time))
	b = binary.AppendUvarint(b, uint64(len(c.Consumes)))
	for i := range c.Consumes {
		r := &c.Consumes[i]
		b = append(b, r.ID[:]...)
		b = append(b, r.Key[:]...)
		b = binary.AppendVarint(b, r.Units)
		b = binary.AppendVarint(b, r.Bytes)
		if withPools {
			var flags byte
			if r.SkipMissingPools {
				flags = 1
			}
			b = append(b, flags)
			b = binary.AppendUvarint(b, uint64(len(r.Pools)))
			for _, n := range r.Pools {
				b = binary.AppendUvarint(b, uint64(len(n)))
				b = append(b, n...)
			}
		}
	}
	return b
}

var errShortCommand = errors.New("truncated consume batch")

// decodePools reads one consume's pool fields (version 4).
func decodePools(b []byte, r *ConsumeRequest) ([]byte, error) {
	if len(b) < 1 || b[0] > 1 {
		return nil, errShortCommand
	}
	r.SkipMissingPools = b[0] == 1
	n, k := binary.Uvarint(b[1:])
	if k <= 0 || n > MaxTokenPools {
		return nil, errShortCommand
	}
	b = b[1+k:]
	for range n {
		l, k := binary.Uvarint(b)
		if k <= 0 || l > MaxNameLength || l > uint64(len(b)-k) {
			return nil, errShortCommand
		}
		r.Pools = append(r.Pools, string(b[k:k+int(l)]))
		b = b[k+int(l):]
	}
	return b, nil
}

// decodeConsumes reads a consume batch of any binary version: with keys
// and pools (4), with keys (3), or with names (2), which it hashes.
func decodeConsumes(b []byte, byName, withPools bool) (*Command, error) {
	if len(b) < 8 {
		return nil, errShortCommand
	}
	c := &Command{Op: OpConsume, Time: int64(binary.BigEndian.Uint64(b))}
	b = b[8:]
	n, k := binary.Uvarint(b)
	if k <= 0 || n > maxDecodedBatch || n > uint64(len(b)) {
		return nil, errShortCommand
	}
	b = b[k:]
	c.Consumes = make([]ConsumeRequest, n)
	for i := range c.Consumes {
		r := &c.Consumes[i]
		if len(b) < 16 {
			return nil, errShortCommand
		}
		copy(r.ID[:], b)
		b = b[16:]
		if byName {
			l, k := binary.Uvarint(b)
			if k <= 0 || l > uint64(len(b)-k) {
				return nil, errShortCommand
			}
			r.Key = keyOfStored(string(b[k : k+int(l)]))
			b = b[k+int(l):]
		} else {
			if len(b) < 32 {
				return nil, errShortCommand
			}
			copy(r.Key[:], b)
			b = b[32:]
		}
		var k int
		if r.Units, k = binary.Varint(b); k <= 0 {
			return nil, errShortCommand
		}
		b = b[k:]
		if r.Bytes, k = binary.Varint(b); k <= 0 {
			return nil, errShortCommand
		}
		b = b[k:]
		if withPools {
			var err error
			if b, err = decodePools(b, r); err != nil {
				return nil, err
			}
		}
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%d bytes after a consume batch", len(b))
	}
	return c, nil
}

// ErrUnknownCommand marks a log entry this build cannot read: written by a
// newer version, or corrupt.
var ErrUnknownCommand = errors.New("unknown command")

// decodeCommand reads one log entry. Anything it does not fully understand
// (an encoding, an op, a field) is an error: an old node must not apply a
// newer command by the parts it knows.
func Decode(b []byte) (*Command, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: empty entry", ErrUnknownCommand)
	}
	switch b[0] {
	case codecBinaryConsume, codecConsumeKeys, codecConsumePools:
		c, err := decodeConsumes(b[1:], b[0] == codecBinaryConsume, b[0] == codecConsumePools)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrUnknownCommand, err)
		}
		return c, nil
	case codecCheckpoint:
		if !IsCheckpoint(b) {
			return nil, fmt.Errorf("%w: a log checkpoint of %d bytes", ErrUnknownCommand, len(b))
		}
		return &Command{Op: OpLogCheckpoint, Time: int64(binary.BigEndian.Uint64(b[1:]))}, nil
	case codecJSON:
	default:
		return nil, fmt.Errorf("%w: encoding version %d", ErrUnknownCommand, b[0])
	}
	var c Command
	dec := json.NewDecoder(bytes.NewReader(b[1:]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnknownCommand, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: data after the command", ErrUnknownCommand)
	}
	if _, ok := commands[c.Op]; !ok {
		return nil, fmt.Errorf("%w: op %d", ErrUnknownCommand, c.Op)
	}
	hashLegacyNames(&c)
	return &c, nil
}

// hashLegacyNames turns the token names that entries of older versions
// carry into keys, so the FSM only ever sees keys.
func hashLegacyNames(c *Command) {
	if c.Spec != nil && c.Spec.Name != "" {
		k := KeyOf(c.Spec.Name)
		c.Key, c.Spec.Name = &k, ""
	}
	if c.Name != "" {
		k := KeyOf(c.Name)
		c.Key, c.Name = &k, ""
	}
	for i := range c.Consumes {
		r := &c.Consumes[i]
		if r.Token != "" {
			r.Key, r.Token = KeyOf(r.Token), ""
		}
	}
}
