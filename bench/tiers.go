package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/neonproxy/neonproxy/wake"
)

// The tiers section (issue 7): how long a client waits for its first row
// when main's compute is at each tier an unused compute steps down to —
// idle (frozen: a hot wake thaws it), suspended (stopped, local data
// directory kept: a warm wake starts PostgreSQL on it) and zero (local
// directory dropped: a cold wake materializes it from the pagestore
// first) — for a new connection and for a client of the -pooler route that
// stayed connected while the compute went down. It runs on its own
// neonproxy (data in <tmp>/tiers, log.level info) whose tiers come in
// well under a second: compute.idle_after 300ms, compute.offload_after
// 1s, and compute.suspend_timeout 1h, so that a suspend happens only when
// the bench asks (POST /v1/branches/main/suspend).
const (
	tiersScale          = 5 // pgbench -i scale of main: ~100 MB logical (7: ~133 MB)
	tiersMinTries       = 20
	tiersIdleAfter      = 300 * time.Millisecond
	tiersSuspendTimeout = time.Hour
	tiersOffloadAfter   = time.Second
	// tiersQuery reads table data (pgbench_branches has one row per scale
	// unit), so a first row needs the relation's pages, not only the
	// catalog a connection reads.
	tiersQuery = "SELECT count(*) FROM pgbench_branches"
	// tierWaitLimit bounds the wait for a tier in the branch JSON.
	tierWaitLimit = 30 * time.Second
	// tierPoll is how often the branch JSON is read while waiting.
	tierPoll = 5 * time.Millisecond
	// tiersMaxFailures ends the measurement after this many failed tries.
	tiersMaxFailures = 5
	wakeCountMetric  = "neonproxy_wake_duration_seconds_count"
	// wakeNone labels a try in which the metric counted no wake (a pooled
	// client's transaction on a running compute is not observed).
	wakeNone = "none"
)

// tierCase is a tier main's compute is brought to before a try.
type tierCase struct {
	name string        // the wake: hot, warm, cold; running (baseline)
	tier string        // compute.tier the branch JSON shows before the try
	goal time.Duration // issue 7's goal; 0: none (the baseline)
}

// tierCases are the cases of a round, in order. The running baseline comes
// right after the hot wake, on the same (thawed) compute before it freezes
// again, so that hot − running is what the thaw costs.
var tierCases = []tierCase{
	{string(wake.WakeHot), string(wake.TierIdle), 5 * time.Millisecond},
	{string(wake.WakeRunning), string(wake.TierRunning), 0},
	{string(wake.WakeWarm), string(wake.TierSuspended), 150 * time.Millisecond},
	{string(wake.WakeCold), string(wake.TierZero), 500 * time.Millisecond},
}

// The two ways a client meets a sleeping compute.
const (
	tierPathNew    = "new connection"
	tierPathPooled = "pooled client"
)

var tierPaths = []string{tierPathNew, tierPathPooled}

// wantKind is the wake kind the metric must count for a try of c on path:
// the session route observes every wake, running included; a pooled
// client's transaction observes all but running.
func (c tierCase) wantKind(path string) string {
	if c.name == string(wake.WakeRunning) && path == tierPathPooled {
		return wakeNone
	}
	return c.name
}

// tiers runs the section against its own neonproxy.
type tiers struct {
	px     *proxy
	env    *env
	rep    *tiersReport
	opts   options
	pooled *pgx.Conn // the -pooler client, connected before the tries
	logOff int64     // neonproxy.log's size when the tries began
}

