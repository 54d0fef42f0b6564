package state

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// testFSM drives an fsm through the same codec the log uses.
type testFSM struct {
	t     testing.TB
	f     *Machine
	index uint64
}

func newTestFSM(t testing.TB) *testFSM {
	return &testFSM{t: t, f: fsmWithDedup(1000, zap.NewNop())}
}

func (tf *testFSM) apply(c *Command) *Result {
	tf.t.Helper()
	hashLegacyNames(c) // tests name tokens; the log holds their keys
	b, err := Encode(c)
	if err != nil {
		tf.t.Fatal(err)
	}
	tf.index++
	res, err := tf.f.Apply(tf.index, b)
	if err != nil {
		tf.t.Fatal(err)
	}
	return res
}

func (tf *testFSM) create(at time.Time, spec TokenSpec) *Result {
	return tf.apply(&Command{Op: OpCreate, Time: at.UnixNano(), ID: NewRequestID(), Spec: &spec})
}

func (tf *testFSM) consume(at time.Time, name string, units, bytes int64) Decision {
	return tf.consumeID(at, NewRequestID(), name, units, bytes)
}

func (tf *testFSM) consumeID(at time.Time, id RequestID, name string, units, bytes int64) Decision {
	res := tf.apply(&Command{Op: OpConsume, Time: at.UnixNano(), Consumes: []ConsumeRequest{{ID: id, Token: name, Units: units, Bytes: bytes}}})
	return res.Decisions[0]
}

func (tf *testFSM) op(at time.Time, o Op, name string) *Result {
	return tf.apply(&Command{Op: o, Time: at.UnixNano(), ID: NewRequestID(), Name: name})
}

func i64(v int64) *int64 { return &v }

