package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/neonproxy/neonproxy/wake"
)

// The prewarm section (issue 7's proof of predictive pre-warm): a
// simulated periodic workload — a new connection and one small query every
// prewarmPeriod, prewarmCycles times — on a compute whose tiers come in
// well within one period, first on a branch with pre-warm switched off,
// then on one with it on, then an irregular (jittery) workload with it on,
// then a periodic workload whose visits stay connected for a while (until
// prewarmLongStay after arriving, every prewarmLongPeriod) with it on. It
// runs on its own
// neonproxy (data in <tmp>/prewarm, log.level info):
//
//   - compute.idle_after: 0 — no idle (frozen) tier: an unused compute is
//     suspended after suspend_timeout, so the comparison is start versus no
//     start, not thaw versus no thaw;
//   - compute.suspend_timeout: 1s — suspended about 1 s after the client
//     left (PostgreSQL stopped, its changes stored: ~0.2 s more);
//   - compute.offload_after: 250ms — at zero (local data directory dropped)
//     about 1.5 s after the arrival, well before the next one 3 s after it.
//
// So without pre-warm every arrival after the first finds its branch at
// zero and waits for a cold start (materialization + PostgreSQL start).
// With pre-warm, once four arrivals have kept the period, the compute is
// started max(2 × its last start, 1 s) ahead of the predicted arrival
// (wake/prewarm.go), and the client should find it running.
//
// The two regular runs use two branches created from main (same data)
// rather than switching one branch: each has its own arrival history, so
// the pre-warm run learns the period from its own first four arrivals and
// nothing the off run did is carried over; each run's counters are read
// before and after it, and the runs do not overlap.
//
// The long-visit run is the case where the pre-warm comes due while the
// previous visit's compute is still up: each visit leaves 2.5 s after
// arriving, whatever its wake took, so the suspend follows at +3.5 s,
// while the pre-warm is due at +3 s at the latest (max(2 × the last
// start, 1 s) before the next arrival at +4 s), and the next client comes
// 1.5 s after the previous one left (an arrival: at least 1 s). The
// compute is then expected to stay up for the predicted client.
const (
	prewarmScale          = 1 // pgbench -i scale of main: ~23 MB logical
	prewarmPeriod         = 3 * time.Second
	prewarmCycles         = 12 // arrivals per run
	prewarmLongPeriod     = 4 * time.Second
	prewarmLongStay       = 2500 * time.Millisecond // the long visits: connected until this long after arriving
	prewarmQuickCycles    = 8                       // with -quick: 4 to learn, 4 predicted
	prewarmSuspendTimeout = time.Second
	prewarmOffloadAfter   = 250 * time.Millisecond
	// prewarmLearn is how many arrivals neonproxy needs before it predicts
	// the next (wake.prewarmArrivals); prewarmTolerance its jitter
	// tolerance (wake.prewarmJitter), both unexported there.
	prewarmLearn     = 4
	prewarmTolerance = 0.15
	// prewarmJitter is the jittery run's spread: each interval is the
	// period × (1 ± up to 40%), seeded. prewarmJitterMargin: draws that
	// would make the last three intervals regular within 25% (the
	// product's 15% with margin for timing noise) are drawn again, so the
	// run is irregular by construction and no pre-warm is expected.
	prewarmJitter       = 0.4
	prewarmJitterMargin = 0.25
	prewarmJitterSeed   = 7
	// prewarmPreRead is how long before its scheduled time an arrival's
	// branch JSON and /metrics are read, so that the connect itself starts
	// on schedule.
	prewarmPreRead = 100 * time.Millisecond
	// prewarmMaxFailures ends a run after this many failed arrivals.
	prewarmMaxFailures = 3
	prewarmQuery       = "SELECT count(*) FROM pgbench_branches"
	prewarmCSV         = "arrivals.csv"

	prewarmTotalMetric   = "neonproxy_prewarm_total"
	prewarmSecondsMetric = "neonproxy_prewarm_compute_seconds_total"
	computeStartsMetric  = "neonproxy_compute_starts_total"
	computeStopsMetric   = "neonproxy_compute_stops_total"
)