// runTiers starts the section's neonproxy, loads main and measures.
func (b *bench) runTiers(ctx context.Context) {
	b.sectionMachine(ctx)
	o := b.opts
	o.idleAfter, o.suspendTimeout, o.offloadAfter = tiersIdleAfter, tiersSuspendTimeout, tiersOffloadAfter
	o.prewarmOff = true
	s := &tiers{env: &env{dir: b.env.path("tiers"), keep: b.env.keep}, rep: &b.rep.tiers, opts: o}
	s.rep.scale, s.rep.tries = tiersScale, max(o.tries, tiersMinTries)
	s.rep.idleAfter, s.rep.suspendTimeout, s.rep.offloadAfter = o.idleAfter, o.suspendTimeout, o.offloadAfter
	if !b.phase(ctx, "tiers: start neonproxy", s.start) {
		return
	}
	defer func() {
		s.stop()
		if left := processesUnder(s.env.dir); len(left) > 0 {
			b.rep.problem("tiers: processes left after neonproxy stopped (a frozen compute?):\n" + strings.Join(left, "\n"))
		}
	}()
	if !b.phase(ctx, "tiers: load main", s.load) {
		return
	}
	b.phase(ctx, "tiers: resume latency", s.measure)
	s.readLog()
	for _, row := range s.rep.rows {
		if row.failed > 0 {
			b.rep.problem(fmt.Sprintf("tiers: %s, %s: %d of %d tries failed; the first: %s",
				row.kase.name, row.path, row.failed, row.failed+row.s.n, row.firstErr))
		}
	}
}

func (s *tiers) start(ctx context.Context) error {
	px, err := startOwnProxy(ctx, s.opts, s.env)
	if err != nil {
		return err
	}
	s.px = px
	s.rep.admin, s.rep.port = px.admin, px.port
	return nil
}

func (s *tiers) stop() {
	if s.pooled != nil {
		closeConn(s.pooled)
		s.pooled = nil
	}
	if s.px != nil {
		s.px.stop()
	}
}

// load makes main a ~100 MB branch (pgbench -i through neonproxy) and
// suspends it, which stores its pages: logical_size_bytes is then what a
// cold wake materializes.
func (s *tiers) load(ctx context.Context) error {
	t := pgTarget{name: branch, host: "127.0.0.1", port: s.px.port, dbname: branch, password: s.px.password}
	logf("  main: pgbench -i -s %d", tiersScale)
	cmd, err := pgbenchInit(ctx, t, tiersScale)
	s.rep.command(cmd)
	if err != nil {
		return err
	}
	if _, err := s.suspend(ctx); err != nil {
		return err
	}
	info, err := s.waitTier(ctx, string(wake.TierSuspended))
	if err != nil {
		return err
	}
	s.rep.logical, s.rep.local = info.LogicalSizeBytes, info.LocalBytes
	if info.LogicalSizeBytes == 0 {
		return fmt.Errorf("main: logical_size_bytes is 0 after suspend")
	}
	// The tries' arrivals must not be predicted and woken for.
	if pw := info.Compute.Prewarm; pw != nil && pw.Enabled {
		return fmt.Errorf("main: compute.prewarm.enabled is true in the branch JSON with compute.prewarm: false")
	}
	return nil
}

// suspend asks for main's suspend and returns the request's round trip
// (the stop, storing its changed pages, is done when it returns).
func (s *tiers) suspend(ctx context.Context) (time.Duration, error) {
	t := time.Now()
	if err := s.px.suspend(ctx); err != nil {
		return 0, err
	}
	return time.Since(t), nil
}

// waitTier polls main's branch JSON until compute.tier is want and
// returns it. Waiting for suspended fails at once on zero: the warm window
// (offload_after) was missed.
func (s *tiers) waitTier(ctx context.Context, want string) (branchInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, tierWaitLimit)
	defer cancel()
	for {
		info, err := s.px.branchInfo(ctx, branch)
		if err != nil {
			return info, err
		}
		got := info.Compute.Tier
		if got == want {
			return info, nil
		}
		if want == string(wake.TierSuspended) && got == string(wake.TierZero) {
			return info, fmt.Errorf("main went to zero (tier_seconds %.3f) before the warm try", info.Compute.TierSeconds)
		}
		select {
		case <-ctx.Done():
			return info, fmt.Errorf("main's compute.tier still %q (state %q), want %q: %w", got, info.Compute.State, want, context.Cause(ctx))
		case <-time.After(tierPoll):
		}
	}
}

// tierTry is one timed first row.
type tierTry struct {
	d           time.Duration
	seen        string  // compute.tier in the JSON just before
	tierSeconds float64 // its tier_seconds
	localBytes  int64
	kind        string // the wake kinds the metric counted during the try
	suspend     time.Duration
}

