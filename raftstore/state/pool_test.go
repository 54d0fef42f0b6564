package state

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

func (tf *testFSM) createPool(at time.Time, spec PoolSpec) *Pool {
	tf.t.Helper()
	res := tf.apply(&Command{Op: OpCreatePool, Time: at.UnixNano(), ID: NewRequestID(), Pool: &spec})
	if res.Err != nil {
		tf.t.Fatalf("creating pool %s: %v", spec.Name, res.Err)
	}
	return res.Pool
}

func (tf *testFSM) consumePools(at time.Time, id RequestID, name string, units, bytes int64, pools ...string) Decision {
	res := tf.apply(&Command{Op: OpConsume, Time: at.UnixNano(), Consumes: []ConsumeRequest{{ID: id, Token: name, Units: units, Bytes: bytes, Pools: pools}}})
	return res.Decisions[0]
}

func (tf *testFSM) poolUsage(name string) (int64, int64) {
	tf.t.Helper()
	a, err := tf.f.Query(&Query{Kind: ReadPoolByName, Name: name})
	p, ok := a.Pool, err == nil
	if !ok {
		tf.t.Fatalf("no pool %s", name)
	}
	return p.UsageCount, p.BytesUsed
}

// A token in two pools (limits 5 and 8) is held by the tighter: exactly 5
// uploads, both pools at 5; the refusal names the pool.
func TestTokenInTwoPoolsIsHeldByTheTighter(t *testing.T) {
	tf := newTestFSM(t)
	small := tf.createPool(t0, PoolSpec{Name: "plan-small", UsageLimit: 5})
	big := tf.createPool(t0, PoolSpec{Name: "team", UsageLimit: 8})
	if res := tf.create(t0, TokenSpec{Name: "dev1", UsageLimit: 100, Pools: []string{small.ID, big.ID}}); res.Err != nil {
		t.Fatal(res.Err)
	}
	allowed := 0
	var last Decision
	for i := range 10 {
		d := tf.consume(t0.Add(time.Duration(i)*time.Second), "dev1", 1, 10)
		if d.Allowed {
			allowed++
			continue
		}
		last = d
	}
	if allowed != 5 {
		t.Fatalf("%d uploads allowed, want 5", allowed)
	}
	if last.Reason != ReasonExhausted || last.Quota != "pool:plan-small" || last.UsageLimit != 5 || last.UsageCount != 5 {
		t.Fatalf("refusal: %+v, want exhausted by pool:plan-small at 5/5", last)
	}
	for _, n := range []string{"plan-small", "team"} {
		if c, b := tf.poolUsage(n); c != 5 || b != 50 {
			t.Errorf("pool %s: %d uploads %d bytes, want 5 and 50", n, c, b)
		}
	}
	if tok, _ := tf.f.tokenNamed("dev1"); tok.UsageCount != 5 {
		t.Errorf("token: %d uploads, want 5", tok.UsageCount)
	}
}

// Any refusal charges nothing anywhere: the token's own limit, a pool's
// bytes, or a named pool that does not exist.
func TestPoolChargesAreAllOrNone(t *testing.T) {
	tf := newTestFSM(t)
	bytesPool := tf.createPool(t0, PoolSpec{Name: "bytes", BytesLimit: 100})
	tf.createPool(t0, PoolSpec{Name: "bucket-a", UsageLimit: 1000})
	tf.create(t0, TokenSpec{Name: "tok", UsageLimit: 3, Pools: []string{bytesPool.ID}})

	if d := tf.consumePools(t0, NewRequestID(), "tok", 1, 60, "bucket-a"); !d.Allowed {
		t.Fatalf("first upload: %+v", d)
	}
	d := tf.consumePools(t0, NewRequestID(), "tok", 1, 60, "bucket-a")
	if d.Allowed || d.Reason != ReasonBytesExhausted || d.Quota != "pool:bytes" {
		t.Fatalf("over the byte pool: %+v", d)
	}
	d = tf.consumePools(t0, NewRequestID(), "tok", 1, 10, "no-such-bucket")
	if d.Allowed || d.Reason != ReasonUnknown || d.Quota != "pool:no-such-bucket" {
		t.Fatalf("a missing named pool: %+v", d)
	}
	// Skipped when asked to.
	res := tf.apply(&Command{Op: OpConsume, Time: t0.UnixNano(), Consumes: []ConsumeRequest{{ID: NewRequestID(), Token: "tok", Units: 1, Bytes: 10, Pools: []string{"no-such-bucket"}, SkipMissingPools: true}}})
	if !res.Decisions[0].Allowed {
		t.Fatalf("a missing pool with skip: %+v", res.Decisions[0])
	}
	if c, b := tf.poolUsage("bytes"); c != 2 || b != 70 {
		t.Fatalf("byte pool: %d, %d; want 2 uploads and 70 bytes", c, b)
	}
	if c, _ := tf.poolUsage("bucket-a"); c != 1 {
		t.Fatalf("bucket-a: %d uploads, want 1", c)
	}
	// The token's own limit refuses before the pools are touched.
	tf.consume(t0, "tok", 1, 0)
	d = tf.consumePools(t0, NewRequestID(), "tok", 1, 0, "bucket-a")
	if d.Allowed || d.Quota != "token" || d.Reason != ReasonExhausted {
		t.Fatalf("token exhausted: %+v", d)
	}
	if c, _ := tf.poolUsage("bucket-a"); c != 1 {
		t.Fatalf("bucket-a charged by a refused upload: %d", c)
	}
}

