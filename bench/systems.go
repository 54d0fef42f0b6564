package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/raftquota/raftquota/internal/clustertest"
	"github.com/raftquota/raftquota/internal/testport"
	"github.com/raftquota/raftquota/raftstore"
	"github.com/raftquota/raftquota/raftstore/state"
)

// A tier-1 system decides "consume 1 if at least 1 remains" on a key,
// linearizably, for one of nkeys keys.
type system interface {
	setup(nkeys int) error
	consume(ctx context.Context, key int) (retries int, err error)
	close()
}

const plenty = 1 << 40 // limits that never run out during a run

// freeAddr is an address on 127.0.0.1 nothing listens on, for a server
// started later (see internal/testport: never from the ephemeral range,
// where the nodes' own outgoing connections could take it first).
func freeAddr() string { return fmt.Sprintf("127.0.0.1:%d", testport.Free()) }

// --- raftquota ---

type raftquotaSystem struct {
	n        int
	logStore string
	nodes    []*raftstore.Store
	// first is the node key 0's consumes go to (key k's go to node
	// (first+k) mod n): the hot token's node.
	first int
}

func newRaftquota(n int, dir, logStore string) (*raftquotaSystem, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nodes, err := clustertest.Start(ctx, n, raftstore.NewTCPStreamLayer, func(i int, members []clustertest.Member) (*raftstore.Store, error) {
		m := members[i]
		cfg := raftstore.Config{NodeID: m.ID, DataDir: filepath.Join(dir, m.ID), Stream: m.Layer, Logger: zap.NewNop(), LogStore: logStore}
		if n > 1 {
			cfg.Peers = peersOf(members)
		}
		return raftstore.Open(cfg)
	})
	return &raftquotaSystem{n: n, logStore: logStore, nodes: nodes}, err
}

// peersOf is the cluster's voters, for raftstore.Config.Peers.
func peersOf(members []clustertest.Member) []raftstore.Peer {
	peers := make([]raftstore.Peer, len(members))
	for i, m := range members {
		peers[i] = raftstore.Peer{ID: m.ID, Address: m.Address}
	}
	return peers
}

func (s *raftquotaSystem) setup(nkeys int) error {
	return parallel(nkeys, 64, s.create)
}

// create makes the token of key k, with a limit that never runs out.
func (s *raftquotaSystem) create(k int) error {
	_, err := s.nodes[k%s.n].CreateToken(context.Background(), state.TokenSpec{Name: keyName(k), UsageLimit: plenty})
	if errors.Is(err, state.ErrExists) {
		return nil
	}
	return err
}

func (s *raftquotaSystem) consume(ctx context.Context, key int) (int, error) {
	d, err := s.nodes[(s.first+key)%s.n].Consume(ctx, state.ConsumeRequest{ID: state.NewRequestID(), Token: keyName(key), Units: 1})
	if err == nil && !d.Allowed {
		err = fmt.Errorf("denied: %s", d.Reason)
	}
	return 0, err
}

// sendHotTo sends the hot token's consumes to the leader, or to a follower
// (the next node after the leader): a forwarded cell and a local one differ
// by about half, so each is a row of its own.
func (s *raftquotaSystem) sendHotTo(follower bool) {
	for i, n := range s.nodes {
		if n.IsLeader() {
			s.first = i
			if follower {
				s.first = (i + 1) % s.n
			}
		}
	}
}

// hotNote says where the hot token's clients went and whether that node
// led at the cell's end (a leader change during the cell shows here).
func (s *raftquotaSystem) hotNote() string {
	if s.n == 1 {
		return ""
	}
	for i, n := range s.nodes {
		if n.IsLeader() {
			if i == s.first {
				return fmt.Sprintf("clients on node%d, the leader", s.first+1)
			}
			return fmt.Sprintf("clients on node%d, a follower (node%d led)", s.first+1, i+1)
		}
	}
	return fmt.Sprintf("clients on node%d; no leader at the cell's end", s.first+1)
}

func (s *raftquotaSystem) close() {
	for _, n := range s.nodes {
		n.Close()
	}
}

func keyName(k int) string { return "k" + strconv.Itoa(k) }

// --- etcd: 3 members, read + Txn(ModRevision) compare-and-swap ---

type etcdSystem struct {
	procs []*exec.Cmd
	cli   *clientv3.Client
}