// measure runs max(-tries, 20) rounds. A round uses both paths once (not
// timed, see warmPaths), brings main to each tier in turn (hot, the running
// baseline, warm, cold) and, at each, times a first row on both paths, bringing the compute down again before the second;
// the paths swap order every round. Every try is also written to
// <tmp>/tiers/tries.csv (kept with -keep).
func (s *tiers) measure(ctx context.Context) error {
	if err := s.connectPooled(ctx); err != nil {
		return fmt.Errorf("pooled client: %w", err)
	}
	if b, err := os.ReadFile(s.px.cfgPath); err == nil {
		s.rep.config = string(b)
	}
	if fi, err := os.Stat(s.px.logPath); err == nil {
		s.logOff = fi.Size()
	}
	s.rep.command(fmt.Sprintf("pgx connect 'postgres://postgres:…@127.0.0.1:%d/%s?sslmode=disable' + %s   # new connection: timed to the first row, close not timed",
		s.px.port, branch, tiersQuery))
	s.rep.command(fmt.Sprintf("pgx connect 'postgres://postgres:…@127.0.0.1:%d/%s-pooler?sslmode=disable' once, then %s   # pooled client: the query timed",
		s.px.port, branch, tiersQuery))
	s.rep.command(fmt.Sprintf("curl %s/v1/branches/%s   # compute.tier, before each try: idle (hot), suspended (warm), zero (cold), running", s.px.admin, branch))
	s.rep.command(fmt.Sprintf("curl -X POST %s/v1/branches/%s/suspend   # before each warm and cold try", s.px.admin, branch))
	s.rep.command(fmt.Sprintf("curl %s/metrics | grep '^%s'   # before and after each try", s.px.admin, wakeCountMetric))

	type acc struct {
		samples []time.Duration
		row     tierRow
	}
	accs := map[string]*acc{}
	key := func(c tierCase, path string) string { return c.name + "|" + path }
	for _, c := range tierCases {
		for _, path := range tierPaths {
			accs[key(c, path)] = &acc{row: tierRow{kase: c, path: path, seen: map[string]int{}, kinds: map[string]int{}}}
		}
	}
	defer func() {
		for _, c := range tierCases {
			for _, path := range tierPaths {
				a := accs[key(c, path)]
				a.row.s = summarize(a.samples)
				s.rep.rows = append(s.rep.rows, a.row)
			}
		}
	}()
	var suspends []time.Duration
	defer func() { s.rep.suspend = summarize(suspends) }()
	csv, err := os.Create(s.env.path(tiersCSV))
	if err != nil {
		return err
	}
	defer csv.Close()
	fmt.Fprintln(csv, "round,tier,path,ms,json_tier,tier_seconds,local_bytes,wake_kind,error")
	failures := 0
	for round := 1; round <= s.rep.tries; round++ {
		paths := slices.Clone(tierPaths)
		if round%2 == 0 {
			slices.Reverse(paths)
		}
		if err := s.warmPaths(ctx); err != nil {
			return fmt.Errorf("round %d: warm-up: %w", round, err)
		}
		for _, c := range tierCases {
			for _, path := range paths {
				if err := ctx.Err(); err != nil {
					return err
				}
				a := accs[key(c, path)]
				t, err := s.try(ctx, c, path)
				fmt.Fprintf(csv, "%d,%s,%s,%.3f,%s,%.3f,%d,%s,%q\n", round, c.name, path, float64(t.d)/float64(time.Millisecond),
					t.seen, t.tierSeconds, t.localBytes, t.kind, errText(err))
				if t.suspend > 0 {
					suspends = append(suspends, t.suspend)
				}
				if err != nil {
					failures++
					a.row.failed++
					if a.row.firstErr == "" {
						a.row.firstErr = fmt.Sprintf("round %d: %v", round, err)
					}
					logf("  round %d %s, %s: FAILED: %v", round, c.name, path, err)
					if failures >= tiersMaxFailures {
						return fmt.Errorf("%d tries failed, the last (round %d, %s, %s): %w", failures, round, c.name, path, err)
					}
					continue
				}
				a.samples = append(a.samples, t.d)
				a.row.seen[t.seen]++
				a.row.kinds[t.kind]++
				a.row.tierSeconds = append(a.row.tierSeconds, t.tierSeconds)
				if c.tier == string(wake.TierZero) && t.localBytes != 0 {
					a.row.localAtZero++
				}
				if want := c.wantKind(path); t.kind != want {
					a.row.mislabeled++
					if a.row.mislabel == "" {
						a.row.mislabel = fmt.Sprintf("round %d: JSON %s (tier_seconds %.3f), counted %s, %s",
							round, t.seen, t.tierSeconds, t.kind, ms(t.d))
					}
				}
			}
		}
		logf("  round %d/%d done", round, s.rep.tries)
	}
	return nil
}