// A refund gives back to every pool once; a retried id charges none again.
func TestPoolRefundsAndRetriesAreExactlyOnce(t *testing.T) {
	tf := newTestFSM(t)
	p := tf.createPool(t0, PoolSpec{Name: "plan", UsageLimit: 10, BytesLimit: 1000})
	tf.createPool(t0, PoolSpec{Name: "site", UsageLimit: 10})
	tf.create(t0, TokenSpec{Name: "tok", Pools: []string{p.ID}})
	id := NewRequestID()
	for range 3 {
		if d := tf.consumePools(t0, id, "tok", 1, 100, "site"); !d.Allowed {
			t.Fatalf("%+v", d)
		}
	}
	if c, b := tf.poolUsage("plan"); c != 1 || b != 100 {
		t.Fatalf("a retried id charged again: %d %d", c, b)
	}
	for range 2 {
		tf.apply(&Command{Op: OpRefund, Time: t0.UnixNano(), ID: id})
	}
	for _, n := range []string{"plan", "site"} {
		if c, b := tf.poolUsage(n); c != 0 || b != 0 {
			t.Errorf("pool %s after a refund (twice): %d %d, want 0 0", n, c, b)
		}
	}
}

// Pools renew on their own windows, from the leader's stamped time.
func TestPoolRenewsOnItsWindow(t *testing.T) {
	tf := newTestFSM(t)
	p := tf.createPool(t0, PoolSpec{Name: "daily", UsageLimit: 2, RenewEvery: Duration(24 * time.Hour)})
	tf.create(t0, TokenSpec{Name: "tok", Pools: []string{p.ID}})
	tf.consume(t0, "tok", 1, 0)
	tf.consume(t0.Add(time.Hour), "tok", 1, 0)
	d := tf.consume(t0.Add(2*time.Hour), "tok", 1, 0)
	if d.Allowed || d.ResetAt != t0.Add(24*time.Hour).UnixNano() {
		t.Fatalf("third upload of the day: %+v", d)
	}
	if d := tf.consume(t0.Add(25*time.Hour), "tok", 1, 0); !d.Allowed {
		t.Fatalf("after the window: %+v", d)
	}
}

// Pool admin: names are unique, a pool with tokens cannot be deleted, a
// token's pools can be changed, counts follow.
func TestPoolAdmin(t *testing.T) {
	tf := newTestFSM(t)
	p := tf.createPool(t0, PoolSpec{Name: "cust-1", UsageLimit: 10})
	if res := tf.apply(&Command{Op: OpCreatePool, Time: t0.UnixNano(), ID: NewRequestID(), Pool: &PoolSpec{Name: "cust-1"}}); !errors.Is(res.Err, ErrExists) {
		t.Fatalf("a second pool named cust-1: %v", res.Err)
	}
	if res := tf.create(t0, TokenSpec{Name: "bad", Pools: []string{"p99"}}); !errors.Is(res.Err, ErrInvalid) {
		t.Fatalf("a token in an unknown pool: %v", res.Err)
	}
	tok := tf.create(t0, TokenSpec{Name: "tok", Pools: []string{p.ID}}).Token
	if a, _ := tf.f.Query(&Query{Kind: ReadPool, ID: p.ID}); a.Pool.Tokens != 1 {
		t.Fatalf("pool tokens %d, want 1", a.Pool.Tokens)
	}
	if res := tf.apply(&Command{Op: OpDeletePool, Time: t0.UnixNano(), ID: NewRequestID(), PoolID: p.ID}); !errors.Is(res.Err, ErrExists) {
		t.Fatalf("deleting a pool with a token: %v", res.Err)
	}
	none := []string{}
	if res := tf.apply(&Command{Op: OpUpdate, Time: t0.UnixNano(), ID: NewRequestID(), TokenID: tok.ID, Update: &LimitUpdate{Pools: &none}}); res.Err != nil || len(res.Token.Pools) != 0 {
		t.Fatalf("leaving the pool: %+v %v", res.Token, res.Err)
	}
	if res := tf.apply(&Command{Op: OpDeletePool, Time: t0.UnixNano(), ID: NewRequestID(), PoolID: p.ID}); res.Err != nil {
		t.Fatalf("deleting an empty pool: %v", res.Err)
	}
	// Ids are never reused.
	if q := tf.createPool(t0, PoolSpec{Name: "cust-1"}); q.ID == p.ID {
		t.Fatalf("a new pool took deleted %s's id", p.ID)
	}
}

