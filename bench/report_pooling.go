package main

import (
	"fmt"
	"strings"
	"time"
)

// idleGoalKiB is issue 3's goal for neonproxy's memory per idle client.
const idleGoalKiB = 16

func (r *report) printPooling(p printer) {
	pr := r.pooling
	if len(pr.workloads) == 0 && len(pr.idle) == 0 {
		return
	}
	p("")
	p("## Pooling (issue 3): neonproxy `-pooler` route vs PgBouncer transaction mode")
	p("")
	p("neonproxy: database `%s-pooler` (branch %s, database postgres, transaction pooling).", branch, branch)
	p("PgBouncer %s: pool_mode=transaction. Both: SCRAM-SHA-256 (PGPASSWORD), plaintext TCP, %d server",
		pgbouncerVersionShort(r.machine), r.opts.poolSize)
	p("connections per pool. Direct: the compute's unix socket, trust, one backend per client.")
	p("Runs alternate neonproxy, PgBouncer, direct, %d round(s) per workload; medians of the rounds.", r.opts.rounds)
	if pr.pgbouncerNote != "" {
		p("PgBouncer: %s.", pr.pgbouncerNote)
	}
	p("")
	p("| measure | neonproxy -pooler | PgBouncer tx | direct | neonproxy / PgBouncer | goal | neonproxy / direct | PgBouncer / direct |")
	p("|---|---:|---:|---:|---:|---|---:|---:|")
	for i, pw := range pr.workloads {
		np, pb, d := summarizeRuns(pw, nameProxyPooler), summarizeRuns(pw, namePgBouncerTx), summarizeRuns(pw, nameDirect)
		p("| %d. `%s` TPS | %s | %s | %s | %s | %s | %s | %s |", i+1, workloadCommand(pw),
			tpsCell(np), tpsCell(pb), tpsCell(d), ratioOf(np.medianTPS, pb.medianTPS),
			goalCell(np.medianTPS, pb.medianTPS, pw.w.goal), ratioOf(np.medianTPS, d.medianTPS), ratioOf(pb.medianTPS, d.medianTPS))
		if pw.w.p99 {
			p("| %d. `%s` p99 latency | %s | %s | %s | %s | %s | %s | %s |", i+1, workloadCommand(pw),
				p99Cell(np), p99Cell(pb), p99Cell(d), ratioOf(float64(np.medianP99), float64(pb.medianP99)),
				p99GoalCell(np.medianP99, pb.medianP99), ratioOf(float64(np.medianP99), float64(d.medianP99)),
				ratioOf(float64(pb.medianP99), float64(d.medianP99)))
		}
	}
	np, npOK := findIdle(pr.idle, nameProxyPooler)
	pb, pbOK := findIdle(pr.idle, namePgBouncerTx)
	if npOK || pbOK {
		goal := "–"
		if npOK && np.reached > 0 {
			goal = fmt.Sprintf("≤ %d KiB: %s", idleGoalKiB, metText(np.perClientKiB() <= idleGoalKiB))
		}
		p("| %d. RSS per idle client (KiB) | %s | %s | | %s | %s | | |", len(pr.workloads)+1,
			idleCell(np, npOK), idleCell(pb, pbOK), idleRatio(np, pb, npOK && pbOK), goal)
	}
	r.printFloors(p)
	p("")
	p("Goals are issue 3's, printed for information; nothing here is pass/fail. In workload 2 pgbench")
	p("computes SCRAM's PBKDF2 (4096 iterations, ~3 ms CPU) for every connection on both paths, so on few")
	p("cores the client's CPU, not the pooler, can set both numbers.")
	for i, pw := range pr.workloads {
		r.printPoolWorkload(p, i+1, pw)
	}
	r.printIdle(p, len(pr.workloads)+1)
	r.printPoolerWarnings(p)
}

// ratioOf is ratio with "–" when either side is missing.
func ratioOf(a, b float64) string {
	if a == 0 || b == 0 {
		return "–"
	}
	return ratio(a, b)
}

