package state

import (
	"slices"
	"strings"
	"testing"

	"pgregory.net/rapid"
)

// quotaModel is the contract's token model written as plainly as possible,
// with none of the FSM's machinery: the property test checks the FSM agrees
// with it on every step of random histories.
type quotaModel struct {
	tokens  map[string]*modelToken
	charges map[RequestID]*modelCharge
	gens    int
}

type modelToken struct {
	limit, count, bytesLimit, bytes int64
	revoked                         bool
	gen                             int
}

type modelCharge struct {
	name                 string
	gen                  int
	units, bytes         int64
	allowed, refunded    bool
	refundedBeforeCharge bool
}

func (m *quotaModel) full(t *modelToken) bool {
	return (t.limit > 0 && t.count >= t.limit) || (t.bytesLimit > 0 && t.bytes >= t.bytesLimit)
}

func (m *quotaModel) consume(id RequestID, name string, units, bytes int64) bool {
	if c, ok := m.charges[id]; ok && !c.refunded {
		return c.allowed && !c.refundedBeforeCharge
	}
	t := m.tokens[name]
	if t == nil {
		return false // nothing is remembered about unknown tokens
	}
	ok := t != nil && !t.revoked && !m.full(t) &&
		(t.limit == 0 || t.count+units <= t.limit) &&
		(t.bytesLimit == 0 || t.bytes+bytes <= t.bytesLimit)
	c := &modelCharge{name: name, units: units, bytes: bytes, allowed: ok}
	if ok {
		t.count += units
		t.bytes += bytes
		c.gen = t.gen
	}
	m.charges[id] = c
	return ok
}

func (m *quotaModel) refund(id RequestID) {
	c, ok := m.charges[id]
	if !ok {
		m.charges[id] = &modelCharge{refundedBeforeCharge: true}
		return
	}
	if !c.allowed || c.refunded || c.refundedBeforeCharge {
		return
	}
	c.refunded = true
	if t := m.tokens[c.name]; t != nil && t.gen == c.gen {
		t.count = max(0, t.count-c.units)
		t.bytes = max(0, t.bytes-c.bytes)
	}
}

func TestFSMAgreesWithModel(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		tf := &testFSM{t: t, f: fsmWithDedup(1<<16, nopLogger())}
		m := &quotaModel{tokens: map[string]*modelToken{}, charges: map[RequestID]*modelCharge{}}
		names := []string{"a", "b", "c"}
		var ids []RequestID
		name := rapid.SampledFrom(names)
		steps := rapid.IntRange(1, 200).Draw(rt, "steps")
		for i := 0; i < steps; i++ {
			n := name.Draw(rt, "name")
			switch rapid.IntRange(0, 9).Draw(rt, "op") {
			case 0:
				limit := rapid.Int64Range(0, 5).Draw(rt, "limit")
				blimit := rapid.Int64Range(0, 50).Draw(rt, "bytes_limit")
				res := tf.create(t0, TokenSpec{Name: n, UsageLimit: limit, BytesLimit: blimit})
				_, exists := m.tokens[n]
				if exists != (res.Err != nil) {
					rt.Fatalf("create %s: err %v, model exists %v", n, res.Err, exists)
				}
				if !exists {
					m.gens++
					m.tokens[n] = &modelToken{limit: limit, bytesLimit: blimit, gen: m.gens}
				}
			case 1, 2, 3, 4:
				var id RequestID
				if len(ids) > 0 && rapid.Bool().Draw(rt, "retry") {
					id = rapid.SampledFrom(ids).Draw(rt, "id")
				} else {
					id = NewRequestID()
					ids = append(ids, id)
				}
				units := rapid.Int64Range(0, 3).Draw(rt, "units")
				bytes := rapid.Int64Range(0, 20).Draw(rt, "bytes")
				d := tf.consumeID(t0, id, n, units, bytes)
				if want := m.consume(id, n, units, bytes); d.Allowed != want {
					rt.Fatalf("consume %s %d/%d: allowed %v, model %v (%+v)", n, units, bytes, d.Allowed, want, d)
				}
			case 5:
				if len(ids) == 0 || rapid.Bool().Draw(rt, "unknown_refund") {
					id := NewRequestID()
					ids = append(ids, id)
					tf.apply(&Command{Op: OpRefund, Time: t0.UnixNano(), ID: id})
					m.refund(id)
				} else {
					id := rapid.SampledFrom(ids).Draw(rt, "refund_id")
					tf.apply(&Command{Op: OpRefund, Time: t0.UnixNano(), ID: id})
					m.refund(id)
				}
			case 6:
				limit := rapid.Int64Range(0, 6).Draw(rt, "new_limit")
				tf.apply(&Command{Op: OpUpdate, Time: t0.UnixNano(), ID: NewRequestID(), Name: n, Update: &LimitUpdate{UsageLimit: &limit}})
				if tok := m.tokens[n]; tok != nil {
					tok.limit = limit
				}
			case 7:
				o := rapid.SampledFrom([]Op{OpRevoke, OpReactivate}).Draw(rt, "status_op")
				tf.op(t0, o, n)
				if tok := m.tokens[n]; tok != nil {
					tok.revoked = o == OpRevoke
				}
			case 8:
				tf.op(t0, OpReset, n)
				if tok := m.tokens[n]; tok != nil {
					tok.count, tok.bytes = 0, 0
				}
			case 9:
				tf.op(t0, OpDelete, n)
				delete(m.tokens, n)
			}
			for _, n := range names {
				got, ok := tf.f.tokenNamed(n)
				want := m.tokens[n]
				if ok != (want != nil) {
					rt.Fatalf("token %s exists=%v, model %v", n, ok, want != nil)
				}
				if !ok {
					continue
				}
				if got.UsageCount != want.count || got.BytesUsed != want.bytes {
					rt.Fatalf("token %s usage %d/%d, model %d/%d", n, got.UsageCount, got.BytesUsed, want.count, want.bytes)
				}
				wantStatus := StatusActive
				if want.revoked {
					wantStatus = StatusRevoked
				} else if m.full(want) {
					wantStatus = StatusExhausted
				}
				if got.Status != wantStatus {
					rt.Fatalf("token %s status %s, model %s", n, got.Status, wantStatus)
				}
			}
		}
	})
}

