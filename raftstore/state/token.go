package state

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// Status is the lifecycle state of a token.
type Status string

// Token statuses. Expiry is not a status: an expired token keeps its status
// and is denied with reason "expired".
const (
	StatusActive    Status = "active"
	StatusExhausted Status = "exhausted"
	StatusRevoked   Status = "revoked"
)

// Reason says why a consume was denied. It is empty when the consume was allowed.
type Reason string

// Denial reasons, as the contract names them.
const (
	ReasonUnknown        Reason = "unknown"
	ReasonRevoked        Reason = "revoked"
	ReasonExpired        Reason = "expired"
	ReasonExhausted      Reason = "exhausted"
	ReasonBytesExhausted Reason = "bytes_exhausted"
	// ReasonRefunded answers a consume whose request id was refunded before
	// the consume reached the log: it charges nothing and is not allowed.
	ReasonRefunded Reason = "refunded"
)

// MaxNameLength is the longest token name accepted.
const MaxNameLength = 128

// Token is one quota: how much may be uploaded with it and how much has been.
// Limits of 0 mean unlimited. All times come from timestamps the Raft leader
// stamped into the log, never from the clock of the node that applies them.
type Token struct {
	// ID is the token's stable, non-secret identifier: admin URLs use it,
	// logs print it as token_fingerprint. The name (the secret) is not kept.
	ID string `json:"id"`
	// Key is the hash of the name, under which the state keeps the token.
	Key        TokenKey          `json:"-"`
	UsageLimit int64             `json:"usage_limit"`
	UsageCount int64             `json:"usage_count"`
	BytesLimit int64             `json:"bytes_limit"`
	BytesUsed  int64             `json:"bytes_used"`
	Status     Status            `json:"status"`
	CreatedBy  string            `json:"created_by,omitempty"`
	Metadata   map[string]string `json:"metadata,omitempty"`
	ExpiresAt  *time.Time        `json:"expires_at,omitempty"`
	RenewEvery Duration          `json:"renew_every,omitempty"`
	// WindowStart is the start of the current renewal window (renew_every only).
	WindowStart *time.Time `json:"window_start,omitempty"`
	CreatedAt   time.Time  `json:"created_at"`
	UpdatedAt   time.Time  `json:"updated_at"`
	// Generation tells apart tokens that reuse a deleted token's name, so a
	// late refund never credits the newer one.
	Generation uint64 `json:"generation"`
	// Pools are the ids of the pools the token draws on besides its own
	// limits.
	Pools []string `json:"pools,omitempty"`
	// RenewCalendar is a calendar renewal ("monthly on 1 at 00:00"), UTC.
	RenewCalendar string `json:"renew_calendar,omitempty"`
	// ResetsAt is when usage next returns to zero (renewing tokens only).
	ResetsAt *time.Time `json:"resets_at,omitempty"`
	// NotifyAt are the thresholds (percent of a limit) events are made
	// for; ThresholdsReached those the current window has crossed.
	NotifyAt          []int `json:"notify_at,omitempty"`
	ThresholdsReached []int `json:"thresholds_reached,omitempty"`
}

// Remaining returns the uploads left, or -1 when the count is unlimited.
func (t *Token) Remaining() int64 { return remaining(t.UsageLimit, t.UsageCount) }

// BytesRemaining returns the bytes left, or -1 when bytes are unlimited.
func (t *Token) BytesRemaining() int64 { return remaining(t.BytesLimit, t.BytesUsed) }

// WindowEnd returns when the current renewal window ends, or the zero time
// when the token does not renew.
func (t *Token) WindowEnd() time.Time {
	if t.RenewEvery <= 0 || t.WindowStart == nil {
		return time.Time{}
	}
	return t.WindowStart.Add(time.Duration(t.RenewEvery))
}

func remaining(limit, used int64) int64 {
	if limit == 0 {
		return -1
	}
	if used >= limit {
		return 0
	}
	return limit - used
}