func TestConsumeDecisions(t *testing.T) {
	exp := t0.Add(time.Hour)
	tests := []struct {
		name   string
		spec   TokenSpec
		setup  func(tf *testFSM)
		at     time.Time
		units  int64
		bytes  int64
		want   Reason
		status Status
	}{
		{name: "allowed under limit", spec: TokenSpec{Name: "a", UsageLimit: 2}, units: 1, status: StatusActive},
		{name: "reaching the limit exhausts", spec: TokenSpec{Name: "a", UsageLimit: 1}, units: 1, status: StatusExhausted},
		{name: "over the count limit", spec: TokenSpec{Name: "a", UsageLimit: 1}, units: 2, want: ReasonExhausted, status: StatusActive},
		{name: "over the byte limit", spec: TokenSpec{Name: "a", BytesLimit: 100}, units: 1, bytes: 101, want: ReasonBytesExhausted, status: StatusActive},
		{name: "bytes reaching the limit exhaust", spec: TokenSpec{Name: "a", BytesLimit: 100}, units: 1, bytes: 100, status: StatusExhausted},
		{name: "both dimensions or neither", spec: TokenSpec{Name: "a", UsageLimit: 5, BytesLimit: 10}, units: 1, bytes: 11, want: ReasonBytesExhausted, status: StatusActive},
		{name: "unlimited", spec: TokenSpec{Name: "a"}, units: 1000, bytes: 1 << 40, status: StatusActive},
		{name: "unknown token", spec: TokenSpec{Name: "a"}, setup: func(tf *testFSM) { tf.op(t0, OpDelete, "a") }, units: 1, want: ReasonUnknown},
		{name: "revoked", spec: TokenSpec{Name: "a"}, setup: func(tf *testFSM) { tf.op(t0, OpRevoke, "a") }, units: 1, want: ReasonRevoked, status: StatusRevoked},
		{name: "expired", spec: TokenSpec{Name: "a", ExpiresAt: &exp}, at: exp, units: 1, want: ReasonExpired, status: StatusActive},
		{name: "not yet expired", spec: TokenSpec{Name: "a", ExpiresAt: &exp}, at: exp.Add(-time.Nanosecond), units: 1, status: StatusActive},
		{name: "exhausted stays denied", spec: TokenSpec{Name: "a", UsageLimit: 1}, setup: func(tf *testFSM) { tf.consume(t0, "a", 1, 0) }, units: 1, want: ReasonExhausted, status: StatusExhausted},
		{name: "exhausted by bytes denies a zero-byte upload", spec: TokenSpec{Name: "a", BytesLimit: 10}, setup: func(tf *testFSM) { tf.consume(t0, "a", 1, 10) }, units: 1, want: ReasonBytesExhausted, status: StatusExhausted},
		{name: "window renews usage", spec: TokenSpec{Name: "a", UsageLimit: 1, RenewEvery: Duration(time.Minute)}, setup: func(tf *testFSM) { tf.consume(t0, "a", 1, 0) }, at: t0.Add(time.Minute), units: 1, status: StatusExhausted},
		{name: "window not yet over", spec: TokenSpec{Name: "a", UsageLimit: 1, RenewEvery: Duration(time.Minute)}, setup: func(tf *testFSM) { tf.consume(t0, "a", 1, 0) }, at: t0.Add(59 * time.Second), units: 1, want: ReasonExhausted, status: StatusExhausted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tf := newTestFSM(t)
			if res := tf.create(t0, tt.spec); res.Err != nil {
				t.Fatal(res.Err)
			}
			if tt.setup != nil {
				tt.setup(tf)
			}
			at := tt.at
			if at.IsZero() {
				at = t0
			}
			before, _ := tf.f.tokenNamed("a")
			d := tf.consume(at, "a", tt.units, tt.bytes)
			if d.Reason != tt.want || d.Allowed != (tt.want == "") {
				t.Fatalf("decision = %+v, want reason %q", d, tt.want)
			}
			after, ok := tf.f.tokenNamed("a")
			if tt.want == ReasonUnknown {
				if ok {
					t.Fatal("unknown token was created")
				}
				return
			}
			if after.Status != tt.status {
				t.Errorf("status = %s, want %s", after.Status, tt.status)
			}
			if !d.Allowed && before != nil && tt.at.IsZero() && (after.UsageCount != before.UsageCount || after.BytesUsed != before.BytesUsed) {
				t.Errorf("denied consume charged: before %+v after %+v", before, after)
			}
		})
	}
}

func TestSameRequestIDNeverChargesTwice(t *testing.T) {
	tf := newTestFSM(t)
	tf.create(t0, TokenSpec{Name: "a", UsageLimit: 10})
	id := NewRequestID()
	first := tf.consumeID(t0, id, "a", 3, 0)
	second := tf.consumeID(t0, id, "a", 3, 0)
	if !first.Allowed || first.Duplicate || !second.Allowed || !second.Duplicate {
		t.Fatalf("first %+v second %+v", first, second)
	}
	if tok, _ := tf.f.tokenNamed("a"); tok.UsageCount != 3 {
		t.Fatalf("usage = %d, want 3", tok.UsageCount)
	}
	// A denied first outcome is repeated too, even after room appears.
	tf.create(t0, TokenSpec{Name: "b", UsageLimit: 1})
	id2 := NewRequestID()
	if d := tf.consumeID(t0, id2, "b", 2, 0); d.Allowed {
		t.Fatal("over-limit consume allowed")
	}
	tf.apply(&Command{Op: OpUpdate, ID: NewRequestID(), Name: "b", Update: &LimitUpdate{UsageLimit: i64(5)}})
	if d := tf.consumeID(t0, id2, "b", 2, 0); d.Allowed || d.Reason != ReasonExhausted || !d.Duplicate {
		t.Fatalf("retry after limit raised = %+v, want the first (denied) outcome", d)
	}
}

