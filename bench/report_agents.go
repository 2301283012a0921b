package main

import (
	"cmp"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"
)

// agentsReport is the agents section's results. main prints it after the
// report; its problems go to the report's list.
type agentsReport struct {
	admin      string // the section's admin API, for the printed requests
	port       int
	dataDir    string
	config     string // the generated neonproxy.yaml
	commands   []string
	branches   int
	duration   time.Duration
	ttl        time.Duration
	maxRunning int
	scale      int
	interval   time.Duration // between arrivals

	started            time.Time
	wall               time.Duration // the whole section
	loadStart, loadEnd string        // /proc/loadavg

	loadTook                           time.Duration // pgbench -i of main
	mainLogical, mainUnique, mainLocal int64

	before, after []agentsStorage // after: one reading per GC pass

	t0           time.Time     // the first arrival
	arrivalsTook time.Duration // first → last release
	agentsTook   time.Duration // first arrival → every agent done
	lastCreated  time.Duration // first arrival → the last successful create returned
	lastExpiry   time.Time     // the latest expires_at of an expiring branch
	runs         []agentRun

	mu           sync.Mutex // guards samples (the sampler appends)
	samples      []agentsSample
	sampleErrors int
	sampleErr    string

	metricsBefore, metricsAfter, metricsGone metricSet // first arrival; every agent done; every branch gone
	goneAt                                   time.Duration
	leftAtDeadline                           int
	left                                     []string // branches other than main at the end
	postmastersLeft                          []string

	logOff         int64
	stopReasons    map[string]int
	evictions      int            // "evicting idle compute" (max_running)
	cacheEvictions int            // "evicted local data directory (compute.cache_bytes)"
	mainEvicted    time.Time      // when main's local directory was among them
	gcPasses       []countedValue // "pagestore gc" lines by trigger
	gcTime         time.Duration  // their duration_ms, summed
	lastGC         time.Time      // the last one's
	lastDeleted    time.Time      // the last "branch deleted" line's
	logIssues      []countedValue
}

func (r *agentsReport) command(c string) {
	if c != "" {
		r.commands = append(r.commands, c)
	}
}

// byKind is the agents that expire (true) or are deleted (false).
func (r *agentsReport) byKind(expire bool) []agentRun {
	var out []agentRun
	for _, a := range r.runs {
		if a.expire == expire {
			out = append(out, a)
		}
	}
	return out
}

func (r *agentsReport) failed() []agentRun {
	var out []agentRun
	for _, a := range r.runs {
		if !a.ok() {
			out = append(out, a)
		}
	}
	return out
}

// pick is f of every agent that got past stage want (f's value > 0).
func (r *agentsReport) pick(f func(agentRun) time.Duration) []time.Duration {
	var out []time.Duration
	for _, a := range r.runs {
		if d := f(a); d > 0 {
			out = append(out, d)
		}
	}
	return out
}

// created counts the agents whose create succeeded; expiring ones of them
// separately.
func (r *agentsReport) created() (all, expiring int) {
	for _, a := range r.runs {
		if a.create > 0 && a.stage != agentCreate {
			all++
			if a.expire {
				expiring++
			}
		}
	}
	return all, expiring
}

// deletedExplicitly counts the odd agents whose DELETE succeeded.
func (r *agentsReport) deletedExplicitly() int {
	n := 0
	for _, a := range r.runs {
		if !a.expire && a.del > 0 && a.delErr == "" {
			n++
		}
	}
	return n
}

// expired is the reaper's counter by result, at the end.
func (r *agentsReport) expired() map[string]int64 {
	return r.endMetrics().byLabel(branchesExpiredMetric, "result")
}

// endMetrics is /metrics once every branch was gone, or (when the wait
// failed) once every agent was done.
func (r *agentsReport) endMetrics() metricSet {
	if r.metricsGone != nil {
		return r.metricsGone
	}
	return r.metricsAfter
}