// prewarmRunSpec is one workload run.
type prewarmRunSpec struct {
	name    string // off, on, jitter, long-visit
	branch  string
	enabled bool
	period  time.Duration // the intervals' nominal value
	// stay keeps each visit's connection open until this long after its
	// arrival (SELECT pg_sleep after the first row for the rest; 0: closed
	// at once).
	stay time.Duration
	// intervals are the gaps between consecutive arrivals (cycles − 1).
	intervals []time.Duration
	// regular: the intervals keep the period (a prediction is expected
	// from arrival prewarmLearn+1 on when enabled).
	regular bool
}

// The runs' names.
const (
	prewarmRunOff    = "off"
	prewarmRunOn     = "on"
	prewarmRunJitter = "jitter"
	prewarmRunLong   = "long-visit"
)

// prewarmRunSpecs are the section's runs, in order.
func prewarmRunSpecs(cycles int) []prewarmRunSpec {
	regular := slices.Repeat([]time.Duration{prewarmPeriod}, cycles-1)
	rng := rand.New(rand.NewPCG(prewarmJitterSeed, prewarmJitterSeed))
	return []prewarmRunSpec{
		{name: prewarmRunOff, branch: "pw-off", enabled: false, period: prewarmPeriod, intervals: regular, regular: true},
		{name: prewarmRunOn, branch: "pw-on", enabled: true, period: prewarmPeriod, intervals: regular, regular: true},
		{name: prewarmRunJitter, branch: "pw-jitter", enabled: true, period: prewarmPeriod,
			intervals: jitterIntervals(rng, prewarmPeriod, cycles-1, prewarmJitter, prewarmJitterMargin)},
		{name: prewarmRunLong, branch: "pw-long", enabled: true, period: prewarmLongPeriod, stay: prewarmLongStay,
			intervals: slices.Repeat([]time.Duration{prewarmLongPeriod}, cycles-1), regular: true},
	}
}

// jitterIntervals draws n intervals of period × (1 + u), u uniform in
// [−spread, spread], drawing again any that would make the last three
// regular within tolerance (see regularWindow).
func jitterIntervals(rng *rand.Rand, period time.Duration, n int, spread, tolerance float64) []time.Duration {
	out := make([]time.Duration, 0, n)
	for len(out) < n {
		iv := time.Duration(float64(period) * (1 + spread*(2*rng.Float64()-1)))
		iv = iv.Round(time.Millisecond)
		if len(out) >= prewarmLearn-2 {
			last := append(slices.Clone(out[len(out)-(prewarmLearn-2):]), iv)
			if regularWindow(last, tolerance) {
				continue
			}
		}
		out = append(out, iv)
	}
	return out
}

// regularWindow says whether intervals keep one period by neonproxy's
// rule: each within tolerance of their median (no minimum period here).
func regularWindow(ivs []time.Duration, tolerance float64) bool {
	if len(ivs) == 0 {
		return false
	}
	s := slices.Clone(ivs)
	slices.Sort(s)
	med := s[len(s)/2]
	for _, iv := range ivs {
		if (iv - med).Abs() > time.Duration(float64(med)*tolerance) {
			return false
		}
	}
	return true
}

// regularWindows counts the windows of prewarmLearn consecutive arrivals
// (prewarmLearn−1 intervals) in ivs that are regular within tolerance.
func regularWindows(ivs []time.Duration, tolerance float64) int {
	n := 0
	for i := 0; i+prewarmLearn-1 <= len(ivs); i++ {
		if regularWindow(ivs[i:i+prewarmLearn-1], tolerance) {
			n++
		}
	}
	return n
}

