package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/neonproxy/neonproxy/wake"
)

// The storm section (issue "Hardening", wake storm): -storm-branches
// distinct branches, every compute stopped, each get one client at the
// same moment. neonproxy must keep compute.max_running (running +
// starting computes never above it); the clients beyond it queue for a
// slot and are either served or refused with 57P03 and a hint to retry,
// and none waits longer than compute.wake_timeout (plus a margin for the
// connection's own setup). It runs on its own neonproxy (data in
// <tmp>/storm, log.level info) with compute.max_running
// -storm-max-running, compute.wake_timeout 30s and the bench's long
// compute.suspend_timeout, so that a compute leaves only when a queued
// start evicts it (or at the end).
//
// Each client: pgx connect (TCP, SCRAM, simple protocol) to its branch +
// SELECT 1, timed to the first row (or to the error), then the
// connection is held open for stormHold (a short request) and closed.
// While they run, /metrics is read every stormSampleEvery for
// neonproxy_computes{state="running"} + {state="starting"}, and /proc
// every stormProcEvery for the postmasters alive under the section's
// directory (a count the gauge cannot fake).
const (
	stormDefaultBranches   = 200
	stormQuickBranches     = 40
	stormDefaultMaxRunning = 16
	stormWakeTimeout       = 30 * time.Second
	stormHold              = time.Second
	// stormHangMargin: a client still waiting wake_timeout + this long
	// after it dialled hangs (a Problem); its context ends there.
	stormHangMargin  = 10 * time.Second
	stormSampleEvery = 20 * time.Millisecond
	stormProcEvery   = 100 * time.Millisecond
	stormPrefix      = "storm-"
	// stormCreateWorkers create the branches (not timed per branch).
	stormCreateWorkers = 4
	// stormSettleLimit bounds the wait, after the last client, for starts
	// still in flight (a start goes on after its client was refused).
	stormSettleLimit = 2 * time.Minute

	computesMetric    = "neonproxy_computes"
	wakesQueuedMetric = "neonproxy_compute_wakes_queued_total"
	connectionsMetric = "neonproxy_connections_total"

	// The refusals the section expects, by what the 57P03 message says.
	stormMsgMaxRunning = "maximum number of running computes"
	stormMsgTimeout    = "did not start within the wake timeout"
)

// Outcomes of a storm client.
const (
	stormServed         = "served"
	stormRefusedMax     = "refused: 57P03 maximum number of running computes"
	stormRefusedTimeout = "refused: 57P03 did not start within the wake timeout"
	stormOther          = "failed: other error"
	stormHung           = "hung past wake_timeout + 10 s"
)

var stormOutcomes = []string{stormServed, stormRefusedMax, stormRefusedTimeout, stormOther, stormHung}

// stormSection runs the section against its own neonproxy.
type stormSection struct {
	px   *proxy
	env  *env
	rep  *stormReport
	opts options
}

// runStorm starts the section's neonproxy, creates the branches and runs
// the storm. Its problems go to b.rep; the section's results are returned
// for printing.
func (b *bench) runStorm(ctx context.Context) *stormReport {
	b.sectionMachine(ctx)
	o := b.opts
	s := &stormSection{env: &env{dir: b.env.path("storm"), keep: b.env.keep}, opts: o,
		rep: &stormReport{branches: o.stormBranches, maxRunning: o.stormMaxRunning, wakeTimeout: stormWakeTimeout,
			suspendTimeout: defaultSuspendTimeout, hold: stormHold, outcomes: map[string]int{}}}
	if !b.phase(ctx, "storm: start neonproxy", s.start) {
		return s.rep
	}
	defer func() {
		s.px.stop()
		if left := processesUnder(s.env.dir); len(left) > 0 {
			b.rep.problem("storm: processes left after neonproxy stopped:\n" + strings.Join(left, "\n"))
		}
	}()
	if !b.phase(ctx, fmt.Sprintf("storm: create %d branches", o.stormBranches), s.create) {
		return s.rep
	}
	if b.phase(ctx, fmt.Sprintf("storm: %d clients at once", o.stormBranches), s.storm) {
		b.phase(ctx, "storm: settle", s.settle)
	}
	s.readLog()
	for _, p := range s.rep.problems() {
		b.rep.problem("storm: " + p)
	}
	return s.rep
}