// peak is the sample with the most computes running + starting.
func (r *agentsReport) peak() (agentsSample, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var best agentsSample
	postmasters := 0
	for _, s := range r.samples {
		if s.running+s.starting > best.running+best.starting {
			best = s
		}
		postmasters = max(postmasters, s.postmasters)
	}
	return best, postmasters
}

// peakGoroutinesStore is the largest go_goroutines and
// neonproxy_pagestore_bytes sampled.
func (r *agentsReport) peakGoroutinesStore() (int, int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	g, st := 0, int64(0)
	for _, s := range r.samples {
		g, st = max(g, s.goroutines), max(st, s.store)
	}
	return g, st
}

// storeWithin reports whether the last storage reading's store_bytes is
// within agentsStorageTolerance of the first.
func (r *agentsReport) storeWithin() bool {
	if len(r.before) == 0 || len(r.after) == 0 {
		return false
	}
	return within(r.before[0].storeBytes(), r.after[len(r.after)-1].storeBytes())
}

// storeBytes is the GC pass's store_bytes, or the gauge when the pass
// failed.
func (st agentsStorage) storeBytes() int64 {
	if st.gcErr != "" {
		return st.metric
	}
	return st.gc.StoreBytes
}

func (r *agentsReport) duWithin() bool {
	if len(r.before) == 0 || len(r.after) == 0 {
		return false
	}
	return within(r.before[0].du, r.after[len(r.after)-1].du)
}

// within: after is at most agentsStorageTolerance above before.
func within(before, after int64) bool {
	return before > 0 && float64(after) <= float64(before)*(1+agentsStorageTolerance)
}

// reaperCountOK says whether the reaper deleted as many branches as
// expired: the expiring branches created, and up to unknown more, whose
// create the bench gave up on (its request timed out) but neonproxy may
// still have done.
func (r *agentsReport) reaperCountOK() (ok bool, unknown int) {
	_, expiring := r.created()
	for _, a := range r.runs {
		if a.expire && a.stage == agentCreate {
			unknown++
		}
	}
	d := int(r.expired()["deleted"])
	return d >= expiring && d <= expiring+unknown, unknown
}

func passFail(ok bool) string {
	if ok {
		return "PASS"
	}
	return "**FAIL**"
}

// errorGroups are the failed agents by stage, SQLSTATE and message (the
// message with the branch name taken out, so that equal errors group).
func (r *agentsReport) errorGroups() []agentErrorGroup {
	var out []agentErrorGroup
	for _, a := range r.failed() {
		key := a.stage + ": "
		if a.code != "" {
			key += a.code + " "
		}
		key += strings.ReplaceAll(a.msg, a.name, "<branch>")
		i := slices.IndexFunc(out, func(g agentErrorGroup) bool { return g.key == key })
		if i < 0 {
			out = append(out, agentErrorGroup{key: key, example: a})
			i = len(out) - 1
		}
		out[i].n++
		if a.expire {
			out[i].expiring++
		}
	}
	slices.SortStableFunc(out, func(a, b agentErrorGroup) int { return cmp.Compare(b.n, a.n) })
	return out
}

type agentErrorGroup struct {
	key         string
	n, expiring int
	example     agentRun
}

