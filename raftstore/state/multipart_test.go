package state

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

// multipart drives one upload's commands against a test FSM.
type multipart struct {
	tf      *testFSM
	token   TokenKey
	reserve RequestID
	key     UploadKey
}

func TestMultipartChargesOneUnitAndItsParts(t *testing.T) {
	tf := newTestFSM(t)
	tf.create(t0, TokenSpec{Name: "a", UsageLimit: 2, BytesLimit: 100})
	m, d := tf.reserveUpload(t0, "a", time.Hour)
	if !d.Allowed {
		t.Fatalf("reserve denied: %+v", d)
	}
	if err := m.bind(t0); err != nil {
		t.Fatal(err)
	}
	p1, p2, p2again := NewRequestID(), NewRequestID(), NewRequestID()
	for _, p := range []struct {
		id    RequestID
		n     int32
		bytes int64
	}{{p1, 1, 30}, {p2, 2, 30}, {p2again, 2, 20}} {
		if d := m.part(t0, p.id, p.n, p.bytes); !d.Allowed {
			t.Fatalf("part %d denied: %+v", p.n, d)
		}
	}
	// A retried request id charges nothing more.
	if d := m.part(t0, p1, 1, 30); !d.Duplicate {
		t.Fatalf("retry of a part was not a duplicate: %+v", d)
	}
	if n, b := tf.usage("a"); n != 1 || b != 80 {
		t.Fatalf("during the upload: %d units %d bytes, want 1 and 80", n, b)
	}
	// Too big for what is left: refused, nothing charged.
	if d := m.part(t0, NewRequestID(), 3, 21); d.Allowed || d.Reason != ReasonBytesExhausted {
		t.Fatalf("part over the byte limit: %+v", d)
	}
	if err := m.do(t0, OpCompleteBegin, UploadOp{Expiry: int64(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if d := m.part(t0, NewRequestID(), 3, 1); d.Reason != ReasonNoSuchUpload {
		t.Fatalf("a part while completing: %+v", d)
	}
	if err := m.do(t0, OpAbortUpload, UploadOp{}); err == nil {
		t.Fatal("abort of a completing upload succeeded")
	}
	// The object is parts 1 and 2 as last uploaded: 30 + 20 bytes.
	if err := m.do(t0, OpCompleteEnd, UploadOp{OK: true, Parts: []int32{1, 2}}); err != nil {
		t.Fatal(err)
	}
	if n, b := tf.usage("a"); n != 1 || b != 50 {
		t.Fatalf("after complete: %d units %d bytes, want 1 and 50", n, b)
	}
	if len(tf.f.uploads.uploads) != 0 || len(tf.f.uploads.owner) != 0 || tf.f.uploads.charges != 0 {
		t.Fatalf("a completed upload left state: %+v", tf.f.uploads)
	}
	// The superseded attempt was refunded from the record: refunding it
	// again by id gives nothing back.
	tf.apply(&Command{Op: OpRefund, Time: t0.UnixNano(), ID: p2})
	if n, b := tf.usage("a"); n != 1 || b != 50 {
		t.Fatalf("a second refund of a superseded part: %d units %d bytes", n, b)
	}
}

func TestMultipartReserveTakesTheLastUnitOnce(t *testing.T) {
	tf := newTestFSM(t)
	tf.create(t0, TokenSpec{Name: "a", UsageLimit: 1})
	m, d := tf.reserveUpload(t0, "a", time.Hour)
	if !d.Allowed {
		t.Fatal(d)
	}
	if _, d := tf.reserveUpload(t0, "a", time.Hour); d.Allowed || d.Reason != ReasonExhausted {
		t.Fatalf("second upload on the last unit: %+v", d)
	}
	// The token is exhausted by count, but the reserved upload's parts
	// still go in: the unit is theirs.
	if err := m.bind(t0); err != nil {
		t.Fatal(err)
	}
	if d := m.part(t0, NewRequestID(), 1, 10); !d.Allowed {
		t.Fatalf("part of the reserved upload: %+v", d)
	}
}

func TestMultipartAbortRefundsEverything(t *testing.T) {
	tf := newTestFSM(t)
	tf.create(t0, TokenSpec{Name: "a", UsageLimit: 5, BytesLimit: 12 << 20})
	m, _ := tf.reserveUpload(t0, "a", time.Hour)
	m.bind(t0)
	m.part(t0, NewRequestID(), 1, 5<<20)
	m.part(t0, NewRequestID(), 2, 5<<20)
	if d := m.part(t0, NewRequestID(), 3, 5<<20); d.Allowed {
		t.Fatal("third 5 MiB part fit a 12 MiB limit")
	}
	if err := m.do(t0, OpAbortUpload, UploadOp{}); err != nil {
		t.Fatal(err)
	}
	if n, b := tf.usage("a"); n != 0 || b != 0 {
		t.Fatalf("after abort: %d units %d bytes, want 0 and 0", n, b)
	}
	if err := m.do(t0, OpAbortUpload, UploadOp{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second abort: %v", err)
	}
	if n, b := tf.usage("a"); n != 0 || b != 0 {
		t.Fatalf("after a second abort: %d units %d bytes", n, b)
	}
}

func TestMultipartFailedPartAndFailedBackendAreRefundedByID(t *testing.T) {
	tf := newTestFSM(t)
	tf.create(t0, TokenSpec{Name: "a", UsageLimit: 5, BytesLimit: 100})
	// The backend refused CreateMultipartUpload: the reserve is refunded.
	m, _ := tf.reserveUpload(t0, "a", time.Hour)
	tf.apply(&Command{Op: OpRefund, Time: t0.UnixNano(), ID: m.reserve})
	if n, _ := tf.usage("a"); n != 0 {
		t.Fatalf("refunded reserve still charged: %d", n)
	}
	if err := m.bind(t0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("bind after the reserve's refund: %v", err)
	}
	m, _ = tf.reserveUpload(t0, "a", time.Hour)
	m.bind(t0)
	failed := NewRequestID()
	m.part(t0, failed, 1, 40)
	tf.apply(&Command{Op: OpRefund, Time: t0.UnixNano(), ID: failed})
	if _, b := tf.usage("a"); b != 0 {
		t.Fatalf("failed part still charged: %d bytes", b)
	}
	m.part(t0, NewRequestID(), 1, 40)
	if err := m.do(t0, OpAbortUpload, UploadOp{}); err != nil {
		t.Fatal(err)
	}
	if n, b := tf.usage("a"); n != 0 || b != 0 {
		t.Fatalf("after abort: %d units %d bytes", n, b)
	}
}

func TestMultipartExpiry(t *testing.T) {
	tf := newTestFSM(t)
	tf.create(t0, TokenSpec{Name: "a", UsageLimit: 5, BytesLimit: 100})
	open, _ := tf.reserveUpload(t0, "a", time.Hour)
	open.bind(t0)
	open.part(t0, NewRequestID(), 1, 10)
	pending, _ := tf.reserveUpload(t0, "a", time.Hour) // never bound: a node died
	completing, _ := tf.reserveUpload(t0, "a", 3*time.Hour)
	completing.bind(t0)
	completing.part(t0, NewRequestID(), 1, 20)
	completing.do(t0, OpCompleteBegin, UploadOp{Expiry: int64(time.Hour)})
	late, _ := tf.reserveUpload(t0, "a", 3*time.Hour)
	late.bind(t0)

	expire := func(at time.Time) { tf.apply(&Command{Op: OpExpireUploads, Time: at.UnixNano()}) }
	expire(t0.Add(59 * time.Minute))
	if n := len(tf.f.uploads.uploads); n != 4 {
		t.Fatalf("%d uploads before any deadline, want 4", n)
	}
	expire(t0.Add(61 * time.Minute))
	// open and pending refunded; completing taken as done (charge kept).
	if n, b := tf.usage("a"); n != 2 || b != 20 {
		t.Fatalf("after expiry: %d units %d bytes, want 2 and 20", n, b)
	}
	if len(tf.f.uploads.uploads) != 1 || tf.f.uploads.uploads[late.key] == nil {
		t.Fatalf("uploads left: %+v", tf.f.uploads.uploads)
	}
	if d := open.part(t0.Add(62*time.Minute), NewRequestID(), 2, 1); d.Reason != ReasonNoSuchUpload {
		t.Fatalf("a part of an expired upload: %+v", d)
	}
	if err := pending.bind(t0.Add(62 * time.Minute)); err == nil {
		t.Fatal("bound an expired reservation")
	}
}

func TestMultipartPartsOfAnotherTokenAreRefused(t *testing.T) {
	tf := newTestFSM(t)
	tf.create(t0, TokenSpec{Name: "a", UsageLimit: 5})
	tf.create(t0, TokenSpec{Name: "b", UsageLimit: 5})
	m, _ := tf.reserveUpload(t0, "a", time.Hour)
	m.bind(t0)
	other := KeyOf("b")
	res := tf.apply(&Command{Op: OpChargePart, Time: t0.UnixNano(), ID: NewRequestID(), Upload: &UploadOp{Key: m.key, Token: &other, Part: 1, Bytes: 1}})
	if d := res.Decisions[0]; d.Allowed || d.Reason != ReasonNoSuchUpload {
		t.Fatalf("b's part on a's upload: %+v", d)
	}
	if err := tf.apply(&Command{Op: OpAbortUpload, Time: t0.UnixNano(), ID: NewRequestID(), Upload: &UploadOp{Key: m.key, Token: &other}}).Err; err == nil {
		t.Fatal("b aborted a's upload")
	}
}

func TestMultipartStateIsInSnapshots(t *testing.T) {
	build := func() *testFSM {
		tf := newTestFSM(t)
		tf.create(t0, TokenSpec{Name: "a", UsageLimit: 5, BytesLimit: 1000})
		m, _ := tf.reserveUpload(t0, "a", time.Hour)
		m.bind(t0)
		m.part(t0, NewRequestID(), 1, 10)
		m.part(t0, NewRequestID(), 2, 20)
		tf.reserveUpload(t0, "a", time.Hour)
		c, _ := tf.reserveUpload(t0, "a", time.Hour)
		c.bind(t0)
		c.do(t0, OpCompleteBegin, UploadOp{Expiry: int64(time.Minute)})
		return tf
	}
	tf := build()
	snap := snapshotBytes(t, tf.f)
	restored := New(nopLogger())
	if err := restored.Restore(bytes.NewReader(snap)); err != nil {
		t.Fatal(err)
	}
	if again := snapshotBytes(t, restored); !bytes.Equal(snap, again) {
		t.Fatal("a restored FSM writes another snapshot")
	}
	if got, want := restored.Uploads(), tf.f.Uploads(); len(got) != 3 || len(want) != 3 {
		t.Fatalf("uploads after restore: %d, before %d", len(got), len(want))
	}
	if restored.uploads.charges != 2 || len(restored.uploads.owner) != 2 {
		t.Fatalf("part index after restore: %d charges, %d owners", restored.uploads.charges, len(restored.uploads.owner))
	}
	// Expiring the restored state refunds the same as the original.
	for _, f := range []*Machine{tf.f, restored} {
		f.mu.Lock()
		f.uploadOps().applyExpireUploads(nil, t0.Add(2*time.Hour))
		f.mu.Unlock()
	}
	a, _ := tf.f.tokenNamed("a")
	b, _ := restored.tokenNamed("a")
	if a.UsageCount != b.UsageCount || a.BytesUsed != b.BytesUsed || a.UsageCount != 1 {
		t.Fatalf("expiry: original %d/%d, restored %d/%d (want 1 unit left charged: the completing one)", a.UsageCount, a.BytesUsed, b.UsageCount, b.BytesUsed)
	}
}
func (tf *testFSM) reserveUpload(at time.Time, name string, expiry time.Duration) (*multipart, Decision) {
	tf.t.Helper()
	m := &multipart{tf: tf, token: KeyOf(name), reserve: NewRequestID(), key: UploadKeyOf("bucket/"+name, NewRequestID().String())}
	res := tf.apply(&Command{Op: OpReserveUpload, Time: at.UnixNano(), ID: m.reserve, Upload: &UploadOp{Token: &m.token, Units: 1, Expiry: int64(expiry)}})
	if res.Err != nil {
		tf.t.Fatal(res.Err)
	}
	return m, res.Decisions[0]
}

func (m *multipart) bind(at time.Time) error {
	return m.tf.apply(&Command{Op: OpBindUpload, Time: at.UnixNano(), ID: m.reserve, Upload: &UploadOp{Key: m.key}}).Err
}

func (m *multipart) part(at time.Time, id RequestID, n int32, bytes int64) Decision {
	m.tf.t.Helper()
	res := m.tf.apply(&Command{Op: OpChargePart, Time: at.UnixNano(), ID: id, Upload: &UploadOp{Key: m.key, Part: n, Bytes: bytes}})
	if res.Err != nil {
		m.tf.t.Fatal(res.Err)
	}
	return res.Decisions[0]
}

func (m *multipart) do(at time.Time, o Op, u UploadOp) error {
	u.Key = m.key
	return m.tf.apply(&Command{Op: o, Time: at.UnixNano(), ID: NewRequestID(), Upload: &u}).Err
}

func (tf *testFSM) usage(name string) (int64, int64) {
	tf.t.Helper()
	tok, ok := tf.f.tokenNamed(name)
	if !ok {
		tf.t.Fatalf("no token %s", name)
	}
	return tok.UsageCount, tok.BytesUsed
}