// start writes the section's config — the bench's, with compute.max_running
// and compute.wake_timeout added — and starts neonproxy on it (log.level
// info, as startOwnProxy does).
func (s *stormSection) start(ctx context.Context) error {
	o := s.opts
	o.proxyLogLevel = "info"
	p, err := ownProxy(s.env, o)
	if err != nil {
		return err
	}
	cfg, err := os.ReadFile(p.cfgPath)
	if err != nil {
		return err
	}
	const key = "\ncompute:\n"
	if !strings.Contains(string(cfg), key) {
		return fmt.Errorf("%s: no compute: section to add max_running to", p.cfgPath)
	}
	extra := fmt.Sprintf("  max_running: %d\n  wake_timeout: %s\n", o.stormMaxRunning, shortDuration(stormWakeTimeout))
	cfg = []byte(strings.Replace(string(cfg), key, key+extra, 1))
	if err := os.WriteFile(p.cfgPath, cfg, 0o600); err != nil {
		return err
	}
	s.rep.config = string(cfg)
	if err := p.launch(ctx); err != nil {
		return err
	}
	s.px = p
	s.rep.admin, s.rep.port = p.admin, p.port
	return nil
}

// stormBranch is the i-th branch (1-based): storm-001 ….
func stormBranch(i int) string { return fmt.Sprintf("%s%03d", stormPrefix, i) }

// create makes the branches from main (POST /v1/branches, a few at a
// time) and checks in GET /v1/branches that every one of them, and main,
// is stopped.
func (s *stormSection) create(ctx context.Context) error {
	r := s.rep
	r.command(fmt.Sprintf("curl -X POST %s/v1/branches -d '{\"name\": \"%s\", \"parent\": %q}'   # … %s, %d workers",
		s.px.admin, stormBranch(1), branch, stormBranch(r.branches), stormCreateWorkers))
	start := time.Now()
	next := make(chan int)
	errc := make(chan error, stormCreateWorkers)
	var wg sync.WaitGroup
	for range stormCreateWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := s.px.send(ctx, http.MethodPost, "/v1/branches", map[string]string{"name": stormBranch(i), "parent": branch}, nil); err != nil {
					errc <- fmt.Errorf("create %s: %w", stormBranch(i), err)
					return
				}
			}
		}()
	}
	var err error
feed:
	for i := 1; i <= r.branches; i++ {
		select {
		case next <- i:
		case err = <-errc:
			break feed
		case <-ctx.Done():
			err = ctx.Err()
			break feed
		}
	}
	close(next)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errc:
		default:
		}
	}
	if err != nil {
		return err
	}
	r.createTook = time.Since(start)
	logf("  %d branches created in %s", r.branches, r.createTook.Round(time.Millisecond))

	r.command(fmt.Sprintf("curl %s/v1/branches   # every storm branch (and main): compute.state stopped", s.px.admin))
	var list []struct {
		Name    string        `json:"name"`
		Compute computeStatus `json:"compute"`
	}
	if err := s.px.call(ctx, http.MethodGet, "/v1/branches", &list); err != nil {
		return err
	}
	want := map[string]bool{branch: true}
	for i := 1; i <= r.branches; i++ {
		want[stormBranch(i)] = true
	}
	for _, b := range list {
		if !want[b.Name] {
			continue
		}
		delete(want, b.Name)
		if b.Compute.State != string(wake.StateStopped) {
			return fmt.Errorf("%s: compute.state %q before the storm, want stopped", b.Name, b.Compute.State)
		}
		r.tiersBefore = appendCount(r.tiersBefore, b.Compute.Tier)
	}
	if len(want) > 0 {
		missing := slices.Sorted(maps.Keys(want))
		return fmt.Errorf("GET /v1/branches lacks %d branch(es): %s", len(missing), strings.Join(missing[:min(5, len(missing))], ", "))
	}
	return nil
}

// appendCount counts s in a list of (value, count) pairs kept in first-seen
// order.
func appendCount(list []countedValue, s string) []countedValue {
	for i := range list {
		if list[i].value == s {
			list[i].n++
			return list
		}
	}
	return append(list, countedValue{s, 1})
}

type countedValue struct {
	value string
	n     int
}

// stormClient is one client of the storm.
type stormClient struct {
	branch  string
	d       time.Duration // dial → first row, or → the error
	done    time.Duration // release → connection closed (or the error)
	outcome string
	code    string // SQLSTATE of a refusal
	msg     string // the error (message of a refusal)
	hint    string
}