// problems are what the section lists under Problems: any agent error,
// branches left, a reaper count that does not match, the storage not back
// within agentsStorageTolerance, postmasters left, /metrics unreadable.
// Timings and the arrival rate never are.
func (r *agentsReport) problems() []string {
	var out []string
	if f := r.failed(); len(f) > 0 {
		var ex []string
		for _, g := range r.errorGroups()[:min(5, len(r.errorGroups()))] {
			ex = append(ex, fmt.Sprintf("%d× %s (e.g. %s after %s)", g.n, truncate(g.key, 300), g.example.name, secs(g.example.total)))
		}
		out = append(out, fmt.Sprintf("%d of %d agents failed:\n%s", len(f), len(r.runs), strings.Join(ex, "\n")))
	}
	if len(r.runs) == 0 {
		return out
	}
	if r.leftAtDeadline > 0 || len(r.left) > 0 {
		out = append(out, fmt.Sprintf("%d agent branch(es) not gone once the count stopped falling (%s after the last expiry at the earliest): %s",
			max(r.leftAtDeadline, len(r.left)), shortDuration(agentsGoneMargin), strings.Join(r.left[:min(10, len(r.left))], ", ")))
	}
	_, expiring := r.created()
	ex := r.expired()
	if ok, unknown := r.reaperCountOK(); !ok {
		out = append(out, fmt.Sprintf("%s{result=\"deleted\"} is %d, want %d (the expiring branches created; up to %d more whose create timed out on the bench's side)",
			branchesExpiredMetric, ex["deleted"], expiring, unknown))
	}
	if ex["failed"] > 0 || ex["waiting"] > 0 {
		out = append(out, fmt.Sprintf("%s: failed %d, waiting %d (want 0)", branchesExpiredMetric, ex["failed"], ex["waiting"]))
	}
	if len(r.postmastersLeft) > 0 {
		out = append(out, "postmasters alive once every agent's branch was gone:\n"+strings.Join(r.postmastersLeft, "\n"))
	}
	if len(r.before) > 0 && len(r.after) > 0 {
		b, a := r.before[0], r.after[len(r.after)-1]
		if !r.storeWithin() {
			out = append(out, fmt.Sprintf("page store not back within %.0f %%: store_bytes %d before, %d after %d GC pass(es) (%s)",
				agentsStorageTolerance*100, b.storeBytes(), a.storeBytes(), len(r.after), ratio(float64(a.storeBytes()), float64(b.storeBytes()))))
		}
		for _, st := range append(slices.Clone(r.before), r.after...) {
			if st.gcErr != "" {
				out = append(out, fmt.Sprintf("POST /v1/pagestore/gc (%s) failed after %s: %s", st.label, secs(st.gcTook), st.gcErr))
			}
		}
		if !r.duWithin() {
			out = append(out, fmt.Sprintf("data directory not back within %.0f %%: du %d before, %d after (%s): %s",
				agentsStorageTolerance*100, b.du, a.du, ratio(float64(a.du), float64(b.du)), entriesDiff(b, a)))
		}
	}
	if r.sampleErrors > 0 {
		out = append(out, fmt.Sprintf("%d /metrics reads failed during the run; the first: %s", r.sampleErrors, r.sampleErr))
	}
	return out
}

// entriesDiff is the data directory's entries that grew, "computes +1.2 MB, …".
func entriesDiff(b, a agentsStorage) string {
	var parts []string
	for _, e := range a.entries {
		var was int64
		for _, f := range b.entries {
			if f.name == e.name {
				was = f.bytes
			}
		}
		if d := e.bytes - was; d != 0 {
			parts = append(parts, fmt.Sprintf("%s %+.1f MB", e.name, float64(d)/mb))
		}
	}
	if len(parts) == 0 {
		return "no entry changed"
	}
	return strings.Join(parts, ", ")
}

// perHour is n events over d as a rate per hour.
func perHour(n int, d time.Duration) string {
	if d <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f/h", float64(n)/d.Hours())
}

func statsCells(s stats) string {
	if s.n == 0 {
		return "– | – | – | –"
	}
	return fmt.Sprintf("%d | %s | %s | %s", s.n, secs(s.median), secs(s.p99), secs(s.max))
}

