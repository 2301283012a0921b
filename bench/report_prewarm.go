package main

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/neonproxy/neonproxy/wake"
)

// prewarmReport is the prewarm section's results.
type prewarmReport struct {
	admin                        string // the section's admin API, for the printed requests
	port                         int
	config                       string // the generated neonproxy.yaml
	scale, cycles, learn         int
	period                       time.Duration
	suspendTimeout, offloadAfter time.Duration
	jitter, jitterMargin         float64
	seed                         int64
	logical                      int64 // main's logical_size_bytes after the load
	runs                         []prewarmRun
	commands                     []string
}

func (r *prewarmReport) command(c string) {
	if c != "" {
		r.commands = append(r.commands, c)
	}
}

// prewarmRun is one workload run's results.
type prewarmRun struct {
	name, branch string
	enabled      bool // pre-warm switched on for the branch
	regular      bool // the intervals keep the period
	period       time.Duration
	stay         time.Duration // each visit stays connected until this long after its arrival
	start, end   time.Time
	arrivals     []prewarmArrival
	// during: the counters from before the first arrival to after the
	// last; total: to after the settle (the compute stopped, a prediction
	// from the last arrival settled).
	during, total prewarmCounters
	settle        time.Duration
	jsonEnabled   bool    // compute.prewarm.enabled after the run
	jsonPeriod    float64 // compute.prewarm.period_seconds after the run
	log           prewarmLog
}

// prewarmArrival is one client of a run.
type prewarmArrival struct {
	n  int           // 1-based
	at time.Duration // connect start since the run's first scheduled arrival
	// The branch JSON prewarmPreRead before: compute.state, compute.tier,
	// and compute.prewarm (a predicted next_arrival, how far ahead of the
	// read; period_seconds).
	state, tier string
	predicted   bool
	predictedIn time.Duration
	period      float64
	d           time.Duration // connect → first row
	kind        string        // wake kinds counted (kindDiff)
	result      string        // neonproxy_prewarm_total results counted during it ("" none)
	err         string
}

// prewarmLog is what neonproxy's log says of a run's branch.
type prewarmLog struct {
	starts, stops                   int
	startTook                       []time.Duration // "compute started" took
	up, running                     time.Duration
	upAtEnd                         bool // the compute was still up at the run's end
	prewarms, hits, wasted, skipped int  // "pre-warm", "pre-warm hit", "pre-warm wasted", "pre-warm skipped …" lines
	events                          []logEvent
	spans                           []span // each compute's up time, clipped to the run
}

// upAfter is the compute time of the computes whose start began after t:
// after the last arrival's first row, a pre-warm for a client that never
// came (a client's own start begins before its first row).
func (l prewarmLog) upAfter(t time.Time) time.Duration {
	var d time.Duration
	for _, s := range l.spans {
		if !s.start.Before(t) {
			d += s.end.Sub(s.start)
		}
	}
	return d
}

// lastFirstRow is when the run's last arrival got its first row.
func (r prewarmRun) lastFirstRow() time.Time {
	if len(r.arrivals) == 0 {
		return r.start
	}
	a := r.arrivals[len(r.arrivals)-1]
	return r.start.Add(a.at + a.d)
}

// logEvent is one log line of the run's branch.
type logEvent struct {
	at   time.Time
	msg  string
	took time.Duration
}

// clientStarts is how many arrivals started their compute: a warm or cold
// wake counted, not a pre-warm hit (that start was the pre-warm's, still
// under way).
func (r prewarmRun) clientStarts() int {
	n := 0
	for _, a := range r.arrivals {
		if strings.Contains(a.result, "hit") {
			continue
		}
		if strings.Contains(a.kind, string(wake.WakeWarm)) || strings.Contains(a.kind, string(wake.WakeCold)) {
			n++
		}
	}
	return n
}