// Pools, token memberships and the dedup entries' pool charges survive a
// snapshot, byte for byte.
func TestPoolsSurviveSnapshots(t *testing.T) {
	tf := newTestFSM(t)
	p := tf.createPool(t0, PoolSpec{Name: "plan", UsageLimit: 10, RenewEvery: Duration(time.Hour)})
	tf.createPool(t0, PoolSpec{Name: "bucket", BytesLimit: 1 << 20})
	tf.create(t0, TokenSpec{Name: "tok", Pools: []string{p.ID}})
	id := NewRequestID()
	tf.consumePools(t0, id, "tok", 1, 100, "bucket")
	snap := snapshotBytes(t, tf.f)
	g := newTestFSM(t)
	if err := g.f.Restore(bytes.NewReader(snap)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(snapshotBytes(t, g.f), snap) {
		t.Fatal("a restored state writes different snapshot bytes")
	}
	if a, _ := g.f.Query(&Query{Kind: ReadPool, ID: p.ID}); a.Pool.Tokens != 1 || a.Pool.UsageCount != 1 {
		t.Fatalf("restored pool: %+v", a.Pool)
	}
	g.index = tf.index
	g.apply(&Command{Op: OpRefund, Time: t0.UnixNano(), ID: id})
	if c, b := g.poolUsage("bucket"); c != 0 || b != 0 {
		t.Fatalf("a refund after restore left %d %d on the named pool", c, b)
	}
}

// A multipart upload reserves its unit in the token's pools and the pools
// the request names, charges its parts' bytes to the same pools, and an
// abort or expiry gives all of it back to each; a part too big for a pool
// is refused without charging the token.
func TestMultipartUploadsChargeTheirPools(t *testing.T) {
	tf := newTestFSM(t)
	plan := tf.createPool(t0, PoolSpec{Name: "plan", UsageLimit: 1, BytesLimit: 100})
	tf.createPool(t0, PoolSpec{Name: "bucket", BytesLimit: 1000})
	tf.create(t0, TokenSpec{Name: "mp", Pools: []string{plan.ID}})
	reserve := func(at time.Time) (*multipart, Decision) {
		m := &multipart{tf: tf, token: KeyOf("mp"), reserve: NewRequestID(), key: UploadKeyOf("bucket/x", NewRequestID().String())}
		res := tf.apply(&Command{Op: OpReserveUpload, Time: at.UnixNano(), ID: m.reserve, Upload: &UploadOp{Token: &m.token, Units: 1, Expiry: int64(time.Hour), Pools: []string{"bucket"}}})
		return m, res.Decisions[0]
	}
	m, d := reserve(t0)
	if !d.Allowed {
		t.Fatalf("reserve: %+v", d)
	}
	if err := m.bind(t0); err != nil {
		t.Fatal(err)
	}
	// The plan's one unit is the upload's: its parts still fit.
	if d := m.part(t0, NewRequestID(), 1, 60); !d.Allowed {
		t.Fatalf("part 1: %+v", d)
	}
	if d := m.part(t0, NewRequestID(), 2, 60); d.Allowed || d.Quota != "pool:plan" || d.Reason != ReasonBytesExhausted {
		t.Fatalf("part 2 over the plan's bytes: %+v", d)
	}
	if _, d := reserve(t0); d.Allowed || d.Quota != "pool:plan" {
		t.Fatalf("a second upload in a 1-upload plan: %+v", d)
	}
	if c, b := tf.usage("mp"); c != 1 || b != 60 {
		t.Fatalf("token: %d %d, want 1 and 60", c, b)
	}
	if c, b := tf.poolUsage("bucket"); c != 1 || b != 60 {
		t.Fatalf("bucket: %d %d, want 1 and 60", c, b)
	}
	if err := m.do(t0, OpAbortUpload, UploadOp{}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"plan", "bucket"} {
		if c, b := tf.poolUsage(n); c != 0 || b != 0 {
			t.Errorf("pool %s after the abort: %d %d", n, c, b)
		}
	}
	// Expiry gives back too.
	m, _ = reserve(t0)
	m.bind(t0)
	m.part(t0, NewRequestID(), 1, 50)
	tf.apply(&Command{Op: OpExpireUploads, Time: t0.Add(2 * time.Hour).UnixNano()})
	for _, n := range []string{"plan", "bucket"} {
		if c, b := tf.poolUsage(n); c != 0 || b != 0 {
			t.Errorf("pool %s after expiry: %d %d", n, c, b)
		}
	}
	// A completed upload keeps its charges in the pools.
	m, _ = reserve(t0.Add(3 * time.Hour))
	m.bind(t0.Add(3 * time.Hour))
	m.part(t0.Add(3*time.Hour), NewRequestID(), 1, 70)
	m.do(t0.Add(3*time.Hour), OpCompleteBegin, UploadOp{Expiry: int64(time.Hour)})
	m.do(t0.Add(3*time.Hour), OpCompleteEnd, UploadOp{OK: true, Parts: []int32{1}})
	if c, b := tf.poolUsage("plan"); c != 1 || b != 70 {
		t.Errorf("plan after a completed upload: %d %d, want 1 and 70", c, b)
	}
}