// print renders the section (nothing when it did not start).
func (r *agentsReport) print(w io.Writer) {
	if r == nil || r.admin == "" {
		return
	}
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p("")
	p("## Agents (branch expiry): %d short-lived branches of a %s main over %s", r.branches, mbytes(r.mainLogical), r.duration)
	p("")
	p("A separate neonproxy (own data dir and store, log.level info, embedded WAL keeper) with `compute.max_running: %d`,", r.maxRunning)
	p("`compute.suspend_timeout: %s`, `compute.wake_timeout: %s`, `compute.cache_bytes` at its default (10GiB).", shortDuration(agentsSuspendTimeout), shortDuration(agentsWakeTimeout))
	if r.mainLogical > 0 {
		p("main loaded with `pgbench -i -s %d` through neonproxy (%s) and suspended: logical_size_bytes %s, unique_bytes %s.",
			r.scale, secs(r.loadTook), mbytes(r.mainLogical), mbytes(r.mainUnique))
	}
	if len(r.runs) == 0 {
		r.printStorage(p)
		r.printTail(p)
		return
	}
	p("Then one agent every %s (open loop: each in its own goroutine): `POST /v1/branches` from main with a TTL",
		ms(r.interval))
	p("(even agents %s, left to the reaper; odd agents %s, deleted with `DELETE` after their work); pgx connect", shortDuration(r.ttl), shortDuration(agentsLongTTL))
	p("through the front door (TCP, SCRAM, database = branch, simple protocol; the connect wakes a cold compute); `CREATE TABLE`;")
	p("%d `INSERT`s (one commit each); `SELECT count(*), sum(id)` checked; disconnect. Every agent's context ends %s after", agentsRows, shortDuration(agentsLimit))
	p("its arrival. `/metrics` and `/proc` are read every %s until every agent's branch is gone. MB = 10⁶ bytes.", shortDuration(agentsSampleEvery))
	p("")
	created, expiring := r.created()
	ok := len(r.runs) - len(r.failed())
	pk, postmasters := r.peak()
	ex := r.expired()
	p("| measure | value |")
	p("|---|---:|")
	p("| agents released | %d of %d (%d expiring, %d deleted explicitly) |", len(r.runs), r.branches, len(r.byKind(true)), len(r.byKind(false)))
	p("| offered arrival rate | one per %s = %s |", ms(r.interval), perHour(r.branches, r.duration))
	p("| arrivals: first → last release (latest release behind its schedule) | %s (%s) |", secs(r.arrivalsTook), ms(slices.Max(r.pick(func(a agentRun) time.Duration { return max(a.late, 1) }))))
	p("| branches created | %d (%s, first arrival → last create returned %s) |", created, perHour(created, r.lastCreated), secs(r.lastCreated))
	p("| agents done without error | %d of %d |", ok, len(r.runs))
	p("| first arrival → every agent done | %s (%s of agents done) |", secs(r.agentsTook), perHour(ok, r.agentsTook))
	p("| create (`POST /v1/branches` round trip) p50 / p99 / max | %s |", triple(summarize(r.pick(func(a agentRun) time.Duration { return a.create }))))
	p("| connect (dial → authenticated: queue + cold wake), agents served, p50 / p99 / max | %s |", triple(summarize(r.pick(connected))))
	if refused := r.pick(refusedAt); len(refused) > 0 {
		p("| connect refused (dial → error), %d agents, p50 / p99 / max | %s |", len(refused), triple(summarize(refused)))
	}
	p("| **first query** (dial → `CREATE TABLE` done) p50 / p99 / max | %s |", triple(summarize(r.pick(func(a agentRun) time.Duration { return a.firstQuery }))))
	p("| work (%d INSERTs + SELECT) p50 / p99 / max | %s |", agentsRows, triple(summarize(r.pick(func(a agentRun) time.Duration { return a.work }))))
	p("| explicit `DELETE` round trip p50 / p99 / max | %s |", triple(summarize(r.pick(func(a agentRun) time.Duration { return a.del }))))
	p("| agent total (arrival → done, DELETE included) p50 / p99 / max | %s |", triple(summarize(r.pick(func(a agentRun) time.Duration { return a.total }))))
	p("| peak running + starting (`neonproxy_computes`), compute.max_running | %d (running %d, starting %d, at +%s) %s %d |",
		pk.running+pk.starting, pk.running, pk.starting, secs(pk.at), map[bool]string{true: "≤", false: "**>**"}[pk.running+pk.starting <= r.maxRunning], r.maxRunning)
	p("| peak postmasters alive under `<tmp>/agents` (stopping ones included) | %d |", postmasters)
	gr, store := r.peakGoroutinesStore()
	p("| peak `go_goroutines` of neonproxy; peak `%s` | %d; %s |", pagestoreBytesMetric, gr, mbytes(store))
	if all, nobody := r.starts(); all > 0 {
		p("| agents' computes started (log \"compute started\"), of them after their agent was refused | %d (%s), %d |", all, perHour(all, r.agentsTook), nobody)
	}
	p("| wakes queued for a running slot (`%s`, the run's) | %d |", wakesQueuedMetric, int(r.metricsAfter[wakesQueuedMetric]-r.metricsBefore[wakesQueuedMetric]))
	p("| deleted explicitly (`DELETE` ok) | %d of %d |", r.deletedExplicitly(), len(r.byKind(false)))
	reaperOK, _ := r.reaperCountOK()
	p("| deleted by expiry (`%s{result=\"deleted\"}`) | %d of %d expiring created: %s |", branchesExpiredMetric, ex["deleted"], expiring, passFail(reaperOK))
	p("| reaper: waiting / failed | %d / %d |", ex["waiting"], ex["failed"])
	if lag := r.reaperLag(); lag.n > 0 {
		p("| reaper: expires_at → \"expired branch deleted\" p50 / p99 / max | %s / %s / %s |", secs(lag.median), secs(lag.p99), secs(lag.max))
	}
	if r.goneAt > 0 {
		p("| every agent branch gone (`%s` = 1) | +%s (last expiry +%s) |", branchesMetric, secs(r.goneAt), secs(r.lastExpiry.Sub(r.t0)))
	} else {
		p("| every agent branch gone | **no**: %d left (waited until the count stopped falling for %s, or %s after the last expiry) |",
			max(r.leftAtDeadline, len(r.left)), shortDuration(agentsGoneProgress), shortDuration(agentsGoneLimit))
	}
	if len(r.before) > 0 && len(r.after) > 0 {
		b, a := r.before[0], r.after[len(r.after)-1]
		p("| page store (`store_bytes` after a GC pass) before → after | %s → %s = %s: %s |", mbytes(b.storeBytes()), mbytes(a.storeBytes()),
			ratio(float64(a.storeBytes()), float64(b.storeBytes())), passFail(r.storeWithin()))
		p("| data_dir (`du -s`) before → after | %s → %s = %s: %s |", mbytes(b.du), mbytes(a.du), ratio(float64(a.du), float64(b.du)), passFail(r.duWithin()))
	}
	p("| errors | %d |", len(r.failed()))
	p("| section wall time | %s |", secs(r.wall))
	p("| load average (1/5/15 min) at the start → end | %s → %s |", r.loadStart, r.loadEnd)
	r.printErrors(p)
	r.printTime(p)
	r.printTimeline(p)
	r.printStorage(p)
	r.printLog(p)
	r.printTail(p)
}