// TokenSpec is what a caller gives to create a token.
type TokenSpec struct {
	// Name is the secret clients send. It is hashed by the node that takes
	// the request and never written to the log (old log entries held it).
	Name       string            `json:"name,omitempty"`
	UsageLimit int64             `json:"usage_limit"`
	BytesLimit int64             `json:"bytes_limit"`
	CreatedBy  string            `json:"created_by,omitempty"`
	Metadata   map[string]string `json:"metadata,omitempty"`
	ExpiresAt  *time.Time        `json:"expires_at,omitempty"`
	RenewEvery Duration          `json:"renew_every,omitempty"`
	// Pools are ids of pools the token belongs to (at most MaxTokenPools).
	Pools []string `json:"pools,omitempty"`
	// RenewCalendar renews usage on the UTC calendar: "daily [at HH:MM]",
	// "weekly [on WEEKDAY] [at HH:MM]", "monthly [on DAY] [at HH:MM]".
	// Not with renew_every.
	RenewCalendar string `json:"renew_calendar,omitempty"`
	// NotifyAt are thresholds, in percent of the count or byte limit, at
	// whose crossing an event is made, once per window (at most 8).
	NotifyAt []int `json:"notify_at,omitempty"`
}

// Validate reports the first thing wrong with the spec, in words for the user.
func (s *TokenSpec) Validate() error {
	if err := ValidateName(s.Name); err != nil {
		return err
	}
	return s.validateFields()
}

// validateFields checks everything but the name (which log entries lack).
func (s *TokenSpec) validateFields() error {
	if s.UsageLimit < 0 {
		return Invalidf("usage_limit must be 0 (unlimited) or more, got %d", s.UsageLimit)
	}
	if s.BytesLimit < 0 {
		return Invalidf("bytes_limit must be 0 (unlimited) or more, got %d", s.BytesLimit)
	}
	if s.RenewEvery < 0 {
		return Invalidf("renew_every must not be negative")
	}
	if s.RenewEvery > 0 && s.RenewEvery < Duration(time.Second) {
		return Invalidf("renew_every must be at least 1s, got %s", time.Duration(s.RenewEvery))
	}
	if len(s.CreatedBy) > 256 {
		return Invalidf("created_by is longer than 256 bytes")
	}
	if len(s.Pools) > MaxTokenPools {
		return Invalidf("a token belongs to at most %d pools, got %d", MaxTokenPools, len(s.Pools))
	}
	if err := validateRenewal(s.RenewEvery, s.RenewCalendar); err != nil {
		return err
	}
	if _, err := validateThresholds(s.NotifyAt); err != nil {
		return err
	}
	return validateMetadata(s.Metadata)
}

func validateMetadata(m map[string]string) error {
	if len(m) > 64 {
		return Invalidf("metadata has %d entries; at most 64 are allowed", len(m))
	}
	for k, v := range m {
		if k == "" || len(k) > 128 {
			return Invalidf("metadata keys must be 1-128 bytes")
		}
		if len(v) > 1024 {
			return Invalidf("metadata value for %q is longer than 1024 bytes", k)
		}
	}
	return nil
}

// LimitUpdate changes a token's limits or expiry. Nil fields are left alone.
type LimitUpdate struct {
	UsageLimit *int64             `json:"usage_limit,omitempty"`
	BytesLimit *int64             `json:"bytes_limit,omitempty"`
	ExpiresAt  *time.Time         `json:"expires_at,omitempty"`
	RenewEvery *Duration          `json:"renew_every,omitempty"`
	Metadata   *map[string]string `json:"metadata,omitempty"`
	// Pools replaces the token's pools (ids; empty: none).
	Pools *[]string `json:"pools,omitempty"`
	// RenewCalendar sets a calendar renewal ("": none); it replaces
	// renew_every, and renew_every replaces it.
	RenewCalendar *string `json:"renew_calendar,omitempty"`
	// NotifyAt replaces the thresholds (empty: none). Thresholds usage
	// has already reached in this window make no event.
	NotifyAt *[]int `json:"notify_at,omitempty"`
}