func workloadCommand(pw poolWorkload) string {
	c := "pgbench -S"
	if pw.w.reconnect {
		c += " -C"
	}
	return fmt.Sprintf("%s -c %d -j %d -T %d", c, pw.w.clients, min(2, pw.w.clients), int(pw.duration.Round(time.Second)/time.Second))
}

func tpsCell(s pathSummary) string {
	if s.runs == 0 {
		if s.errors > 0 {
			return "failed"
		}
		return ""
	}
	return fmt.Sprintf("%.0f", s.medianTPS)
}

func p99Cell(s pathSummary) string {
	if s.runs == 0 || s.medianP99 == 0 {
		return tpsCell(s)
	}
	return ms(s.medianP99)
}

func goalCell(np, pb, goal float64) string {
	if np == 0 || pb == 0 {
		return fmt.Sprintf("≥ %.1f×", goal)
	}
	return fmt.Sprintf("≥ %.1f×: %s", goal, metText(np/pb >= goal))
}

func p99GoalCell(np, pb time.Duration) string {
	if np == 0 || pb == 0 {
		return "≤ PgBouncer"
	}
	return "≤ PgBouncer: " + metText(np <= pb)
}

func metText(ok bool) string {
	if ok {
		return "met"
	}
	return "not met"
}

func findIdle(list []idleResult, name string) (idleResult, bool) {
	for _, r := range list {
		if r.name == name {
			return r, true
		}
	}
	return idleResult{}, false
}

func idleCell(r idleResult, ok bool) string {
	if !ok {
		return ""
	}
	if r.reached == 0 {
		return "no client connected"
	}
	s := fmt.Sprintf("%.1f", r.perClientKiB())
	if r.reached < r.requested {
		s += fmt.Sprintf(" (%d of %d clients)", r.reached, r.requested)
	}
	return s
}

func idleRatio(np, pb idleResult, ok bool) string {
	if !ok || np.reached == 0 || pb.reached == 0 {
		return "–"
	}
	return ratioOf(np.perClientKiB(), pb.perClientKiB())
}

func (r *report) printPoolWorkload(p printer, n int, pw poolWorkload) {
	p("")
	goal := fmt.Sprintf("goal: neonproxy ≥ %.1f× PgBouncer TPS%s", pw.w.goal, pw.w.goalNote)
	p("### %d. `%s` — %s (%s)", n, workloadCommand(pw), pw.w.title, goal)
	p("")
	p("| path | TPS median | TPS per round | latency avg (median) | p99 (median) | pooler CPU / tx (median) | new backends (max) | failed tx | failed runs |")
	p("|---|---:|---|---:|---:|---:|---:|---:|---:|")
	for _, name := range []string{nameProxyPooler, namePgBouncerTx, nameFloorGoroutine, nameFloorEventLoop, nameDirect} {
		s := summarizeRuns(pw, name)
		if s.runs == 0 && s.errors == 0 {
			continue
		}
		var per []string
		for _, t := range s.tps {
			per = append(per, fmt.Sprintf("%.0f", t))
		}
		p99 := "–"
		if s.medianP99 > 0 {
			p99 = ms(s.medianP99)
		}
		peak := "–"
		if s.newBackends >= 0 {
			peak = fmt.Sprint(s.newBackends)
		}
		p("| %s | %s | %s | %.3f ms | %s | %s | %s | %d | %d |", name, tpsCell(s), strings.Join(per, ", "),
			s.medianLatency, p99, cpuCell(s), peak, s.failed, s.errors)
	}
}

