package main

import (
	"cmp"
	"fmt"
	"io"
	"maps"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/neonproxy/neonproxy/wake"
)

// stormReport is the storm section's results.
type stormReport struct {
	admin          string // the section's admin API, for the printed requests
	port           int
	config         string // the generated neonproxy.yaml
	branches       int
	maxRunning     int
	wakeTimeout    time.Duration
	suspendTimeout time.Duration
	hold           time.Duration
	createTook     time.Duration
	tiersBefore    []countedValue // compute.tier of the storm branches and main before the storm
	commands       []string

	t0       time.Time     // the clients' release
	wall     time.Duration // release → every client done (held and closed)
	clients  []stormClient
	outcomes map[string]int

	// /metrics during the storm: samples read (and failed), the peak of
	// running + starting (when, and its parts), the peaks of stopping and
	// of all three.
	samples, sampleErrors     int
	sampleErr                 string
	peakActive                int
	peakTime                  time.Time
	peakRunning, peakStarting int
	peakStopping, peakAll     int
	procSamples               int // /proc scans
	peakPostmasters           int // postmasters alive under <tmp>/storm, stopping ones included
	queued, queuedTotal       int // neonproxy_compute_wakes_queued_total: the storm's, and in all
	startsDuring, stopsDuring map[string]int
	wakesDuring, connsDuring  map[string]int
	settled                   map[string]int // neonproxy_computes by state once nothing was starting
	logOff                    int64          // neonproxy.log's size when the storm began
	logEvictions              int
	// "compute started" and "data directory materialized" lines' took.
	startTook, materializeTook []time.Duration
	// "compute stopped" lines' took and shutdown (PostgreSQL's part).
	stopTook, stopShutdown []time.Duration
	logIssues              []countedValue // warn and error lines by message, from the storm on
}

func (r *stormReport) command(c string) {
	if c != "" {
		r.commands = append(r.commands, c)
	}
}

// byOutcome is the clients with outcome o.
func (r *stormReport) byOutcome(o string) []stormClient {
	var out []stormClient
	for _, c := range r.clients {
		if c.outcome == o {
			out = append(out, c)
		}
	}
	return out
}

// refusals are the clients refused with one of the expected 57P03s.
func (r *stormReport) refusals() []stormClient {
	return append(r.byOutcome(stormRefusedMax), r.byOutcome(stormRefusedTimeout)...)
}

// hinted counts the refusals whose hint starts with "Retry".
func (r *stormReport) hinted() (n, of int) {
	for _, c := range r.refusals() {
		if strings.HasPrefix(c.hint, "Retry") {
			n++
		}
	}
	return n, len(r.refusals())
}

func durations(cs []stormClient) []time.Duration {
	out := make([]time.Duration, len(cs))
	for i, c := range cs {
		out[i] = c.d
	}
	return out
}

// slowest is the client of cs that waited longest.
func slowest(cs []stormClient) (stormClient, bool) {
	if len(cs) == 0 {
		return stormClient{}, false
	}
	return slices.MaxFunc(cs, func(a, b stormClient) int { return cmp.Compare(a.d, b.d) }), true
}

func (r *stormReport) outcomeLine() string {
	var parts []string
	for _, o := range stormOutcomes {
		if n := r.outcomes[o]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", o, n))
		}
	}
	return strings.Join(parts, ", ")
}

