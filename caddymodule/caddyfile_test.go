package caddymodule

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/raftquota/raftquota/internal/clustercert"
	"github.com/raftquota/raftquota/raftstore"
)

// TestCaddyfileAdapt checks each testdata/caddyfile_adapt/*.caddyfiletest:
// the Caddyfile above the dashes must adapt to exactly the JSON below them.
// Run with UPDATE_GOLDEN=1 to rewrite the JSON after a deliberate change.
func TestCaddyfileAdapt(t *testing.T) {
	for _, g := range goldenFiles(t) {
		f, input, want, ok := g.path, g.input, g.want, g.ok
		t.Run(filepath.Base(f), func(t *testing.T) {
			if os.Getenv("UPDATE_GOLDEN") != "" {
				got, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), map[string]any{"filename": f})
				if err != nil {
					t.Fatal(err)
				}
				var out bytes.Buffer
				json.Indent(&out, got, "", "\t")
				os.WriteFile(f, []byte(strings.TrimRight(input, "\n")+"\n----------\n"+out.String()+"\n"), 0o644)
				return
			}
			if !ok {
				t.Fatalf("%s has no ---------- separator", f)
			}
			if !caddytest.CompareAdapt(t, f, input+"\n", "caddyfile", strings.TrimRight(want, "\n")) {
				t.Fail()
			}
		})
	}
}

// golden is one testdata/caddyfile_adapt file: a Caddyfile, a line of
// dashes, and the JSON it adapts to.
type golden struct {
	path, input, want string
	ok                bool // has the separator
}

func goldenFiles(t testing.TB) []golden {
	files, err := filepath.Glob("testdata/caddyfile_adapt/*.caddyfiletest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	out := make([]golden, len(files))
	for i, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out[i].path = f
		out[i].input, out[i].want, out[i].ok = strings.Cut(string(data), "\n----------\n")
	}
	return out
}

