// Command bench measures raftquota against what users would pick instead,
// on this machine in one run, and writes a Markdown table and a chart.
//
//	go run ./bench -out bench/results            # the full run (about 15 minutes)
//	go run ./bench -smoke                        # a few seconds: keeps the tool working
//
// Tier 1 is the decision engine alone: raftquota (3 nodes and 1 node, called
// through its Go API, followers forwarding over its RPC), an etcd 3-member
// cluster (read + Txn on ModRevision, retried), and Redis with appendfsync
// always (EVALSHA). Tier 2 is uploads through real Caddy processes: plain
// reverse_proxy, then the quota handler on 1 and 3 nodes. Scale fills one
// node with tokens and dedup entries and times snapshot, restore and a
// follower's catch-up. etcd and redis-server come from Debian's etcd-server
// and redis-server packages; a system whose binary is missing is skipped
// with a note.
//
// It drives raftstore and real binaries from the outside (their public
// APIs and processes); nothing of the module imports it, and the plugin
// never pulls its dependencies (etcd, redis clients): .ci/run checks that.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"time"

	"github.com/raftquota/raftquota/raftstore"
)

func main() {
	out := flag.String("out", "bench/results", "folder for results.md and tier1.png")
	cell := flag.Duration("duration", 5*time.Second, "how long each measurement runs")
	smoke := flag.Bool("smoke", false, "tiny run: one client count, short cells, small scale")
	skipScale := flag.Bool("skip-scale", false, "skip the scale measurements")
	scaleOnly := flag.Bool("scale-only", false, "run only the scale measurements")
	tier2Only := flag.Bool("tier2-only", false, "run only tier 2 (Caddy in front of storage and of a discard backend)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the tier-1 raftquota 3-node hot run at 64 clients")
	fleetOnly := flag.Bool("fleet-only", false, "run only the edge-fleet rows: 3 voters + 0, 2, 4 gateways against the discard backend (with plain Caddy for the ratio)")
	tier2Profile := flag.String("tier2-profile", "", "write CPU profiles of every node of the Tier 2 discard-backend cells with a quota (1 and 3 nodes) into this folder, one subfolder per cell")
	tier2ProfileClients := flag.Int("tier2-profile-clients", 64, "the client count whose cells -tier2-profile profiles")
	groupsOnly := flag.Bool("groups-only", false, "run only the multi-group prototype: tokens sharded over 1, 2, 4 Raft groups")
	flag.StringVar(&scaleLogStore, "log-store", "", "the log store of the scale and catch-up steps: wal (default) or boltdb")
	runOnly := flag.String("run", "", "run only the steps whose label matches this regular expression (labels are printed as steps start, e.g. 'tier 1: raftquota 3-node, hot'); the report goes to stdout, and into -out only when -out is given")
	flag.Parse()
	only := *scaleOnly || *tier2Only || *fleetOnly || *groupsOnly

	clients := []int{1, 16, 64, 256}
	tier2Clients := []int{1, 16, 64}
	scaleSizes := []int{100_000, 1_000_000}
	spreadKeys := 10_000
	catchUpBehind := 50_000
	if *smoke {
		clients, tier2Clients, scaleSizes, spreadKeys, catchUpBehind = []int{16}, []int{16}, []int{1000}, 100, 1000
		*cell = 300 * time.Millisecond
	}

	work, err := os.MkdirTemp("", "raftquota-bench-")
	check(err)
	defer os.RemoveAll(work)
	defer cleanupTmpfs()

	type step struct {
		label string
		est   time.Duration
		run   func()
	}
	var steps []step
	var tier1, tier2, groups []result
	var scales []scaleResult
	var catchUp string
	var notes []string

	// Tier 1.
	factories := []struct {
		name string
		make func(dir string) (system, error)
	}{
		{"raftquota 3-node", func(dir string) (system, error) { return newRaftquota(3, dir, "") }},
		{"raftquota 3-node, log_store boltdb", func(dir string) (system, error) { return newRaftquota(3, dir, raftstore.LogStoreBolt) }},
		{"raftquota 1-node", func(dir string) (system, error) { return newRaftquota(1, dir, "") }},
		// Not a deployment: the suspected bottleneck (the shared disk's
		// fsyncs) removed, to show how much of the rows above it is.
		{tmpfsLabel("raftquota 3-node"), func(dir string) (system, error) {
			dir, err := tmpfsDir()
			if err != nil {
				return nil, err
			}
			return newRaftquota(3, dir, "")
		}},
		{"etcd 3-member CAS", func(dir string) (system, error) { return newEtcd(dir) }},
		{"Redis 1-node fsync always", func(dir string) (system, error) { return newRedis(dir) }},
	}
	for i, f := range factories {
		if only {
			break
		}
		for _, wl := range []struct {
			name     string
			keys     int
			follower bool // the hot token's clients on a follower (3-node raftquota only)
		}{{"hot", 1, false}, {"hot, via a follower", 1, true}, {"spread", spreadKeys, false}} {
			if wl.follower && !strings.HasPrefix(f.name, "raftquota 3-node") {
				continue
			}
			steps = append(steps, step{fmt.Sprintf("tier 1: %s, %s", f.name, wl.name), time.Duration(len(clients)) * (*cell + time.Second), func() {
				dir := filepath.Join(work, fmt.Sprintf("t1-%d-%s", i, strings.ReplaceAll(wl.name, " ", "")))
				os.MkdirAll(dir, 0o755)
				sys, err := f.make(dir)
				if err != nil {
					notes = append(notes, fmt.Sprintf("%s skipped: %v", f.name, err))
					fmt.Fprintf(os.Stderr, "  skipped: %v\n", err)
					return
				}
				defer sys.close()
				check(sys.setup(wl.keys))
				if rq, ok := sys.(*raftquotaSystem); ok && wl.keys == 1 {
					rq.sendHotTo(wl.follower) // the hot row's clients on the leader, the other's on a follower
				}
				for _, n := range clients {
					fmt.Fprintf(os.Stderr, "  %d clients for %s...\n", n, *cell)
					stopProfile := func() {}
					if *cpuprofile != "" && i == 0 && wl.name == "hot" && n == 64 {
						stopProfile = startProfile(*cpuprofile)
					}
					times := startRaftTimes()
					r := closedLoop(n, *cell, func(ctx context.Context, c int) (int, error) {
						return sys.consume(ctx, (c*7919+int(time.Now().UnixNano()))%wl.keys)
					})
					stopProfile()
					times.stop()
					if strings.HasPrefix(f.name, "raftquota") {
						r.Note = times.String(r.Ops)
						if rq, ok := sys.(*raftquotaSystem); ok && wl.keys == 1 && rq.hotNote() != "" {
							r.Note += "; " + rq.hotNote()
						}
						fmt.Fprintf(os.Stderr, "  %s\n", r.Note)
					}
					r.Tier, r.System, r.Workload = "1", f.name, wl.name
					tier1 = append(tier1, r)
					fmt.Fprintf(os.Stderr, "  → %.0f ops/s, p99 %s ms, %d errors\n", r.opsPerSec(), ms(r.P99), r.Errors)
				}
			}})
		}
	}

	// Past one leader: the same spread workload over G groups.
	for _, g := range []int{1, 2, 4} {
		if only && !*groupsOnly {
			break
		}
		if *smoke && g > 2 {
			break
		}
		steps = append(steps, step{fmt.Sprintf("groups: %d", g), time.Duration(len(clients)) * (*cell + time.Second), func() {
			dir := filepath.Join(work, fmt.Sprintf("groups-%d", g))
			sys, err := newGroups(g, dir)
			check(err)
			defer sys.close()
			check(sys.setup(spreadKeys))
			for _, n := range clients {
				fmt.Fprintf(os.Stderr, "  %d clients for %s...\n", n, *cell)
				cpu0 := cpuTime()
				r := closedLoop(n, *cell, func(ctx context.Context, c int) (int, error) {
					return sys.consume(ctx, (c*7919+int(time.Now().UnixNano()))%spreadKeys)
				})
				if r.Ops > 0 {
					r.CPUPerOp = (cpuTime() - cpu0) / time.Duration(r.Ops)
				}
				r.Tier, r.System, r.Workload = "G", sys.name(), "spread"
				r.Groups = g
				groups = append(groups, r)
				fmt.Fprintf(os.Stderr, "  → %.0f ops/s, p99 %s ms, %d errors\n", r.opsPerSec(), ms(r.P99), r.Errors)
			}
		}})
	}

	// Tier 2.
	var bin string
	steps = append(steps, step{"building cmd/caddy", 30 * time.Second, func() {
		bin, err = buildCaddy(work)
		check(err)
	}})
	type t2workload struct {
		label, backend, path string
		size                 int
		gated                bool // only with a quota in front (check_only)
	}
	t2workloads := []t2workload{
		{"1 KiB", "storage", "/upload/", 1 << 10, false},
		{"1 MiB", "storage", "/upload/", 1 << 20, false},
		{"1 KiB, discard backend", "discard", "/upload/", 1 << 10, false},
		{"1 KiB check_only, discard backend", "discard", "/check/", 1 << 10, true},
	}
	const discard1K = "1 KiB, discard backend"
	for _, mode := range []string{"plain", "quota1", "quota3", "quota3gw2", "quota3gw4", "quota1boltdb", "quota3boltdb", "quota1tmpfs", "quota3tmpfs"} {
		if only && !*tier2Only && !*fleetOnly {
			break
		}
		for _, wl := range t2workloads {
			if wl.gated && mode == "plain" {
				continue
			}
			fleetRow := mode == "plain" || mode == "quota3" || strings.HasPrefix(mode, "quota3gw")
			if *fleetOnly && (!fleetRow || wl.label != discard1K) {
				continue
			}
			if (strings.HasPrefix(mode, "quota3gw") || strings.HasSuffix(mode, "tmpfs") || strings.HasSuffix(mode, "boltdb")) && wl.label != discard1K {
				continue // gateways, log_store boltdb and tmpfs data dirs are measured against the discard backend only
			}
			steps = append(steps, step{fmt.Sprintf("tier 2: %s, %s", mode, wl.label), time.Duration(len(tier2Clients)) * (*cell + time.Second), func() {
				dir := filepath.Join(work, fmt.Sprintf("t2-%s-%s-%d-%s", mode, wl.backend, wl.size, strings.Trim(wl.path, "/")))
				os.MkdirAll(dir, 0o755)
				c, err := newCaddyCluster(bin, dir, mode, wl.backend)
				if c != nil {
					defer c.close()
				}
				if errors.Is(err, errNoTmpfs) {
					notes = append(notes, fmt.Sprintf("tier 2 %s skipped: %v", mode, err))
					fmt.Fprintf(os.Stderr, "  skipped: %v\n", err)
					return
				}
				check(err)
				body := make([]byte, wl.size)
				for _, n := range tier2Clients {
					fmt.Fprintf(os.Stderr, "  %d clients for %s...\n", n, *cell)
					cl := httpClient(n)
					var profiled <-chan error
					profileDir := filepath.Join(*tier2Profile, fmt.Sprintf("%s-%dclients", mode, n))
					if *tier2Profile != "" && (strings.TrimSuffix(mode, "tmpfs") == "quota1" || strings.TrimSuffix(mode, "tmpfs") == "quota3") && wl.label == discard1K && n == *tier2ProfileClients {
						check(os.MkdirAll(profileDir, 0o755))
						profiled = c.profile(profileDir, *cell-time.Second)
					}
					shares := c.cpuStart()
					e0, ec0, r0, rc0 := c.batchTotals()
					steps0 := c.steps()
					r := closedLoop(n, *cell, func(ctx context.Context, i int) (int, error) {
						return 0, c.put(ctx, cl, c.fronts[i%len(c.fronts)], fmt.Sprintf("%sbench/c%d", wl.path, i), body)
					})
					if r.Ops > 0 {
						r.CPUPerOp = shares.fronts() / time.Duration(r.Ops)
					}
					r.Note = shares.String() + c.batchNote(e0, ec0, r0, rc0)
					if b := breakdown(steps0, c.steps(), float64(r.Mean)/1e6); b != "" {
						r.Note += "\n  " + b
					}
					fmt.Fprintf(os.Stderr, "  %s\n", r.Note)
					if profiled != nil {
						check(<-profiled)
						fmt.Fprintf(os.Stderr, "  wrote CPU profiles of the nodes to %s\n", profileDir)
					}
					r.Tier, r.System, r.Workload = "2", c.name, wl.label
					tier2 = append(tier2, r)
					fmt.Fprintf(os.Stderr, "  → %.0f ops/s, p99 %s ms, %d errors\n", r.opsPerSec(), ms(r.P99), r.Errors)
				}
			}})
		}
	}

	// Scale.
	if !*skipScale && (!only || *scaleOnly) {
		for _, n := range scaleSizes {
			steps = append(steps, step{fmt.Sprintf("scale: %d tokens", n), time.Duration(n/5000) * time.Second, func() {
				dir := filepath.Join(work, fmt.Sprintf("scale-%d", n))
				r, err := measureScale(dir, n, func(s string) { fmt.Fprintf(os.Stderr, "  %s...\n", s) })
				check(err)
				scales = append(scales, r)
				fmt.Fprintf(os.Stderr, "  → RSS +%.0f MB, snapshot %s, restore %s; decision p99 %s quiet, %s during %d snapshots\n", r.RSSMB, r.Snapshot.Round(time.Millisecond), r.Restore.Round(time.Millisecond),
					r.Quiet.P99.Round(10*time.Microsecond), r.DuringSnapshots.P99.Round(10*time.Microsecond), r.SnapshotsTaken)
			}})
		}
		steps = append(steps, step{fmt.Sprintf("catch-up after %d missed log entries", catchUpBehind), 60 * time.Second, func() {
			d, err := measureCatchUp(filepath.Join(work, "catchup"), catchUpBehind)
			check(err)
			catchUp = fmt.Sprintf("A follower stopped while %d log entries (consumes from 4 clients) were committed caught up %s after it was restarted (3 nodes, in one process; the leader snapshotted and compacted its log meanwhile).", catchUpBehind, d.Round(time.Millisecond))
			fmt.Fprintf(os.Stderr, "  → %s\n", d.Round(time.Millisecond))
		}})
	}

	if *runOnly != "" {
		re, err := regexp.Compile(*runOnly)
		check(err)
		kept, tier2Kept := steps[:0:0], false
		for _, s := range steps {
			if re.MatchString(s.label) {
				kept = append(kept, s)
				tier2Kept = tier2Kept || strings.HasPrefix(s.label, "tier 2:")
			}
		}
		if tier2Kept && !re.MatchString("building cmd/caddy") {
			for _, s := range steps {
				if s.label == "building cmd/caddy" {
					kept = append([]step{s}, kept...)
				}
			}
		}
		if len(kept) == 0 {
			check(fmt.Errorf("no step matches -run %q", *runOnly))
		}
		steps = kept
		outGiven := false
		flag.Visit(func(f *flag.Flag) { outGiven = outGiven || f.Name == "out" })
		if !outGiven {
			*out = filepath.Join(work, "results")
		}
	}

	var total time.Duration
	for _, s := range steps {
		total += s.est
	}
	start := time.Now()
	done := time.Duration(0)
	for i, s := range steps {
		left := total - done
		fmt.Fprintf(os.Stderr, "[%d/%d] %s (about %s left)\n", i+1, len(steps), s.label, left.Round(time.Second))
		s.run()
		done += s.est
	}

	host, _ := os.Hostname()
	env := fmt.Sprintf("Measured %s on %s: %d CPUs, %s, %s/%s; %s per cell; run took %s.",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), host, runtime.NumCPU(), runtime.Version(), runtime.GOOS, runtime.GOARCH, *cell, time.Since(start).Round(time.Second))
	if len(notes) > 0 {
		env += "\n\n" + strings.Join(notes, "\n")
	}
	md, err := writeReport(*out, env, tier1, tier2, groups, scales, catchUp)
	check(err)
	fmt.Println(md)
	fmt.Fprintf(os.Stderr, "wrote %s\n", filepath.Join(*out, "results.md"))
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		cleanupTmpfs() // memory, unlike the work folder
		os.Exit(1)
	}
}
