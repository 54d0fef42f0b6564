package robustness

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// lookMonitoring finds a Prometheus tool, from Debian's prometheus package.
func lookMonitoring(t *testing.T, name string) string {
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s not installed (CI installs Debian's prometheus package)", name)
	}
	t.Skipf("%s not installed; apt-get install prometheus", name)
	return ""
}

// TestMonitoringRules: the example alerting and recording rules are
// valid and do what their unit tests say (promtool test rules).
func TestMonitoringRules(t *testing.T) {
	promtool := lookMonitoring(t, "promtool")
	dir := filepath.Join("..", "examples", "monitoring")
	for _, args := range [][]string{{"check", "rules", "rules.yml"}, {"test", "rules", "rules_test.yml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestDashboardUsesDocumentedSeries: every raftquota series the Grafana
// dashboard queries is documented (and so exposed, by the metrics test).
func TestDashboardUsesDocumentedSeries(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "examples", "monitoring", "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil || len(dash.Panels) == 0 {
		t.Fatalf("the dashboard: %v", err)
	}
	ref, _ := os.ReadFile(filepath.Join("..", "docs", "REFERENCE.md"))
	rules, _ := os.ReadFile(filepath.Join("..", "examples", "monitoring", "rules.yml"))
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, n := range regexp.MustCompile(`raftquota[:_][a-z_:0-9]+`).FindAllString(tg.Expr, -1) {
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")
				if !strings.Contains(string(ref), base) && !strings.Contains(string(rules), "record: "+n) {
					t.Errorf("the dashboard queries %s, which is neither documented nor recorded", n)
				}
			}
		}
	}
}

// TestPrometheusScrapesTheThreeNodeExample: a real Prometheus, with the
// example rules, scrapes the three nodes' admin endpoints and sees every
// raftquota_* series docs/REFERENCE.md documents, and loads every rule.
func TestPrometheusScrapesTheThreeNodeExample(t *testing.T) {
	prom := lookMonitoring(t, "prometheus")
	c := newCluster(t)
	c.createToken("prom", 1)
	for i := range 2 { // one allowed, one denied: decisions_total has series
		req, _ := http.NewRequest("PUT", fmt.Sprintf("%s/upload/p/o%d", c.httpURL(0), i), strings.NewReader("x"))
		req.Header.Set("X-Quota-Token", "prom")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}
	dir := t.TempDir()
	rules, err := filepath.Abs(filepath.Join("..", "examples", "monitoring", "rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var targets []string
	for i := range nodes {
		targets = append(targets, fmt.Sprintf("'%s'", strings.TrimPrefix(c.adminURL(i), "http://")))
	}
	cfg := fmt.Sprintf("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: ['%s']\nscrape_configs:\n  - job_name: raftquota\n    static_configs:\n      - targets: [%s]\n", rules, strings.Join(targets, ", "))
	os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644)
	port := freePort(t)
	cmd := exec.Command(prom, "--config.file", filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path", filepath.Join(dir, "data"),
		"--web.listen-address", "127.0.0.1:"+port)
	logf, _ := os.Create(filepath.Join(dir, "prometheus.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); logf.Close() })

	ref, _ := os.ReadFile(filepath.Join("..", "docs", "REFERENCE.md"))
	want := map[string]bool{}
	for _, n := range regexp.MustCompile(`raftquota_[a-z_]+`).FindAllString(string(ref), -1) {
		want[n] = true
	}
	api := "http://127.0.0.1:" + port + "/api/v1/"
	var missing []string
	for deadline := time.Now().Add(60 * time.Second); ; {
		var names struct {
			Data []string `json:"data"`
		}
		if resp, err := http.Get(api + "label/__name__/values"); err == nil {
			json.NewDecoder(resp.Body).Decode(&names)
			resp.Body.Close()
		}
		have := map[string]bool{}
		for _, n := range names.Data {
			have[strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")] = true
		}
		missing = missing[:0]
		for n := range want {
			if !have[n] {
				missing = append(missing, n)
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			sort.Strings(missing)
			b, _ := os.ReadFile(filepath.Join(dir, "prometheus.log"))
			t.Fatalf("Prometheus never saw %v\n%s", missing, b)
		}
		time.Sleep(500 * time.Millisecond)
	}
	var rulesAnswer struct {
		Data struct {
			Groups []struct {
				Rules []struct {
					Name   string `json:"name"`
					Health string `json:"health"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	rulesFile, err := os.ReadFile(filepath.Join("..", "examples", "monitoring", "rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	wantRules := len(regexp.MustCompile(`(?m)^\s*- (alert|record): `).FindAll(rulesFile, -1))
	for deadline := time.Now().Add(30 * time.Second); ; {
		resp, err := http.Get(api + "rules")
		if err == nil {
			json.NewDecoder(resp.Body).Decode(&rulesAnswer)
			resp.Body.Close()
		}
		ok, n := true, 0
		for _, g := range rulesAnswer.Data.Groups {
			for _, r := range g.Rules {
				n++
				ok = ok && r.Health == "ok"
			}
		}
		if n == wantRules && ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Prometheus's rules: %+v", rulesAnswer.Data.Groups)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("Prometheus scraped %d raftquota series names from the three nodes and evaluates the 11 rules", len(want))
}