// prewarmSection runs the section against its own neonproxy.
type prewarmSection struct {
	px   *proxy
	env  *env
	rep  *prewarmReport
	opts options
	csv  *os.File
}

// runPrewarm starts the section's neonproxy, loads main, creates the runs'
// branches and runs the workloads.
func (b *bench) runPrewarm(ctx context.Context) {
	b.sectionMachine(ctx)
	o := b.opts
	o.noIdleTier, o.suspendTimeout, o.offloadAfter, o.prewarmOn = true, prewarmSuspendTimeout, prewarmOffloadAfter, true
	o.idleAfter, o.prewarmOff = 0, false
	s := &prewarmSection{env: &env{dir: b.env.path("prewarm"), keep: b.env.keep}, rep: &b.rep.prewarm, opts: o}
	r := s.rep
	r.scale, r.period, r.cycles, r.learn = prewarmScale, prewarmPeriod, prewarmCycles, prewarmLearn
	if o.quick {
		r.cycles = prewarmQuickCycles
	}
	r.suspendTimeout, r.offloadAfter = o.suspendTimeout, o.offloadAfter
	r.jitter, r.jitterMargin, r.seed = prewarmJitter, prewarmJitterMargin, prewarmJitterSeed
	if !b.phase(ctx, "prewarm: start neonproxy", s.start) {
		return
	}
	defer func() {
		s.stop()
		if left := processesUnder(s.env.dir); len(left) > 0 {
			b.rep.problem("prewarm: processes left after neonproxy stopped:\n" + strings.Join(left, "\n"))
		}
	}()
	if !b.phase(ctx, "prewarm: load main, create branches", s.load) {
		return
	}
	for _, spec := range prewarmRunSpecs(r.cycles) {
		run := &prewarmRun{name: spec.name, branch: spec.branch, enabled: spec.enabled, regular: spec.regular,
			period: spec.period, stay: spec.stay}
		ok := b.phase(ctx, fmt.Sprintf("prewarm: %s run (%s, %d arrivals)", spec.name, spec.branch, r.cycles), func(ctx context.Context) error {
			return s.run(ctx, spec, run)
		})
		r.runs = append(r.runs, *run)
		if !ok {
			break
		}
	}
	for _, p := range r.problems() {
		b.rep.problem("prewarm: " + p)
	}
}

func (s *prewarmSection) start(ctx context.Context) error {
	px, err := startOwnProxy(ctx, s.opts, s.env)
	if err != nil {
		return err
	}
	s.px = px
	s.rep.admin, s.rep.port = px.admin, px.port
	if b, err := os.ReadFile(px.cfgPath); err == nil {
		s.rep.config = string(b)
	}
	return nil
}

func (s *prewarmSection) stop() {
	if s.csv != nil {
		s.csv.Close()
		s.csv = nil
	}
	if s.px != nil {
		s.px.stop()
	}
}

// setPrewarm switches pre-warm for name and checks the branch JSON the
// request returns.
func (s *prewarmSection) setPrewarm(ctx context.Context, name string, enabled bool) error {
	var info branchInfo
	if err := s.px.send(ctx, http.MethodPost, "/v1/branches/"+name+"/prewarm", map[string]bool{"enabled": enabled}, &info); err != nil {
		return err
	}
	if pw := info.Compute.Prewarm; pw == nil || pw.Enabled != enabled {
		return fmt.Errorf("%s: compute.prewarm in the branch JSON after POST …/prewarm {\"enabled\": %v}: %+v", name, enabled, pw)
	}
	return nil
}