// storm releases one client per branch at once, samples /metrics and
// /proc meanwhile, and records every client's outcome.
func (s *stormSection) storm(ctx context.Context) error {
	r := s.rep
	r.command(fmt.Sprintf("pgx connect 'postgres://postgres:…@127.0.0.1:%d/%sNNN?sslmode=disable' + SELECT 1   # %d at once, one per branch: timed to the first row, held %s, closed",
		s.px.port, stormPrefix, r.branches, secs(stormHold)))
	r.command(fmt.Sprintf("curl %s/metrics | grep -E '^%s'   # every %s during the storm: running + starting", s.px.admin, computesMetric, ms(stormSampleEvery)))
	before, err := readMetrics(ctx, s.px)
	if err != nil {
		return err
	}
	if fi, err := os.Stat(s.px.logPath); err == nil {
		r.logOff = fi.Size()
	}

	sctx, stopSampling := context.WithCancel(ctx)
	var sampling sync.WaitGroup
	sampling.Add(2)
	go func() { defer sampling.Done(); s.sampleMetrics(sctx) }()
	go func() { defer sampling.Done(); s.sampleProcs(sctx) }()

	clients := make([]stormClient, r.branches)
	release := make(chan struct{})
	var ready, wg sync.WaitGroup
	for i := range clients {
		clients[i].branch = stormBranch(i + 1)
		ready.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ready.Done()
			<-release
			s.client(ctx, &clients[i], r.t0) // r.t0 is set before release
		}()
	}
	ready.Wait()
	time.Sleep(50 * time.Millisecond) // every goroutine parked on release
	r.t0 = time.Now()
	close(release)
	wg.Wait()
	r.wall = time.Since(r.t0)
	stopSampling()
	sampling.Wait()
	r.clients = clients
	for _, c := range clients {
		r.outcomes[c.outcome]++
	}
	logf("  storm done in %s: %s", r.wall.Round(time.Millisecond), r.outcomeLine())

	after, err := readMetrics(ctx, s.px)
	if err != nil {
		return err
	}
	r.queued = int(after[wakesQueuedMetric] - before[wakesQueuedMetric])
	r.queuedTotal = int(after[wakesQueuedMetric])
	r.startsDuring = labelDiff(before, after, computeStartsMetric, "result")
	r.stopsDuring = labelDiff(before, after, computeStopsMetric, "reason")
	r.wakesDuring = labelDiff(before, after, wakeCountMetric, "kind")
	r.connsDuring = labelDiff(before, after, connectionsMetric, "result")
	return ctx.Err()
}

// labelDiff is name's change between two readings, by label.
func labelDiff(before, after metricSet, name, label string) map[string]int {
	b, a := before.byLabel(name, label), after.byLabel(name, label)
	out := map[string]int{}
	for k, v := range a {
		if d := v - b[k]; d != 0 {
			out[k] = int(d)
		}
	}
	return out
}

