package main

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

func ms(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond)) }

// writeReport writes results.md and tier1.png into dir.
func writeReport(dir string, env string, tier1, tier2, groups []result, scales []scaleResult, catchUp string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n\n", env)
	if err := writeTier1(&b, dir, tier1); err != nil {
		return "", err
	}
	if err := writeTier2(&b, dir, tier2); err != nil {
		return "", err
	}
	if len(groups) > 0 {
		b.WriteString("### Past one leader: tokens sharded over G Raft groups (3 nodes each, one process), spread workload\n\n")
		b.WriteString("| groups | clients | decisions/s | p50 ms | p99 ms | vs 1 group | CPU µs per decision | errors |\n|---|---|---|---|---|---|---|---|\n")
		one := map[int]float64{}
		for _, r := range groups {
			if r.Groups == 1 {
				one[r.Clients] = r.opsPerSec()
			}
		}
		for _, r := range groups {
			ratio := "—"
			if p := one[r.Clients]; p > 0 {
				ratio = fmt.Sprintf("%.2f×", r.opsPerSec()/p)
			}
			fmt.Fprintf(&b, "| %d | %d | %.0f | %s | %s | %s | %.0f | %d |\n", r.Groups, r.Clients, r.opsPerSec(), ms(r.P50), ms(r.P99), ratio, float64(r.CPUPerOp)/float64(time.Microsecond), r.Errors)
		}
		b.WriteString("\n")
	}
	if len(scales) > 0 || catchUp != "" {
		b.WriteString("### Scale: one node\n\n| tokens | dedup entries | RSS growth MB | Go heap MB | fill s | snapshot s | restore s |\n|---|---|---|---|---|---|---|\n")
		for _, s := range scales {
			fmt.Fprintf(&b, "| %d | %d | %.0f | %.0f | %.1f | %.2f | %.2f |\n", s.Tokens, s.DedupEntries, s.RSSMB, s.HeapMB, s.FillSeconds, s.Snapshot.Seconds(), s.Restore.Seconds())
		}
		b.WriteString("\n#### Decisions while snapshots are taken (one node, 16 clients, 5 s each)\n\n| tokens | quiet p50 / p99 / max ms | snapshots back to back: p50 / p99 / max ms | snapshots taken |\n|---|---|---|---|\n")
		for _, s := range scales {
			fmt.Fprintf(&b, "| %d | %s / %s / %s | %s / %s / %s | %d |\n", s.Tokens, ms(s.Quiet.P50), ms(s.Quiet.P99), ms(s.Quiet.Max),
				ms(s.DuringSnapshots.P50), ms(s.DuringSnapshots.P99), ms(s.DuringSnapshots.Max), s.SnapshotsTaken)
		}
		if catchUp != "" {
			fmt.Fprintf(&b, "\n%s\n", catchUp)
		}
	}
	md := b.String()
	return md, os.WriteFile(filepath.Join(dir, "results.md"), []byte(md), 0o644)
}

// writeTier1 writes the report's tier1 section, and its chart into dir.
func writeTier1(b *strings.Builder, dir string, tier1 []result) error {
	if len(tier1) == 0 {
		return nil
	}
	b.WriteString("### Tier 1: linearizable \"consume 1 if remaining ≥ 1\"\n\n")
	b.WriteString("| system | workload | clients | ops/s | p50 ms | p99 ms | retries/op | errors |\n|---|---|---|---|---|---|---|---|\n")
	for _, r := range tier1 {
		retries := "—"
		if strings.HasPrefix(r.System, "etcd") && r.Ops > 0 {
			retries = fmt.Sprintf("%.2f", float64(r.Retries)/float64(r.Ops))
		}
		fmt.Fprintf(b, "| %s | %s | %d | %.0f | %s | %s | %s | %d |\n", r.System, r.Workload, r.Clients, r.opsPerSec(), ms(r.P50), ms(r.P99), retries, r.Errors)
	}
	b.WriteString("\nWhere a raftquota commit round went (hashicorp/raft's own timings, means over the cell):\n\n")
	for _, r := range tier1 {
		if r.Note != "" {
			fmt.Fprintf(b, "- %s, %s, %d clients: %s\n", r.System, r.Workload, r.Clients, r.Note)
		}
	}
	b.WriteString("\n![Tier 1, hot token](tier1.png)\n\n")
	if err := chart(filepath.Join(dir, "tier1.png"), tier1, "hot"); err != nil {
		return err
	}
	return nil
}

