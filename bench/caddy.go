package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// caddyCluster is real Caddy processes: a storage backend, and in front of
// it either plain reverse_proxy or 1 or 3 quota nodes.
type caddyCluster struct {
	name    string
	dir     string
	bin     string
	procs   []*exec.Cmd
	fronts  []string // http://127.0.0.1:port of each front node
	admin   string
	admins  []string // every quota node's admin endpoint
	storage string
	discard *http.Server // the discard backend, when used
}

// startDiscard serves a backend that reads and drops each body and answers
// 201: with it, what the table measures is Caddy and the gate, not storage
// (the S3 backend fsyncs every object and saturates first).
func startDiscard() (*http.Server, string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusCreated)
	})}
	go srv.Serve(l)
	return srv, l.Addr().String(), nil
}

func buildCaddy(dir string) (string, error) {
	bin := filepath.Join(dir, "caddy")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/caddy")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	return bin, cmd.Run()
}

func (c *caddyCluster) start(name, config string) error {
	path := filepath.Join(c.dir, name+".Caddyfile")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		return err
	}
	cmd := exec.Command(c.bin, "run", "--config", path, "--adapter", "caddyfile")
	cmd.Dir = c.dir
	cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+filepath.Join(c.dir, "xdg"), "XDG_CONFIG_HOME="+filepath.Join(c.dir, "xdg"))
	logf, err := os.Create(filepath.Join(c.dir, name+".log"))
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return err
	}
	c.procs = append(c.procs, cmd)
	return nil
}

func port(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }

// tmpfsLabel names a row whose Raft data dirs are in tmpfs.
func tmpfsLabel(name string) string { return name + ", data dirs in tmpfs (no fsync cost)" }

// tmpfsDir makes a folder for Raft data in /dev/shm, where an fsync costs
// next to nothing; cleanupTmpfs removes it when the bench ends.
func tmpfsDir() (string, error) {
	if st, err := os.Stat("/dev/shm"); err != nil || !st.IsDir() {
		return "", errNoTmpfs
	}
	d, err := os.MkdirTemp("/dev/shm", "raftquota-bench-")
	if err != nil {
		return "", err
	}
	tmpfsDirs = append(tmpfsDirs, d)
	return d, nil
}

var errNoTmpfs = errors.New("no /dev/shm (tmpfs) on this machine")

// tmpfsDirs are removed when the bench ends (cleanupTmpfs).
var tmpfsDirs []string

func cleanupTmpfs() {
	for _, d := range tmpfsDirs {
		os.RemoveAll(d)
	}
}

// newCaddyCluster starts mode "plain", "quota1", "quota3" or "quota3gwN"
// (3 voters and N gateways) in front of backend "storage" (the examples'
// S3 store) or "discard". "quota1tmpfs" and "quota3tmpfs" keep the Raft
// data dirs in tmpfs: not a deployment, a row with the disk's fsync cost
// taken out. "quota1boltdb" and "quota3boltdb" set log_store boltdb (the
// default is wal).
func newCaddyCluster(bin, dir, mode, backend string) (*caddyCluster, error) {
	c := &caddyCluster{dir: dir, bin: bin}
	dataDir, logStore := dir, ""
	if m, ok := strings.CutSuffix(mode, "boltdb"); ok {
		mode, logStore = m, "\t\tlog_store boltdb\n"
		defer func() { c.name += ", log_store boltdb" }()
	}
	if m, ok := strings.CutSuffix(mode, "tmpfs"); ok {
		d, err := tmpfsDir()
		if err != nil {
			return nil, err
		}
		mode, dataDir = m, d
		defer func() { c.name = tmpfsLabel(c.name) }()
	}
	if err := c.startBackend(backend); err != nil {
		return nil, err
	}
	switch mode {
	case "plain":
		c.name = "Caddy reverse_proxy (no quota)"
		front := freeAddr()
		c.fronts = []string{"http://" + front}
		if err := c.start("plain", "{\n\tadmin off\n\tpersist_config off\n}\n"+c.site(front, false)); err != nil {
			return c, err
		}
	case "quota1":
		c.name = "Caddy + quota, 1 node"
		front, admin, raftAddr := freeAddr(), freeAddr(), freeAddr()
		c.fronts, c.admin = []string{"http://" + front}, "http://"+admin
		c.admins = append(c.admins, c.admin)
		cfg := fmt.Sprintf("{\n\tadmin %s\n\tpersist_config off\n\tquota {\n\t\tnode_id node1\n\t\tdata_dir %s\n\t\traft_address %s\n%s\t}\n}\n", admin, filepath.Join(dataDir, "raft1"), raftAddr, logStore)
		if err := c.start("node1", cfg+c.site(front, true)); err != nil {
			return c, err
		}
	default: // quota3, or quota3gwN: 3 voters and N gateways, load over all of them
		if err := c.startQuota3(mode, dataDir, logStore); err != nil {
			return c, err
		}
	}
	return c, c.ready()
}