// missDiagnosis explains a missed predicted arrival (index i of
// r.arrivals) from the log: whether a "pre-warm" line came since the
// previous arrival, and, if not, when the pre-warm was due by
// wake/prewarm.go's rule (lead = max(2 × the last start's took before the
// previous arrival, 1 s) before the predicted arrival, one period after
// the previous one) against when the previous visit's compute was
// suspended.
func (r prewarmRun) missDiagnosis(i int) (text string, stillUp bool) {
	if i < 1 || i >= len(r.arrivals) {
		return "", false
	}
	period := r.period
	prev, cur := r.start.Add(r.arrivals[i-1].at), r.start.Add(r.arrivals[i].at)
	var lastStart time.Duration
	var suspended, prewarmed time.Time
	for _, e := range r.log.events {
		switch {
		case e.msg == logComputeStarted && e.at.Before(prev):
			lastStart = e.took
		case e.at.Before(prev) || !e.at.Before(cur):
		case e.msg == logSuspendingIdle && suspended.IsZero():
			suspended = e.at
		case e.msg == logPrewarm && prewarmed.IsZero():
			prewarmed = e.at
		}
	}
	rel := func(t time.Time) string { return fmt.Sprintf("+%.2f s", t.Sub(prev).Seconds()) }
	if !prewarmed.IsZero() {
		return fmt.Sprintf("a \"pre-warm\" line at %s after arrival %d, the client %s after it", rel(prewarmed), r.arrivals[i-1].n, secs(cur.Sub(prewarmed))), false
	}
	lead := max(2*lastStart, time.Second)
	due := prev.Add(period - lead)
	out := fmt.Sprintf("no \"pre-warm\" line since arrival %d; by wake/prewarm.go's rule the pre-warm was due at %s (lead max(2 × %s, 1 s) = %s)",
		r.arrivals[i-1].n, rel(due), ms(lastStart), secs(lead))
	if !suspended.IsZero() {
		out += fmt.Sprintf("; the compute of arrival %d was suspended (\"%s\") at %s", r.arrivals[i-1].n, logSuspendingIdle, rel(suspended))
		if due.Before(suspended) {
			out += ", after the pre-warm was due: the pre-warm found it still running, did nothing, and the suspend timer armed at the client's release stood"
			stillUp = true
		}
	}
	return out, stillUp
}

// timed is the run's arrivals after the learning phase that succeeded.
func (r prewarmRun) timed(learn int) []prewarmArrival {
	var out []prewarmArrival
	for _, a := range r.arrivals {
		if a.n > learn && a.err == "" {
			out = append(out, a)
		}
	}
	return out
}

func (r prewarmRun) latency(learn int) stats {
	var d []time.Duration
	for _, a := range r.timed(learn) {
		d = append(d, a.d)
	}
	return summarize(d)
}

// counts tallies f over arrivals.
func counts(arrivals []prewarmArrival, f func(prewarmArrival) string) map[string]int {
	out := map[string]int{}
	for _, a := range arrivals {
		out[f(a)]++
	}
	return out
}

// learning is the run's first learn arrivals that succeeded.
func (r prewarmRun) learning(learn int) []prewarmArrival {
	var out []prewarmArrival
	for _, a := range r.arrivals {
		if a.n <= learn && a.err == "" {
			out = append(out, a)
		}
	}
	return out
}

// predicted is how many arrivals neonproxy should have predicted: those
// after the learning phase of a regular run with pre-warm on.
func (r prewarmRun) predictedArrivals(cycles, learn int) int {
	if !r.enabled || !r.regular {
		return 0
	}
	return max(cycles-learn, 0)
}

func (r prewarmRun) failed() int {
	n := 0
	for _, a := range r.arrivals {
		if a.err != "" {
			n++
		}
	}
	return n
}

// intervals are the actual gaps between the run's arrivals (connect
// starts).
func (r prewarmRun) intervals() []time.Duration {
	var out []time.Duration
	for i := 1; i < len(r.arrivals); i++ {
		out = append(out, r.arrivals[i].at-r.arrivals[i-1].at)
	}
	return out
}