// Validate reports the first thing wrong with the update.
func (u *LimitUpdate) Validate() error {
	if u.UsageLimit == nil && u.BytesLimit == nil && u.ExpiresAt == nil && u.RenewEvery == nil && u.Metadata == nil && u.Pools == nil && u.RenewCalendar == nil && u.NotifyAt == nil {
		return Invalidf("nothing to update: give usage_limit, bytes_limit, expires_at, renew_every, renew_calendar, notify_at, metadata or pools")
	}
	if u.NotifyAt != nil {
		if _, err := validateThresholds(*u.NotifyAt); err != nil {
			return err
		}
	}
	if u.RenewCalendar != nil {
		var every Duration
		if u.RenewEvery != nil {
			every = *u.RenewEvery
		}
		if err := validateRenewal(every, *u.RenewCalendar); err != nil {
			return err
		}
	}
	if u.Pools != nil && len(*u.Pools) > MaxTokenPools {
		return Invalidf("a token belongs to at most %d pools, got %d", MaxTokenPools, len(*u.Pools))
	}
	if u.UsageLimit != nil && *u.UsageLimit < 0 {
		return Invalidf("usage_limit must be 0 (unlimited) or more, got %d", *u.UsageLimit)
	}
	if u.BytesLimit != nil && *u.BytesLimit < 0 {
		return Invalidf("bytes_limit must be 0 (unlimited) or more, got %d", *u.BytesLimit)
	}
	if u.RenewEvery != nil && *u.RenewEvery != 0 && *u.RenewEvery < Duration(time.Second) {
		return Invalidf("renew_every must be 0 (never) or at least 1s")
	}
	if u.Metadata != nil {
		return validateMetadata(*u.Metadata)
	}
	return nil
}

// ValidateName checks a token name: 1-128 characters of A-Z a-z 0-9 _ - .,
// not "." or "..". The message never echoes the name, since a name is a
// secret.
func ValidateName(name string) error {
	if name == "" {
		return Invalidf("token name is empty")
	}
	if name == "." || name == ".." {
		return Invalidf("token name may not be . or ..")
	}
	if len(name) > MaxNameLength {
		return Invalidf("token name is longer than %d characters", MaxNameLength)
	}
	for i := 0; i < len(name); i++ {
		if !nameByte(name[i]) {
			return Invalidf("token name may only hold A-Z a-z 0-9 _ - . (bad character at position %d)", i+1)
		}
	}
	return nil
}

func nameByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.'
}

// Duration is a time.Duration that reads and writes JSON as "1h30m" (a
// number is taken as nanoseconds).
type Duration time.Duration

// MarshalJSON writes the duration as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a Go duration string such as "24h" or a number of nanoseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("invalid duration %q: use a form like \"1h\" or \"30m\"", s)
		}
		*d = Duration(v)
		return nil
	}
	n, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return fmt.Errorf("invalid duration %s: use a form like \"1h\"", b)
	}
	*d = Duration(n)
	return nil
}

// Decision is the answer to a consume or a check.
type Decision struct {
	Allowed bool `json:"allowed"`
	// TokenID is the id of the token decided on, empty when it is unknown.
	TokenID string `json:"token_id,omitempty"`
	Reason  Reason `json:"reason,omitempty"`
	// Duplicate is true when the request id had been seen: the first outcome
	// is repeated and nothing was charged this time.
	Duplicate  bool   `json:"duplicate,omitempty"`
	Status     Status `json:"status,omitempty"`
	UsageLimit int64  `json:"usage_limit"`
	UsageCount int64  `json:"usage_count"`
	BytesLimit int64  `json:"bytes_limit"`
	BytesUsed  int64  `json:"bytes_used"`
	// ResetAt is when the current renewal window ends (unix nanoseconds), 0 if never.
	ResetAt int64 `json:"reset_at,omitempty"`
	// RenewEvery is the token's renewal window, 0 if it never renews.
	RenewEvery Duration `json:"renew_every,omitempty"`
	// Quota names the quota the numbers above are of: "token", or
	// "pool:NAME" when a pool refused the charge or, allowed, is the
	// tightest of the quotas charged. Empty for an unknown token.
	Quota string `json:"quota,omitempty"`
}

