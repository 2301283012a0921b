package metrics

import "github.com/prometheus/client_golang/prometheus"

// BranchUsage is one branch's usage figures for the per-branch metrics.
type BranchUsage struct {
	Branch                      string
	RunningSeconds, IdleSeconds float64
	ColdWakes, WarmWakes        int64
	HotWakes                    int64
	// Storage is known only for live branches.
	HasStorage                bool
	UniqueBytes, LogicalBytes int64
}

// RegisterBranchUsage exports, read from usage at scrape time:
// neonproxy_branch_compute_seconds_total{branch,tier} (running, idle),
// neonproxy_branch_wakes_total{branch,kind} (cold, warm, hot),
// neonproxy_branch_unique_bytes{branch} and
// neonproxy_branch_logical_bytes{branch}. The counters cover the usage
// ledger's retention (100 days), so they fall back as old hours age out,
// which Prometheus reads as a counter reset.
func (m *Metrics) RegisterBranchUsage(usage func() []BranchUsage) {
	m.Registry.MustRegister(&usageCollector{usage: usage})
}

var (
	branchComputeDesc = prometheus.NewDesc("neonproxy_branch_compute_seconds_total",
		"Compute time of a branch by tier: running (starting, serving, stopping) and idle (frozen).", []string{"branch", "tier"}, nil)
	branchWakesDesc = prometheus.NewDesc("neonproxy_branch_wakes_total",
		"Wakes of a branch's compute by kind: cold (materialized first), warm (started on its local directory), hot (thawed).", []string{"branch", "kind"}, nil)
	branchUniqueDesc = prometheus.NewDesc("neonproxy_branch_unique_bytes",
		"Page store bytes only this branch holds (what deleting it frees).", []string{"branch"}, nil)
	branchLogicalDesc = prometheus.NewDesc("neonproxy_branch_logical_bytes",
		"Bytes the branch reads (its logical size).", []string{"branch"}, nil)
)

type usageCollector struct{ usage func() []BranchUsage }

func (c *usageCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- branchComputeDesc
	ch <- branchWakesDesc
	ch <- branchUniqueDesc
	ch <- branchLogicalDesc
}

func (c *usageCollector) Collect(ch chan<- prometheus.Metric) {
	for _, u := range c.usage() {
		ch <- prometheus.MustNewConstMetric(branchComputeDesc, prometheus.CounterValue, u.RunningSeconds, u.Branch, "running")
		ch <- prometheus.MustNewConstMetric(branchComputeDesc, prometheus.CounterValue, u.IdleSeconds, u.Branch, "idle")
		ch <- prometheus.MustNewConstMetric(branchWakesDesc, prometheus.CounterValue, float64(u.ColdWakes), u.Branch, "cold")
		ch <- prometheus.MustNewConstMetric(branchWakesDesc, prometheus.CounterValue, float64(u.WarmWakes), u.Branch, "warm")
		ch <- prometheus.MustNewConstMetric(branchWakesDesc, prometheus.CounterValue, float64(u.HotWakes), u.Branch, "hot")
		if u.HasStorage {
			ch <- prometheus.MustNewConstMetric(branchUniqueDesc, prometheus.GaugeValue, float64(u.UniqueBytes), u.Branch)
			ch <- prometheus.MustNewConstMetric(branchLogicalDesc, prometheus.GaugeValue, float64(u.LogicalBytes), u.Branch)
		}
	}
}