// connected is a's connect when it succeeded; refusedAt when it failed.
func connected(a agentRun) time.Duration {
	if a.stage == agentConnect {
		return 0
	}
	return a.connect
}

func refusedAt(a agentRun) time.Duration {
	if a.stage != agentConnect {
		return 0
	}
	return a.connect
}

// starts counts the agents whose compute started (neonproxy's log) and,
// of them, those whose agent had already been refused: the start went on
// for nobody.
func (r *agentsReport) starts() (all, forNobody int) {
	for _, a := range r.runs {
		if a.starts > 0 {
			all++
			if a.stage == agentConnect {
				forNobody++
			}
		}
	}
	return all, forNobody
}

// triple is "p50 / p99 / max" in seconds.
func triple(s stats) string {
	if s.n == 0 {
		return "–"
	}
	return fmt.Sprintf("%s / %s / %s", secs(s.median), secs(s.p99), secs(s.max))
}

// reaperLag is, per branch the reaper deleted, its log line's time − its
// expires_at.
func (r *agentsReport) reaperLag() stats {
	var d []time.Duration
	for _, a := range r.runs {
		if a.expire && !a.reapedAt.IsZero() && !a.expiresAt.IsZero() {
			d = append(d, a.reapedAt.Sub(a.expiresAt))
		}
	}
	return summarize(d)
}