// client is one storm client: connect + SELECT 1 to its branch, timed to
// the first row, then the connection held stormHold and closed. Its context
// ends wake_timeout + stormHangMargin after the dial: a client still
// waiting then hangs.
func (s *stormSection) client(ctx context.Context, c *stormClient, t0 time.Time) {
	cfg, err := pgx.ParseConfig(s.px.branchURL(c.branch, "disable"))
	if err != nil {
		c.outcome, c.msg = stormOther, err.Error()
		return
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	cctx, cancel := context.WithTimeout(ctx, stormWakeTimeout+stormHangMargin)
	defer cancel()
	start := time.Now()
	defer func() { c.done = time.Since(t0) }()
	conn, err := pgx.ConnectConfig(cctx, cfg)
	if err == nil {
		var one int
		err = conn.QueryRow(cctx, "SELECT 1").Scan(&one)
		c.d = time.Since(start)
		if err == nil {
			c.outcome = stormServed
			select {
			case <-time.After(stormHold):
			case <-ctx.Done():
			}
		}
		closeConn(conn)
	} else {
		c.d = time.Since(start)
	}
	if err != nil {
		classifyStormError(c, err, cctx.Err() != nil && ctx.Err() == nil)
	}
}

// classifyStormError sorts a failed client by its error: a 57P03 refusal
// by its message, a hang (its context ended), or anything else.
func classifyStormError(c *stormClient, err error, timedOut bool) {
	c.msg = err.Error()
	var pe *pgconn.PgError
	switch {
	case errors.As(err, &pe):
		c.code, c.msg, c.hint = pe.Code, pe.Message, pe.Hint
		switch {
		case pe.Code != "57P03":
			c.outcome = stormOther
		case strings.Contains(pe.Message, stormMsgMaxRunning):
			c.outcome = stormRefusedMax
		case strings.Contains(pe.Message, stormMsgTimeout):
			c.outcome = stormRefusedTimeout
		default:
			c.outcome = stormOther
		}
	case timedOut:
		c.outcome = stormHung
	default:
		c.outcome = stormOther
	}
}

// sampleMetrics reads neonproxy_computes every stormSampleEvery until ctx
// ends, keeping the peaks.
func (s *stormSection) sampleMetrics(ctx context.Context) {
	r := s.rep
	t := time.NewTicker(stormSampleEvery)
	defer t.Stop()
	for {
		m, err := readMetrics(ctx, s.px)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			r.sampleErrors++
			if r.sampleErr == "" {
				r.sampleErr = err.Error()
			}
		} else {
			st := m.byLabel(computesMetric, "state")
			run, starting, stopping := int(st[string(wake.StateRunning)]), int(st[string(wake.StateStarting)]), int(st[string(wake.StateStopping)])
			r.samples++
			if run+starting > r.peakActive {
				r.peakActive, r.peakTime, r.peakRunning, r.peakStarting = run+starting, time.Now(), run, starting
			}
			r.peakStopping = max(r.peakStopping, stopping)
			r.peakAll = max(r.peakAll, run+starting+stopping)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sampleProcs counts the postmasters alive under the section's directory
// (processes started with -D <dir>/…/pgdata; backends rename themselves)
// every stormProcEvery until ctx ends.
func (s *stormSection) sampleProcs(ctx context.Context) {
	r := s.rep
	t := time.NewTicker(stormProcEvery)
	defer t.Stop()
	for {
		n := 0
		for _, p := range processesUnder(s.env.dir) {
			if strings.Contains(p, " -D ") {
				n++
			}
		}
		r.procSamples++
		r.peakPostmasters = max(r.peakPostmasters, n)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// settle waits until no compute is starting (a start goes on after its
// client was refused for the wake timeout) and records the computes by
// state and the queue counter then.
func (s *stormSection) settle(ctx context.Context) error {
	r := s.rep
	deadline := time.Now().Add(stormSettleLimit)
	for {
		m, err := readMetrics(ctx, s.px)
		if err != nil {
			return err
		}
		st := m.byLabel(computesMetric, "state")
		if st[string(wake.StateStarting)] == 0 || time.Now().After(deadline) {
			r.settled = map[string]int{}
			for k, v := range st {
				r.settled[k] = int(v)
			}
			if st[string(wake.StateStarting)] > 0 {
				return fmt.Errorf("%d computes still starting %s after the storm", st[string(wake.StateStarting)], stormSettleLimit)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stormLogLine is one line of neonproxy's JSON log the section reads.
type stormLogLine struct {
	Level  string `json:"level"`
	Msg    string `json:"msg"`
	Branch string `json:"branch"`
	Error  string `json:"error"`
	Took   string `json:"took"`
	// Shutdown is a "compute stopped" line's PostgreSQL shutdown (took
	// adds storing the data and the driver's bookkeeping).
	Shutdown string `json:"shutdown"`
}

// readLog reads neonproxy's log from the storm on (until the settle): the
// took of its starts, materializations and stops (and the stops'
// PostgreSQL shutdown), the evictions, and the warn and error lines by
// message.
func (s *stormSection) readLog() {
	r := s.rep
	if s.px == nil || r.logOff == 0 {
		return
	}
	f, err := os.Open(s.px.logPath)
	if err != nil {
		return
	}
	defer f.Close()
	if _, err := f.Seek(r.logOff, io.SeekStart); err != nil {
		return
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l stormLogLine
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			continue
		}
		took, _ := time.ParseDuration(l.Took)
		switch l.Msg {
		case "compute started":
			r.startTook = append(r.startTook, took)
		case "evicting idle compute":
			r.logEvictions++
		case "compute stopped":
			shutdown, _ := time.ParseDuration(l.Shutdown)
			r.stopTook = append(r.stopTook, took)
			r.stopShutdown = append(r.stopShutdown, shutdown)
		case wake.LogMaterialized:
			r.materializeTook = append(r.materializeTook, took)
		}
		if l.Level == "warn" || l.Level == "error" {
			key := l.Level + ": " + l.Msg
			if l.Error != "" {
				key += " (" + truncate(l.Error, 160) + ")"
			}
			r.logIssues = appendCount(r.logIssues, key)
		}
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
