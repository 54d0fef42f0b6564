package raftstore

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/raftquota/raftquota/internal/clustertest"
	"github.com/raftquota/raftquota/raftstore/state"
	"go.uber.org/zap"
)

// Fixtures of every on-disk format this package has shipped live under
// testdata/formats/<name>. Each holds a data dir whose log (in raft.db up to
// v5, in wal/ from v6) carries every command op, a snapshot of the same state, and want.json: what the public
// API answered when the fixture was written. Every later build must read
// them to the same answers; formats are never dropped, only added.
//
// Write a new fixture only when a format changes, with a new name:
//
//	go test ./raftstore -run TestWriteFormatFixture -write-fixture v3
var writeFixture = flag.String("write-fixture", "", "write testdata/formats/NAME from this build's code")

// fixtureNames lists the fixtures every build must read.
var fixtureNames = []string{"v2", "v4", "v5", "v6", "v7", "v8"}

// fixtureState is what the public API says about a fixture's state.
type fixtureState struct {
	Tokens map[string]*state.Token `json:"tokens"`
	// DedupSize is the cluster's dedup size (0 in fixtures that predate it).
	DedupSize int `json:"dedup_size,omitempty"`
	// Replays are consumes already applied, with their first outcome: a
	// build that reads the fixture must answer them as duplicates.
	Replays []fixtureReplay `json:"replays"`
	// Uploads are the multipart uploads held (none before v5).
	Uploads []state.UploadInfo `json:"uploads,omitempty"`
	// Pools are the pools held (none before v7).
	Pools []state.Pool `json:"pools,omitempty"`
}

type fixtureReplay struct {
	Req     state.ConsumeRequest `json:"req"`
	Allowed bool                 `json:"allowed"`
}

// fixtureNamesOfTokens are the token names the fixture workload uses.
var fixtureTokenNames = []string{"plain", "bytes", "renewing", "expiring", "revoked", "reactivated", "reset", "raised", "deleted", "meta.data_x-1", "multipart", "pooled", "pooled-mp", "calendar"}

// fixtureWorkload runs every command op against s and returns the consumes
// whose outcomes a reader must remember.
func fixtureWorkload(t *testing.T, s *Store) []fixtureReplay {
	ctx := clustertest.Within(t, 30*time.Second)
	far := time.Date(2099, 1, 2, 3, 4, 5, 0, time.UTC)
	past := time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)
	specs := []state.TokenSpec{
		{Name: "plain", UsageLimit: 3},
		{Name: "bytes", BytesLimit: 1000},
		{Name: "renewing", UsageLimit: 2, RenewEvery: state.Duration(time.Hour)},
		{Name: "expiring", UsageLimit: 5, ExpiresAt: &far},
		{Name: "revoked", UsageLimit: 5},
		{Name: "reactivated", UsageLimit: 5},
		{Name: "reset", UsageLimit: 2},
		{Name: "raised", UsageLimit: 1},
		{Name: "deleted", UsageLimit: 1},
		{Name: "meta.data_x-1", UsageLimit: 10, BytesLimit: 10, CreatedBy: "fixture", Metadata: map[string]string{"team": "a", "env": "test"}},
		{Name: "multipart", UsageLimit: 10, BytesLimit: 1000},
	}
	ids := map[string]string{}
	for _, sp := range specs {
		tok, err := s.CreateToken(ctx, sp)
		if err != nil {
			t.Fatalf("create %s: %v", sp.Name, err)
		}
		ids[sp.Name] = tok.ID
	}
	var replays []fixtureReplay
	consume := func(name string, units, bytes int64) state.RequestID {
		req := state.ConsumeRequest{ID: state.NewRequestID(), Token: name, Units: units, Bytes: bytes}
		d, err := s.Consume(ctx, req)
		if err != nil {
			t.Fatalf("consume %s: %v", name, err)
		}
		if d.Reason != state.ReasonUnknown {
			replays = append(replays, fixtureReplay{Req: req, Allowed: d.Allowed})
		}
		return req.ID
	}
	for range 4 {
		consume("plain", 1, 0) // the fourth is exhausted
	}
	consume("bytes", 1, 600)
	consume("bytes", 1, 600) // bytes_exhausted
	refunded := consume("bytes", 1, 100)
	if err := s.Refund(ctx, refunded); err != nil {
		t.Fatal(err)
	}
	replays = replays[:len(replays)-1] // a refunded id may charge again
	tomb := state.NewRequestID()
	if err := s.Refund(ctx, tomb); err != nil { // before its consume: a tombstone
		t.Fatal(err)
	}
	consume("renewing", 2, 0)
	consume("expiring", 1, 0)
	consume("revoked", 1, 0)
	consume("reactivated", 1, 0)
	consume("reset", 2, 0)
	consume("raised", 1, 0)
	consume("meta.data_x-1", 1, 5)
	consume("nosuch", 1, 0) // unknown: remembers nothing
	if _, err := s.Revoke(ctx, ids["revoked"]); err != nil {
		t.Fatal(err)
	}
	consume("revoked", 1, 0)
	if _, err := s.Revoke(ctx, ids["reactivated"]); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Reactivate(ctx, ids["reactivated"]); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Reset(ctx, ids["reset"]); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateLimits(ctx, ids["raised"], state.LimitUpdate{UsageLimit: i64(10), ExpiresAt: &past}); err != nil {
		t.Fatal(err)
	}
	consume("raised", 1, 0) // expired
	if err := s.DeleteToken(ctx, ids["deleted"]); err != nil {
		t.Fatal(err)
	}
	multipartWorkload(t, s)
	return append(replays, poolWorkload(t, s)...)
}

