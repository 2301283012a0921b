package main

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// serverlessReport is the serverless section's results. main prints it
// after the report; its problems go to the report's list.
type serverlessReport struct {
	admin    string // the section's admin API
	port     int    // its front door (TCP)
	httpAddr string // http_listen
	config   string // the generated neonproxy.yaml
	tries    int
	clients  int
	duration time.Duration
	poolSize int

	firstStart time.Duration // pgx connect + SELECT 1, main's compute starting
	sample     string        // the first /sql response body
	directDSN  string        // the compute's unix socket

	roundTrip      []serverlessPath
	roundTripDials int64 // TCP connections the round trips' HTTP client opened after its warm-up (keep-alive: 0)
	loads          []serverlessLoad
	logIssues      []countedValue // neonproxy's warn and error lines by message

	// At the end: neonproxy_client_connections right before SIGTERM, and
	// SIGTERM → exit (stopForced: it had not exited after
	// serverlessStopLimit, or Ctrl-C; daemon.stop took over).
	sessionsAtStop int
	stopTook       time.Duration
	stopForced     bool
}

// serverlessPath is one path's round trips.
type serverlessPath struct {
	name     string
	s        stats
	errors   int
	firstErr string
}

func (p *serverlessPath) fail(err error) {
	p.errors++
	if p.firstErr == "" {
		p.firstErr = errText(err)
	}
}

// serverlessLoad is one concurrent run.
type serverlessLoad struct {
	name      string
	clients   int
	wall      time.Duration
	s         stats
	rps       float64
	errors    int
	firstErr  string
	proxyCPU  time.Duration // neonproxy's user + system CPU during the run
	benchCPU  time.Duration // the bench's (the clients')
	dials     int64         // HTTP: TCP connections opened during the run (keep-alive: 0)
	poolWaits int           // transactions that waited for a server connection
	// neonproxy_client_connections before and after the run (the run's
	// clients still open: for HTTP, the /sql pools' sessions).
	clientConnsBefore, clientConnsAfter int
}

func (r *serverlessReport) path(name string) (serverlessPath, bool) {
	for _, p := range r.roundTrip {
		if p.name == name && p.s.n > 0 {
			return p, true
		}
	}
	return serverlessPath{}, false
}

func (r *serverlessReport) load(name string) (serverlessLoad, bool) {
	for _, l := range r.loads {
		if l.name == name && l.s.n > 0 {
			return l, true
		}
	}
	return serverlessLoad{}, false
}

// problems are what the section lists under Problems: errors of any path
// (timings never are).
func (r *serverlessReport) problems() []string {
	var out []string
	for _, p := range r.roundTrip {
		if p.errors > 0 {
			out = append(out, fmt.Sprintf("round trip, %s: %d errors; the first: %s", p.name, p.errors, p.firstErr))
		}
	}
	for _, l := range r.loads {
		if l.errors > 0 {
			out = append(out, fmt.Sprintf("%d clients, %s: %d errors; the first: %s", l.clients, l.name, l.errors, l.firstErr))
		}
	}
	switch {
	case r.stopForced:
		out = append(out, fmt.Sprintf("neonproxy had not exited %s after SIGTERM (%d client sessions open, no query in flight); stopped with SIGTERM + SIGKILL",
			secs(r.stopTook), r.sessionsAtStop))
	case r.stopTook > serverlessShutdownTimeout:
		out = append(out, fmt.Sprintf("neonproxy took %s to exit after SIGTERM, more than its shutdown_timeout %s (%d client sessions open, no query in flight)",
			secs(r.stopTook), shortDuration(serverlessShutdownTimeout), r.sessionsAtStop))
	}
	return out
}

func (r *serverlessReport) print(w io.Writer) {
	if r == nil || r.admin == "" {
		return
	}
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p("")
	p("## Serverless driver protocol: HTTP POST /sql vs pgwire over TCP")
	p("")
	p("A separate neonproxy (own data dir and store, log.level warn, the config of the other sections) with")
	p("`http_listen: %s` (plain HTTP: no `tls.cert_file`). Every path runs `%s` with one parameter (1)", r.httpAddr, serverlessQuery)
	p("on branch %s. **HTTP**: Go `net/http`, keep-alive, `POST /sql` with `Neon-Connection-String:", branch)
	p("postgresql://postgres:…@%s/%s`, `Neon-Array-Mode: true`, `Neon-Raw-Text-Output: true`, body", r.httpAddr, branch)
	p("`%s`, timed to the whole JSON response, decoded and checked. **TCP**: pgx to `%s`", serverlessRequest, serverlessDB)
	p("(transaction pooling, SCRAM, plaintext), `pgx.Conn.Query` in pgx's default mode (statement prepared once, then one")
	p("round trip), value checked. **WebSocket**: the same pgx client tunnelled through `ws://%s/v2` (pgwire inside,", r.httpAddr)
	p("cleartext password: loopback). **Direct**: the same pgx client on the compute's unix socket (trust).")
	p("pool.default_pool_size %d. First connection (main's compute start): %s.", r.poolSize, ms(r.firstStart))
	r.printRoundTrip(p)
	r.printLoads(p)
	if r.stopTook > 0 {
		p("")
		verdict := "exited"
		if r.stopForced {
			verdict = "had not exited (SIGKILL followed)"
		}
		p("**Shutdown**: SIGTERM with %d front-door client sessions open (the bench's clients all closed; what is left", r.sessionsAtStop)
		p("are sessions of the `/sql` pools, one per HTTP connection seen in the last minute or two); neonproxy %s after %s.", verdict, secs(r.stopTook))
	}
	if len(r.logIssues) > 0 {
		p("")
		p("neonproxy's warn and error lines during the section:")
		p("")
		for _, c := range r.logIssues {
			p("- %d × %s", c.n, c.value)
		}
	}
	if r.sample != "" {
		p("")
		p("A `/sql` response: `%s`", truncate(r.sample, 400))
	}
	cmds := []string{
		fmt.Sprintf("curl -s http://%s/sql -H 'Neon-Connection-String: postgresql://postgres:…@%s/%s' -H 'Neon-Array-Mode: true' -H 'Neon-Raw-Text-Output: true' -d '%s'",
			r.httpAddr, r.httpAddr, branch, serverlessRequest),
		fmt.Sprintf("pgx 'postgres://postgres:…@127.0.0.1:%d/%s?sslmode=disable'   # Query(%q, 1)", r.port, serverlessDB, serverlessQuery),
		fmt.Sprintf("pgx over ws://%s/v2, database %s   # the same", r.httpAddr, serverlessDB),
		fmt.Sprintf("pgx '%s'   # the same", r.directDSN),
		fmt.Sprintf("curl %s/metrics   # before and after each load: %s, %s_count", r.admin, clientConnsMetric, poolWaitMetric),
	}
	if r.config != "" {
		cmds = append(cmds, "", "# <tmp>/serverless/neonproxy.yaml (generated)")
		cmds = append(cmds, strings.Split(strings.TrimRight(r.config, "\n"), "\n")...)
	}
	printCommands(p, "serverless", cmds...)
}

