package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// The pooling section (issue 3): neonproxy's -pooler route (transaction
// pooling) against PgBouncer in transaction mode, both with SCRAM over
// plaintext TCP and the same pool size, and direct as the reference.
const (
	poolClients        = 20  // workload 1: pgbench -S -c 20
	poolConnectClients = 8   // workload 2: pgbench -S -C -c 8
	manyClients        = 200 // workload 3: pgbench -S -c 200
	idleWorkers        = 4   // goroutines opening idle clients
	idleSettle         = 2 * time.Second
	observeEvery       = 250 * time.Millisecond

	nameProxyPooler = "neonproxy -pooler (TCP, SCRAM)"
	namePgBouncerTx = "PgBouncer transaction (TCP, SCRAM)"
)

// workload is one pgbench -S shape of the pooling section.
type workload struct {
	title     string
	clients   int
	reconnect bool
	p99       bool    // per-transaction log for p99
	goal      float64 // neonproxy TPS / PgBouncer TPS the issue asks for
	goalNote  string  // extra goal text
}

func poolingWorkloads() []workload {
	return []workload{
		{title: "held connections", clients: poolClients, goal: 1.3},
		{title: "new connection per transaction", clients: poolConnectClients, reconnect: true, goal: 1.5},
		{title: "many clients, few server connections", clients: manyClients, p99: true, goal: 1.2,
			goalNote: ", p99 latency no worse"},
	}
}

// poolRun is one pgbench run of a workload on one path.
type poolRun struct {
	round int
	path  string
	r     pgbenchResult
	base  int // client backends on the compute just before the run; -1 unknown
	peak  int // most client backends seen on the compute during the run; -1 unknown
	// cpu is the pooler process's CPU time during the run (0 for direct or
	// unknown); per transaction it says how much the pooler itself costs.
	cpu time.Duration
	err string
}

// poolWorkload collects the runs of one workload.
type poolWorkload struct {
	w        workload
	duration time.Duration
	runs     []poolRun
}

// poolingTargets are the paths of the pooling section in the order the
// rounds alternate through them.
func (b *bench) poolingTargets() []pgTarget {
	ts := []pgTarget{{name: nameProxyPooler, host: "127.0.0.1", port: b.proxy.port,
		dbname: branch + "-pooler", password: b.proxy.password, pid: b.proxy.pid()}}
	if b.pgbTx != nil {
		ts = append(ts, pgTarget{name: namePgBouncerTx, host: "127.0.0.1", port: b.pgbTx.port,
			dbname: branch, password: b.proxy.password, pid: b.pgbTx.pid()})
	}
	for _, f := range b.floors {
		ts = append(ts, pgTarget{name: f.name, host: "127.0.0.1", port: f.port, dbname: "postgres", pid: f.pid(), floor: true})
	}
	return append(ts, pgTarget{name: nameDirect, host: b.socketDir, port: b.computePort, dbname: "postgres"})
}

// startFloors starts the floor poolers (floor.go) on the compute's socket.
func (b *bench) startFloors(ctx context.Context) error {
	for _, m := range [][2]string{{floorGoroutine, nameFloorGoroutine}, {floorEventLoop, nameFloorEventLoop}} {
		f, err := startFloor(ctx, m[0], m[1], b.socketDir, b.computePort, b.opts.poolSize)
		if err != nil {
			return err
		}
		b.floors = append(b.floors, f)
	}
	return nil
}

// poolingSetup reads the postgres role's SCRAM verifier from the compute
// and starts PgBouncer in transaction mode with it.
func (b *bench) poolingSetup(ctx context.Context) error {
	if b.opts.skipPgBouncer {
		b.rep.pooling.pgbouncerNote = noteSkipped
		return nil
	}
	verifier, err := b.scramVerifier(ctx)
	if err != nil {
		return err
	}
	pb, err := startPgBouncer(ctx, b.env, transactionPgBouncer(b.opts, verifier), b.socketDir, b.computePort)
	if errors.Is(err, errNoPgBouncer) {
		b.rep.pooling.pgbouncerNote = errNoPgBouncer.Error()
		return nil
	}
	if err != nil {
		b.rep.pooling.pgbouncerNote = "failed to start (see problems)"
		return err
	}
	b.pgbTx = pb
	if b.pgb == nil {
		b.rep.machine = append(b.rep.machine, kv{"pgbouncer", pb.version})
	}
	return nil
}