// poolWorkload runs every pool op: pools with limits, bytes, a window and
// an expiry; a token in two of them; consumes naming pools (allowed, refused
// by a pool, a missing pool skipped); a refund; a multipart upload in a
// pool; an update, a reset, a token moved out of a pool and a deleted pool.
func poolWorkload(t *testing.T, s *Store) []fixtureReplay {
	ctx := clustertest.Within(t, 30*time.Second)
	far := time.Date(2099, 1, 2, 3, 4, 5, 0, time.UTC)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	pool := func(spec state.PoolSpec) *state.Pool {
		p, err := s.Pools().Create(ctx, spec)
		must(err)
		return p
	}
	plan := pool(state.PoolSpec{Name: "plan", UsageLimit: 3, RenewEvery: state.Duration(time.Hour)})
	bytesPool := pool(state.PoolSpec{Name: "bytes-pool", BytesLimit: 500, ExpiresAt: &far})
	pool(state.PoolSpec{Name: "bucket-a", UsageLimit: 100})
	gone := pool(state.PoolSpec{Name: "gone"})
	monthly := pool(state.PoolSpec{Name: "monthly-plan", BytesLimit: 1 << 30, RenewCalendar: "monthly on 31 at 06:00", NotifyAt: []int{1, 90}})
	if _, err := s.CreateToken(ctx, state.TokenSpec{Name: "calendar", UsageLimit: 5, RenewCalendar: "weekly on monday at 06:00", Pools: []string{monthly.ID}, NotifyAt: []int{20, 80}}); err != nil {
		t.Fatal(err)
	}
	tok, err := s.CreateToken(ctx, state.TokenSpec{Name: "pooled", UsageLimit: 10, Pools: []string{plan.ID, bytesPool.ID}})
	must(err)
	var replays []fixtureReplay
	consume := func(req state.ConsumeRequest) state.RequestID {
		req.ID = state.NewRequestID()
		d, err := s.Consume(ctx, req)
		must(err)
		replays = append(replays, fixtureReplay{Req: req, Allowed: d.Allowed})
		return req.ID
	}
	consume(state.ConsumeRequest{Token: "calendar", Units: 1, Bytes: 20 << 20}) // crosses 20% and the pool's 1%
	consume(state.ConsumeRequest{Token: "pooled", Units: 1, Bytes: 100, Pools: []string{"bucket-a"}})
	consume(state.ConsumeRequest{Token: "pooled", Units: 1, Bytes: 450})                                                   // refused by bytes-pool
	consume(state.ConsumeRequest{Token: "pooled", Units: 1, Bytes: 10, Pools: []string{"nosuch"}})                         // refused: no such pool
	consume(state.ConsumeRequest{Token: "pooled", Units: 1, Bytes: 10, Pools: []string{"nosuch"}, SkipMissingPools: true}) // allowed
	refunded := consume(state.ConsumeRequest{Token: "pooled", Units: 1, Bytes: 20, Pools: []string{"bucket-a"}})
	must(s.Refund(ctx, refunded))
	replays = replays[:len(replays)-1]
	_, err = s.CreateToken(ctx, state.TokenSpec{Name: "pooled-mp", UsageLimit: 10, Pools: []string{gone.ID}})
	must(err)
	id := state.NewRequestID()
	if d, err := s.Uploads().Reserve(ctx, state.ConsumeRequest{ID: id, Token: "pooled-mp", Units: 1, Pools: []string{"bucket-a"}}, time.Hour); err != nil || !d.Allowed {
		t.Fatalf("reserve in a pool: %+v %v", d, err)
	}
	u := state.UploadKeyOf("bucket-a/obj", "upload-pooled")
	must(s.Uploads().Bind(ctx, id, u))
	if d, err := s.Uploads().ChargePart(ctx, state.NewRequestID(), u, 1, 64, state.TokenKey{}); err != nil || !d.Allowed {
		t.Fatalf("part in a pool: %+v %v", d, err)
	}
	_, err = s.Pools().Update(ctx, plan.ID, state.PoolUpdate{UsageLimit: i64(5)})
	must(err)
	_, err = s.Pools().Reset(ctx, bytesPool.ID)
	must(err)
	none := []string{}
	_, err = s.UpdateLimits(ctx, tok.ID, state.LimitUpdate{Pools: &[]string{plan.ID}})
	must(err)
	mp, err := s.Lookup(ctx, "pooled-mp")
	must(err)
	_, err = s.UpdateLimits(ctx, mp.ID, state.LimitUpdate{Pools: &none})
	must(err)
	must(s.Pools().Delete(ctx, gone.ID))
	return replays
}