func TestCaddyfileErrors(t *testing.T) {
	tests := []struct{ name, input, want string }{
		{"global option with args", "{\n quota extra\n}", "wrong argument count"},
		{"unknown global option", "{\n quota {\n  bogus 1\n }\n}", `unrecognized quota option "bogus"`},
		{"node_id without value", "{\n quota {\n  node_id\n }\n}", "node_id needs a value"},
		{"node_id with two values", "{\n quota {\n  node_id a b\n }\n}", "node_id takes one value"},
		{"peer needs two args", "{\n quota {\n  peer node1\n }\n}", "peer takes an id and an address"},
		{"dial needs two args", "{\n quota {\n  dial node1\n }\n}", "dial takes a peer id and an address"},
		{"tls needs three files", "{\n quota {\n  tls cert.pem key.pem\n }\n}", "tls takes three files"},
		{"plaintext takes no args", "{\n quota {\n  plaintext yes\n }\n}", "wrong argument count"},
		{"join takes no args", "{\n quota {\n  join now\n }\n}", "wrong argument count"},
		{"bad role", "{\n quota {\n  role observer\n }\n}", "role is voter or gateway"},
		{"bad log store", "{\n quota {\n  log_store rocksdb\n }\n}", `log_store is boltdb or wal, got "rocksdb"`},
		{"bad gateway_timeout", "{\n quota {\n  gateway_timeout never\n }\n}", "gateway_timeout must be a positive duration"},
		{"bad duration", "{\n quota {\n  heartbeat_timeout soon\n }\n}", "heartbeat_timeout must be a positive duration"},
		{"negative duration", "{\n quota {\n  apply_timeout -1s\n }\n}", "apply_timeout must be a positive duration"},
		{"bad dedup size", "{\n quota {\n  dedup_size 0\n }\n}", "dedup_size must be a whole number of at least 1"},
		{"bad max batch", "{\n quota {\n  max_batch many\n }\n}", "max_batch must be a whole number"},
		{"bad snapshot threshold", "{\n quota {\n  snapshot_threshold -5\n }\n}", "snapshot_threshold must be a whole number"},
		{"directive without key", ":80 {\n quota {\n  cost 1\n }\n}", "quota needs a key"},
		{"directive inline arg", ":80 {\n quota /x token\n}", "quota takes its settings in a block"},
		{"unknown subdirective", ":80 {\n quota {\n  key {http.request.header.X}\n  colour blue\n }\n}", `unrecognized quota subdirective "colour"`},
		{"bad cost", ":80 {\n quota {\n  key {http.request.header.X}\n  cost 0\n }\n}", "cost must be a whole number of at least 1"},
		{"bad charge_on", ":80 {\n quota {\n  key {http.request.header.X}\n  charge_on later\n }\n}", "charge_on must be success or attempt"},
		{"bad on_unavailable", ":80 {\n quota {\n  key {http.request.header.X}\n  on_unavailable maybe\n }\n}", "on_unavailable must be deny or allow"},
		{"check_only takes no args", ":80 {\n quota {\n  key {http.request.header.X}\n  check_only yes\n }\n}", "wrong argument count"},
		{"bad timeout", ":80 {\n quota {\n  key {http.request.header.X}\n  timeout 0s\n }\n}", "timeout must be a positive duration"},
		{"s3 inline arg", ":80 {\n quota {\n  s3 on\n }\n}", "s3 takes its settings in a block"},
		{"unknown s3 setting", ":80 {\n quota {\n  s3 {\n   region x\n  }\n }\n}", `unrecognized s3 setting "region"`},
		{"s3 domain with a port", ":80 {\n quota {\n  s3 {\n   domain s3.example.com:9000\n  }\n }\n}", "without a port"},
		{"s3 domain without a name", ":80 {\n quota {\n  s3 {\n   domain\n  }\n }\n}", "domain needs a value"},
		{"bad multipart_expiry", ":80 {\n quota {\n  s3 {\n   multipart_expiry forever\n  }\n }\n}", "multipart_expiry must be a positive duration"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(tt.input), nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

// Provisioning (what `caddy validate` runs) rejects bad settings with clear
// messages, and never starts the node.
func TestAppProvisionRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		app  App
		want string
	}{
		{"peers without self", App{NodeID: "n1", RaftAddress: "127.0.0.1:1", Peers: peers("n2", "n3")}, "peers must include this node"},
		{"duplicate peer", App{NodeID: "n1", RaftAddress: "127.0.0.1:1", Peers: peers("n1", "n1")}, "listed twice"},
		{"bad raft address", App{NodeID: "n1", RaftAddress: "nowhere"}, "raft address"},
		{"cluster without tls", App{NodeID: "n1", RaftAddress: "127.0.0.1:7001", Peers: peers("n1", "n2")}, "cluster nodes must authenticate each other"},
		{"join without tls", App{NodeID: "n1", RaftAddress: "127.0.0.1:7001", Join: true}, "cluster nodes must authenticate each other"},
		{"single node off loopback", App{NodeID: "n1", RaftAddress: "0.0.0.0:7001", AdvertiseAddress: "10.0.0.1:7001"}, "not a loopback address"},
		{"tls files missing", App{NodeID: "n1", RaftAddress: "127.0.0.1:7001", TLS: &raftstore.TLSFiles{CertFile: "nope.pem", KeyFile: "nope-key.pem", CAFile: "ca.pem"}}, "loading node certificate"},
		{"gateway among its peers", App{NodeID: "n1", RaftAddress: "127.0.0.1:7001", Role: "gateway", Plaintext: true, Peers: peers("n1", "n2")}, "a gateway is not a voter"},
		{"gateway without peers", App{NodeID: "g1", RaftAddress: "127.0.0.1:7001", Role: "gateway", Plaintext: true}, "a gateway needs the voters it joins"},
		{"gateway with join", App{NodeID: "g1", RaftAddress: "127.0.0.1:7001", Role: "gateway", Join: true, Plaintext: true, Peers: peers("n1")}, "drop join"},
		{"gateway without tls", App{NodeID: "g1", RaftAddress: "127.0.0.1:7001", Role: "gateway", Peers: peers("n1", "n2")}, "cluster nodes must authenticate each other"},
		{"tls and plaintext", App{NodeID: "n1", RaftAddress: "127.0.0.1:7001", Plaintext: true, TLS: &raftstore.TLSFiles{CertFile: "a", KeyFile: "b", CAFile: "c"}}, "exclude each other"},
		{"gateway with a log store", App{NodeID: "g1", RaftAddress: "127.0.0.1:7001", Role: "gateway", LogStore: "wal", Plaintext: true, Peers: peers("n1")}, "a gateway keeps its log in memory"},
		{"unknown log store (JSON)", App{NodeID: "n1", RaftAddress: "127.0.0.1:7001", LogStore: "rocksdb"}, `log_store is boltdb or wal, got "rocksdb"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.app.provisionConfig()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
}

func peers(ids ...string) []raftstore.Peer {
	out := make([]raftstore.Peer, len(ids))
	for i, id := range ids {
		out[i] = raftstore.Peer{ID: id, Address: "127.0.0.1:700" + string(rune('1'+i))}
	}
	return out
}

func TestAppProvisionAcceptsSafeNetworkSettings(t *testing.T) {
	dir := t.TempDir()
	if err := clustercert.Generate(dir, []clustercert.Node{{ID: "n1", Hosts: []string{"127.0.0.1"}}}, time.Hour); err != nil {
		t.Fatal(err)
	}
	f := clustercert.NodeFiles(dir, "n1")
	for name, app := range map[string]App{
		"single loopback node":   {NodeID: "n1", RaftAddress: "127.0.0.1:7001"},
		"cluster with tls":       {NodeID: "n1", RaftAddress: "127.0.0.1:7001", Peers: peers("n1", "n2"), TLS: &raftstore.TLSFiles{CertFile: f.Cert, KeyFile: f.Key, CAFile: f.CA}},
		"cluster with plaintext": {NodeID: "n1", RaftAddress: "127.0.0.1:7001", Peers: peers("n1", "n2"), Plaintext: true},
	} {
		if err := app.provisionConfig(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestReloadNamesSettingsThatWaitForARestart(t *testing.T) {
	base := raftstore.Config{NodeID: "n1", Peers: peers("n1", "n2"), DedupSize: 10}
	next := base
	next.Peers = peers("n1", "n2", "n3")
	next.DedupSize = 20
	next.HeartbeatTimeout = time.Second
	next.LogStore = raftstore.LogStoreWAL
	got := restartOnly(base, next)
	want := []string{"peer", "heartbeat_timeout", "dedup_size", "log_store"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("restartOnly = %v, want %v", got, want)
	}
	if got := restartOnly(base, base); len(got) != 0 {
		t.Fatalf("unchanged config reported %v", got)
	}
}

// TestNewNodeIDBesideOldStateIsWarned: a node whose default data dir is new
// while another node id's default data dir holds a cluster's state says so
// at WARN, with both paths (a changed node_id would otherwise quietly start
// an empty cluster).
func TestNewNodeIDBesideOldStateIsWarned(t *testing.T) {
	root := t.TempDir()
	old := filepath.Join(root, "quota", "node1")
	if err := os.MkdirAll(old, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(old, "raft.db"), []byte("state"), 0o600); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.WarnLevel)
	a := &App{NodeID: "edge1", DataDir: filepath.Join(root, "quota", "edge1"), defaultDataDir: true, logger: zap.New(core)}
	a.warnOrphanedState()
	if logs.Len() != 1 || logs.All()[0].ContextMap()["data_dir_with_state"] != old {
		t.Fatalf("warnings: %v", logs.All())
	}
	// An explicit data_dir is the operator's choice: no guessing.
	a.defaultDataDir = false
	a.warnOrphanedState()
	if logs.Len() != 1 {
		t.Fatal("warned about an explicitly configured data dir")
	}
}
