package main

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// soakReport is the soak section's results. main prints it after the
// report; its problems go to the report's list (report.problem).
type soakReport struct {
	idle, active  int
	duration      time.Duration
	maxClientConn int
	poolSize      int
	nofile        uint64 // RLIMIT_NOFILE of the bench and neonproxy
	nofileNeed    uint64
	admin         string
	port          int
	config        string // the generated neonproxy.yaml
	firstConnect  time.Duration

	// Idle clients: opened, time to open them all, failed attempts.
	opened     int
	openTime   time.Duration
	openFailed int
	openErr    string

	samples  []soakPoint
	soakTime time.Duration // from the active clients' start to their stop
	cpu      time.Duration // neonproxy's CPU time from the load's start to the end sample
	// neonproxy_pool_wait_seconds over the same span: transactions that
	// waited for a server connection, their total wait, and those that
	// waited longer than poolWaitSlowLE.
	poolWaits, poolWaitsSlow int
	poolWaitSum              time.Duration
	wakes                    int // hot, warm and cold wakes of main's compute in the same span (want 0)

	// Active clients.
	queries, errors, reconnects int
	firstQueryErr               string
	latency                     stats
	activeConnected             int // still connected at the end

	// The idle check after the soak.
	clientsBeforeCheck           int // neonproxy_client_connections
	idleChecked, idleCheckFailed int
	idleCheckTime                time.Duration
	idleCheckErr                 string

	// max_client_conn.
	clientsBeforeFill, fillWant, clientsFull int
	fillErr                                  string
	probed, probeAccepted                    bool
	probeCode, probeMsg, probeOther          string
	tooManyCounted                           int // neonproxy_connections_total{result="too_many"} during the probe
	releaseOK                                bool
	releaseTime                              time.Duration
	releaseTries                             int
	releaseErr                               string

	problem func(string) // the report's
}

// point is the sample labelled label.
func (r *soakReport) point(label string) (soakPoint, bool) {
	for _, pt := range r.samples {
		if pt.label == label {
			return pt, true
		}
	}
	return soakPoint{}, false
}

// maxPoint is the largest of each count over the samples from the
// baseline to the end (the after-close sample excluded).
func (r *soakReport) maxPoint() soakPoint {
	var m soakPoint
	for _, pt := range r.samples {
		if pt.label == soakAfterClose {
			continue
		}
		m.fds, m.metricFDs = max(m.fds, pt.fds), max(m.metricFDs, pt.metricFDs)
		m.goroutines, m.rss = max(m.goroutines, pt.goroutines), max(m.rss, pt.rss)
		m.goMem = max(m.goMem, pt.goMem)
		m.clients = max(m.clients, pt.clients)
		m.serverActive = max(m.serverActive, pt.serverActive)
		m.serverIdle = max(m.serverIdle, pt.serverIdle)
	}
	return m
}

func (r *soakReport) probeRefused53300() bool { return r.probeCode == "53300" }

func (r *soakReport) probeText() string {
	switch {
	case r.probeAccepted:
		return "accepted"
	case r.probeCode != "":
		return fmt.Sprintf("refused with SQLSTATE %s: %q", r.probeCode, r.probeMsg)
	default:
		return "failed without an ErrorResponse: " + r.probeOther
	}
}

func (r *soakReport) print(w io.Writer) {
	if r == nil || r.admin == "" {
		return
	}
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p("")
	p("## Soak (Hardening): %d idle clients held for %s while %d others query", r.idle, r.duration, r.active)
	p("")
	p("A separate neonproxy (own data dir and store, log.level warn) with `pool.max_client_conn: %d`", r.maxClientConn)
	p("(%d idle + %d active + %d spare, filled before the limit check), `pool.default_pool_size: %d`. Every client", r.idle, r.active, soakMargin, r.poolSize)
	p("logs in with SCRAM over plaintext TCP to database `%s` (branch %s, transaction pooling) with the bench's", soakDB, branch)
	p("minimal client (idle: startup + SCRAM, then nothing; idle clients are opened by %d goroutines). Active clients send", idleWorkers)
	p("`%s` (simple protocol) on held connections, pausing %s after each reply. neonproxy's process is", soakQuery, soakThink)
	p("sampled every %s: open descriptors (entries of `/proc/PID/fd`), `go_goroutines` from `/metrics`,", soakSampleEvery)
	p("`VmRSS`, `neonproxy_client_connections`, `neonproxy_pool_server_connections`. RLIMIT_NOFILE %d (needed ≥ %d).", r.nofile, r.nofileNeed)
	if r.firstConnect > 0 {
		p("First connection (main's compute start): %s.", ms(r.firstConnect))
	}
	if r.opened > 0 || r.openErr != "" {
		p("%d of %d idle clients opened in %s (%.0f logins/s).", r.opened, r.idle, r.openTime.Round(time.Millisecond),
			float64(r.opened)/max(r.openTime.Seconds(), 1e-9))
	}
	r.printCounts(p)
	r.printActive(p)
	r.printLimit(p)
	r.printTimeline(p)
	cmds := []string{
		fmt.Sprintf("curl %s/metrics   # every %s: go_goroutines, neonproxy_client_connections, neonproxy_pool_server_connections", r.admin, soakSampleEvery),
		fmt.Sprintf("curl -o /dev/null '%s%s'   # before each labelled sample: runtime.GC", r.admin, soakGCPath),
		"ls /proc/$(pidof neonproxy)/fd | wc -l; grep VmRSS /proc/$(pidof neonproxy)/status",
	}
	if r.config != "" {
		cmds = append(cmds, "", "# "+soakConfigName+" (generated)")
		cmds = append(cmds, strings.Split(strings.TrimRight(r.config, "\n"), "\n")...)
	}
	printCommands(p, "soak", cmds...)
}