// fixturePools is every pool s holds.
func fixturePools(t *testing.T, s *Store) []state.Pool {
	ps, err := s.Pools().List(clustertest.Within(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

func comparePools(t *testing.T, from string, want, got []state.Pool) {
	t.Helper()
	w, _ := json.Marshal(want)
	g, _ := json.Marshal(got)
	if want == nil {
		w = []byte("[]")
	}
	if !bytes.Equal(w, g) {
		t.Errorf("%s: pools:\n got %s\nwant %s", from, g, w)
	}
}

// multipartWorkload runs every multipart op: a completed upload with a
// part uploaded twice, an aborted one, an open one with a refunded part, a
// pending one, one whose complete failed, and an expiry sweep.
func multipartWorkload(t *testing.T, s *Store) {
	ctx := clustertest.Within(t, 30*time.Second)
	key := state.KeyOf("multipart")
	upload := func(name string) state.UploadKey {
		id := state.NewRequestID()
		if d, err := s.Uploads().Reserve(ctx, state.ConsumeRequest{ID: id, Key: key, Units: 1}, time.Hour); err != nil || !d.Allowed {
			t.Fatalf("reserve %s: %+v %v", name, d, err)
		}
		u := state.UploadKeyOf("bucket/"+name, "upload-"+name)
		if err := s.Uploads().Bind(ctx, id, u); err != nil {
			t.Fatalf("bind %s: %v", name, err)
		}
		return u
	}
	part := func(u state.UploadKey, n int32, bytes int64) state.RequestID {
		id := state.NewRequestID()
		if d, err := s.Uploads().ChargePart(ctx, id, u, n, bytes, state.TokenKey{}); err != nil || !d.Allowed {
			t.Fatalf("part %d: %+v %v", n, d, err)
		}
		return id
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	done := upload("done")
	part(done, 1, 100)
	part(done, 2, 200)
	part(done, 2, 150)
	must(s.Uploads().BeginComplete(ctx, done, key, time.Hour))
	must(s.Uploads().EndComplete(ctx, done, true, []int32{1, 2}))
	aborted := upload("aborted")
	part(aborted, 1, 50)
	must(s.Uploads().Abort(ctx, aborted, key))
	open := upload("open")
	part(open, 1, 30)
	must(s.Refund(ctx, part(open, 2, 40)))
	if d, err := s.Uploads().Reserve(ctx, state.ConsumeRequest{ID: state.NewRequestID(), Key: key, Units: 1}, time.Hour); err != nil || !d.Allowed {
		t.Fatalf("pending reserve: %+v %v", d, err)
	}
	failed := upload("failed")
	must(s.Uploads().BeginComplete(ctx, failed, key, time.Hour))
	must(s.Uploads().EndComplete(ctx, failed, false, nil))
	if _, err := s.applyLocal(&state.Command{Op: state.OpExpireUploads}); err != nil {
		t.Fatal(err)
	}
}

// readFixtureState asks s, through its public API, for everything a fixture
// records.
func readFixtureState(t *testing.T, s *Store) map[string]*state.Token {
	ctx := clustertest.Within(t, 30*time.Second)
	out := map[string]*state.Token{}
	for _, name := range fixtureTokenNames {
		tok, err := s.Lookup(ctx, name)
		if err != nil {
			out[name] = nil
			continue
		}
		out[name] = tok
	}
	return out
}

func openFixtureNode(t *testing.T, dir string) *Store {
	return openFixtureNodeWith(t, dir, 0)
}

// openFixtureNodeWith opens a fixture node whose config proposes dedupSize
// (0: nothing), so a fixture's log can hold a set_dedup_size entry.
func openFixtureNodeWith(t *testing.T, dir string, dedupSize int) *Store {
	// Small log segments: a fixture's are committed, and raft-wal
	// preallocates each (64 MiB by default). No expiry sweep: a fixture's
	// uploads are past their deadlines an hour after it was written, and
	// the leader would expire them under the comparison.
	s, err := Open(Config{NodeID: "fixture", DataDir: dir, BindAddr: "127.0.0.1:0", SnapshotThreshold: 1 << 30, Logger: zap.NewNop(), DedupSize: dedupSize, walSegmentSize: 256 << 10, UploadSweep: 1000 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.WaitForLeader(clustertest.Within(t, 20*time.Second)); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestWriteFormatFixture(t *testing.T) {
	if *writeFixture == "" {
		t.Skip("run with -write-fixture NAME to write a new format fixture")
	}
	root := filepath.Join("testdata", "formats", *writeFixture)
	if _, err := os.Stat(root); err == nil {
		t.Fatalf("%s exists: fixtures are never rewritten, pick a new name", root)
	}
	dir := filepath.Join(root, "datadir")
	s := openFixtureNodeWith(t, dir, 2*state.MinDedupSize)
	// The fingerprint secret and the dedup size are proposed by the first
	// leader; wait for both so the log holds those ops too.
	clustertest.Eventually(t, 10*time.Second, "a fingerprint secret and the dedup size", func() bool {
		return s.fsm.Secret() != nil && s.fsm.DedupSize() == 2*state.MinDedupSize
	})
	replays := fixtureWorkload(t, s)
	// A log checkpoint (v8 on), as the leader's log check writes one.
	if _, err := s.applyLocal(&state.Command{Op: state.OpLogCheckpoint}); err != nil {
		t.Fatal(err)
	}
	want := fixtureState{Tokens: readFixtureState(t, s), Replays: replays, DedupSize: s.fsm.DedupSize(), Uploads: s.Uploads().List(), Pools: fixturePools(t, s)}
	if err := os.WriteFile(filepath.Join(root, "snapshot.bin"), snapshotBytes(t, s.fsm), 0o644); err != nil {
		t.Fatal(err)
	}
	b, _ := json.MarshalIndent(want, "", "  ")
	if err := os.WriteFile(filepath.Join(root, "want.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	s.Close()
	os.RemoveAll(filepath.Join(dir, "snapshots"))
	t.Logf("wrote %s", root)
}

// TestEveryShippedFormatStillLoads opens each fixture's data dir (replaying
// its log) and restores its snapshot, and checks both give the answers the
// build that wrote them gave.
func TestEveryShippedFormatStillLoads(t *testing.T) {
	for _, name := range fixtureNames {
		t.Run(name, func(t *testing.T) {
			root := filepath.Join("testdata", "formats", name)
			var want fixtureState
			b, err := os.ReadFile(filepath.Join(root, "want.json"))
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(b, &want); err != nil {
				t.Fatal(err)
			}

			// The log, replayed by a node opened on a copy of the data dir.
			dir := t.TempDir()
			if err := os.CopyFS(dir, os.DirFS(filepath.Join(root, "datadir"))); err != nil {
				t.Fatal(err)
			}
			s := openFixtureNode(t, dir)
			// Opened with the default log store, the fixture's log moved
			// into the WAL (from raft.db, where the older ones keep it).
			if !exists(filepath.Join(dir, walDir)) {
				t.Error("the fixture's log did not move into the WAL")
			}
			compareFixture(t, "log", want, readFixtureState(t, s))
			if want.DedupSize != 0 && s.fsm.DedupSize() != want.DedupSize {
				t.Errorf("log: dedup size %d, want %d", s.fsm.DedupSize(), want.DedupSize)
			}
			checkReplays(t, "log", s, want.Replays)
			compareUploads(t, "log", want.Uploads, s.Uploads().List())
			comparePools(t, "log", want.Pools, fixturePools(t, s))
			// What this build writes of the upgraded state holds no name.
			for _, name := range []string{"meta.data_x-1", "reactivated", "renewing", "expiring"} {
				if bytes.Contains(snapshotBytes(t, s.fsm), []byte(name)) {
					t.Errorf("the state upgraded from %s still holds the name %q", name, name)
				}
			}
			s.Close()

			// The snapshot, restored into a node's FSM.
			snap, err := os.ReadFile(filepath.Join(root, "snapshot.bin"))
			if err != nil {
				t.Fatal(err)
			}
			s2 := openFixtureNode(t, t.TempDir())
			if err := s2.fsm.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
				t.Fatalf("restoring %s snapshot: %v", name, err)
			}
			compareFixture(t, "snapshot", want, readFixtureState(t, s2))
			if want.DedupSize != 0 && s2.fsm.DedupSize() != want.DedupSize {
				t.Errorf("snapshot: dedup size %d, want %d", s2.fsm.DedupSize(), want.DedupSize)
			}
			checkReplays(t, "snapshot", s2, want.Replays)
			compareUploads(t, "snapshot", want.Uploads, s2.Uploads().List())
			comparePools(t, "snapshot", want.Pools, fixturePools(t, s2))
		})
	}
}

func compareFixture(t *testing.T, from string, want fixtureState, got map[string]*state.Token) {
	t.Helper()
	for _, name := range fixtureTokenNames {
		if g := got[name]; g != nil {
			if g.Key != state.KeyOf(name) || !state.IsTokenID(g.ID) {
				t.Errorf("%s: token %s has key %x, id %q", from, name, g.Key, g.ID)
			}
			if w := want.Tokens[name]; w != nil && w.ID == "" {
				// Written before tokens had ids: compare the rest.
				c := *g
				c.ID = ""
				got[name] = &c
			}
			if w := want.Tokens[name]; w != nil && w.ResetsAt == nil {
				// resets_at is derived from the window; answers of
				// versions before it lack it.
				c := *got[name]
				c.ResetsAt = nil
				got[name] = &c
			}
		}
		w, _ := json.Marshal(want.Tokens[name])
		g, _ := json.Marshal(got[name])
		if !bytes.Equal(w, g) {
			t.Errorf("%s: token %s:\n got %s\nwant %s", from, name, g, w)
		}
	}
}

func checkReplays(t *testing.T, from string, s *Store, replays []fixtureReplay) {
	t.Helper()
	if len(replays) == 0 {
		t.Fatal("fixture has no replays")
	}
	for _, r := range replays {
		d, err := s.Consume(context.Background(), r.Req)
		if err != nil {
			t.Fatal(err)
		}
		if !d.Duplicate || d.Allowed != r.Allowed {
			t.Errorf("%s: replayed consume of %s: got %+v, want a duplicate with allowed=%v", from, r.Req.Token, d, r.Allowed)
		}
	}
}

func compareUploads(t *testing.T, from string, want, got []state.UploadInfo) {
	t.Helper()
	w, _ := json.Marshal(want)
	g, _ := json.Marshal(got)
	if want == nil {
		w = []byte("[]") // fixtures from before multipart uploads hold none
	}
	if !bytes.Equal(w, g) {
		t.Errorf("%s: uploads:\n got %s\nwant %s", from, g, w)
	}
}
func i64(v int64) *int64 { return &v }