// load switches main's pre-warm off (its loading is no workload to
// predict), loads it with pgbench -i, suspends it (storing its pages) and
// creates the runs' branches from it, each with pre-warm switched as its
// run needs.
func (s *prewarmSection) load(ctx context.Context) error {
	r := s.rep
	r.command(fmt.Sprintf("curl -X POST %s/v1/branches/%s/prewarm -d '{\"enabled\": false}'", s.px.admin, branch))
	if err := s.setPrewarm(ctx, branch, false); err != nil {
		return err
	}
	t := pgTarget{name: branch, host: "127.0.0.1", port: s.px.port, dbname: branch, password: s.px.password}
	logf("  main: pgbench -i -s %d", prewarmScale)
	cmd, err := pgbenchInit(ctx, t, prewarmScale)
	r.command(cmd)
	if err != nil {
		return err
	}
	r.command(fmt.Sprintf("curl -X POST %s/v1/branches/%s/suspend", s.px.admin, branch))
	if err := s.px.suspend(ctx); err != nil {
		return err
	}
	info, err := s.px.branchInfo(ctx, branch)
	if err != nil {
		return err
	}
	r.logical = info.LogicalSizeBytes
	for _, spec := range prewarmRunSpecs(r.cycles) {
		r.command(fmt.Sprintf("curl -X POST %s/v1/branches -d '{\"name\": %q, \"parent\": %q}'", s.px.admin, spec.branch, branch))
		if err := s.px.send(ctx, http.MethodPost, "/v1/branches", map[string]string{"name": spec.branch, "parent": branch}, nil); err != nil {
			return err
		}
		r.command(fmt.Sprintf("curl -X POST %s/v1/branches/%s/prewarm -d '{\"enabled\": %v}'", s.px.admin, spec.branch, spec.enabled))
		if err := s.setPrewarm(ctx, spec.branch, spec.enabled); err != nil {
			return err
		}
	}
	r.command(fmt.Sprintf("pgx connect 'postgres://postgres:…@127.0.0.1:%d/BRANCH?sslmode=disable' + %s   # each arrival: timed to the first row, close not timed",
		s.px.port, prewarmQuery))
	r.command(fmt.Sprintf("SELECT pg_sleep(S)   # long-visit run: on the same connection after the first row, S = what is left of %s after the arrival; then the close", secs(prewarmLongStay)))
	r.command(fmt.Sprintf("curl %s/v1/branches/BRANCH   # compute.tier, state, prewarm, %s before each arrival", s.px.admin, ms(prewarmPreRead)))
	r.command(fmt.Sprintf("curl %s/metrics | grep -E '^(%s|%s|%s|%s|%s)'   # before and after each arrival and run",
		s.px.admin, wakeCountMetric, prewarmTotalMetric, prewarmSecondsMetric, computeStartsMetric, computeStopsMetric))
	csv, err := os.Create(s.env.path(prewarmCSV))
	if err != nil {
		return err
	}
	s.csv = csv
	fmt.Fprintln(csv, "run,branch,arrival,at_s,interval_s,json_state,json_tier,predicted_in_s,period_s,ms,wake_kind,prewarm_result,error")
	return nil
}