// startBackend starts the storage the fronts proxy to: the examples' S3
// store, or a discard server.
func (c *caddyCluster) startBackend(backend string) error {
	dir := c.dir
	if backend == "discard" {
		srv, addr, err := startDiscard()
		if err != nil {
			return err
		}
		c.discard, c.storage = srv, addr
	} else {
		c.storage = freeAddr()
		storage := fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n}\n:%s {\n\tbind 127.0.0.1\n\ts3_storage {\n\t\tpath %s\n\t}\n}\n", port(c.storage), filepath.Join(dir, "s3.db"))
		if err := c.start("storage", storage); err != nil {
			return err
		}
	}
	return nil
}

// site is a front's site block: /upload/ charges (when gate), /check/
// decides with check_only, charging nothing.
func (c *caddyCluster) site(front string, gate bool) string {
	q, check := "", ""
	if gate {
		q = "\t\tquota {\n\t\t\tkey {http.request.header.X-Quota-Token}\n\t\t\tbytes {http.request.header.Content-Length}\n\t\t}\n"
		check = fmt.Sprintf("\thandle_path /check/* {\n\t\tquota {\n\t\t\tkey {http.request.header.X-Quota-Token}\n\t\t\tbytes {http.request.header.Content-Length}\n\t\t\tcheck_only\n\t\t}\n\t\treverse_proxy %s {\n\t\t\ttransport http {\n\t\t\t\tkeepalive_idle_conns_per_host 256\n\t\t\t}\n\t\t}\n\t}\n", c.storage)
	}
	return fmt.Sprintf(":%s {\n\tbind 127.0.0.1\n\thandle_path /upload/* {\n%s\t\treverse_proxy %s {\n\t\t\ttransport http {\n\t\t\t\tkeepalive_idle_conns_per_host 256\n\t\t\t}\n\t\t}\n\t}\n%s}\n", port(front), q, c.storage, check)
}

