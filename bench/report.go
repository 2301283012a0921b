package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"time"
)

// kv is one line of the machine section.
type kv struct{ key, value string }

type namedStats struct {
	name string
	s    stats
}

type namedPgbench struct {
	name string
	r    pgbenchResult
}

// report collects results; print renders it.
type report struct {
	opts          options
	started       time.Time
	machine       []kv
	firstStart    time.Duration
	coldWake      stats
	suspend       stats
	warm          []namedStats
	roundTrip     []namedStats
	initCommand   string
	selectOnly    []namedPgbench
	reconnect     []namedPgbench
	pgbouncerNote string
	pooling       poolingReport
	branching     branchingReport
	durability    durabilityReport
	cluster       clusterReport
	tiers         tiersReport
	prewarm       prewarmReport
	problems      []string
}

// poolingReport is the pooling section's results.
type poolingReport struct {
	ran           bool // every workload ran (some runs may have failed)
	workloads     []poolWorkload
	idle          []idleResult
	pgbouncerNote string
}

func newReport(o options) *report {
	return &report{opts: o, started: time.Now()}
}

func (r *report) problem(s string) { r.problems = append(r.problems, s) }

// logf prints progress on stderr, keeping stdout for the report.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

// machineInfo describes the host; versions of the server and tools are
// added once they are reachable.
func machineInfo() []kv {
	return []kv{
		{"nproc", fmt.Sprint(runtime.NumCPU())},
		{"cpu", cpuModel()},
		{"kernel", readTrim("/proc/sys/kernel/osrelease")},
		{"go", runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH},
		{"load", loadAvg() + " (1/5/15 min, at start)"},
	}
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// loadAvg is the first three fields of /proc/loadavg: a busy machine makes
// every number noisier.
func loadAvg() string {
	f := strings.Fields(readTrim("/proc/loadavg"))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

// delta formats a signed difference, e.g. "+1.40 ms" or "-120 µs".
func delta(d time.Duration) string {
	if d >= 0 {
		return "+" + ms(d)
	}
	return ms(d)
}

// ms formats a duration in milliseconds, or microseconds below 1 ms.
func ms(d time.Duration) string {
	if d.Abs() < time.Millisecond {
		return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
	}
	return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
}

func ratio(a, b float64) string {
	if b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

func (r *report) print(w io.Writer) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p("")
	p("# neonproxy benchmark — %s", r.started.UTC().Format(time.RFC3339))
	p("")
	if r.opts.needsMainProxy() {
		p("All numbers come from one run: one neonproxy, one compute (branch %s), one machine.", branch)
	}
	if r.opts.has(sectionBranching) {
		p("The branching section runs on its own neonproxy (see there).")
	}
	if r.opts.has(sectionDurability) {
		p("The durability section runs on its own neonproxy, which it kills and restarts (see there).")
	}
	if r.opts.has(sectionCluster) {
		p("The cluster section runs its own Consul agent and two neonproxy nodes (see there).")
	}
	if r.opts.has(sectionTiers) {
		p("The tiers section runs on its own neonproxy (see there).")
	}
	if r.opts.has(sectionPrewarm) {
		p("The prewarm section runs on its own neonproxy (see there).")
	}
	p("Settings: -tries %d, -duration %s, -clients %d, pgbench scale %d, -only %s; pooling: -rounds %d, -pool-size %d, -idle-clients %d; branching: -branch-big-scale %d.",
		r.opts.tries, r.opts.duration, r.opts.clients, pgbenchScale, strings.Join(r.opts.sections, ","),
		r.opts.rounds, r.opts.poolSize, r.opts.idleClients, r.opts.bigScale)
	r.printMachine(p)
	r.printCold(p)
	r.printWarm(p)
	r.printRoundTrip(p)
	r.printSelectOnly(p)
	r.printReconnect(p)
	r.printPooling(p)
	r.printBranching(p)
	r.printDurability(p)
	r.printCluster(p)
	r.printTiers(p)
	r.printPrewarm(p)
	r.printCommands(p)
	r.printProblems(p)
}

type printer func(format string, args ...any)

// printCommands ends a section with the commands and requests it ran, in
// a code block, so a reader can repeat them.
func printCommands(p printer, section string, cmds ...string) {
	p("")
	p("### Commands and requests (%s)", section)
	p("")
	p("```")
	for _, c := range cmds {
		p("%s", c)
	}
	p("```")
}

func (r *report) printMachine(p printer) {
	p("")
	p("## Machine")
	p("")
	for _, m := range r.machine {
		p("- %-9s %s", m.key+":", m.value)
	}
	if r.pgbouncerNote != "" {
		p("- pgbouncer: %s", r.pgbouncerNote)
	}
	if r.pooling.pgbouncerNote != "" && r.pooling.pgbouncerNote != r.pgbouncerNote {
		p("- pgbouncer (transaction mode): %s", r.pooling.pgbouncerNote)
	}
	p("- load:     %s (at end)", loadAvg())
}

func statsHeader(p printer, first string) {
	p("| %s | n | median | p90 | p99 | min | max |", first)
	p("|---|---:|---:|---:|---:|---:|---:|")
}

func statsRow(p printer, name string, s stats) {
	p("| %s | %d | %s | %s | %s | %s | %s |", name, s.n, ms(s.median), ms(s.p90), ms(s.p99), ms(s.min), ms(s.max))
}

func (r *report) printCold(p printer) {
	if r.coldWake.n == 0 {
		return
	}
	p("")
	p("## Cold wake: compute stopped → first row, through neonproxy")
	p("")
	statsHeader(p, "measure")
	statsRow(p, "connect + SELECT 1 (stopped compute)", r.coldWake)
	statsRow(p, "suspend: POST …/suspend until state stopped", r.suspend)
	p("")
	p("First start of the new branch's compute (once, right after serve): %s.", ms(r.firstStart))
}

func (r *report) printWarm(p printer) {
	if len(r.warm) == 0 {
		return
	}
	p("")
	p("## Warm connect: compute running, new connection → first row")
	p("")
	p("pgx connect + `SELECT 1` (simple protocol); paths take turns in each try.")
	p("")
	statsHeader(p, "path")
	for _, w := range r.warm {
		statsRow(p, w.name, w.s)
	}
	if d, ok := findStats(r.warm, nameDirect); ok {
		p("")
		for _, w := range r.warm {
			if w.name != nameDirect {
				p("- %s: median %s vs direct", w.name, delta(w.s.median-d.median))
			}
		}
	}
}

func (r *report) printRoundTrip(p printer) {
	if len(r.roundTrip) == 0 {
		return
	}
	p("")
	p("## Round trip on an open connection: %d sequential `SELECT 1`, one client", roundTripCount)
	p("")
	statsHeader(p, "path")
	for _, w := range r.roundTrip {
		statsRow(p, w.name, w.s)
	}
	if d, ok := findStats(r.roundTrip, nameDirect); ok {
		p("")
		for _, w := range r.roundTrip {
			if w.name != nameDirect {
				p("- %s: median %s per query vs direct", w.name, delta(w.s.median-d.median))
			}
		}
	}
}

func findStats(list []namedStats, name string) (stats, bool) {
	for _, n := range list {
		if n.name == name {
			return n.s, true
		}
	}
	return stats{}, false
}

func findPgbench(list []namedPgbench, name string) (pgbenchResult, bool) {
	for _, n := range list {
		if n.name == name {
			return n.r, true
		}
	}
	return pgbenchResult{}, false
}

func (r *report) printSelectOnly(p printer) {
	if len(r.selectOnly) == 0 {
		return
	}
	p("")
	p("## Throughput: pgbench -S, %d clients, %s, connections held", r.opts.clients, r.opts.duration)
	p("")
	direct, _ := findPgbench(r.selectOnly, nameDirect)
	p("| path | TPS | latency avg | TPS / direct | failed |")
	p("|---|---:|---:|---:|---:|")
	for _, n := range r.selectOnly {
		p("| %s | %.0f | %.3f ms | %s | %d |", n.name, n.r.tps, n.r.latencyMS, ratio(n.r.tps, direct.tps), n.r.failed)
	}
	if direct.tps == 0 {
		return
	}
	p("")
	for _, n := range r.selectOnly {
		if n.name == nameDirect {
			continue
		}
		added := n.r.latencyMS - direct.latencyMS
		p("- %s: added latency per query %+.3f ms (%+.0f µs); TPS %s of direct",
			n.name, added, added*1000, ratio(n.r.tps, direct.tps))
	}
}

func (r *report) printReconnect(p printer) {
	if len(r.reconnect) == 0 {
		return
	}
	p("")
	p("## New connection per transaction (serverless pattern): pgbench -S -C, %d clients, %s",
		r.opts.clients, r.opts.connDuration)
	p("")
	direct, _ := findPgbench(r.reconnect, nameDirect)
	p("| path | TPS | latency avg (incl. connect) | TPS / direct | failed |")
	p("|---|---:|---:|---:|---:|")
	for _, n := range r.reconnect {
		p("| %s | %.0f | %.3f ms | %s | %d |", n.name, n.r.tps, n.r.latencyMS, ratio(n.r.tps, direct.tps), n.r.failed)
	}
}

func (r *report) printCommands(p printer) {
	if r.initCommand == "" {
		return
	}
	p("")
	p("## Commands")
	p("")
	p("```")
	p("%s", r.initCommand)
	for _, n := range append(append([]namedPgbench{}, r.selectOnly...), r.reconnect...) {
		p("%s", n.r.command)
	}
	for _, pw := range r.pooling.workloads {
		for _, run := range pw.runs {
			if run.round == 1 && run.r.command != "" {
				p("%s", run.r.command)
			}
		}
	}
	p("```")
	p("")
	if r.opts.has(sectionLatency) || r.opts.has(sectionPgbench) {
		p("PgBouncer (session rows): pool_mode=session, default_pool_size=%d, auth_type=trust, log_connections=0,", r.opts.poolSize)
		p("server on the compute's unix socket.")
	}
	if r.opts.has(sectionPooling) {
		p("PgBouncer (pooling rows): pool_mode=transaction, default_pool_size=%d, max_client_conn=%d,", r.opts.poolSize, maxClientConn(r.opts))
		p("auth_type=scram-sha-256 with the postgres role's verifier from the compute's pg_authid, server on the")
		p("compute's unix socket. -l logs (workload 3) are parsed for p99 and deleted.")
	}
	p("neonproxy: log.level warn, plaintext (PGSSLMODE=disable), compute.max_connections %d,", computeMaxConnections)
	p("pool.default_pool_size %d, pool.max_client_conn %d.", r.opts.poolSize, maxClientConn(r.opts))
}

func (r *report) printProblems(p printer) {
	if len(r.problems) == 0 {
		return
	}
	p("")
	p("## Problems")
	p("")
	for _, s := range r.problems {
		p("- %s", strings.ReplaceAll(s, "\n", "\n  "))
	}
}