// run runs one workload on spec.branch: an arrival at the run's start and
// one after each interval. Each arrival reads the branch JSON and /metrics
// prewarmPreRead before its time, then, on time, opens a new connection
// and runs the query to its first row, and reads /metrics again. After the
// last arrival it waits until a prediction made from it would have been
// settled (one period and the tolerated lateness, then suspend_timeout)
// and the compute is stopped, and reads the counters and neonproxy's log
// of the run.
func (s *prewarmSection) run(ctx context.Context, spec prewarmRunSpec, run *prewarmRun) error {
	logOff := s.logSize()
	first, err := readMetrics(ctx, s.px)
	if err != nil {
		return err
	}
	base := time.Now().Add(prewarmPreRead + 50*time.Millisecond)
	run.start = base
	defer func() {
		if run.end.IsZero() {
			run.end = time.Now()
		}
		run.readLog(s.px.logPath, logOff, s.logSize())
	}()
	sched := base
	var last metricSet
	failures := 0
	for i := 0; i <= len(spec.intervals); i++ {
		if i > 0 {
			sched = sched.Add(spec.intervals[i-1])
		}
		a, after, err := s.arrival(ctx, spec, i, base, sched)
		run.arrivals = append(run.arrivals, a)
		s.writeCSV(spec, a)
		if after != nil {
			last = after
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			failures++
			logf("  %s arrival %d: FAILED: %v", spec.name, a.n, err)
			if failures >= prewarmMaxFailures {
				return fmt.Errorf("%d arrivals failed, the last (%d): %w", failures, a.n, err)
			}
			continue
		}
		logf("  %s arrival %d/%d: %s, JSON %s, wake %s%s", spec.name, a.n, len(spec.intervals)+1, ms(a.d), a.tier, a.kind, prefixed(" prewarm ", a.result))
	}
	if last == nil {
		last = first
	}
	run.during = counterDiff(first, last)
	// Settle: the prediction from the last arrival (its pre-warm start, the
	// hold until the client is late by the tolerated jitter, the suspend
	// after) and the compute's stop.
	t0 := time.Now()
	settle := sched.Add(spec.stay + spec.period + time.Duration(float64(spec.period)*prewarmTolerance) + prewarmSuspendTimeout + 500*time.Millisecond)
	if err := sleepUntil(ctx, settle); err != nil {
		return err
	}
	if err := s.px.waitBranchState(ctx, spec.branch, string(wake.StateStopped), tierWaitLimit); err != nil {
		return fmt.Errorf("after the last arrival: %w", err)
	}
	run.settle = time.Since(t0)
	run.end = time.Now()
	end, err := readMetrics(ctx, s.px)
	if err != nil {
		return err
	}
	run.total = counterDiff(first, end)
	info, err := s.px.branchInfo(ctx, spec.branch)
	if err != nil {
		return err
	}
	if pw := info.Compute.Prewarm; pw != nil {
		run.jsonEnabled, run.jsonPeriod = pw.Enabled, pw.PeriodSeconds
	}
	if run.jsonEnabled != spec.enabled {
		return fmt.Errorf("%s: compute.prewarm.enabled %v after the run, want %v", spec.branch, run.jsonEnabled, spec.enabled)
	}
	return nil
}

// arrival is one client of a run: at sched, a new connection and the
// query, with the branch JSON and /metrics read just before and /metrics
// after. It returns the reading after (nil when it failed).
func (s *prewarmSection) arrival(ctx context.Context, spec prewarmRunSpec, i int, base, sched time.Time) (prewarmArrival, metricSet, error) {
	a := prewarmArrival{n: i + 1}
	fail := func(err error) (prewarmArrival, metricSet, error) {
		a.err = err.Error()
		return a, nil, err
	}
	if err := sleepUntil(ctx, sched.Add(-prewarmPreRead)); err != nil {
		return fail(err)
	}
	info, err := s.px.branchInfo(ctx, spec.branch)
	if err != nil {
		return fail(err)
	}
	before, err := readMetrics(ctx, s.px)
	if err != nil {
		return fail(err)
	}
	readAt := time.Now()
	a.state, a.tier = info.Compute.State, info.Compute.Tier
	if pw := info.Compute.Prewarm; pw != nil {
		a.period = pw.PeriodSeconds
		if !pw.NextArrival.IsZero() {
			a.predicted, a.predictedIn = true, pw.NextArrival.Sub(readAt)
		}
	}
	if err := sleepUntil(ctx, sched); err != nil {
		return fail(err)
	}
	t := time.Now()
	a.at = t.Sub(base)
	a.d, err = visit(ctx, s.px.branchURL(spec.branch, "disable"), t.Add(spec.stay))
	if err != nil {
		return fail(err)
	}
	after, err := readMetrics(ctx, s.px)
	if err != nil {
		return fail(err)
	}
	a.kind = kindDiff(before.byLabel(wakeCountMetric, "kind"), after.byLabel(wakeCountMetric, "kind"))
	a.result = kindDiff(before.byLabel(prewarmTotalMetric, "result"), after.byLabel(prewarmTotalMetric, "result"))
	if a.result == wakeNone {
		a.result = ""
	}
	return a, after, nil
}