// scramVerifier is rolpassword of postgres, read over the compute's unix
// socket (trust).
func (b *bench) scramVerifier(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, queryInfoLimit)
	defer cancel()
	conn, err := pgx.Connect(ctx, b.directTarget().dsn)
	if err != nil {
		return "", fmt.Errorf("connect to compute directly: %w", err)
	}
	defer closeConn(conn)
	var name, verifier string
	err = conn.QueryRow(ctx, "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = 'postgres'").Scan(&name, &verifier)
	if err != nil {
		return "", fmt.Errorf("read the postgres role's verifier: %w", err)
	}
	if !strings.HasPrefix(verifier, "SCRAM-SHA-256$") {
		return "", fmt.Errorf("postgres role's password is not a SCRAM-SHA-256 verifier (%.14s…)", verifier)
	}
	return verifier, nil
}

// idleClients opens -idle-clients connections to neonproxy's -pooler route
// and then to PgBouncer, and measures each server's RSS growth.
func (b *bench) idleClients(ctx context.Context) error {
	if b.opts.idleClients == 0 {
		return nil
	}
	type path struct {
		name, addr, db string
		pid            int
	}
	paths := []path{{nameProxyPooler, fmt.Sprintf("127.0.0.1:%d", b.proxy.port), branch + "-pooler", b.proxy.pid()}}
	if b.pgbTx != nil {
		paths = append(paths, path{namePgBouncerTx, fmt.Sprintf("127.0.0.1:%d", b.pgbTx.port), branch, b.pgbTx.pid()})
	}
	cache := newSaltCache(b.proxy.password)
	var errs []error
	for _, p := range paths {
		logf("  %d idle clients to %s", b.opts.idleClients, p.name)
		r, err := b.idleOne(ctx, p.name, p.addr, p.db, p.pid, cache)
		b.rep.pooling.idle = append(b.rep.pooling.idle, r)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p.name, err))
		}
		if r.firstError != "" {
			logf("  %s: reached %d of %d: %s", p.name, r.reached, r.requested, r.firstError)
		}
	}
	return errors.Join(errs...)
}

// idleOne measures one path. Not reaching -idle-clients is reported, not an
// error: it is the measure's answer (a limit of the server under test).
func (b *bench) idleOne(ctx context.Context, name, addr, db string, pid int, cache *saltCache) (r idleResult, err error) {
	r = idleResult{name: name, requested: b.opts.idleClients, backendsBefore: -1, backends: -1}
	time.Sleep(idleSettle)
	if r.rssBefore, err = rss(pid); err != nil {
		return r, err
	}
	if n, err := b.clientBackends(ctx); err == nil {
		r.backendsBefore = n
	}
	start := time.Now()
	conns, failed, openErr := openIdleClients(ctx, b.opts.idleClients, idleWorkers, addr, "postgres", db, cache)
	r.openTime, r.reached, r.failedAttempts = time.Since(start), len(conns), failed
	if openErr != nil {
		r.firstError = openErr.Error()
	}
	defer func() {
		closeAll(conns)
		time.Sleep(idleSettle)
		if v, err := rss(pid); err == nil {
			r.rssAfterClose = v
		}
	}()
	time.Sleep(idleSettle)
	if r.rssOpen, err = rss(pid); err != nil {
		return r, err
	}
	if n, err := b.clientBackends(ctx); err == nil {
		r.backends = n
	}
	return r, ctx.Err()
}

// clientBackends counts client backends on the compute, other than the
// one asking.
func (b *bench) clientBackends(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, queryInfoLimit)
	defer cancel()
	conn, err := pgx.Connect(ctx, b.directTarget().dsn)
	if err != nil {
		return 0, err
	}
	defer closeConn(conn)
	return countBackends(ctx, conn)
}

func countBackends(ctx context.Context, conn *pgx.Conn) (int, error) {
	var n int
	err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
		pgx.QueryExecModeSimpleProtocol).Scan(&n)
	return n, err
}