func (r *soakReport) printCounts(p printer) {
	base, okB := r.point(soakBaseline)
	if !okB {
		return
	}
	idle, okI := r.point(soakIdleOpen)
	start, okS := r.point(soakStart)
	end, okE := r.point(soakEnd)
	after, okA := r.point(soakAfterClose)
	mx := r.maxPoint()
	cols := []struct {
		pt soakPoint
		ok bool
	}{{base, true}, {idle, okI}, {start, okS}, {end, okE}, {mx, true}, {after, okA}}
	row := func(name string, f func(soakPoint) string, growth string) {
		cells := make([]string, len(cols))
		for i, c := range cols {
			cells[i] = "–"
			if c.ok {
				cells[i] = f(c.pt)
			}
		}
		p("| %s | %s | %s |", name, strings.Join(cells, " | "), growth)
	}
	growth := func(f func(soakPoint) int) string {
		if !okS || !okE {
			return "–"
		}
		g, allowed := f(end)-f(start), growthAllowed(f(start))
		verdict := "ok"
		if g > allowed {
			verdict = "**grew**"
		}
		return fmt.Sprintf("%+d (≤ +%d: %s)", g, allowed, verdict)
	}
	itoa := func(f func(soakPoint) int) func(soakPoint) string {
		return func(pt soakPoint) string { return fmt.Sprint(f(pt)) }
	}
	fds := func(pt soakPoint) int { return pt.fds }
	gor := func(pt soakPoint) int { return pt.goroutines }
	p("")
	p("### neonproxy's process")
	p("")
	p("| measure | baseline | idle clients open | soak start | soak end | max (baseline→end) | after close | start → end |")
	p("|---|---:|---:|---:|---:|---:|---:|---|")
	row("open fds (/proc/PID/fd)", itoa(fds), growth(fds))
	row("goroutines", itoa(gor), growth(gor))
	rssGrowth := "–"
	if okS && okE {
		rssGrowth = fmt.Sprintf("%+.1f MiB", float64(end.rss-start.rss)/(1<<20))
	}
	row("RSS", func(pt soakPoint) string { return mib(pt.rss) }, rssGrowth)
	memGrowth := "–"
	if okS && okE {
		memGrowth = fmt.Sprintf("%+.1f MiB", float64(end.goMem-start.goMem)/(1<<20))
	}
	row("Go heap + stacks in use", func(pt soakPoint) string { return mib(pt.goMem) }, memGrowth)
	row("client connections (metric)", itoa(func(pt soakPoint) int { return pt.clients }), "")
	row("pool server connections active / idle", func(pt soakPoint) string {
		return fmt.Sprintf("%d / %d", pt.serverActive, pt.serverIdle)
	}, "")
	p("")
	p("baseline: compute up after one connection, no clients; idle clients open: %s after the last idle login", soakSettle)
	p("(both once RSS moved < %d KiB over %d s, at most %s);", soakRSSStable>>10, soakRSSWindow-1, soakRSSSettleLimit)
	p("soak start: %s into the active load (pool filled); soak end: %s into it, same load; after close:", soakSampleEvery, r.duration)
	p("every client closed, `neonproxy_client_connections` 0, %s later; max: over every sample, the periodic ones", soakSettle)
	p("without a forced GC (so their Go heap includes garbage). start → end may grow by at most")
	p("max(+%d, +%.0f %%) for fds and goroutines (else a problem); memory growth is reported only. Before each of", soakGrowthAbs, soakGrowthPct)
	p("these samples neonproxy runs a GC (`GET %s`); Go heap + stacks is then", soakGCPath)
	p("`go_memstats_heap_inuse_bytes + go_memstats_stack_inuse_bytes`, the live heap. RSS also holds heap pages freed")
	p("before (the first start's work) and returns them as the heap grows again, so the RSS delta has an error of the")
	p("order of the baseline's freed pages (tens of MiB): with a thousand clients it says little, with ten thousand")
	p("it is within a few KiB per client. Go heap + stacks per client has no such error (kernel socket buffers are in neither).")
	if okI && r.opened > 0 {
		n := float64(r.opened)
		p("")
		p("- **RSS per idle client: %.1f KiB** ((idle clients open − baseline) / %d); Go heap + stacks per idle",
			float64(idle.rss-base.rss)/1024/n, r.opened)
		p("  client %.1f KiB; fds per idle client %.2f, goroutines per idle client %.2f.",
			float64(idle.goMem-base.goMem)/1024/n, float64(idle.fds-base.fds)/n, float64(idle.goroutines-base.goroutines)/n)
	}
	if okA {
		p("- After close: fds %+d, goroutines %+d, RSS %+.1f MiB vs baseline (pool server connections %+d).",
			after.fds-base.fds, after.goroutines-base.goroutines, float64(after.rss-base.rss)/(1<<20),
			after.serverActive+after.serverIdle-base.serverActive-base.serverIdle)
	}
	if r.cpu > 0 && okE {
		span := end.at - start.at + soakSampleEvery
		p("- neonproxy CPU during the load: %.1f s in %s (%.0f %% of one core).", r.cpu.Seconds(),
			span.Round(time.Second), 100*r.cpu.Seconds()/span.Seconds())
	}
}