// visit opens a new connection to dsn, runs prewarmQuery (checked) and
// returns the time from dialling to its first row; it then stays
// connected until leave (SELECT pg_sleep for the rest, when any is left)
// before the close (neither timed).
func visit(ctx context.Context, dsn string, leave time.Time) (time.Duration, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return 0, fmt.Errorf("parse connection string: %w", err)
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	ctx, cancel := context.WithTimeout(ctx, connectLimit+max(time.Until(leave), 0))
	defer cancel()
	start := time.Now()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return 0, fmt.Errorf("connect: %w", err)
	}
	defer closeConn(conn)
	var n int64
	if err := conn.QueryRow(ctx, prewarmQuery).Scan(&n); err != nil {
		return 0, fmt.Errorf("%s: %w", prewarmQuery, err)
	}
	d := time.Since(start)
	if n != prewarmScale {
		return d, fmt.Errorf("%s returned %d, want %d", prewarmQuery, n, prewarmScale)
	}
	if rest := time.Until(leave); rest > 0 {
		if _, err := conn.Exec(ctx, fmt.Sprintf("SELECT pg_sleep(%.3f)", rest.Seconds())); err != nil {
			return d, fmt.Errorf("pg_sleep: %w", err)
		}
	}
	return d, nil
}

func (s *prewarmSection) writeCSV(spec prewarmRunSpec, a prewarmArrival) {
	if s.csv == nil {
		return
	}
	iv := 0.0
	if a.n > 1 {
		iv = spec.intervals[a.n-2].Seconds()
	}
	predIn := ""
	if a.predicted {
		predIn = fmt.Sprintf("%.3f", a.predictedIn.Seconds())
	}
	fmt.Fprintf(s.csv, "%s,%s,%d,%.3f,%.3f,%s,%s,%s,%.3f,%.3f,%s,%s,%q\n", spec.name, spec.branch, a.n, a.at.Seconds(), iv,
		a.state, a.tier, predIn, a.period, float64(a.d)/float64(time.Millisecond), a.kind, a.result, a.err)
}

// logSize is neonproxy.log's size (where a run's lines begin).
func (s *prewarmSection) logSize() int64 {
	fi, err := os.Stat(s.px.logPath)
	if err != nil {
		return 0
	}
	return fi.Size()
}

func sleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-timer.C:
		return nil
	}
}

func prefixed(prefix, s string) string {
	if s == "" {
		return ""
	}
	return prefix + s
}

// metricSet is one reading of /metrics: each sample's value by its series
// as exposed ("name" or `name{label="value"}`).
type metricSet map[string]float64

func readMetrics(ctx context.Context, px *proxy) (metricSet, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, px.admin+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := px.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET /metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return parseMetrics(io.LimitReader(resp.Body, 8<<20))
}

func parseMetrics(r io.Reader) (metricSet, error) {
	out := metricSet{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("/metrics: %q: %w", line, err)
		}
		out[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("GET /metrics: %w", err)
	}
	return out, nil
}

// byLabel is name's samples with exactly one label, by that label's value
// (counts: whole numbers).
func (m metricSet) byLabel(name, label string) map[string]int64 {
	out := map[string]int64{}
	prefix := name + "{" + label + `="`
	for k, v := range m {
		if rest, ok := strings.CutPrefix(k, prefix); ok {
			if val, ok := strings.CutSuffix(rest, `"}`); ok && !strings.Contains(val, `"`) {
				out[val] = int64(v)
			}
		}
	}
	return out
}

// prewarmCounters are the counters a run reads, as differences.
type prewarmCounters struct {
	prewarm        map[string]int // neonproxy_prewarm_total by result
	prewarmSeconds float64        // neonproxy_prewarm_compute_seconds_total
	starts         int            // neonproxy_compute_starts_total{result="ok"}
	stops          map[string]int // neonproxy_compute_stops_total by reason
	wakes          map[string]int // neonproxy_wake_duration_seconds_count by kind
}