// waitedHits are the arrivals neonproxy counted as a pre-warm hit that
// still counted a wake other than running (the compute warmed for them
// was not ready yet).
func (r prewarmRun) waitedHits() []prewarmArrival {
	var out []prewarmArrival
	for _, a := range r.arrivals {
		if strings.Contains(a.result, "hit") && a.kind != string(wake.WakeRunning) {
			out = append(out, a)
		}
	}
	return out
}

func (t prewarmReport) run(name string) (prewarmRun, bool) {
	for _, r := range t.runs {
		if r.name == name {
			return r, true
		}
	}
	return prewarmRun{}, false
}

// problems are what makes the section fail: arrivals that failed.
func (t prewarmReport) problems() []string {
	var out []string
	for _, r := range t.runs {
		for _, a := range r.arrivals {
			if a.err != "" {
				out = append(out, fmt.Sprintf("%s run (%s), arrival %d: %s", r.name, r.branch, a.n, a.err))
			}
		}
	}
	return out
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

func (r *report) printPrewarm(p printer) {
	t := r.prewarm
	if t.admin == "" {
		return
	}
	p("")
	p("## Pre-warm (issue 7): a periodic workload, predictive pre-warm off and on")
	p("")
	p("A separate neonproxy (own data dir and store, log.level info) with `compute.idle_after: 0` (no idle tier),")
	p("`compute.suspend_timeout: %s`, `compute.offload_after: %s` and `compute.prewarm: true`: a compute left", shortDuration(t.suspendTimeout), shortDuration(t.offloadAfter))
	p("alone is suspended about %s after its client and at zero (local data directory dropped) about %s after that",
		shortDuration(t.suspendTimeout), shortDuration(t.offloadAfter))
	p("plus its stop, so without pre-warm a client every %s finds it at zero: a cold wake (materialization +", shortDuration(t.period))
	if t.logical > 0 {
		p("PostgreSQL start). main loaded with `pgbench -i -s %d` (**logical_size_bytes %s**) and suspended; its pre-warm", t.scale, mbytes(t.logical))
	} else {
		p("PostgreSQL start). main loaded with `pgbench -i -s %d` and suspended; its pre-warm", t.scale)
	}
	p("switched off (`POST /v1/branches/main/prewarm {\"enabled\": false}`). Each run has its own branch created from main")
	p("(same data, own arrival history, pre-warm switched per branch through the admin API); the runs take turns, never overlap.")
	p("")
	p("Workload: %d arrivals per run, each a new pgx connection (TCP, SCRAM, simple protocol) + `%s`,", t.cycles, prewarmQuery)
	p("timed to the first row (close not timed); the first %d arrivals teach neonproxy the period, the other %d are", t.learn, max(t.cycles-t.learn, 0))
	p("measured. Before each arrival (%s ahead, so the connect starts on schedule) the branch JSON (`compute.tier`,", ms(prewarmPreRead))
	p("`compute.prewarm`) and `/metrics` are read; `/metrics` again after. Wake kind = the change of `%s`", wakeCountMetric)
	p("by kind; pre-warm outcome = the change of `%s`. After the last arrival the run waits until a", prewarmTotalMetric)
	p("prediction made from it has played out (one period + %.0f%% + suspend_timeout) and the compute has stopped.", prewarmTolerance*100)
	p("Runs: **off** and **on**, the same schedule with pre-warm off and on; **jitter**, intervals of the period ± up to %.0f%%", t.jitter*100)
	p("(seeded), pre-warm on: an irregular workload, where nothing should be started ahead; **long-visit**, pre-warm on, every")
	p("%s, each visit staying connected until %s after its arrival (`SELECT pg_sleep` for the rest after the first row),",
		shortDuration(prewarmLongPeriod), shortDuration(prewarmLongStay))
	p("whatever its wake took: its compute is suspended %s later, after the pre-warm was due (max(2 × the last start, 1 s)",
		shortDuration(t.suspendTimeout))
	p("before the predicted arrival) and before the next client; a pre-warm should keep the compute up for that client.")
	p("")
	p("| run | branch | pre-warm | intervals | n (after the first %d) | median | p90 | max | wake kind counted | JSON tier before | failed |", t.learn)
	p("|---|---|---|---|---:|---:|---:|---:|---|---|---:|")
	for _, run := range t.runs {
		s := run.latency(t.learn)
		timed := run.timed(t.learn)
		lat := []string{"–", "–", "–"}
		if s.n > 0 {
			lat = []string{ms(s.median), ms(s.p90), ms(s.max)}
		}
		p("| %s | %s | %s | %s | %d | %s | %s | %s | %s | %s | %d |", run.name, run.branch, onOff(run.enabled), t.intervalsText(run),
			s.n, lat[0], lat[1], lat[2], countsText(counts(timed, func(a prewarmArrival) string { return a.kind })),
			countsText(counts(timed, func(a prewarmArrival) string { return a.tier })), run.failed())
	}
	p("")
	p("| run | predicted arrivals | hit | miss | wasted (during) | wasted (after the last arrival) | hit rate | `%s` | compute starts (pre-warm) | compute up (start → stopped) | per arrival | running |", prewarmSecondsMetric)
	p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, run := range t.runs {
		pred := run.predictedArrivals(t.cycles, t.learn)
		hits, misses := run.total.prewarm["hit"], run.total.prewarm["miss"]
		wDuring, wTotal := run.during.prewarm["wasted"], run.total.prewarm["wasted"]
		rate := "–"
		if pred > 0 {
			rate = fmt.Sprintf("%.0f%% (%d/%d)", 100*float64(hits)/float64(pred), hits, pred)
		}
		perArrival := "–"
		if n := len(run.arrivals); n > 0 {
			perArrival = secs(run.log.up / time.Duration(n))
		}
		p("| %s | %d | %d | %d | %d | %d | %s | %.2f s | %d (%d) | %s | %s | %s |", run.name, pred, hits, misses, wDuring, wTotal-wDuring, rate,
			run.total.prewarmSeconds, run.total.starts, run.log.prewarms, secs(run.log.up), perArrival, secs(run.log.running))
	}
	r.printPrewarmNotes(p)
	for _, run := range t.runs {
		r.printPrewarmArrivals(p, run)
	}
	cmds := slices.Clone(t.commands)
	if t.config != "" {
		cmds = append(cmds, "", "# "+prewarmConfigName+" (generated)")
		cmds = append(cmds, strings.Split(strings.TrimRight(t.config, "\n"), "\n")...)
	}
	printCommands(p, "prewarm", cmds...)
}

const prewarmConfigName = "<tmp>/prewarm/neonproxy.yaml"

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// intervalsText describes a run's schedule: "3.00 s × 11" or "1.83–4.19 s".
func (t prewarmReport) intervalsText(run prewarmRun) string {
	if run.regular {
		out := fmt.Sprintf("%s × %d", secs(run.period), max(len(run.arrivals)-1, 0))
		if run.stay > 0 {
			out += fmt.Sprintf(", each visit connected until %s after its arrival", secs(run.stay))
		}
		return out
	}
	ivs := run.intervals()
	if len(ivs) == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f–%.2f s (±%.0f%%, seed %d)", slices.Min(ivs).Seconds(), slices.Max(ivs).Seconds(), t.jitter*100, t.seed)
}

func (r *report) printPrewarmNotes(p printer) {
	t := r.prewarm
	p("")
	p("Hit rate = hits / predicted arrivals (the arrivals after the first %d of a regular run with pre-warm on).", t.learn)
	p("Hits, misses and wasted are the change of `%s` over the run, the settle included; wasted (during) up to", prewarmTotalMetric)
	p("the last arrival. Compute up = from each start's beginning (\"compute started\" ts − took) to its \"compute stopped\"")
	p("line (the stop's end: shutdown + storing the changes), summed over the run in neonproxy's log; running = from")
	p("the start's end to the stop's beginning. Per arrival = compute up / arrivals. Timings are never pass/fail.")
	p("")
	off, okOff := t.run(prewarmRunOff)
	on, okOn := t.run(prewarmRunOn)
	if okOff && okOn {
		so, sn := off.latency(t.learn), on.latency(t.learn)
		if so.n > 0 && sn.n > 0 {
			p("- **Pre-warm on vs off**, arrivals after the first %d: median %s vs %s (%s), p90 %s vs %s, max %s vs %s.",
				t.learn, ms(sn.median), ms(so.median), ratio(float64(so.median), float64(sn.median))+" faster",
				ms(sn.p90), ms(so.p90), ms(sn.max), ms(so.max))
		}
		if n := len(on.arrivals); n > 0 && len(off.arrivals) == n {
			extra := on.log.up - off.log.up
			pct := "–"
			if off.log.up > 0 {
				pct = fmt.Sprintf("%+.0f%%", 100*extra.Seconds()/off.log.up.Seconds())
			}
			p("- **Extra compute time of pre-warm**: compute up %s with vs %s without: %s (%s, %s per arrival);",
				secs(on.log.up), secs(off.log.up), deltaSecs(extra), pct, deltaSecs(extra/time.Duration(n)))
			tail := on.log.upAfter(on.lastFirstRow()) - off.log.upAfter(off.lastFirstRow())
			if pred := on.predictedArrivals(t.cycles, t.learn); pred > 0 && tail != 0 {
				p("  of which %s after the last arrival (the pre-warm for a client that did not come: the workload had ended), the rest %s per predicted arrival.",
					deltaSecs(tail), deltaSecs((extra-tail)/time.Duration(pred)))
			}
			p("  `%s` %.2f s (warm ahead of clients: from each pre-warm to its client, or to the step-down of a wasted one).",
				prewarmSecondsMetric, on.total.prewarmSeconds)
		}
		if so := medianDur(off.log.startTook); len(off.log.startTook) > 0 {
			line := fmt.Sprintf("- Starts (\"compute started\" took): off median %s (n %d)", ms(so), len(off.log.startTook))
			if len(on.log.startTook) > 0 {
				line += fmt.Sprintf(", on median %s (n %d)", ms(medianDur(on.log.startTook)), len(on.log.startTook))
			}
			p("%s; pre-warm's lead is max(2 × the last start, 1 s).", line)
		}
	}
	for _, run := range t.runs {
		if l := run.learning(t.learn); len(l) > 0 {
			p("- %s, the first %d arrivals (learning): wake kind %s.", run.name, t.learn, countsText(counts(l, func(a prewarmArrival) string { return a.kind })))
		}
		pred := run.predictedArrivals(t.cycles, t.learn)
		hits, misses := run.total.prewarm["hit"], run.total.prewarm["miss"]
		if pred > 0 && hits+misses != pred {
			p("- **%s: neonproxy settled %d of the %d arrivals after the first %d** (hits %d + misses %d); the others it did not predict, or"+
				" did not plan a pre-warm for (a client less than 1 s after the previous one left is the same visit, not an arrival; see the arrivals table).",
				run.name, hits+misses, pred, t.learn, hits, misses)
		}
		var missed []string
		first, stillUp := "", 0
		for i, a := range run.arrivals {
			if !strings.Contains(a.result, "miss") {
				continue
			}
			missed = append(missed, fmt.Sprint(a.n))
			text, up := run.missDiagnosis(i)
			if up {
				stillUp++
			}
			if first == "" {
				first = fmt.Sprintf("arrival %d (wake %s, %s): %s", a.n, a.kind, ms(a.d), text)
			}
		}
		switch {
		case len(missed) == 1:
			p("- **%s: pre-warm miss at %s.**", run.name, first)
		case len(missed) > 1:
			p("- **%s: %d pre-warm misses** (arrivals %s); the first, %s. In %d of the %d the compute of the previous visit was still running when the pre-warm was due.",
				run.name, len(missed), strings.Join(missed, ", "), first, stillUp, len(missed))
		}
		if cs := run.clientStarts(); run.total.starts != cs+run.log.prewarms {
			p("- **%s: %d compute start(s), but %d arrival(s) waited for a start of their own and the log has %d \"pre-warm\" line(s)**.",
				run.name, run.total.starts, cs, run.log.prewarms)
		}
		if w := run.waitedHits(); len(w) > 0 {
			a := w[0]
			p("- **%s: %d arrival(s) counted as a pre-warm hit still waited for a wake** (the first: arrival %d, JSON %s/%s, wake %s, %s).",
				run.name, len(w), a.n, a.state, a.tier, a.kind, ms(a.d))
		}
		if run.log.skipped > 0 {
			p("- %s: %d \"pre-warm skipped\" line(s) in the log (breaker open or compute.max_running reached).", run.name, run.log.skipped)
		}
		if run.log.upAtEnd {
			p("- **%s: the compute was still up at the end of the run**: its compute time is cut there.", run.name)
		}
		if run.enabled && !run.regular {
			fired := run.total.prewarm["hit"] + run.total.prewarm["miss"] + run.total.prewarm["wasted"]
			reg := regularWindows(run.intervals(), prewarmTolerance)
			line := fmt.Sprintf("- %s (irregular by construction: every 3 consecutive intervals were drawn again until not within %.0f%% of their median; "+
				"measured windows of %d arrivals within %.0f%%: %d): ", run.name, t.jitterMargin*100, t.learn, prewarmTolerance*100, reg)
			if fired == 0 && run.log.prewarms == 0 {
				line += fmt.Sprintf("**no pre-warm fired** (`%s` unchanged, no \"pre-warm\" line; %d compute starts, each for an arrival that waited for it).",
					prewarmTotalMetric, run.total.starts)
			} else {
				line += fmt.Sprintf("**pre-warm fired**: %d \"pre-warm\" line(s), hits %d, misses %d, wasted %d.",
					run.log.prewarms, run.total.prewarm["hit"], run.total.prewarm["miss"], run.total.prewarm["wasted"])
			}
			p("%s", line)
		}
		if !run.enabled && (run.log.prewarms > 0 || len(run.total.prewarm) > 0) {
			p("- **%s: pre-warm is off for %s, yet the log has %d \"pre-warm\" line(s) and `%s` changed (%s).**",
				run.name, run.branch, run.log.prewarms, prewarmTotalMetric, countsText(run.total.prewarm))
		}
	}
}

func deltaSecs(d time.Duration) string { return fmt.Sprintf("%+.2f s", d.Seconds()) }

func medianDur(d []time.Duration) time.Duration { return summarize(d).median }

func (r *report) printPrewarmArrivals(p printer, run prewarmRun) {
	t := r.prewarm
	p("")
	p("### Arrivals: %s run (branch %s, pre-warm %s)", run.name, run.branch, onOff(run.enabled))
	p("")
	p("| # | at | interval | JSON before: state / tier | JSON prediction: next in (period) | wake kind | pre-warm | connect → first row |")
	p("|---:|---:|---:|---|---|---|---|---:|")
	for i, a := range run.arrivals {
		iv := "–"
		if i > 0 {
			iv = secs(a.at - run.arrivals[i-1].at)
		}
		pred := "–"
		if a.predicted {
			pred = fmt.Sprintf("%s (%.2f s)", secs(a.predictedIn), a.period)
		}
		d := ms(a.d)
		if a.err != "" {
			d = "failed: " + a.err
		}
		n := fmt.Sprint(a.n)
		if a.n <= t.learn {
			n += " (learning)"
		}
		p("| %s | %s | %s | %s / %s | %s | %s | %s | %s |", n, secs(a.at), iv, a.state, a.tier, pred, cellOr(a.kind), cellOr(a.result), d)
	}
}

func cellOr(s string) string {
	if s == "" {
		return "–"
	}
	return s
}