// writeTier2 writes the report's tier2 section, and its chart into dir.
func writeTier2(b *strings.Builder, dir string, tier2 []result) error {
	if len(tier2) == 0 {
		return nil
	}
	b.WriteString("### Tier 2: uploads end to end through Caddy\n\n")
	b.WriteString("| system | body | clients | ops/s | p50 ms | p99 ms | vs plain Caddy | CPU µs per upload | errors |\n|---|---|---|---|---|---|---|---|---|\n")
	plain := map[string]float64{}
	for _, r := range tier2 {
		if strings.HasPrefix(r.System, "Caddy reverse_proxy") {
			plain[fmt.Sprintf("%s/%d", r.Workload, r.Clients)] = r.opsPerSec()
		}
	}
	for _, r := range tier2 {
		ratio := "—"
		if p := plain[fmt.Sprintf("%s/%d", r.Workload, r.Clients)]; p > 0 {
			ratio = fmt.Sprintf("%.2f×", r.opsPerSec()/p)
		}
		fmt.Fprintf(b, "| %s | %s | %d | %.0f | %s | %s | %s | %.0f | %d |\n", r.System, r.Workload, r.Clients, r.opsPerSec(), ms(r.P50), ms(r.P99), ratio, float64(r.CPUPerOp)/float64(time.Microsecond), r.Errors)
	}
	b.WriteString("\nCPU per upload is the Caddy processes' CPU time (all quota nodes, or plain Caddy; not the storage backend, not the clients) over the uploads.\n\nWhere the two cores went in each cell (CPU time over wall time, per process), and the cell's mean batches:\n\n")
	for _, r := range tier2 {
		if r.Note != "" {
			fmt.Fprintf(b, "- %s, %s, %d clients: %s\n", r.System, r.Workload, r.Clients, r.Note)
		}
	}
	b.WriteString("\n")
	const discard = "1 KiB, discard backend"
	for _, r := range tier2 {
		if r.Workload == discard {
			b.WriteString("![Tier 2, 1 KiB uploads to a discard backend](tier2.png)\n\n")
			if err := chartTitled(filepath.Join(dir, "tier2.png"), tier2, discard, "Tier 2, 1 KiB uploads, discard backend: uploads per second"); err != nil {
				return err
			}
			break
		}
	}
	return nil
}

// chart draws ops/s against clients, one line per system, for a workload.
func chart(path string, rs []result, workload string) error {
	return chartTitled(path, rs, workload, "Tier 1, "+workload+" token: decisions per second")
}

// chartTitled draws ops/s against clients, one line per system, for a
// workload and the workloads named after it ("hot, via a follower").
func chartTitled(path string, rs []result, workload, title string) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "concurrent clients"
	p.Y.Label.Text = "ops/s (log scale)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Legend.Top = true
	p.Legend.Left = true
	by := map[string]plotter.XYs{}
	var names []string
	for _, r := range rs {
		rest, ok := strings.CutPrefix(r.Workload, workload)
		if !ok || r.Ops == 0 {
			continue
		}
		name := r.System + strings.TrimPrefix(rest, ",") // "hot, via a follower": the system's second line
		if _, ok := by[name]; !ok {
			names = append(names, name)
		}
		by[name] = append(by[name], plotter.XY{X: float64(r.Clients), Y: math.Max(1, r.opsPerSec())})
	}
	sort.Strings(names)
	palette := []color.RGBA{{0x1f, 0x77, 0xb4, 255}, {0xd6, 0x27, 0x28, 255}, {0x2c, 0xa0, 0x2c, 255}, {0xff, 0x7f, 0x0e, 255}, {0x94, 0x67, 0xbd, 255}}
	for i, name := range names {
		line, points, err := plotter.NewLinePoints(by[name])
		if err != nil {
			return err
		}
		c := palette[i%len(palette)]
		line.Color, points.Color = c, c
		line.Width = vg.Points(2)
		p.Add(line, points)
		p.Legend.Add(name, line, points)
	}
	return p.Save(8*vg.Inch, 5*vg.Inch, path)
}