// Remaining returns the uploads left after this decision, or -1 when the
// count is unlimited.
func (d Decision) Remaining() int64 { return remaining(d.UsageLimit, d.UsageCount) }

// BytesRemaining returns the bytes left after this decision, or -1 when
// bytes are unlimited.
func (d Decision) BytesRemaining() int64 { return remaining(d.BytesLimit, d.BytesUsed) }

func decisionFor(t *tokenState) Decision {
	d := Decision{TokenID: t.id.String(), Quota: "token", Status: t.Status.status(), UsageLimit: t.UsageLimit, UsageCount: t.UsageCount, BytesLimit: t.BytesLimit, BytesUsed: t.BytesUsed}
	if e := t.ext; e != nil {
		d.RenewEvery = e.RenewEvery
		d.ResetAt = windowEnd(e.RenewEvery, e.Cal, e.WindowStart, e.hasWindow)
		if !e.Cal.IsZero() && d.ResetAt > 0 {
			d.RenewEvery = Duration(d.ResetAt - e.WindowStart) // this window's length
		}
	}
	return d
}

// windowEnd is when the window that starts at ws ends (ns), or 0 when
// there is none.
func windowEnd(every Duration, cal Calendar, ws int64, has bool) int64 {
	switch {
	case !has:
		return 0
	case !cal.IsZero():
		return cal.next(time.Unix(0, ws).UTC()).UnixNano()
	case every > 0:
		return ws + int64(every)
	}
	return 0
}

// validateRenewal checks a fixed and a calendar renewal: one or neither.
func validateRenewal(every Duration, calendar string) error {
	cal, err := ParseCalendar(calendar)
	if err != nil {
		return err
	}
	if !cal.IsZero() && every != 0 {
		return Invalidf("give renew_every or renew_calendar, not both")
	}
	return nil
}

// renew moves a token's window forward when now has passed its end, and
// returns whether usage was reset. Windows are aligned to the first window's
// start, so a late request never shifts the boundaries.
func renew(t *tokenState, now time.Time) bool {
	if cal := t.calendar(); !cal.IsZero() {
		ws, has := t.windowStart()
		nws, reset := cal.windowAt(ws, has, now)
		if nws != ws || !has {
			t.setWindowStart(nws)
		}
		if reset {
			t.UsageCount, t.BytesUsed = 0, 0
			t.ext.Notified = 0
			if t.Status == stExhausted {
				t.Status = stActive
			}
		}
		return reset
	}
	period := int64(t.renewEvery())
	if period <= 0 {
		return false
	}
	ws, ok := t.windowStart()
	if !ok {
		t.setWindowStart(now.UnixNano())
		return false
	}
	elapsed := now.UnixNano() - ws
	if elapsed < period {
		return false
	}
	t.setWindowStart(ws + elapsed/period*period)
	t.UsageCount, t.BytesUsed = 0, 0
	t.ext.Notified = 0
	if t.Status == stExhausted {
		t.Status = stActive
	}
	return true
}

// settle recomputes exhausted/active from usage and limits. Revoked stays revoked.
func settle(t *tokenState) {
	if t.Status == stRevoked {
		return
	}
	full := (t.UsageLimit > 0 && t.UsageCount >= t.UsageLimit) || (t.BytesLimit > 0 && t.BytesUsed >= t.BytesLimit)
	if full {
		t.Status = stExhausted
	} else {
		t.Status = stActive
	}
}

// overLimit reports whether usage is above a limit (possible only after a
// limit was lowered).
func overLimit(t *tokenState) bool {
	return (t.UsageLimit > 0 && t.UsageCount > t.UsageLimit) || (t.BytesLimit > 0 && t.BytesUsed > t.BytesLimit)
}