func newEtcd(dir string) (*etcdSystem, error) {
	if _, err := exec.LookPath("etcd"); err != nil {
		return nil, errors.New("etcd not installed (Debian package etcd-server)")
	}
	s := &etcdSystem{}
	type member struct{ name, peer, client string }
	var ms []member
	cluster := ""
	for i := 1; i <= 3; i++ {
		m := member{name: fmt.Sprintf("e%d", i), peer: freeAddr(), client: freeAddr()}
		ms = append(ms, m)
		if cluster != "" {
			cluster += ","
		}
		cluster += fmt.Sprintf("%s=http://%s", m.name, m.peer)
	}
	var endpoints []string
	for _, m := range ms {
		cmd := exec.Command("etcd", "--name", m.name, "--data-dir", filepath.Join(dir, m.name),
			"--listen-peer-urls", "http://"+m.peer, "--initial-advertise-peer-urls", "http://"+m.peer,
			"--listen-client-urls", "http://"+m.client, "--advertise-client-urls", "http://"+m.client,
			"--initial-cluster", cluster, "--initial-cluster-state", "new", "--initial-cluster-token", "bench",
			"--log-level", "error")
		logf, _ := os.Create(filepath.Join(dir, m.name+".log"))
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			s.close()
			return nil, err
		}
		s.procs = append(s.procs, cmd)
		endpoints = append(endpoints, "http://"+m.client)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		s.close()
		return nil, err
	}
	s.cli = cli
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Put(ctx, "ready", "1")
		cancel()
		if err == nil {
			return s, nil
		}
		if time.Now().After(deadline) {
			s.close()
			return nil, fmt.Errorf("etcd cluster did not come up: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (s *etcdSystem) setup(nkeys int) error {
	return parallel(nkeys, 64, func(k int) error {
		_, err := s.cli.Put(context.Background(), keyName(k), strconv.Itoa(plenty))
		return err
	})
}

func (s *etcdSystem) consume(ctx context.Context, key int) (int, error) {
	k := keyName(key)
	for retries := 0; ; retries++ {
		resp, err := s.cli.Get(ctx, k)
		if err != nil {
			return retries, err
		}
		if len(resp.Kvs) == 0 {
			return retries, errors.New("missing key")
		}
		kv := resp.Kvs[0]
		v, _ := strconv.ParseInt(string(kv.Value), 10, 64)
		if v < 1 {
			return retries, errors.New("denied")
		}
		txn, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(k), "=", kv.ModRevision)).
			Then(clientv3.OpPut(k, strconv.FormatInt(v-1, 10))).Commit()
		if err != nil {
			return retries, err
		}
		if txn.Succeeded {
			return retries, nil
		}
	}
}

func (s *etcdSystem) close() {
	if s.cli != nil {
		s.cli.Close()
	}
	stopAll(s.procs)
}

// --- Redis: one node, appendfsync always, EVALSHA Lua decrement ---

type redisSystem struct {
	proc *exec.Cmd
	cli  *redis.Client
	sha  string
}

const decrScript = `local v = tonumber(redis.call('GET', KEYS[1]))
if v and v >= 1 then redis.call('DECRBY', KEYS[1], 1) return 1 end
return 0`

func newRedis(dir string) (*redisSystem, error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, errors.New("redis-server not installed (Debian package redis-server)")
	}
	addr := freeAddr()
	_, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command("redis-server", "--bind", "127.0.0.1", "--port", port, "--dir", dir,
		"--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no", "--loglevel", "warning")
	logf, _ := os.Create(filepath.Join(dir, "redis.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &redisSystem{proc: cmd, cli: redis.NewClient(&redis.Options{Addr: addr, PoolSize: 300})}
	deadline := time.Now().Add(20 * time.Second)
	for s.cli.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			s.close()
			return nil, errors.New("redis did not come up")
		}
		time.Sleep(100 * time.Millisecond)
	}
	sha, err := s.cli.ScriptLoad(context.Background(), decrScript).Result()
	if err != nil {
		s.close()
		return nil, err
	}
	s.sha = sha
	return s, nil
}

func (s *redisSystem) setup(nkeys int) error {
	pipe := s.cli.Pipeline()
	for k := 0; k < nkeys; k++ {
		pipe.Set(context.Background(), keyName(k), plenty, 0)
	}
	_, err := pipe.Exec(context.Background())
	return err
}

func (s *redisSystem) consume(ctx context.Context, key int) (int, error) {
	v, err := s.cli.EvalSha(ctx, s.sha, []string{keyName(key)}).Int()
	if err == nil && v != 1 {
		err = errors.New("denied")
	}
	return 0, err
}

func (s *redisSystem) close() {
	if s.cli != nil {
		s.cli.Close()
	}
	stopAll([]*exec.Cmd{s.proc})
}

func stopAll(procs []*exec.Cmd) {
	for _, p := range procs {
		if p == nil || p.Process == nil {
			continue
		}
		p.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			p.Process.Kill()
			<-done
		}
	}
}