func TestRefund(t *testing.T) {
	tf := newTestFSM(t)
	tf.create(t0, TokenSpec{Name: "a", UsageLimit: 2, BytesLimit: 100})
	id := NewRequestID()
	tf.consumeID(t0, id, "a", 2, 50)
	if tok, _ := tf.f.tokenNamed("a"); tok.Status != StatusExhausted {
		t.Fatalf("status %s", tok.Status)
	}
	for i := 0; i < 3; i++ { // at most once
		tf.apply(&Command{Op: OpRefund, Time: t0.UnixNano(), ID: id})
	}
	tok, _ := tf.f.tokenNamed("a")
	if tok.UsageCount != 0 || tok.BytesUsed != 0 || tok.Status != StatusActive {
		t.Fatalf("after refund %+v", tok)
	}
	// The refunded id charges again when the client retries the upload.
	if d := tf.consumeID(t0, id, "a", 1, 10); !d.Allowed || d.Duplicate {
		t.Fatalf("retry after refund = %+v", d)
	}
	tf.apply(&Command{Op: OpRefund, Time: t0.UnixNano(), ID: id})

	// Refunding a denied consume gives nothing back.
	tf.consume(t0, "a", 1, 0)
	denied := NewRequestID()
	tf.consumeID(t0, denied, "a", 5, 0)
	tf.apply(&Command{Op: OpRefund, Time: t0.UnixNano(), ID: denied})
	if tok, _ := tf.f.tokenNamed("a"); tok.UsageCount != 1 {
		t.Fatalf("usage %d after refunding a denied consume, want 1", tok.UsageCount)
	}

	// A refund that reaches the log before its consume makes it a no-op.
	early := NewRequestID()
	tf.apply(&Command{Op: OpRefund, Time: t0.UnixNano(), ID: early})
	if d := tf.consumeID(t0, early, "a", 1, 0); d.Allowed || d.Reason != ReasonRefunded {
		t.Fatalf("consume after its refund = %+v", d)
	}
	if tok, _ := tf.f.tokenNamed("a"); tok.UsageCount != 1 {
		t.Fatalf("usage %d, want 1", tok.UsageCount)
	}
}

func TestRefundAfterWindowRenewedGivesNothing(t *testing.T) {
	tf := newTestFSM(t)
	tf.create(t0, TokenSpec{Name: "a", UsageLimit: 5, RenewEvery: Duration(time.Minute)})
	id := NewRequestID()
	tf.consumeID(t0, id, "a", 1, 0)
	tf.consume(t0.Add(time.Minute), "a", 1, 0) // new window, usage 1
	tf.apply(&Command{Op: OpRefund, Time: t0.Add(time.Minute).UnixNano(), ID: id})
	if tok, _ := tf.f.tokenNamed("a"); tok.UsageCount != 1 {
		t.Fatalf("usage %d, want 1: a refund must not reach into the next window", tok.UsageCount)
	}
}

