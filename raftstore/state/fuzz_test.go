package state

import (
	"testing"
	"time"
)

// FuzzCommandCodec feeds arbitrary bytes to the log decoder and, when they
// decode, to the FSM: nothing may panic, a decoded command must re-encode to
// something that decodes the same way, and no command may push a token past
// its limit or below zero.
var fuzzKey = KeyOf("a")

func FuzzCommandCodec(f *testing.F) {
	seeds := []*Command{
		{Op: OpCreate, Time: t0.UnixNano(), ID: RequestID{1}, Spec: &TokenSpec{Name: "a", UsageLimit: 3}},
		{Op: OpConsume, Time: t0.UnixNano(), Consumes: []ConsumeRequest{{ID: RequestID{2}, Token: "a", Units: 1, Bytes: 10}}},
		{Op: OpRefund, Time: t0.UnixNano(), ID: RequestID{2}},
		{Op: OpUpdate, ID: RequestID{3}, Name: "a", Update: &LimitUpdate{UsageLimit: i64(1)}},
		{Op: OpReset, ID: RequestID{4}, Name: "a"},
		{Op: OpSetSecret, Secret: []byte("s")},
		{Op: OpReserveUpload, Time: t0.UnixNano(), ID: RequestID{5}, Upload: &UploadOp{Token: &fuzzKey, Units: 1, Expiry: int64(time.Hour)}},
		{Op: OpBindUpload, Time: t0.UnixNano(), ID: RequestID{5}, Upload: &UploadOp{Key: UploadKey{9}}},
		{Op: OpChargePart, Time: t0.UnixNano(), ID: RequestID{6}, Upload: &UploadOp{Key: UploadKey{9}, Part: 1, Bytes: 10}},
		{Op: OpCompleteBegin, Time: t0.UnixNano(), ID: RequestID{7}, Upload: &UploadOp{Key: UploadKey{9}, Expiry: int64(time.Minute)}},
		{Op: OpCompleteEnd, Time: t0.UnixNano(), ID: RequestID{8}, Upload: &UploadOp{Key: UploadKey{9}, OK: true, Parts: []int32{1}}},
		{Op: OpAbortUpload, Time: t0.UnixNano(), ID: RequestID{10}, Upload: &UploadOp{Key: UploadKey{9}, Token: &fuzzKey}},
		{Op: OpExpireUploads, Time: t0.Add(48 * time.Hour).UnixNano()},
		{Op: OpLogCheckpoint, Time: t0.UnixNano()},
	}
	for _, c := range seeds {
		b, _ := Encode(c)
		f.Add(b)
	}
	f.Add([]byte("\x01{\"op\":2,\"consumes\":[{\"id\":\"0000000000000000000000000000000a\",\"token\":\"a\",\"units\":-9223372036854775808}]}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Decode(data)
		if err != nil {
			return
		}
		again, err := Encode(c)
		if err != nil {
			t.Fatalf("decoded command does not re-encode: %v", err)
		}
		if _, err := Decode(again); err != nil {
			t.Fatalf("re-encoded command does not decode: %v", err)
		}
		tf := newTestFSM(t)
		tf.create(t0, TokenSpec{Name: "a", UsageLimit: 3, BytesLimit: 100})
		tf.f.Apply(2, data)
		tf.f.Apply(3, data) // and again, as a retry
		for _, tok := range tf.f.Tokens() {
			if tok.UsageCount < 0 || tok.BytesUsed < 0 {
				t.Fatalf("negative usage: %+v", tok)
			}
			if tok.Key == KeyOf("a") && tok.UsageLimit == 3 && tok.BytesLimit == 100 && (tok.UsageCount > 3 || tok.BytesUsed > 100) {
				t.Fatalf("limit passed: %+v", tok)
			}
		}
	})
}