// poolingPgbench runs every workload -rounds times, the paths taking turns
// within each round, after a short unreported warm-up of each path (fills
// the pools).
func (b *bench) poolingPgbench(ctx context.Context) error {
	ts := b.poolingTargets()
	for _, t := range ts {
		if _, err := pgbenchRun(ctx, t, pgbenchSpec{clients: poolClients, duration: warmupDuration}); err != nil {
			b.rep.problem(fmt.Sprintf("pooling warm-up %s: %v", t.name, err))
		}
	}
	logDir, err := os.MkdirTemp(b.env.dir, "pgbench-log-")
	if err != nil {
		return fmt.Errorf("pgbench log dir: %w", err)
	}
	defer os.RemoveAll(logDir)
	var failures int
	for wi, w := range poolingWorkloads() {
		pw := poolWorkload{w: w, duration: b.opts.duration}
		if w.reconnect {
			pw.duration = b.opts.connDuration
		}
		for round := 1; round <= b.opts.rounds; round++ {
			for ti, t := range ts {
				if t.floor && w.reconnect {
					continue
				}
				if ctx.Err() != nil {
					b.rep.pooling.workloads = append(b.rep.pooling.workloads, pw)
					return context.Cause(ctx)
				}
				spec := pgbenchSpec{clients: w.clients, duration: pw.duration, reconnect: w.reconnect}
				if w.p99 {
					spec.logPrefix = fmt.Sprintf("%s/w%d-r%d-p%d", logDir, wi+1, round, ti)
				}
				logf("  pooling %d/%d round %d/%d: pgbench -c %d%s %s for %s", wi+1, len(poolingWorkloads()),
					round, b.opts.rounds, w.clients, map[bool]string{true: " -C"}[w.reconnect], t.name, pw.duration)
				run := b.observedRun(ctx, t, spec)
				run.round = round
				if run.err != "" {
					failures++
					b.rep.problem(fmt.Sprintf("pooling: pgbench -c %d on %s, round %d: %s", w.clients, t.name, round, run.err))
				}
				pw.runs = append(pw.runs, run)
			}
		}
		b.rep.pooling.workloads = append(b.rep.pooling.workloads, pw)
	}
	b.rep.pooling.ran = true
	if failures > 0 {
		return fmt.Errorf("%d pgbench run(s) failed", failures)
	}
	return nil
}

// observedRun runs pgbench while counting the compute's client backends
// every observeEvery on a separate direct connection.
func (b *bench) observedRun(ctx context.Context, t pgTarget, spec pgbenchSpec) poolRun {
	run := poolRun{path: t.name, base: -1, peak: -1}
	octx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	peak := -1
	conn, err := pgx.Connect(ctx, b.directTarget().dsn)
	if err == nil {
		if n, err := countBackends(ctx, conn); err == nil {
			run.base = n
		}
		wg.Go(func() {
			defer closeConn(conn)
			tick := time.NewTicker(observeEvery)
			defer tick.Stop()
			for {
				if n, err := countBackends(octx, conn); err == nil {
					peak = max(peak, n)
				}
				select {
				case <-octx.Done():
					return
				case <-tick.C:
				}
			}
		})
	}
	var cpu0 time.Duration
	if t.pid > 0 {
		cpu0, _ = cpuTime(t.pid)
	}
	r, err := pgbenchRun(ctx, t, spec)
	if t.pid > 0 {
		if cpu1, cerr := cpuTime(t.pid); cerr == nil && cpu0 > 0 {
			run.cpu = cpu1 - cpu0
		}
	}
	stop()
	wg.Wait()
	run.r, run.peak = r, peak
	if err != nil {
		run.err = err.Error()
	}
	return run
}

// pathSummary is the medians of one path's successful runs of a workload.
type pathSummary struct {
	name          string
	runs          int
	tps           []float64 // every successful run, in order
	medianTPS     float64
	medianLatency float64 // ms
	medianP99     time.Duration
	newBackends   int           // most backends a run added to those open before it; -1 unknown
	cpuPerTx      time.Duration // median pooler CPU per transaction; 0 unknown
	failed        int64
	errors        int
}

func summarizeRuns(pw poolWorkload, name string) pathSummary {
	s := pathSummary{name: name, newBackends: -1}
	var lat []float64
	var p99, cpu []time.Duration
	for _, r := range pw.runs {
		if r.path != name {
			continue
		}
		if r.err != "" {
			s.errors++
			continue
		}
		s.runs++
		s.tps = append(s.tps, r.r.tps)
		lat = append(lat, r.r.latencyMS)
		if r.r.p99 > 0 {
			p99 = append(p99, r.r.p99)
		}
		if r.cpu > 0 && r.r.processed > 0 {
			cpu = append(cpu, r.cpu/time.Duration(r.r.processed))
		}
		if r.base >= 0 && r.peak >= 0 {
			s.newBackends = max(s.newBackends, r.peak-r.base)
		}
		s.failed += r.r.failed
	}
	s.medianTPS, s.medianLatency = medianFloat(s.tps), medianFloat(lat)
	if len(p99) > 0 {
		s.medianP99 = medianDuration(p99)
	}
	if len(cpu) > 0 {
		s.cpuPerTx = medianDuration(cpu)
	}
	return s
}

// medianFloat is the median (mean of the middle two for an even count).
func medianFloat(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func medianDuration(v []time.Duration) time.Duration {
	f := make([]float64, len(v))
	for i, d := range v {
		f[i] = float64(d)
	}
	return time.Duration(medianFloat(f))
}