// problems are what the section lists under Problems: the cap exceeded,
// a client that hung, an unexpected error (a failure other than the two
// expected 57P03 refusals, a refusal without a retry hint, /metrics not
// readable). Timings never are.
func (r *stormReport) problems() []string {
	var out []string
	if r.peakActive > r.maxRunning {
		out = append(out, fmt.Sprintf("compute.max_running exceeded: neonproxy_computes running + starting reached %d (running %d, starting %d) at +%s, max_running %d",
			r.peakActive, r.peakRunning, r.peakStarting, secs(r.peakTime.Sub(r.t0)), r.maxRunning))
	}
	for _, o := range []string{stormHung, stormOther} {
		cs := r.byOutcome(o)
		if len(cs) == 0 {
			continue
		}
		var ex []string
		for _, c := range cs[:min(3, len(cs))] {
			ex = append(ex, fmt.Sprintf("%s after %s: %s", c.branch, secs(c.d), stormErrText(c)))
		}
		out = append(out, fmt.Sprintf("%d of %d clients %s; e.g.\n%s", len(cs), r.branches, o, strings.Join(ex, "\n")))
	}
	if n, of := r.hinted(); n < of {
		for _, c := range r.refusals() {
			if !strings.HasPrefix(c.hint, "Retry") {
				out = append(out, fmt.Sprintf("%d of %d refusals without a hint starting with \"Retry\"; e.g. %s: %s", of-n, of, c.branch, stormErrText(c)))
				break
			}
		}
	}
	if len(r.clients) > 0 && r.samples == 0 {
		out = append(out, "no /metrics sample during the storm (the peak is unknown): "+r.sampleErr)
	} else if r.sampleErrors > 0 {
		out = append(out, fmt.Sprintf("%d of %d /metrics reads failed during the storm; the first: %s", r.sampleErrors, r.samples+r.sampleErrors, r.sampleErr))
	}
	return out
}

// stormErrText is a failed client's error as the report shows it.
func stormErrText(c stormClient) string {
	s := c.msg
	if c.code != "" {
		s = fmt.Sprintf("%s %s", c.code, c.msg)
	}
	if c.hint != "" {
		s += fmt.Sprintf(" (HINT: %s)", c.hint)
	}
	return s
}