func TestAdminCommands(t *testing.T) {
	tf := newTestFSM(t)
	if res := tf.create(t0, TokenSpec{Name: "a", UsageLimit: 2}); res.Err != nil || res.Token.Status != StatusActive {
		t.Fatalf("create: %+v", res)
	}
	if res := tf.create(t0, TokenSpec{Name: "a"}); !errors.Is(res.Err, ErrExists) {
		t.Fatalf("duplicate create err = %v", res.Err)
	}
	// Names are checked where they are handed in (the FSM sees only keys).
	for _, bad := range []string{"", "bad name", ".", "..", "tök", strings.Repeat("x", MaxNameLength+1)} {
		if err := (&TokenSpec{Name: bad}).Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("name %q: err = %v", bad, err)
		}
	}
	for _, o := range []Op{OpRevoke, OpReactivate, OpReset, OpDelete} {
		if res := tf.op(t0, o, "missing"); !errors.Is(res.Err, ErrNotFound) {
			t.Errorf("%s missing: err = %v", o, res.Err)
		}
	}
	tf.consume(t0, "a", 2, 0)
	upd := func(u LimitUpdate) *Token {
		t.Helper()
		res := tf.apply(&Command{Op: OpUpdate, Time: t0.UnixNano(), ID: NewRequestID(), Name: "a", Update: &u})
		if res.Err != nil {
			t.Fatal(res.Err)
		}
		return res.Token
	}
	if tok := upd(LimitUpdate{UsageLimit: i64(3)}); tok.Status != StatusActive {
		t.Errorf("raising the limit of an exhausted token: status %s, want active", tok.Status)
	}
	if tok := upd(LimitUpdate{UsageLimit: i64(2)}); tok.Status != StatusExhausted {
		t.Errorf("lowering to usage: status %s, want exhausted", tok.Status)
	}
	if res := tf.op(t0, OpRevoke, "a"); res.Token.Status != StatusRevoked {
		t.Errorf("revoke: %s", res.Token.Status)
	}
	if tok := upd(LimitUpdate{UsageLimit: i64(10)}); tok.Status != StatusRevoked {
		t.Errorf("update must not un-revoke: %s", tok.Status)
	}
	if res := tf.op(t0, OpReactivate, "a"); res.Token.Status != StatusActive {
		t.Errorf("reactivate: %s", res.Token.Status)
	}
	if res := tf.op(t0, OpReset, "a"); res.Token.UsageCount != 0 {
		t.Errorf("reset: usage %d", res.Token.UsageCount)
	}
	if res := tf.op(t0, OpDelete, "a"); res.Err != nil {
		t.Fatal(res.Err)
	}
	if _, ok := tf.f.tokenNamed("a"); ok {
		t.Error("deleted token still there")
	}
}

func TestRepeatedAdminCommandReturnsFirstOutcome(t *testing.T) {
	tf := newTestFSM(t)
	c := &Command{Op: OpCreate, Time: t0.UnixNano(), ID: NewRequestID(), Spec: &TokenSpec{Name: "a", UsageLimit: 1}}
	if res := tf.apply(c); res.Err != nil {
		t.Fatal(res.Err)
	}
	// The retry of a create that did commit must not report "exists".
	if res := tf.apply(c); res.Err != nil || res.Token == nil {
		t.Fatalf("retried create = %+v", res)
	}
}

func TestLoweredLimitLogsAnomaly(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	tf := &testFSM{t: t, f: fsmWithDedup(10, zap.New(core))}
	tf.create(t0, TokenSpec{Name: "secret-token-value", UsageLimit: 5})
	tf.consume(t0, "secret-token-value", 4, 0)
	tf.apply(&Command{Op: OpUpdate, ID: NewRequestID(), Name: "secret-token-value", Update: &LimitUpdate{UsageLimit: i64(2)}})
	entries := logs.FilterMessage("quota usage above limit").All()
	if len(entries) != 1 {
		t.Fatalf("want one anomaly warning, got %d", len(entries))
	}
	fields := entries[0].ContextMap()
	if fields["usage_count"] != int64(4) || fields["usage_limit"] != int64(2) || fields["token_fingerprint"] == "" {
		t.Fatalf("fields %v", fields)
	}
	for _, v := range fields {
		if s, ok := v.(string); ok && s == "secret-token-value" {
			t.Fatal("raw token in log")
		}
	}
}

func TestTimeNeverMovesBackwards(t *testing.T) {
	tf := newTestFSM(t)
	tf.create(t0, TokenSpec{Name: "a", UsageLimit: 1, RenewEvery: Duration(time.Minute)})
	tf.consume(t0.Add(61*time.Second), "a", 1, 0) // renews once: window [60s, 120s)
	// A new leader whose clock is 10 minutes behind must not see an old
	// window nor renew again.
	if d := tf.consume(t0.Add(-10*time.Minute), "a", 1, 0); d.Allowed {
		t.Fatalf("skewed leader renewed a window: %+v", d)
	}
}