// startQuota3 starts 3 voters with mutual TLS, and N gateways for mode
// quota3gwN.
func (c *caddyCluster) startQuota3(mode, dataDir, logStore string) error {
	bin, dir := c.bin, c.dir
	gateways := 0
	if n, ok := strings.CutPrefix(mode, "quota3gw"); ok {
		fmt.Sscan(n, &gateways)
	} else if mode != "quota3" {
		return fmt.Errorf("unknown mode %q", mode)
	}
	c.name = "Caddy + quota, 3 nodes (mTLS)"
	if gateways > 0 {
		c.name = fmt.Sprintf("Caddy + quota, 3 voters + %d gateways (mTLS)", gateways)
	}
	names := []string{"node1=127.0.0.1", "node2=127.0.0.1", "node3=127.0.0.1"}
	for g := 1; g <= gateways; g++ {
		names = append(names, fmt.Sprintf("gw%d=127.0.0.1", g))
	}
	certs := exec.Command(bin, append([]string{"quota", "certs", "--dir", filepath.Join(dir, "certs")}, names...)...)
	if out, err := certs.CombinedOutput(); err != nil {
		return fmt.Errorf("making certificates: %v: %s", err, out)
	}
	var raftAddrs, peers []string
	for i := 1; i <= 3; i++ {
		a := freeAddr()
		raftAddrs = append(raftAddrs, a)
		peers = append(peers, fmt.Sprintf("\t\tpeer node%d %s\n", i, a))
	}
	for i := 1; i <= 3; i++ {
		front, admin := freeAddr(), freeAddr()
		c.fronts = append(c.fronts, "http://"+front)
		c.admins = append(c.admins, "http://"+admin)
		if i == 1 {
			c.admin = "http://" + admin
		}
		certDir := filepath.Join(dir, "certs")
		cfg := fmt.Sprintf("{\n\tadmin %s\n\tpersist_config off\n\tquota {\n\t\tnode_id node%d\n\t\tdata_dir %s\n\t\traft_address %s\n%s\t\ttls %s/node%d.pem %s/node%d-key.pem %s/ca.pem\n%s\t}\n}\n",
			admin, i, filepath.Join(dataDir, fmt.Sprintf("raft%d", i)), raftAddrs[i-1], strings.Join(peers, ""), certDir, i, certDir, i, certDir, logStore)
		if err := c.start(fmt.Sprintf("node%d", i), cfg+c.site(front, true)); err != nil {
			return err
		}
	}
	for g := 1; g <= gateways; g++ {
		front, admin := freeAddr(), freeAddr()
		c.fronts = append(c.fronts, "http://"+front)
		c.admins = append(c.admins, "http://"+admin)
		certDir := filepath.Join(dir, "certs")
		cfg := fmt.Sprintf("{\n\tadmin %s\n\tpersist_config off\n\tquota {\n\t\tnode_id gw%d\n\t\trole gateway\n\t\tdata_dir %s\n\t\traft_address %s\n%s\t\ttls %s/gw%d.pem %s/gw%d-key.pem %s/ca.pem\n\t}\n}\n",
			admin, g, filepath.Join(dir, fmt.Sprintf("gw%d", g)), freeAddr(), strings.Join(peers, ""), certDir, g, certDir, g, certDir)
		if err := c.start(fmt.Sprintf("gw%d", g), cfg+c.site(front, true)); err != nil {
			return err
		}
	}
	return nil
}