func (r *report) printIdle(p printer, n int) {
	if len(r.pooling.idle) == 0 {
		return
	}
	p("")
	p("### %d. Memory per idle client (goal: neonproxy ≤ %d KiB per client)", n, idleGoalKiB)
	p("")
	p("Authenticated (SCRAM) connections that then send nothing, opened by %d goroutines; RSS is VmRSS", idleWorkers)
	p("of the server process %s after the last one connected; KiB / client = (RSS with clients − RSS before) / reached.", idleSettle)
	p("")
	p("| path | clients | reached | open time | RSS before | RSS with clients | KiB / client | RSS after close | compute backends before → open |")
	p("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, i := range r.pooling.idle {
		backends := "–"
		if i.backends >= 0 && i.backendsBefore >= 0 {
			backends = fmt.Sprintf("%d → %d", i.backendsBefore, i.backends)
		}
		per := "–"
		if i.reached > 0 {
			per = fmt.Sprintf("%.1f", i.perClientKiB())
		}
		p("| %s | %d | %d | %s | %s | %s | %s | %s | %s |", i.name, i.requested, i.reached, i.openTime.Round(time.Millisecond),
			mib(i.rssBefore), mib(i.rssOpen), per, mib(i.rssAfterClose), backends)
	}
	for _, i := range r.pooling.idle {
		if i.firstError != "" {
			p("")
			p("- %s stopped at %d of %d clients (%d attempt(s) failed): %s", i.name, i.reached, i.requested,
				i.failedAttempts, strings.ReplaceAll(i.firstError, "\n", " "))
		}
	}
}

// printPoolerWarnings says when the -pooler route visibly did not pool:
// more compute backends than the pool size during the 200-client run or
// with the idle clients open.
func (r *report) printPoolerWarnings(p printer) {
	limit := r.opts.poolSize + 1 // the pool plus a verifier lookup
	var notes []string
	for _, pw := range r.pooling.workloads {
		s := summarizeRuns(pw, nameProxyPooler)
		if s.newBackends > limit {
			notes = append(notes, fmt.Sprintf("`%s` through neonproxy -pooler opened up to %d compute backends (pool size %d)",
				workloadCommand(pw), s.newBackends, r.opts.poolSize))
		}
	}
	if i, ok := findIdle(r.pooling.idle, nameProxyPooler); ok && i.backendsBefore >= 0 && i.backends-i.backendsBefore > limit {
		notes = append(notes, fmt.Sprintf("%d idle clients through neonproxy -pooler opened %d compute backends",
			i.reached, i.backends-i.backendsBefore))
	}
	if len(notes) == 0 {
		return
	}
	p("")
	p("**The -pooler route did not pool in this run** (session mode, one backend per client):")
	for _, n := range notes {
		p("- %s", n)
	}
}

func mib(b int64) string {
	if b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}

// pgbouncerVersionShort is PgBouncer's version from the machine section.
func pgbouncerVersionShort(machine []kv) string {
	for _, m := range machine {
		if m.key == "pgbouncer" {
			return strings.TrimPrefix(m.value, "PgBouncer ")
		}
	}
	return "1.18"
}

// printFloors compares the floor poolers (floor.go) with PgBouncer and
// neonproxy: what a Go pooler reaches on this machine at all.
func (r *report) printFloors(p printer) {
	var rows []string
	for i, pw := range r.pooling.workloads {
		g, e := summarizeRuns(pw, nameFloorGoroutine), summarizeRuns(pw, nameFloorEventLoop)
		if g.runs == 0 && e.runs == 0 {
			continue
		}
		np, pb := summarizeRuns(pw, nameProxyPooler), summarizeRuns(pw, namePgBouncerTx)
		rows = append(rows, fmt.Sprintf("| %d. `%s` | %s | %s | %s | %s / %s / %s / %s |", i+1, workloadCommand(pw),
			ratioOf(g.medianTPS, pb.medianTPS), ratioOf(e.medianTPS, pb.medianTPS), ratioOf(np.medianTPS, g.medianTPS),
			cpuCell(np), cpuCell(g), cpuCell(e), cpuCell(pb)))
	}
	if len(rows) == 0 {
		return
	}
	p("")
	p("Floors: two minimal transaction poolers in Go (bench/floor.go: trust, simple protocol, nothing else),")
	p("on the same compute and pool size. The goroutine floor is neonproxy's design without its work; the")
	p("event-loop floor is PgBouncer's design in Go.")
	p("")
	p("| workload | goroutine floor / PgBouncer | event-loop floor / PgBouncer | neonproxy / goroutine floor | pooler CPU / tx: neonproxy / goroutine floor / event loop / PgBouncer |")
	p("|---|---:|---:|---:|---|")
	for _, row := range rows {
		p("%s", row)
	}
}

func cpuCell(s pathSummary) string {
	if s.cpuPerTx <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f µs", float64(s.cpuPerTx)/float64(time.Microsecond))
}