func (r *serverlessReport) printRoundTrip(p printer) {
	if len(r.roundTrip) == 0 {
		return
	}
	p("")
	p("### Round trip: %d sequential queries per path, one client each, paths taking turns", r.tries)
	p("")
	p("%d queries per path first, not timed.", serverlessWarmup)
	p("")
	statsHeader(p, "path")
	for _, pr := range r.roundTrip {
		if pr.s.n > 0 {
			statsRow(p, pr.name, pr.s)
		}
	}
	p("")
	p("| ratio | median | p90 | p99 |")
	p("|---|---:|---:|---:|")
	pairs := [][2]string{{slHTTP, slTCP}, {slWS, slTCP}, {slTCP, slDirect}, {slHTTP, slDirect}}
	short := map[string]string{slHTTP: "HTTP", slTCP: "TCP", slWS: "WebSocket", slDirect: "direct"}
	for _, pair := range pairs {
		a, okA := r.path(pair[0])
		b, okB := r.path(pair[1])
		if !okA || !okB {
			continue
		}
		f := func(x, y time.Duration) string { return ratio(float64(x), float64(y)) }
		p("| %s / %s | %s (%s) | %s | %s |", short[pair[0]], short[pair[1]], f(a.s.median, b.s.median),
			delta(a.s.median-b.s.median), f(a.s.p90, b.s.p90), f(a.s.p99, b.s.p99))
	}
	for _, pr := range r.roundTrip {
		if pr.errors > 0 {
			p("")
			p("- %s: %d errors; the first: %s", pr.name, pr.errors, pr.firstErr)
		}
	}
	p("")
	p("The HTTP client opened %d TCP connection(s) during the timed queries (keep-alive held: 0).", r.roundTripDials)
}

func (r *serverlessReport) printLoads(p printer) {
	if len(r.loads) == 0 {
		return
	}
	p("")
	p("### Throughput: %d concurrent clients per path, %s each", r.clients, r.duration)
	p("")
	p("Each client runs the query in a loop (next request right after the reply); every client was opened and ran")
	p("one query, not timed, before the clock started. CPU per request: neonproxy's (from `/proc/PID/stat`) and the")
	p("bench's, the clients' side (`getrusage`), both 10 ms resolution.")
	p("")
	p("| path | clients | requests | req/s | p50 | p99 | max | errors | neonproxy CPU / req | bench CPU / req | pool waits |")
	p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, l := range r.loads {
		perReq := func(d time.Duration) string {
			if l.s.n == 0 {
				return "–"
			}
			return ms(d / time.Duration(l.s.n))
		}
		p("| %s | %d | %d | %.0f | %s | %s | %s | %d | %s | %s | %d |", l.name, l.clients, l.s.n, l.rps,
			ms(l.s.median), ms(l.s.p99), ms(l.s.max), l.errors, perReq(l.proxyCPU), perReq(l.benchCPU), l.poolWaits)
	}
	p("")
	h, okH := r.load(slHTTP)
	t, okT := r.load(slTCP)
	if okH && okT {
		p("- HTTP / TCP: req/s %s, p50 %s, p99 %s.", ratio(h.rps, t.rps),
			ratio(float64(h.s.median), float64(t.s.median)), ratio(float64(h.s.p99), float64(t.s.p99)))
	}
	for _, l := range r.loads {
		line := fmt.Sprintf("- %s: `%s` %d before the run, %d after it (clients still open)", l.name, clientConnsMetric,
			l.clientConnsBefore, l.clientConnsAfter)
		if l.name == slHTTP {
			line += fmt.Sprintf("; the HTTP clients opened %d TCP connection(s) during the run", l.dials)
		}
		p("%s.", line)
		if l.errors > 0 {
			p("  First error: %s", l.firstErr)
		}
	}
	p("- pool waits: transactions that waited for one of the %d server connections (`%s_count`, the run's change).",
		r.poolSize, poolWaitMetric)
	p("- `/sql` keeps a connection pool per (client address, connection string), at most 8 sessions each: they")
	p("  are front-door sessions (counted in `%s` and against `pool.max_client_conn`), closed a minute", clientConnsMetric)
	p("  after their last request, so the HTTP run's sessions are still open during the TCP run. A")
	p("  TCP connection opened during the HTTP run is Go's transport dialling a spare when a request starts before the")
	p("  previous connection is back in its idle pool (keep-alive itself held).")
}