// ready waits until an upload goes through every front.
func (c *caddyCluster) ready() error {
	if c.admin != "" {
		deadline := time.Now().Add(30 * time.Second)
		for {
			resp, err := http.Post(c.admin+"/quota/tokens", "application/json", strings.NewReader(`{"name":"bench-token"}`))
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusCreated || resp.StatusCode == http.StatusConflict {
					break
				}
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s: could not create the token", c.name)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	for _, f := range c.fronts {
		deadline := time.Now().Add(30 * time.Second)
		for {
			if err := c.upload(context.Background(), http.DefaultClient, f, "warmup", []byte("x")); err == nil {
				break
			} else if time.Now().After(deadline) {
				return fmt.Errorf("%s: %v", c.name, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	return nil
}

func (c *caddyCluster) upload(ctx context.Context, cl *http.Client, front, object string, body []byte) error {
	return c.put(ctx, cl, front, "/upload/bench/"+object, body)
}

// put sends one PUT of body to path on front with the bench token; any
// 2xx answer is a success.
func (c *caddyCluster) put(ctx context.Context, cl *http.Client, front, path string, body []byte) error {
	req, _ := http.NewRequestWithContext(ctx, "PUT", front+path, bytes.NewReader(body))
	req.Header.Set("X-Quota-Token", "bench-token")
	resp, err := cl.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// procCPU is the CPU time (user+system) process pid has used, from
// /proc/pid/stat (clock ticks of 10 ms).
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces) start after ")".
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	var utime, stime int64
	fmt.Sscan(f[11], &utime)
	fmt.Sscan(f[12], &stime)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// cpuShares is how much CPU each process of the cluster used, and this
// process (the clients and the discard backend), over a window.
type cpuShares struct {
	names []string
	start []time.Duration
	pids  []int
	t0    time.Time
}

func (c *caddyCluster) cpuStart() *cpuShares {
	s := &cpuShares{t0: time.Now()}
	for _, p := range c.procs {
		s.names = append(s.names, filepath.Base(p.Args[len(p.Args)-3]))
		s.pids = append(s.pids, p.Process.Pid)
		s.start = append(s.start, procCPU(p.Process.Pid))
	}
	s.names = append(s.names, "bench (clients, discard backend)")
	s.start = append(s.start, cpuTime())
	return s
}

// fronts is the CPU the Caddy fronts (plain, or the quota nodes) used
// since the window began: every process of the cluster but the storage
// backend.
func (s *cpuShares) fronts() time.Duration {
	var sum time.Duration
	for i, pid := range s.pids {
		if s.names[i] != "storage.Caddyfile" {
			sum += procCPU(pid) - s.start[i]
		}
	}
	return sum
}

// String says each process's CPU as cores busy over the window.
func (s *cpuShares) String() string {
	wall := time.Since(s.t0).Seconds()
	var parts []string
	for i, name := range s.names {
		now := cpuTime()
		if i < len(s.pids) {
			now = procCPU(s.pids[i])
		}
		parts = append(parts, fmt.Sprintf("%s %.2f", strings.TrimSuffix(name, ".Caddyfile"), (now-s.start[i]).Seconds()/wall))
	}
	return "cores busy: " + strings.Join(parts, ", ")
}

// batchTotals sums raftquota_batch_size over the cluster's nodes (Caddy's
// admin /metrics): for Raft log entries (forwarded="false") and forwarded
// RPCs ("true"), the number of batches and the consumes they carried.
func (c *caddyCluster) batchTotals() (entries, entryConsumes, rpcs, rpcConsumes float64) {
	for _, a := range c.admins {
		m := scrape(a)
		entries += m[`raftquota_batch_size_count{forwarded="false"}`]
		entryConsumes += m[`raftquota_batch_size_sum{forwarded="false"}`]
		rpcs += m[`raftquota_batch_size_count{forwarded="true"}`]
		rpcConsumes += m[`raftquota_batch_size_sum{forwarded="true"}`]
	}
	return
}

// scrape reads a node's admin /metrics: each series (name and labels, as
// written) and its value; empty when the node does not answer.
func scrape(admin string) map[string]float64 {
	m := map[string]float64{}
	resp, err := http.Get(admin + "/metrics")
	if err != nil {
		return m
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, line := range strings.Split(string(b), "\n") {
		if name, value, ok := strings.Cut(line, " "); ok && !strings.HasPrefix(line, "#") {
			var v float64
			fmt.Sscan(value, &v)
			m[name] = v
		}
	}
	return m
}

// batchNote says how large the cell's batches were on average, from the
// totals before it (batchTotals).
func (c *caddyCluster) batchNote(e0, ec0, r0, rc0 float64) string {
	e, ec, r, rc := c.batchTotals()
	note := ""
	if e > e0 {
		note = fmt.Sprintf("; %.1f consumes per Raft entry", (ec-ec0)/(e-e0))
	}
	if r > r0 {
		note += fmt.Sprintf(", %.1f per forwarded RPC", (rc-rc0)/(r-r0))
	}
	return note
}

// profile takes a CPU profile of every quota node for d, through Caddy's
// admin endpoint (/debug/pprof/profile), into dir/node<i>.pprof. It
// returns at once; wait on the result for the files.
func (c *caddyCluster) profile(dir string, d time.Duration) <-chan error {
	done := make(chan error, 1)
	go func() {
		errs := make(chan error, len(c.admins))
		for i, a := range c.admins {
			go func() {
				resp, err := http.Get(fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", a, int(d.Seconds())))
				if err != nil {
					errs <- err
					return
				}
				defer resp.Body.Close()
				f, err := os.Create(filepath.Join(dir, fmt.Sprintf("node%d.pprof", i+1)))
				if err != nil {
					errs <- err
					return
				}
				_, err = io.Copy(f, resp.Body)
				f.Close()
				errs <- err
			}()
		}
		var first error
		for range c.admins {
			if err := <-errs; err != nil && first == nil {
				first = err
			}
		}
		done <- first
	}()
	return done
}

func (c *caddyCluster) close() {
	stopAll(c.procs)
	if c.discard != nil {
		c.discard.Close()
	}
}