func (r *agentsReport) printErrors(p printer) {
	groups := r.errorGroups()
	if len(groups) == 0 {
		p("")
		p("Errors: none.")
		return
	}
	p("")
	p("Errors by stage, SQLSTATE and message (branch names replaced by `<branch>`):")
	p("")
	p("| n | of them expiring | error | e.g. |")
	p("|---:|---:|---|---|")
	for _, g := range groups[:min(15, len(groups))] {
		e := g.example
		p("| %d | %d | %s | %s, arrival +%s, after %s (expires_at +%s) |", g.n, g.expiring, strings.ReplaceAll(truncate(g.key, 300), "|", "\\|"),
			e.name, secs(e.at), secs(e.total), secs(e.expiresAt.Sub(r.t0)))
	}
	if len(groups) > 15 {
		p("")
		p("… %d more kinds.", len(groups)-15)
	}
}

// printTime splits the connect: the compute's start (neonproxy's
// "compute started" took: waiting for an evicted compute's stop,
// materializing the data directory, PostgreSQL's start) and the rest
// (queueing for a running slot, SCRAM, the proxy).
func (r *agentsReport) printTime(p printer) {
	var wait, queue, start, mat, pgStart, rest []time.Duration
	restarted := 0
	kinds := map[string]int{}
	for _, a := range r.runs {
		if a.starts > 1 {
			restarted++
		}
		if a.connect > 0 || a.stage == agentConnect {
			kinds[cmp.Or(a.wakeKind, "none")]++
		}
		if a.wakeWait > 0 {
			wait = append(wait, a.wakeWait)
			if a.connect > 0 {
				rest = append(rest, max(1, a.connect-a.wakeWait))
			}
			if a.startTook > 0 {
				queue = append(queue, max(1, a.wakeWait-a.startTook))
			}
		}
		if a.startTook <= 0 {
			continue
		}
		start = append(start, a.startTook)
		if a.matTook > 0 {
			mat = append(mat, a.matTook)
			pgStart = append(pgStart, max(1, a.startTook-a.matTook))
		}
	}
	p("")
	p("Where an agent's time went (seconds; per agent, joined with neonproxy's log by branch name):")
	p("")
	p("| part | n | p50 | p99 | max |")
	p("|---|---:|---:|---:|---:|")
	p("| create (`POST /v1/branches`) | %s |", statsCells(summarize(r.pick(func(a agentRun) time.Duration { return a.create }))))
	p("| connect (agents served) | %s |", statsCells(summarize(r.pick(connected))))
	p("| … front door's wait for the compute (log \"connection\" wake_wait) | %s |", statsCells(summarize(wait)))
	p("| … … queue for a running slot (wake_wait − start took) | %s |", statsCells(summarize(queue)))
	p("| … … compute start (log \"compute started\" took) | %s |", statsCells(summarize(start)))
	p("| … … … materialization (log \"data directory materialized\" took) | %s |", statsCells(summarize(mat)))
	p("| … … … the rest: an evicted compute's stop, WAL replay, PostgreSQL's start | %s |", statsCells(summarize(pgStart)))
	p("| … TCP, SCRAM, proxy (connect − wake_wait) | %s |", statsCells(summarize(rest)))
	p("| first query (`CREATE TABLE`) after connect | %s |", statsCells(summarize(r.pick(func(a agentRun) time.Duration {
		if a.firstQuery > 0 {
			return max(a.firstQuery-a.connect, 1)
		}
		return 0
	}))))
	p("| work (%d INSERTs + SELECT) | %s |", agentsRows, statsCells(summarize(r.pick(func(a agentRun) time.Duration { return a.work }))))
	p("| explicit `DELETE` | %s |", statsCells(summarize(r.pick(func(a agentRun) time.Duration { return a.del }))))
	p("")
	p("Wakes of the agents' first connections (log \"connection\" wake; none: no line or refused before a wake): %s.", mapText(kinds))
	if restarted > 0 {
		p("%d agents' computes started more than once (evicted before their agent was done, or a failed start).", restarted)
	}
	p("The starts ran up to %d at a time on %d cores.", r.maxRunning, runtime.NumCPU())
}