// poolModel is the contract's pool semantics written plainly: a charge
// takes from the token and from every pool it belongs to or names, all or
// none; a refund gives back to each once.
type poolModel struct {
	limits, counts map[string]int64 // "token:a", "pool:P"
	member         map[string][]string
	charged        map[RequestID][]string
	units          map[RequestID]int64
	refunded       map[RequestID]bool
}

func (m *poolModel) consume(id RequestID, tok string, units int64, named []string) bool {
	if _, seen := m.charged[id]; seen && !m.refunded[id] {
		return len(m.charged[id]) > 0
	}
	delete(m.refunded, id) // a refunded charge's id charges afresh
	quotas := []string{"token:" + tok}
	for _, p := range append(append([]string{}, m.member[tok]...), named...) {
		if !slices.Contains(quotas, "pool:"+p) {
			quotas = append(quotas, "pool:"+p)
		}
	}
	for _, q := range quotas {
		if l := m.limits[q]; l > 0 && m.counts[q]+units > l || l > 0 && m.counts[q] >= l {
			m.charged[id] = nil
			return false
		}
	}
	for _, q := range quotas {
		m.counts[q] += units
	}
	m.charged[id], m.units[id] = quotas, units
	return true
}

func (m *poolModel) refund(id RequestID) {
	if m.refunded[id] || len(m.charged[id]) == 0 {
		return
	}
	m.refunded[id] = true
	for _, q := range m.charged[id] {
		m.counts[q] = max(0, m.counts[q]-m.units[id])
	}
}

func TestFSMAgreesWithPoolModel(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		tf := &testFSM{t: t, f: fsmWithDedup(1<<16, nopLogger())}
		m := &poolModel{limits: map[string]int64{}, counts: map[string]int64{}, member: map[string][]string{},
			charged: map[RequestID][]string{}, units: map[RequestID]int64{}, refunded: map[RequestID]bool{}}
		ids := map[string]string{}
		for _, p := range []string{"P", "Q", "R"} {
			limit := rapid.Int64Range(1, 8).Draw(rt, "pool_limit")
			ids[p] = tf.createPool(t0, PoolSpec{Name: p, UsageLimit: limit}).ID
			m.limits["pool:"+p] = limit
		}
		for _, tok := range []string{"a", "b"} {
			limit := rapid.Int64Range(0, 8).Draw(rt, "token_limit")
			pools := rapid.SliceOfNDistinct(rapid.SampledFrom([]string{"P", "Q"}), 0, 2, func(s string) string { return s }).Draw(rt, "pools")
			var pids []string
			for _, p := range pools {
				pids = append(pids, ids[p])
			}
			if res := tf.create(t0, TokenSpec{Name: tok, UsageLimit: limit, Pools: pids}); res.Err != nil {
				rt.Fatal(res.Err)
			}
			m.limits["token:"+tok], m.member[tok] = limit, pools
		}
		type request struct {
			tok   string
			units int64
			named []string
		}
		var reqs []RequestID
		sent := map[RequestID]request{}
		for range rapid.IntRange(1, 100).Draw(rt, "steps") {
			if len(reqs) > 0 && rapid.IntRange(0, 4).Draw(rt, "op") == 0 {
				id := rapid.SampledFrom(reqs).Draw(rt, "refund")
				tf.apply(&Command{Op: OpRefund, Time: t0.UnixNano(), ID: id})
				m.refund(id)
				continue
			}
			id := NewRequestID()
			if len(reqs) > 0 && rapid.Bool().Draw(rt, "retry") {
				id = rapid.SampledFrom(reqs).Draw(rt, "id")
			} else {
				reqs = append(reqs, id)
			}
			tok := rapid.SampledFrom([]string{"a", "b"}).Draw(rt, "token")
			units := rapid.Int64Range(1, 3).Draw(rt, "units")
			var named []string
			if rapid.Bool().Draw(rt, "names_r") {
				named = []string{"R"}
			}
			if r, seen := sent[id]; seen {
				tok, units, named = r.tok, r.units, r.named // a retry is the same request
			}
			sent[id] = request{tok, units, named}
			d := tf.consumePools(t0, id, tok, units, 0, named...)
			if want := m.consume(id, tok, units, named); d.Allowed != want {
				rt.Fatalf("consume %s %d %v: allowed %v, model %v (%+v)", tok, units, named, d.Allowed, want, d)
			}
			for q, want := range m.counts {
				var got int64
				if name, ok := strings.CutPrefix(q, "pool:"); ok {
					got, _ = tf.poolUsage(name)
				} else {
					got, _ = tf.usage(strings.TrimPrefix(q, "token:"))
				}
				if got != want {
					rt.Fatalf("%s: %d charged, model %d", q, got, want)
				}
			}
		}
	})
}