// warmPaths uses both paths once (not timed) on the running compute, which
// the previous round's cold try started (or the first pooled query): the
// first new connection of a compute's life opens neonproxy's connection
// for verifier lookups, and the first pooled transaction a server
// connection, each a backend start. Without it, the hot try of the path
// that did not start the compute would time that, not the thaw.
func (s *tiers) warmPaths(ctx context.Context) error {
	if _, _, err := connectQuery(ctx, s.px.url("disable"), tiersQuery); err != nil {
		return err
	}
	_, err := s.pooledQuery(ctx)
	return err
}

// tiersCSV is the per-try file in the section's directory.
const tiersCSV = "tries.csv"

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// try brings main to c's tier, confirms it in the branch JSON, and times
// a first row on path, with the wake kinds the metric counted meanwhile.
func (s *tiers) try(ctx context.Context, c tierCase, path string) (tierTry, error) {
	var t tierTry
	var err error
	switch c.tier {
	case string(wake.TierSuspended), string(wake.TierZero):
		if t.suspend, err = s.suspend(ctx); err != nil {
			return t, err
		}
	case string(wake.TierRunning):
		// Right after the hot wake: running until idle_after passes.
		// Should it have frozen already, a pooled query (not timed) thaws
		// it.
		info, err := s.px.branchInfo(ctx, branch)
		if err != nil {
			return t, err
		}
		if info.Compute.Tier != c.tier {
			if _, err := s.pooledQuery(ctx); err != nil {
				return t, fmt.Errorf("wake for the running baseline: %w", err)
			}
		}
	}
	info, err := s.waitTier(ctx, c.tier)
	if err != nil {
		return t, err
	}
	t.seen, t.tierSeconds, t.localBytes = info.Compute.Tier, info.Compute.TierSeconds, info.LocalBytes
	before, err := s.wakeCounts(ctx)
	if err != nil {
		return t, err
	}
	switch path {
	case tierPathNew:
		var n int64
		t.d, n, err = connectQuery(ctx, s.px.url("disable"), tiersQuery)
		if err == nil && n != tiersScale {
			err = fmt.Errorf("%s returned %d, want %d", tiersQuery, n, tiersScale)
		}
	default:
		t.d, err = s.pooledQuery(ctx)
	}
	if err != nil {
		return t, err
	}
	after, err := s.wakeCounts(ctx)
	if err != nil {
		return t, err
	}
	t.kind = kindDiff(before, after)
	return t, nil
}

// connectPooled opens the -pooler client, which stays connected through
// every tier, and runs the query once (not timed).
func (s *tiers) connectPooled(ctx context.Context) error {
	if err := s.dialPooled(ctx); err != nil {
		return err
	}
	_, err := s.pooledQuery(ctx)
	return err
}

// dialPooled opens a connection to main-pooler (counted: one for the whole
// run when the client survives every tier).
func (s *tiers) dialPooled(ctx context.Context) error {
	cfg, err := pgx.ParseConfig(s.px.branchURL(branch+"-pooler", "disable"))
	if err != nil {
		return err
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	cctx, cancel := context.WithTimeout(ctx, connectLimit)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, cfg)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	s.pooled = conn
	s.rep.pooledConnects++
	return nil
}

// pooledQuery times tiersQuery on the pooled client to its first row.
// After a failure the client is connected again (counted) and the error
// returned.
func (s *tiers) pooledQuery(ctx context.Context) (time.Duration, error) {
	qctx, cancel := context.WithTimeout(ctx, connectLimit)
	defer cancel()
	var n int64
	start := time.Now()
	err := s.pooled.QueryRow(qctx, tiersQuery).Scan(&n)
	d := time.Since(start)
	if err == nil && n != tiersScale {
		err = fmt.Errorf("%s returned %d, want %d", tiersQuery, n, tiersScale)
	}
	if err != nil {
		s.rep.pooledErrors++
		closeConn(s.pooled)
		if cerr := s.dialPooled(ctx); cerr != nil {
			return 0, fmt.Errorf("pooled client: %w; reconnect: %v", err, cerr)
		}
		return 0, fmt.Errorf("pooled client: %w (connected again)", err)
	}
	s.rep.pooledQueries++
	return d, nil
}