func counterDiff(before, after metricSet) prewarmCounters {
	diff := func(name, label string) map[string]int { return labelDiff(before, after, name, label) }
	starts := diff(computeStartsMetric, "result")
	return prewarmCounters{
		prewarm:        diff(prewarmTotalMetric, "result"),
		prewarmSeconds: after[prewarmSecondsMetric] - before[prewarmSecondsMetric],
		starts:         starts["ok"],
		stops:          diff(computeStopsMetric, "reason"),
		wakes:          diff(wakeCountMetric, "kind"),
	}
}

// prewarmLogLine is one line of neonproxy's JSON log the section reads.
type prewarmLogLine struct {
	TS     string `json:"ts"`
	Msg    string `json:"msg"`
	Branch string `json:"branch"`
	Took   string `json:"took"`
	Reason string `json:"reason"`
}

// Log messages of wake/manager.go and wake/prewarm.go the section reads.
const (
	logComputeStarted = "compute started"
	logComputeStopped = "compute stopped"
	logSuspendingIdle = "suspending idle compute"
	logPrewarm        = "pre-warm"
)

// logTimeLayout is zap's ISO8601 time encoder's layout (ts).
const logTimeLayout = "2006-01-02T15:04:05.000Z0700"

// readLog reads the run's lines of neonproxy's log (bytes from to to).
func (r *prewarmRun) readLog(path string, from, to int64) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return
	}
	var lines []prewarmLogLine
	sc := bufio.NewScanner(io.LimitReader(f, max(to-from, 0)))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l prewarmLogLine
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Branch == r.branch {
			lines = append(lines, l)
		}
	}
	r.log = computeTimeline(lines, r.start, r.end)
}

// computeTimeline is a branch's compute time in [from, to] from its log
// lines: up = from each start's beginning ("compute started" ts − took)
// to its stop's end ("compute stopped" ts), clipped to the window;
// running = from the start's end to the stop's beginning (ts − took). It
// also counts the pre-warm lines by outcome.
func computeTimeline(lines []prewarmLogLine, from, to time.Time) prewarmLog {
	var out prewarmLog
	var upSince, runSince time.Time // zero: not up
	clip := func(t time.Time) time.Time {
		if t.Before(from) {
			return from
		}
		if !to.IsZero() && t.After(to) {
			return to
		}
		return t
	}
	for _, l := range lines {
		ts, err := time.Parse(logTimeLayout, l.TS)
		if err != nil {
			continue
		}
		took, _ := time.ParseDuration(l.Took)
		out.events = append(out.events, logEvent{at: ts, msg: l.Msg, took: took})
		switch l.Msg {
		case logComputeStarted:
			out.starts++
			upSince, runSince = clip(ts.Add(-took)), clip(ts)
			out.startTook = append(out.startTook, took)
		case logComputeStopped:
			out.stops++
			if upSince.IsZero() { // up before the window
				upSince, runSince = from, from
			}
			out.spans = append(out.spans, span{upSince, clip(ts)})
			out.up += clip(ts).Sub(upSince)
			out.running += max(clip(ts.Add(-took)).Sub(runSince), 0)
			upSince, runSince = time.Time{}, time.Time{}
		case logPrewarm:
			out.prewarms++
		case "pre-warm hit":
			out.hits++
		case "pre-warm wasted":
			out.wasted++
		default:
			if strings.HasPrefix(l.Msg, "pre-warm skipped") {
				out.skipped++
			}
		}
	}
	if !upSince.IsZero() && !to.IsZero() { // still up at the end
		out.spans = append(out.spans, span{upSince, to})
		out.up += to.Sub(upSince)
		out.running += max(to.Sub(runSince), 0)
		out.upAtEnd = true
	}
	return out
}