func (r *soakReport) printActive(p printer) {
	if r.queries == 0 && r.errors == 0 {
		return
	}
	p("")
	p("### Active clients and the idle clients' check")
	p("")
	qps := 0.0
	if r.soakTime > 0 {
		qps = float64(r.queries) / r.soakTime.Seconds()
	}
	p("| active clients | queries | queries/s | p50 | p99 | max | errors | reconnects | still connected |")
	p("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	p("| %d | %d | %.0f | %s | %s | %s | %d | %d | %d |", r.active, r.queries, qps, ms(r.latency.median),
		ms(r.latency.p99), ms(r.latency.max), r.errors, r.reconnects, r.activeConnected)
	p("")
	p("Latency is one `%s` round trip (send → ReadyForQuery) on a held connection, %d samples.", soakQuery, r.latency.n)
	if r.poolWaits > 0 {
		p("Transactions that waited for a server connection (`%s`, from the load's start to the end", poolWaitMetric)
		p("sample): %d (%.1f %% of the queries), mean wait %s, %d over %s s.", r.poolWaits,
			100*float64(r.poolWaits)/float64(max(r.queries, 1)), ms(r.poolWaitSum/time.Duration(r.poolWaits)), r.poolWaitsSlow, poolWaitSlowLE)
	}
	p("Wakes of main's compute during the load (hot, warm or cold in `%s`): %d.", wakeCountMetric, r.wakes)
	if r.firstQueryErr != "" {
		p("First error: %s", r.firstQueryErr)
	}
	if r.idleChecked > 0 {
		p("")
		p("After the soak, `neonproxy_client_connections` was %d (%d idle + %d active expected); every idle",
			r.clientsBeforeCheck, r.opened, r.active)
		p("client then ran `%s`: **%d of %d succeeded** (%s, %d at a time).", soakQuery,
			r.idleChecked-r.idleCheckFailed, r.idleChecked, r.idleCheckTime.Round(time.Millisecond), soakCheckWorkers)
		if r.idleCheckErr != "" {
			p("First failure: %s", r.idleCheckErr)
		}
	}
}

func (r *soakReport) printLimit(p printer) {
	if !r.probed {
		return
	}
	p("")
	p("### max_client_conn")
	p("")
	verdict := "**ok**"
	if !r.probeRefused53300() {
		verdict = "**problem**"
	}
	p("With every client still connected (%d client connections), %d extra clients filled the limit (%d of %d",
		r.clientsBeforeFill, r.fillWant, r.clientsFull, r.maxClientConn)
	p("connections per the metric). Client %d: %s — %s (%d counted as `too_many`).",
		r.maxClientConn+1, r.probeText(), verdict, r.tooManyCounted)
	if r.fillErr != "" {
		p("Filling stopped early: %s", r.fillErr)
	}
	if r.releaseOK {
		p("Then one client closed: a new client was accepted %s later (%d refused tries before).",
			ms(r.releaseTime), r.releaseTries)
	} else if r.releaseErr != "" {
		p("Then one client closed: a new client was still refused: %s", r.releaseErr)
	}
}

// printTimeline prints about a dozen of the samples, evenly spread, every
// labelled one included.
func (r *soakReport) printTimeline(p printer) {
	if len(r.samples) < 3 {
		return
	}
	step := max(1, (len(r.samples)+11)/12)
	p("")
	p("### Samples (every %s; all of them in `<tmp>/soak/%s` with -keep)", soakSampleEvery, soakCSV)
	p("")
	p("| t | sample | fds | goroutines | RSS | Go heap + stacks | client connections | server conns active / idle |")
	p("|---:|---|---:|---:|---:|---:|---:|---:|")
	for i, pt := range r.samples {
		if pt.label == "" && i%step != 0 {
			continue
		}
		p("| %.0f s | %s | %d | %d | %s | %s | %d | %d / %d |", pt.at.Seconds(), orDash(pt.label), pt.fds, pt.goroutines,
			mib(pt.rss), mib(pt.goMem), pt.clients, pt.serverActive, pt.serverIdle)
	}
}