// connectQuery is connectFirstRow with a query of one bigint: a new
// connection to dsn, the query, the time from dialling to its first row
// (the close not timed), and the value.
func connectQuery(ctx context.Context, dsn, query string) (time.Duration, int64, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return 0, 0, fmt.Errorf("parse connection string: %w", err)
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	ctx, cancel := context.WithTimeout(ctx, connectLimit)
	defer cancel()
	start := time.Now()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return 0, 0, fmt.Errorf("connect: %w", err)
	}
	var n int64
	err = conn.QueryRow(ctx, query).Scan(&n)
	elapsed := time.Since(start)
	closeConn(conn)
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %w", query, err)
	}
	return elapsed, n, nil
}

var reWakeCount = regexp.MustCompile(`^` + wakeCountMetric + `\{kind="([a-z]+)"\} ([0-9.e+]+)$`)

// wakeCounts reads neonproxy_wake_duration_seconds_count by kind.
func (s *tiers) wakeCounts(ctx context.Context) (map[string]int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.px.admin+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.px.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET /metrics: %w", err)
	}
	defer resp.Body.Close()
	return parseWakeCounts(io.LimitReader(resp.Body, 8<<20))
}

func parseWakeCounts(r io.Reader) (map[string]int64, error) {
	out := map[string]int64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		m := reWakeCount.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		f, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", sc.Text(), err)
		}
		out[m[1]] = int64(f)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("GET /metrics: %w", err)
	}
	return out, nil
}

// kindDiff names the wakes counted between two readings: "hot", "cold×2",
// "cold+warm", or wakeNone.
func kindDiff(before, after map[string]int64) string {
	var kinds []string
	for k, v := range after {
		if d := v - before[k]; d > 0 {
			if d > 1 {
				k += "×" + strconv.FormatInt(d, 10)
			}
			kinds = append(kinds, k)
		}
	}
	if len(kinds) == 0 {
		return wakeNone
	}
	slices.Sort(kinds)
	return strings.Join(kinds, "+")
}

// tierLogLine is one line of neonproxy's JSON log the section reads.
type tierLogLine struct {
	Msg    string  `json:"msg"`
	Branch string  `json:"branch"`
	Took   string  `json:"took"`
	MBps   float64 `json:"mb_per_s"`
	Bytes  int64   `json:"bytes"`
}

// readLog reads main's starts during the tries from neonproxy's log: each
// "compute started" line's took, as a cold start when a "data directory
// materialized" line came since the previous start (and then the rest of
// the start after the materialization: took − its took), else as a warm
// one.
func (s *tiers) readLog() {
	if s.px == nil || s.logOff == 0 {
		return
	}
	f, err := os.Open(s.px.logPath)
	if err != nil {
		return
	}
	defer f.Close()
	if _, err := f.Seek(s.logOff, io.SeekStart); err != nil {
		return
	}
	r := s.rep
	var warm, cold, mat, afterMat []time.Duration
	var rates []float64
	var bytes []float64
	materialized := false
	var matTook time.Duration
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l tierLogLine
		if json.Unmarshal(sc.Bytes(), &l) != nil || l.Branch != branch {
			continue
		}
		took, _ := time.ParseDuration(l.Took)
		switch l.Msg {
		case wake.LogMaterialized:
			materialized, matTook = true, took
			mat = append(mat, took)
			rates = append(rates, l.MBps)
			bytes = append(bytes, float64(l.Bytes))
		case "pre-warm":
			r.prewarms++
		case "compute started":
			if materialized {
				cold = append(cold, took)
				afterMat = append(afterMat, took-matTook)
			} else {
				warm = append(warm, took)
			}
			materialized = false
		}
	}
	r.warmStarts, r.coldStarts, r.materialize = summarize(warm), summarize(cold), summarize(mat)
	r.afterMaterialize = summarize(afterMat)
	r.materializeMBps, r.materializeBytes = medianFloat(rates), int64(medianFloat(bytes))
}