// print renders the section (nothing when it did not start).
func (r *stormReport) print(w io.Writer) {
	if r == nil || r.admin == "" {
		return
	}
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p("")
	p("## Storm (Hardening): %d stopped branches connected to at once", r.branches)
	p("")
	p("A separate neonproxy (own data dir and store, log.level info) with `compute.max_running: %d`,", r.maxRunning)
	p("`compute.wake_timeout: %s` and `compute.suspend_timeout: %s` (a compute leaves only when a queued start evicts it).",
		shortDuration(r.wakeTimeout), shortDuration(r.suspendTimeout))
	if r.createTook > 0 {
		p("%d branches created from main (`POST /v1/branches`, %d at a time, %s in all), every one `stopped` before the storm",
			r.branches, stormCreateWorkers, secs(r.createTook))
		p("(compute.tier of them and main: %s).", countedText(r.tiersBefore))
	}
	if len(r.clients) == 0 {
		return
	}
	p("Then one client per branch, all released at once: pgx connect (TCP, SCRAM, simple protocol) + `SELECT 1`, timed to")
	p("the first row (or the error), the connection held %s and closed; a client's context ends wake_timeout + %s after", secs(r.hold), secs(stormHangMargin))
	p("its dial (a hang). `/metrics` read every %s meanwhile (%d samples: one per %s on average, the reads are slower", shortDuration(stormSampleEvery), r.samples, ms(r.wall/time.Duration(max(1, r.samples))))
	p("under the storm), `/proc` every %s (%d scans).", shortDuration(stormProcEvery), r.procSamples)
	p("")
	p("| measure | value |")
	p("|---|---:|")
	p("| branches (clients) | %d |", r.branches)
	p("| compute.max_running | %d |", r.maxRunning)
	p("| compute.wake_timeout | %s |", shortDuration(r.wakeTimeout))
	for _, o := range stormOutcomes {
		p("| %s | %d |", o, r.outcomes[o])
	}
	n, of := r.hinted()
	p("| every refusal has a hint starting \"Retry\" | %s (%d of %d) |", yesNo(n == of), n, of)
	p("| peak running + starting (`neonproxy_computes`) | %d %s (running %d, starting %d, at +%s) |",
		r.peakActive, map[bool]string{true: "≤", false: "**>**"}[r.peakActive <= r.maxRunning]+fmt.Sprint(" ", r.maxRunning),
		r.peakRunning, r.peakStarting, secs(r.peakTime.Sub(r.t0)))
	p("| peak stopping; peak running + starting + stopping | %d; %d |", r.peakStopping, r.peakAll)
	p("| peak postmasters alive under `<tmp>/storm` (stopping ones included) | %d |", r.peakPostmasters)
	p("| wakes queued (`%s`, the storm's) | %d |", wakesQueuedMetric, r.queued)
	last := time.Duration(0)
	for _, c := range r.clients {
		last = max(last, c.d)
	}
	p("| release → last first row or refusal | %s |", secs(last))
	p("| storm wall time (release → every client closed) | %s |", secs(r.wall))
	p("")
	p("Connect latency, dial → first row or refusal:")
	p("")
	p("| clients | n | p50 | p90 | p99 | min | max |")
	p("|---|---:|---:|---:|---:|---:|---:|")
	for _, o := range []string{stormServed, stormRefusedMax, stormRefusedTimeout} {
		if cs := r.byOutcome(o); len(cs) > 0 {
			st := summarize(durations(cs))
			p("| %s | %d | %s | %s | %s | %s | %s |", o, st.n, secs(st.median), secs(st.p90), secs(st.p99), secs(st.min), secs(st.max))
		}
	}
	p("")
	if c, ok := slowest(r.refusals()); ok {
		p("Slowest refusal: %s after %s: %s.", c.branch, secs(c.d), stormErrText(c))
	} else {
		p("No refusals.")
	}
	if c, ok := slowest(r.byOutcome(stormServed)); ok {
		p("Slowest served client: %s, first row after %s.", c.branch, secs(c.d))
	}
	p("")
	p("During the storm (`/metrics` before and after): compute starts %s; stops %s; wakes %s; client connections %s.",
		mapText(r.startsDuring), mapText(r.stopsDuring), mapText(r.wakesDuring), mapText(r.connsDuring))
	if r.settled != nil {
		p("Once nothing was starting: computes %s.", mapText(r.settled))
	}
	st, mt := summarize(r.startTook), summarize(r.materializeTook)
	p("neonproxy's log from the storm on: %d \"evicting idle compute\"; %d \"compute started\", took median %s, max %s;",
		r.logEvictions, st.n, secs(st.median), secs(st.max))
	p("%d \"%s\", took median %s, max %s (the starts ran %d at a time on %d cores).",
		mt.n, wake.LogMaterialized, secs(mt.median), secs(mt.max), r.maxRunning, runtime.NumCPU())
	if sp, sd := summarize(r.stopTook), summarize(r.stopShutdown); sp.n > 0 {
		p("%d \"compute stopped\" (a start that evicted a compute waits for this), took median %s, max %s, of which", sp.n, secs(sp.median), secs(sp.max))
		p("PostgreSQL's shutdown median %s, max %s.", secs(sd.median), secs(sd.max))
	}
	if len(r.logIssues) > 0 {
		p("")
		p("Warn and error lines of neonproxy's log from the storm on, by message:")
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
	p("")
	p("Timings are never pass/fail. Problems are listed only for the cap exceeded, a client hanging past")
	p("wake_timeout + %s, or an unexpected error (another error or SQLSTATE, a refusal without a retry hint).", secs(stormHangMargin))
	if probs := r.problems(); len(probs) > 0 {
		p("**%d storm problem(s), listed under Problems above.**", len(probs))
	} else {
		p("Storm problems: none.")
	}
	cmds := slices.Clone(r.commands)
	if r.config != "" {
		cmds = append(cmds, "", "# <tmp>/storm/neonproxy.yaml (generated)")
		cmds = append(cmds, strings.Split(strings.TrimRight(r.config, "\n"), "\n")...)
	}
	printCommands(p, "storm", cmds...)
}

// countedText is "zero 200, …".
func countedText(list []countedValue) string {
	var parts []string
	for _, v := range list {
		parts = append(parts, fmt.Sprintf("%s %d", cmp.Or(v.value, `""`), v.n))
	}
	return strings.Join(parts, ", ")
}

// mapText is "a 1, b 2" in key order, or "none".
func mapText(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}