// printTimeline groups the agents by arrival window, with the samples of
// the same window, so a growing backlog shows.
func (r *agentsReport) printTimeline(p printer) {
	end := max(r.agentsTook, r.goneAt)
	step := max(5*time.Second, (r.duration / 10).Round(time.Second), (end / 20).Round(5*time.Second))
	p("")
	p("Timeline by arrival window (agents arriving in it; samples taken in it; +s since the first arrival):")
	p("")
	p("| window | arrived | failed | first query p50 | first query max | peak running + starting | wakes queued | branches at end | client conns max | goroutines max | store at end |")
	p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	r.mu.Lock()
	samples := slices.Clone(r.samples)
	r.mu.Unlock()
	lastQueued := int(r.metricsBefore[wakesQueuedMetric])
	for from := time.Duration(0); from < end; from += step {
		to := from + step
		var fq []time.Duration
		n, failed := 0, 0
		for _, a := range r.runs {
			if a.at >= from && a.at < to {
				n++
				if !a.ok() {
					failed++
				}
				if a.firstQuery > 0 {
					fq = append(fq, a.firstQuery)
				}
			}
		}
		peak, branches, clients, queued, gr, store := 0, -1, 0, lastQueued, 0, int64(0)
		for _, s := range samples {
			if s.at >= from && s.at < to {
				peak = max(peak, s.running+s.starting)
				branches, queued, store = s.branches, s.queued, s.store
				clients, gr = max(clients, s.clients), max(gr, s.goroutines)
			}
		}
		st := summarize(fq)
		fqp50, fqmax := "–", "–"
		if st.n > 0 {
			fqp50, fqmax = secs(st.median), secs(st.max)
		}
		bs := "–"
		if branches >= 0 {
			bs = fmt.Sprint(branches)
		}
		p("| +%.0f–%.0f s | %d | %d | %s | %s | %d | %d | %s | %d | %d | %s |", from.Seconds(), to.Seconds(), n, failed, fqp50, fqmax, peak, queued-lastQueued, bs, clients, gr, mbytes(store))
		lastQueued = queued
	}
}

func (r *agentsReport) printStorage(p printer) {
	if len(r.before) == 0 {
		return
	}
	rows := append(slices.Clone(r.before), r.after...)
	var names []string
	for _, st := range rows {
		for _, e := range st.entries {
			if !slices.Contains(names, e.name) {
				names = append(names, e.name)
			}
		}
	}
	p("")
	p("Storage (`POST /v1/pagestore/gc`, then `neonproxy_pagestore_bytes`, the page store directory's files by kind — pebble's tables,")
	p("its write-ahead logs (kept and recycled in ~4 MB segments: one more or less moves a small store's total by several per cent),")
	p("the rest — and `du -s --block-size=1` of `<data_dir>` and each entry; MB):")
	p("")
	head := "| reading | store_bytes | GC freed | versions deleted | GC took | pagestore_bytes | store .sst / .log / other | du data_dir"
	sep := "|---|---:|---:|---:|---:|---:|---:|---:"
	for _, n := range names {
		head += " | du " + n
		sep += "|---:"
	}
	p("%s |", head)
	p("%s|", sep)
	for _, st := range rows {
		sb := mbytes(st.gc.StoreBytes)
		if st.gcErr != "" {
			sb = "GC failed"
		}
		line := fmt.Sprintf("| %s | %s | %s | %d | %s | %s | %s / %s / %s | %s", st.label, sb, mbytes(st.gc.BytesFreed), st.gc.VersionsDeleted,
			secs(st.gcTook), mbytes(st.metric), mbytes(st.storeSST), mbytes(st.storeLog), mbytes(st.storeOther), mbytes(st.du))
		for _, n := range names {
			cell := "–"
			for _, e := range st.entries {
				if e.name == n {
					cell = mbytes(e.bytes)
				}
			}
			line += " | " + cell
		}
		p("%s |", line)
	}
	if !r.mainEvicted.IsZero() {
		p("")
		p("main's local data directory (`computes/`) was evicted for compute.cache_bytes at +%s (its next start materializes it from the store).", secs(r.mainEvicted.Sub(r.t0)))
	}
	if len(r.after) > 0 {
		b, a := r.before[0], r.after[len(r.after)-1]
		p("")
		p("Requirement: back within %.0f %% of the start once every agent's branch is gone. Page store %s (%s), data directory %s (%s); %s.",
			agentsStorageTolerance*100, passFail(r.storeWithin()), ratio(float64(a.storeBytes()), float64(b.storeBytes())),
			passFail(r.duWithin()), ratio(float64(a.du), float64(b.du)), entriesDiff(b, a))
	}
}

