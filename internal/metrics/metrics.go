// Package metrics defines neonproxy's Prometheus collectors (prefix
// neonproxy_) in one place so that names and labels match the public
// contract in ARCHITECTURE.md. Each server instance owns its own registry, so
// tests can run several instances in one process.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics holds every collector. A nil *Metrics is not allowed; use New.
type Metrics struct {
	Registry *prometheus.Registry

	ClientConnections prometheus.Gauge
	// ConnectionsTotal counts finished client connections by result:
	// ok, auth_failed, throttled, unknown_branch, bad_route, wake_failed, too_many,
	// protocol_error, cancel, closed_early.
	ConnectionsTotal *prometheus.CounterVec
	// WakeDuration observes how long a client was held for its compute:
	// kind: running (no wait), hot (thawed from idle), warm (PostgreSQL
	// started on its local directory), cold (materialized first).
	WakeDuration *prometheus.HistogramVec
	// Computes is the number of computes per state
	// (stopped|starting|running|stopping).
	Computes            *prometheus.GaugeVec
	ComputeStarts       *prometheus.CounterVec // result=ok|error|abandoned
	ComputeWakeQueued   prometheus.Counter
	ComputeWakesRefused prometheus.Counter
	AuthFailures        prometheus.Counter
	CancelRequests      *prometheus.CounterVec // result=forwarded|unknown
	PoolServerConns     *prometheus.GaugeVec   // state=active|idle
	PoolWait            prometheus.Histogram
	BranchesTotal       prometheus.Gauge
	ComputeStopsTotal   *prometheus.CounterVec // reason=idle|evicted|admin|shutdown|delete|exited
	ProxyBytesForwarded *prometheus.CounterVec // direction=client_to_server|server_to_client
	// PoolPinned counts clients pinned to a server connection in
	// transaction pooling, by reason (set, listen, prepare, cursor,
	// temp_table, advisory_lock).
	PoolPinned *prometheus.CounterVec
	// Prewarm counts predicted arrivals by result: hit (the client found
	// the compute started or thawed for it), miss (predicted, but it came
	// before the compute was warm, or warming was not allowed), wasted (a
	// compute warmed for a client that did not come).
	Prewarm *prometheus.CounterVec
	// PrewarmSeconds is the compute time spent warm ahead of arrivals
	// (from the pre-warm to the arrival, or to the compute going down).
	PrewarmSeconds prometheus.Counter
	// BranchesExpired counts the reaper's work on expired branches by
	// result: deleted, waiting (it has children and no expire_cascade),
	// failed.
	BranchesExpired *prometheus.CounterVec
	// BranchResets counts POST /v1/branches/NAME/reset by result (ok, failed).
	BranchResets *prometheus.CounterVec
}