func snapshotBytes(t testing.TB, f *Machine) []byte {
	t.Helper()
	snap := f.Snapshot()
	defer snap.Release()
	var buf bytes.Buffer
	if err := snap.Encode(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestSnapshotRestoreRoundTrip(t *testing.T) {
	tf := newTestFSM(t)
	exp := t0.Add(time.Hour)
	tf.create(t0, TokenSpec{Name: "a", UsageLimit: 3, Metadata: map[string]string{"z": "1", "a": "2"}, ExpiresAt: &exp})
	tf.create(t0, TokenSpec{Name: "b", BytesLimit: 100, RenewEvery: Duration(time.Hour)})
	tf.apply(&Command{Op: OpSetSecret, Secret: []byte("0123456789")})
	id := NewRequestID()
	tf.consumeID(t0, id, "a", 2, 0)
	tf.consume(t0, "b", 1, 40)
	want := snapshotBytes(t, tf.f)

	restored := fsmWithDedup(1000, zap.NewNop())
	if err := restored.Restore(io.NopCloser(bytes.NewReader(want))); err != nil {
		t.Fatal(err)
	}
	if got := snapshotBytes(t, restored); !bytes.Equal(got, want) {
		t.Fatalf("restored snapshot differs:\n%s\n---\n%s", got, want)
	}
	// The dedup table came along: a retry is still recognised.
	rt := &testFSM{t: t, f: restored, index: tf.index}
	if d := rt.consumeID(t0, id, "a", 2, 0); !d.Duplicate {
		t.Fatalf("retry after restore not deduplicated: %+v", d)
	}
	if tok, _ := restored.tokenNamed("a"); tok.UsageCount != 2 {
		t.Fatalf("usage %d after restore+retry, want 2", tok.UsageCount)
	}
	if TokenIDOf(restored.Secret(), KeyOf("a")) != TokenIDOf(tf.f.Secret(), KeyOf("a")) {
		t.Fatal("fingerprint secret not restored")
	}
}

func TestRestoreRejectsGarbage(t *testing.T) {
	tf := newTestFSM(t)
	tf.create(t0, TokenSpec{Name: "a", UsageLimit: 3, Metadata: map[string]string{"k": "v"}})
	tf.consume(t0, "a", 1, 0)
	good := snapshotBytes(t, tf.f)
	inputs := [][]byte{nil, []byte("RQS"), []byte("RQS\x09"), []byte("{}"), append(slices.Clone(good), 0)}
	for i := 0; i < len(good); i++ {
		inputs = append(inputs, good[:i]) // every truncation
	}
	for _, in := range inputs {
		f := fsmWithDedup(10, zap.NewNop())
		if err := f.Restore(io.NopCloser(bytes.NewReader(in))); err == nil {
			t.Errorf("Restore(%q) succeeded", in)
		}
	}
}

func TestSameLogSameSnapshotBytes(t *testing.T) {
	var log []*Command
	for i := 0; i < 50; i++ {
		name := string(rune('a' + i%7))
		at := t0.Add(time.Duration(i) * time.Second)
		switch i % 5 {
		case 0:
			log = append(log, &Command{Op: OpCreate, Time: at.UnixNano(), ID: NewRequestID(), Spec: &TokenSpec{Name: name, UsageLimit: 4, Metadata: map[string]string{"k": name, "j": "x"}}})
		case 4:
			log = append(log, &Command{Op: OpReset, Time: at.UnixNano(), ID: NewRequestID(), Name: name})
		default:
			log = append(log, &Command{Op: OpConsume, Time: at.UnixNano(), Consumes: []ConsumeRequest{
				{ID: NewRequestID(), Token: name, Units: 1}, {ID: NewRequestID(), Token: "a", Units: 2, Bytes: 7}}})
		}
	}
	a, b := newTestFSM(t), newTestFSM(t)
	for _, c := range log {
		a.apply(c)
		b.apply(c)
	}
	if !bytes.Equal(snapshotBytes(t, a.f), snapshotBytes(t, b.f)) {
		t.Fatal("two FSMs fed the same log wrote different snapshots")
	}
}

func TestDedupTableIsBounded(t *testing.T) {
	tf := &testFSM{t: t, f: fsmWithDedup(4, zap.NewNop())}
	tf.create(t0, TokenSpec{Name: "a"})
	for i := 0; i < 20; i++ {
		tf.consume(t0, "a", 1, 0)
	}
	if n := tf.f.dedup.Len(); n != 4 {
		t.Fatalf("dedup holds %d entries, want 4", n)
	}
}

func TestCommandCodecRejectsGarbage(t *testing.T) {
	for _, in := range [][]byte{nil, {}, {2, '{', '}'}, {1}, {1, '{', '}'}, []byte("\x01{\"op\":99}"),
		[]byte("\x01{\"op\":5,\"name\":\"a\",\"colour\":\"red\"}"), {9, 1, 2}} {
		if _, err := Decode(in); !errors.Is(err, ErrUnknownCommand) {
			t.Errorf("decodeCommand(%q) = %v, want an unknown-command error", in, err)
		}
	}
}

// TestUnknownEntryIsRefused: an entry this build cannot read (a newer op,
// a field it does not know, garbage) is an error that changes nothing, so
// the node can stop there instead of skipping it (replica.go).
func TestUnknownEntryIsRefused(t *testing.T) {
	for _, entry := range [][]byte{[]byte("junk"), []byte("\x01{\"op\":42,\"t\":1}"), []byte("\x01{\"op\":5,\"name\":\"a\",\"new_field\":1}")} {
		tf := newTestFSM(t)
		tf.create(t0, TokenSpec{Name: "a", UsageLimit: 3})
		before := snapshotBytes(t, tf.f)
		res, err := tf.f.Apply(7, entry)
		if res != nil || !errors.Is(err, ErrUnknownCommand) {
			t.Fatalf("Apply(%q) = %v, %v; want ErrUnknownCommand", entry, res, err)
		}
		if tf.f.Applied() != tf.index || !bytes.Equal(snapshotBytes(t, tf.f), before) {
			t.Fatalf("Apply(%q) changed the state", entry)
		}
	}
}

// TestLogCheckpointChangesNothing: a log checkpoint is nine bytes that
// IsCheckpoint knows without decoding, decodes back to itself, and applies
// as nothing but the clock every command moves; a cut one is refused.
func TestLogCheckpointChangesNothing(t *testing.T) {
	b, err := Encode(&Command{Op: OpLogCheckpoint, Time: t0.UnixNano()})
	if err != nil || len(b) != 9 || !IsCheckpoint(b) {
		t.Fatalf("Encode(checkpoint) = %x, %v; want 9 bytes IsCheckpoint knows", b, err)
	}
	c, err := Decode(b)
	if err != nil || c.Op != OpLogCheckpoint || c.Time != t0.UnixNano() {
		t.Fatalf("Decode(%x) = %+v, %v", b, c, err)
	}
	tf := newTestFSM(t)
	tf.create(t0, TokenSpec{Name: "a", UsageLimit: 3})
	tf.consume(t0, "a", 1, 0)
	before := snapshotBytes(t, tf.f)
	if res, err := tf.f.Apply(tf.index+1, b); err != nil || res == nil || res.Err != nil {
		t.Fatalf("Apply(checkpoint) = %+v, %v", res, err)
	}
	if !bytes.Equal(snapshotBytes(t, tf.f), before) {
		t.Fatal("a checkpoint changed the state")
	}
	for _, cut := range [][]byte{b[:8], append(b[:9:9], 0)} {
		if IsCheckpoint(cut) {
			t.Errorf("IsCheckpoint(%x) = true", cut)
		}
		if _, err := Decode(cut); !errors.Is(err, ErrUnknownCommand) {
			t.Errorf("Decode(%x) = %v, want ErrUnknownCommand", cut, err)
		}
	}
	for _, other := range []*Command{{Op: OpConsume, Time: 1}, {Op: OpAckEvents, EventSeq: 1}} {
		if o, _ := Encode(other); IsCheckpoint(o) {
			t.Errorf("IsCheckpoint(%s) = true", o)
		}
	}
}

func TestNegativeChargesNeverReachTheState(t *testing.T) {
	tf := newTestFSM(t)
	tf.create(t0, TokenSpec{Name: "a", UsageLimit: 3})
	tf.consume(t0, "a", 2, 0)
	// A forged entry with negative units must not act as a refund.
	if d := tf.consume(t0, "a", -5, 0); d.Allowed {
		t.Fatal("negative consume allowed")
	}
	if tok, _ := tf.f.tokenNamed("a"); tok.UsageCount != 2 {
		t.Fatalf("usage %d, want 2", tok.UsageCount)
	}
	r := ConsumeRequest{ID: NewRequestID(), Token: "a", Units: -1}
	if err := r.Validate(); err == nil {
		t.Fatal("negative units validated")
	}
}

func TestAddSatDoesNotWrap(t *testing.T) {
	if got := addSat(1<<63-10, 100); got != 1<<63-1 {
		t.Fatalf("addSat = %d", got)
	}
}

func nopLogger() *zap.Logger { return zap.NewNop() }

func TestUnknownTokenFloodCreatesNoState(t *testing.T) {
	tf := newTestFSM(t)
	tf.create(t0, TokenSpec{Name: "real", UsageLimit: 1})
	before := snapshotBytes(t, tf.f)
	reqs := make([]ConsumeRequest, 500)
	for round := 0; round < 20; round++ {
		for i := range reqs {
			reqs[i] = ConsumeRequest{ID: NewRequestID(), Token: fmt.Sprintf("random-%d-%d", round, i), Units: 1}
		}
		res := tf.apply(&Command{Op: OpConsume, Time: t0.UnixNano(), Consumes: reqs})
		for _, d := range res.Decisions {
			if d.Allowed || d.Reason != ReasonUnknown {
				t.Fatalf("unknown token decided %+v", d)
			}
		}
	}
	if after := snapshotBytes(t, tf.f); !bytes.Equal(before, after) {
		t.Fatalf("10,000 unknown-token consumes changed the state (dedup entries: %d)", tf.f.dedup.Len())
	}
}

func TestConsumeBatchCodecRoundTrip(t *testing.T) {
	c := &Command{Op: OpConsume, Time: -5, Consumes: []ConsumeRequest{
		{ID: NewRequestID(), Key: KeyOf("a"), Units: 1, Bytes: 0},
		{ID: NewRequestID(), Key: KeyOf(strings.Repeat("z", MaxNameLength)), Units: 1<<63 - 1, Bytes: -1 << 63},
		{ID: RequestID{}, Units: 0, Bytes: 7},
	}}
	b, err := Encode(c)
	if err != nil {
		t.Fatal(err)
	}
	if b[0] != codecConsumeKeys {
		t.Fatalf("consume batch encoded as version %d", b[0])
	}
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, c) {
		t.Fatalf("round trip:\n%+v\n%+v", got, c)
	}
	for i := 1; i < len(b); i++ { // every truncation fails cleanly
		if _, err := Decode(b[:i]); err == nil {
			t.Fatalf("truncated to %d bytes decoded", i)
		}
	}
	if _, err := Decode(append(b, 0)); err == nil {
		t.Fatal("trailing byte accepted")
	}
	// No token name reaches the log.
	if bytes.Contains(b, []byte(strings.Repeat("z", MaxNameLength))) {
		t.Fatal("a token name was encoded")
	}
}

// fsmWithDedup is an FSM whose dedup table holds n ids (below the
// replicated minimum, for tests of eviction).
func fsmWithDedup(n int, logger *zap.Logger) *Machine {
	f := New(logger)
	f.dedup.Resize(n)
	return f
}

// tokenNamed returns the token with this name.
func (f *Machine) tokenNamed(name string) (*Token, bool) {
	a, err := f.Query(&Query{Kind: ReadLookup, Key: KeyOf(name)})
	return a.Token, err == nil
}