func (r *agentsReport) printLog(p printer) {
	if r.stopReasons == nil {
		return
	}
	end := r.endMetrics()
	starts := labelDiff(r.metricsBefore, end, computeStartsMetric, "result")
	stops := labelDiff(r.metricsBefore, end, computeStopsMetric, "reason")
	wakes := labelDiff(r.metricsBefore, end, wakeCountMetric, "kind")
	conns := labelDiff(r.metricsBefore, end, connectionsMetric, "result")
	p("")
	p("From the first arrival until every branch was gone (`/metrics` before and after): compute starts %s; stops %s;", mapText(starts), mapText(stops))
	p("wakes %s; client connections %s. neonproxy's log: %d \"evicting idle compute\" (max_running), %d local", mapText(wakes), mapText(conns), r.evictions, r.cacheEvictions)
	p("directories evicted for compute.cache_bytes. \"pagestore gc\" passes by trigger: %s; %s in all (one at a time); the last", cmp.Or(countedText(r.gcPasses), "none"), secs(r.gcTime))
	p("one ended at +%s, the last \"branch deleted\" was at +%s.", secs(r.lastGC.Sub(r.t0)), secs(r.lastDeleted.Sub(r.t0)))
	if len(r.logIssues) > 0 {
		p("")
		p("Warn and error lines of neonproxy's log from the first arrival on, by message:")
		p("")
		issues := slices.Clone(r.logIssues)
		slices.SortStableFunc(issues, func(a, b countedValue) int { return cmp.Compare(b.n, a.n) })
		for _, v := range issues[:min(10, len(issues))] {
			p("- %d× %s", v.n, v.value)
		}
		if len(issues) > 10 {
			p("- … %d more messages", len(issues)-10)
		}
	}
}

func (r *agentsReport) printTail(p printer) {
	p("")
	p("Timings and the achieved rate are never pass/fail. Problems are listed for any agent error, a branch not gone (the")
	p("bench waits %s after the last expiry, then on while the count falls), the reaper's deleted count not matching, storage", shortDuration(agentsGoneMargin))
	p("not back within %.0f %%, a GC request failing, or a postmaster left. Per agent and per sample: `<tmp>/agents/%s`,", agentsStorageTolerance*100, agentsCSV)
	p("`<tmp>/agents/%s` (-keep).", agentsSamples)
	if probs := r.problems(); len(probs) > 0 {
		p("**%d agents problem(s), listed under Problems above.**", len(probs))
	} else {
		p("Agents problems: none.")
	}
	cmds := slices.Clone(r.commands)
	if r.config != "" {
		cmds = append(cmds, "", "# <tmp>/agents/neonproxy.yaml (generated)")
		cmds = append(cmds, strings.Split(strings.TrimRight(r.config, "\n"), "\n")...)
	}
	printCommands(p, "agents", cmds...)
}
