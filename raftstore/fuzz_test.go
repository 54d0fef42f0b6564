package raftstore

import (
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// FuzzCommandCodec feeds arbitrary bytes to the log decoder and, when they
// decode, to the FSM: nothing may panic, a decoded command must re-encode to
// something that decodes the same way, and no command may push a token past
// its limit or below zero.
var fuzzKey = KeyOf("a")

func FuzzCommandCodec(f *testing.F) {
	seeds := []*command{
		{Op: opCreate, Time: t0.UnixNano(), ID: RequestID{1}, Spec: &TokenSpec{Name: "a", UsageLimit: 3}},
		{Op: opConsume, Time: t0.UnixNano(), Consumes: []ConsumeRequest{{ID: RequestID{2}, Token: "a", Units: 1, Bytes: 10}}},
		{Op: opRefund, Time: t0.UnixNano(), ID: RequestID{2}},
		{Op: opUpdate, ID: RequestID{3}, Name: "a", Update: &LimitUpdate{UsageLimit: i64(1)}},
		{Op: opReset, ID: RequestID{4}, Name: "a"},
		{Op: opSetSecret, Secret: []byte("s")},
		{Op: opReserveUpload, Time: t0.UnixNano(), ID: RequestID{5}, Upload: &UploadOp{Token: &fuzzKey, Units: 1, Expiry: int64(time.Hour)}},
		{Op: opBindUpload, Time: t0.UnixNano(), ID: RequestID{5}, Upload: &UploadOp{Key: UploadKey{9}}},
		{Op: opChargePart, Time: t0.UnixNano(), ID: RequestID{6}, Upload: &UploadOp{Key: UploadKey{9}, Part: 1, Bytes: 10}},
		{Op: opCompleteBegin, Time: t0.UnixNano(), ID: RequestID{7}, Upload: &UploadOp{Key: UploadKey{9}, Expiry: int64(time.Minute)}},
		{Op: opCompleteEnd, Time: t0.UnixNano(), ID: RequestID{8}, Upload: &UploadOp{Key: UploadKey{9}, OK: true, Parts: []int32{1}}},
		{Op: opAbortUpload, Time: t0.UnixNano(), ID: RequestID{10}, Upload: &UploadOp{Key: UploadKey{9}, Token: &fuzzKey}},
		{Op: opExpireUploads, Time: t0.Add(48 * time.Hour).UnixNano()},
	}
	for _, c := range seeds {
		b, _ := encodeCommand(c)
		f.Add(b)
	}
	f.Add([]byte("\x01{\"op\":2,\"consumes\":[{\"id\":\"0000000000000000000000000000000a\",\"token\":\"a\",\"units\":-9223372036854775808}]}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := decodeCommand(data)
		if err != nil {
			return
		}
		again, err := encodeCommand(c)
		if err != nil {
			t.Fatalf("decoded command does not re-encode: %v", err)
		}
		if _, err := decodeCommand(again); err != nil {
			t.Fatalf("re-encoded command does not decode: %v", err)
		}
		tf := newTestFSM(t)
		tf.create(t0, TokenSpec{Name: "a", UsageLimit: 3, BytesLimit: 100})
		tf.f.Apply(&raft.Log{Index: 2, Data: data})
		tf.f.Apply(&raft.Log{Index: 3, Data: data}) // and again, as a retry
		for _, tok := range tf.f.list() {
			if tok.UsageCount < 0 || tok.BytesUsed < 0 {
				t.Fatalf("negative usage: %+v", tok)
			}
			if tok.Key == KeyOf("a") && tok.UsageLimit == 3 && tok.BytesLimit == 100 && (tok.UsageCount > 3 || tok.BytesUsed > 100) {
				t.Fatalf("limit passed: %+v", tok)
			}
		}
	})
}