// New creates and registers all collectors on a fresh registry, together
// with the Go runtime and process collectors.
func New() *Metrics {
	r := prometheus.NewRegistry()
	m := &Metrics{
		Registry: r,
		ClientConnections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "neonproxy_client_connections", Help: "Client connections currently open at the front door.",
		}),
		ConnectionsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "neonproxy_connections_total", Help: "Finished client connections by result.",
		}, []string{"result"}),
		WakeDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "neonproxy_wake_duration_seconds",
			Help:    "Time a client was held until its compute was ready, by how far down its tiers it was (running, hot, warm, cold).",
			Buckets: []float64{.0005, .001, .005, .01, .025, .05, .1, .25, .5, 1, 2, 5, 10, 30},
		}, []string{"kind"}),
		Computes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "neonproxy_computes", Help: "Computes by lifecycle state.",
		}, []string{"state"}),
		ComputeStarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "neonproxy_compute_starts_total", Help: "Compute start attempts by result.",
		}, []string{"result"}),
		ComputeWakeQueued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "neonproxy_compute_wakes_queued_total", Help: "Wakes that queued for a running slot because compute.max_running computes were busy.",
		}),
		ComputeWakesRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "neonproxy_compute_wakes_refused_total", Help: "Wakes refused at once because the starts queued ahead under compute.max_running would outlast their wake_timeout.",
		}),
		AuthFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "neonproxy_auth_failures_total", Help: "Failed client authentications.",
		}),
		CancelRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "neonproxy_cancel_requests_total", Help: "CancelRequests by result.",
		}, []string{"result"}),
		PoolWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "neonproxy_pool_wait_seconds", Help: "Time a client waited for a server connection.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}),
		BranchesTotal: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "neonproxy_branches", Help: "Branches in the registry.",
		}),
		ComputeStopsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "neonproxy_compute_stops_total", Help: "Compute stops by reason.",
		}, []string{"reason"}),
		ProxyBytesForwarded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "neonproxy_proxy_bytes_total", Help: "Bytes forwarded between clients and computes.",
		}, []string{"direction"}),
		PoolPinned: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "neonproxy_pool_pinned_total", Help: "Transaction-pooled clients pinned to their server connection, by reason.",
		}, []string{"reason"}),
		Prewarm: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "neonproxy_prewarm_total", Help: "Predicted arrivals by result (hit, miss, wasted).",
		}, []string{"result"}),
		PrewarmSeconds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "neonproxy_prewarm_compute_seconds_total", Help: "Compute time spent warm ahead of predicted arrivals.",
		}),
		BranchesExpired: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "neonproxy_branches_expired_total", Help: "Expired branches the reaper handled, by result (deleted, waiting for children, failed).",
		}, []string{"result"}),
		BranchResets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "neonproxy_branch_resets_total", Help: "Branch resets to the parent's latest state, by result.",
		}, []string{"result"}),
	}
	r.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.ClientConnections, m.ConnectionsTotal, m.WakeDuration, m.Computes,
		m.ComputeStarts, m.ComputeWakeQueued, m.ComputeWakesRefused, m.AuthFailures, m.CancelRequests,
		m.PoolWait, m.BranchesTotal,
		m.ComputeStopsTotal, m.ProxyBytesForwarded, m.PoolPinned, m.Prewarm, m.PrewarmSeconds,
		m.BranchesExpired, m.BranchResets,
	)
	for _, r := range []string{"deleted", "waiting", "failed"} {
		m.BranchesExpired.WithLabelValues(r).Add(0)
	}
	for _, r := range []string{"hit", "miss", "wasted"} {
		m.Prewarm.WithLabelValues(r).Add(0)
	}
	for _, s := range []string{"stopped", "starting", "running", "stopping"} {
		m.Computes.WithLabelValues(s).Set(0)
	}
	return m
}

// RegisterPagestore exports neonproxy_pagestore_bytes, the disk the page
// store uses, read from bytes at scrape time.
func (m *Metrics) RegisterPagestore(bytes func() float64) {
	m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "neonproxy_pagestore_bytes", Help: "Disk used by the page store (all branches' stored pages and files).",
	}, bytes))
}

// RegisterWalkeeperLag exports neonproxy_walkeeper_flush_lag_bytes{branch}
// for every running compute that streams to the WAL keeper, read from lag
// at scrape time.
func (m *Metrics) RegisterWalkeeperLag(lag func() map[string]float64) {
	m.Registry.MustRegister(&lagCollector{lag: lag})
}

var walkeeperLagDesc = prometheus.NewDesc("neonproxy_walkeeper_flush_lag_bytes",
	"WAL a running compute wrote that the WAL keeper has not made durable yet (its commits wait for it).", []string{"branch"}, nil)

type lagCollector struct{ lag func() map[string]float64 }

func (c *lagCollector) Describe(ch chan<- *prometheus.Desc) { ch <- walkeeperLagDesc }

func (c *lagCollector) Collect(ch chan<- prometheus.Metric) {
	for b, v := range c.lag() {
		ch <- prometheus.MustNewConstMetric(walkeeperLagDesc, prometheus.GaugeValue, v, b)
	}
}

// PoolCounts are the pool's current totals.
type PoolCounts struct{ Active, Idle, Waiting int }

// RegisterPool exports neonproxy_pool_server_connections{state} and
// neonproxy_pool_clients_waiting, read from counts at scrape time so the
// pool's hot path does no metric work.
func (m *Metrics) RegisterPool(counts func() PoolCounts) {
	m.Registry.MustRegister(&poolCollector{counts: counts})
}

var (
	poolConnsDesc = prometheus.NewDesc("neonproxy_pool_server_connections",
		"Server connections by state (active: lent to a client; idle: in the pool).", []string{"state"}, nil)
	poolWaitingDesc = prometheus.NewDesc("neonproxy_pool_clients_waiting",
		"Clients waiting for a server connection.", nil, nil)
)

type poolCollector struct{ counts func() PoolCounts }

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- poolConnsDesc
	ch <- poolWaitingDesc
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	pc := c.counts()
	ch <- prometheus.MustNewConstMetric(poolConnsDesc, prometheus.GaugeValue, float64(pc.Active), "active")
	ch <- prometheus.MustNewConstMetric(poolConnsDesc, prometheus.GaugeValue, float64(pc.Idle), "idle")
	ch <- prometheus.MustNewConstMetric(poolWaitingDesc, prometheus.GaugeValue, float64(pc.Waiting))
}
