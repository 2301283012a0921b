package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

const (
	pgbenchScale   = 10
	roundTripCount = 2000
	stateWaitLimit = 60 * time.Second
	warmupDuration = 2 * time.Second
	queryInfoLimit = 10 * time.Second
	nameProxy      = "neonproxy (TCP, SCRAM)"
	nameProxyTLS   = "neonproxy (TLS, SCRAM)"
	nameDirect     = "direct (unix socket, trust)"
	namePgBouncer  = "PgBouncer session (TCP, trust)"
	noteSkipped    = "skipped (-skip-pgbouncer)"
)

// bench runs the phases against one neonproxy and one compute, so the
// comparisons share machine, compute and data.
type bench struct {
	opts  options
	env   *env
	proxy *proxy
	rep   *report

	socketDir   string // compute's unix socket directory
	computePort int
	computePID  int
	pgb         *pgbouncer   // session mode; nil when skipped or failed
	pgbTx       *pgbouncer   // transaction mode (pooling); nil when skipped or failed
	floors      []*floorProc // the pooling section's floor poolers (floor.go)
	nofile      uint64       // RLIMIT_NOFILE after raising it
}

func (b *bench) runPhases(ctx context.Context) {
	o := b.opts
	b.rep.machine = machineInfo()
	b.rep.machine = append(b.rep.machine, kv{"nofile", fmt.Sprintf("%d (RLIMIT_NOFILE of the bench, neonproxy, PgBouncer)", b.nofile)})
	if !b.phase(ctx, "first start", b.firstStart) {
		return
	}
	if o.has(sectionLatency) && !b.phase(ctx, "cold wake", b.coldWake) {
		return
	}
	if !b.phase(ctx, "locate compute", b.locateCompute) {
		return
	}
	b.phase(ctx, "versions", b.versions)
	if o.has(sectionLatency) || o.has(sectionPgbench) {
		b.phase(ctx, "pgbouncer", b.startPgBouncer)
		if b.pgb != nil {
			defer b.pgb.stop()
		}
	}
	if o.has(sectionLatency) {
		b.phase(ctx, "warm connect", b.warmConnect)
		b.phase(ctx, "round trips", b.roundTrips)
	}
	if (o.has(sectionPgbench) || o.has(sectionPooling)) && b.phase(ctx, "pgbench -i", b.initData) {
		if o.has(sectionPgbench) {
			b.phase(ctx, "pgbench -S", b.selectOnly)
			b.phase(ctx, "pgbench -S -C", b.selectReconnect)
		}
		if o.has(sectionPooling) {
			b.phase(ctx, "pooling: pgbouncer transaction mode", b.poolingSetup)
			if b.pgbTx != nil {
				defer b.pgbTx.stop()
			}
			b.phase(ctx, "pooling: idle clients", b.idleClients)
			b.phase(ctx, "pooling: floor poolers", b.startFloors)
			defer func() {
				for _, f := range b.floors {
					f.stop()
				}
			}()
			b.phase(ctx, "pooling: pgbench", b.poolingPgbench)
		}
	}
	b.phase(ctx, "compute unchanged", b.checkSameCompute)
}

// sectionMachine fills the machine section for a section with its own
// neonproxy when the main neonproxy's phases (which fill it) did not run.
func (b *bench) sectionMachine(ctx context.Context) {
	if len(b.rep.machine) > 0 {
		return
	}
	b.rep.machine = append(machineInfo(),
		kv{"nofile", fmt.Sprintf("%d (RLIMIT_NOFILE of the bench and neonproxy)", b.nofile)},
		kv{"pgbench", commandFirstLine(ctx, "pgbench", "--version")})
}

// phase runs f, logs progress on stderr and records a failure in the report.
func (b *bench) phase(ctx context.Context, name string, f func(context.Context) error) bool {
	if ctx.Err() != nil {
		return false
	}
	logf("%s …", name)
	start := time.Now()
	if err := f(ctx); err != nil {
		b.rep.problem(fmt.Sprintf("%s: %v", name, err))
		logf("%s FAILED after %s: %v", name, time.Since(start).Round(time.Millisecond), err)
		return false
	}
	logf("%s done in %s", name, time.Since(start).Round(time.Millisecond))
	return true
}

func (b *bench) proxyTarget(sslmode string) target {
	name := nameProxy
	if sslmode != "disable" {
		name = nameProxyTLS
	}
	return target{name: name, dsn: b.proxy.url(sslmode)}
}

func (b *bench) directTarget() target {
	return target{name: nameDirect, dsn: fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable",
		b.socketDir, b.computePort)}
}

func (b *bench) pgbouncerTarget() target {
	return target{name: namePgBouncer, dsn: fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=%s sslmode=disable",
		b.pgb.port, branch)}
}

// firstStart times the very first connection: the compute of a fresh
// branch starts for the first time.
func (b *bench) firstStart(ctx context.Context) error {
	d, err := connectFirstRow(ctx, b.proxy.url("disable"))
	if err != nil {
		return fmt.Errorf("through neonproxy: %w", err)
	}
	b.rep.firstStart = d
	return nil
}

// coldWake suspends the compute, waits for stopped and times connect +
// first row through the proxy, tries times.
func (b *bench) coldWake(ctx context.Context) error {
	var wakes, suspends []time.Duration
	for i := range b.opts.tries {
		start := time.Now()
		if err := b.proxy.suspend(ctx); err != nil {
			return fmt.Errorf("try %d: %w", i+1, err)
		}
		if err := b.proxy.waitState(ctx, "stopped", stateWaitLimit); err != nil {
			return fmt.Errorf("try %d: %w", i+1, err)
		}
		suspends = append(suspends, time.Since(start))
		d, err := connectFirstRow(ctx, b.proxy.url("disable"))
		if err != nil {
			return fmt.Errorf("try %d: wake through neonproxy: %w", i+1, err)
		}
		wakes = append(wakes, d)
	}
	b.rep.coldWake, b.rep.suspend = summarize(wakes), summarize(suspends)
	return nil
}

// locateCompute finds the running compute's socket and pid.
func (b *bench) locateCompute(ctx context.Context) error {
	st, err := b.proxy.status(ctx)
	if err != nil {
		return err
	}
	if st.State != "running" {
		return fmt.Errorf("compute is %q after a connection, want running", st.State)
	}
	b.computePID = st.PID
	b.socketDir, b.computePort, err = b.proxy.computeSocketDir()
	return err
}

// versions records the server's and tools' versions in the report.
func (b *bench) versions(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, queryInfoLimit)
	defer cancel()
	conn, err := pgx.Connect(ctx, b.directTarget().dsn)
	if err != nil {
		return fmt.Errorf("connect to compute directly: %w", err)
	}
	defer closeConn(conn)
	var v string
	if err := conn.QueryRow(ctx, "SELECT version()").Scan(&v); err != nil {
		return fmt.Errorf("SELECT version(): %w", err)
	}
	b.rep.machine = append(b.rep.machine,
		kv{"postgres", v},
		kv{"pgbench", commandFirstLine(ctx, "pgbench", "--version")})
	return nil
}

func (b *bench) startPgBouncer(ctx context.Context) error {
	if b.opts.skipPgBouncer {
		b.rep.pgbouncerNote = noteSkipped
		return nil
	}
	pb, err := startPgBouncer(ctx, b.env, sessionPgBouncer(b.opts), b.socketDir, b.computePort)
	if errors.Is(err, errNoPgBouncer) {
		fmt.Println(errNoPgBouncer)
		b.rep.pgbouncerNote = errNoPgBouncer.Error()
		return nil
	}
	if err != nil {
		b.rep.pgbouncerNote = "failed to start (see problems)"
		return err
	}
	b.pgb = pb
	b.rep.machine = append(b.rep.machine, kv{"pgbouncer", pb.version})
	return nil
}

// connectTargets are the paths compared by warm connect and round trips.
func (b *bench) connectTargets() []target {
	ts := []target{b.proxyTarget("disable"), b.proxyTarget("require"), b.directTarget()}
	if b.pgb != nil {
		ts = append(ts, b.pgbouncerTarget())
	}
	return ts
}

// warmConnect times new connection + first row on each path with the
// compute running. Paths take turns within each try so drift hits all.
func (b *bench) warmConnect(ctx context.Context) error {
	ts := b.connectTargets()
	samples := make([][]time.Duration, len(ts))
	for i := -1; i < b.opts.tries; i++ { // try -1 warms up each path
		for j, t := range ts {
			d, err := connectFirstRow(ctx, t.dsn)
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			if i >= 0 {
				samples[j] = append(samples[j], d)
			}
		}
	}
	for j, t := range ts {
		b.rep.warm = append(b.rep.warm, namedStats{t.name, summarize(samples[j])})
	}
	return nil
}

// roundTrips times SELECT 1 on an open connection for each path.
func (b *bench) roundTrips(ctx context.Context) error {
	for _, t := range b.connectTargets() {
		d, err := roundTrips(ctx, t.dsn, roundTripCount)
		if err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		b.rep.roundTrip = append(b.rep.roundTrip, namedStats{t.name, summarize(d)})
	}
	return nil
}

// pgbenchTargets are the paths compared by pgbench.
func (b *bench) pgbenchTargets() []pgTarget {
	ts := []pgTarget{
		{name: nameProxy, host: "127.0.0.1", port: b.proxy.port, dbname: branch, password: b.proxy.password},
		{name: nameDirect, host: b.socketDir, port: b.computePort, dbname: "postgres"},
	}
	if b.pgb != nil {
		ts = append(ts, pgTarget{name: namePgBouncer, host: "127.0.0.1", port: b.pgb.port, dbname: branch})
	}
	return ts
}

func (b *bench) initData(ctx context.Context) error {
	cmd, err := pgbenchInit(ctx, b.pgbenchTargets()[0], pgbenchScale)
	b.rep.initCommand = cmd
	return err
}

// selectOnly runs pgbench -S on every path after an unreported warm-up.
func (b *bench) selectOnly(ctx context.Context) error {
	ts := b.pgbenchTargets()
	if _, err := pgbenchSelect(ctx, ts[1], b.opts.clients, warmupDuration, false); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	res, err := b.pgbenchAll(ctx, ts, b.opts.duration, false)
	b.rep.selectOnly = res
	return err
}

// selectReconnect runs pgbench -S -C (new connection per transaction).
func (b *bench) selectReconnect(ctx context.Context) error {
	res, err := b.pgbenchAll(ctx, b.pgbenchTargets(), b.opts.connDuration, true)
	b.rep.reconnect = res
	return err
}

func (b *bench) pgbenchAll(ctx context.Context, ts []pgTarget, d time.Duration, reconnect bool) ([]namedPgbench, error) {
	var out []namedPgbench
	for _, t := range ts {
		logf("  pgbench %s%s for %s", t.name, map[bool]string{true: " -C"}[reconnect], d)
		r, err := pgbenchSelect(ctx, t, b.opts.clients, d, reconnect)
		if err != nil {
			return out, fmt.Errorf("%s: %w", t.name, err)
		}
		out = append(out, namedPgbench{t.name, r})
	}
	return out, nil
}

// checkSameCompute verifies that every phase after the cold wake ran on
// one compute process (no restart in between).
func (b *bench) checkSameCompute(ctx context.Context) error {
	st, err := b.proxy.status(ctx)
	if err != nil {
		return err
	}
	if st.State != "running" || st.PID != b.computePID {
		return fmt.Errorf("compute changed during the run: was pid %d running, now pid %d %s",
			b.computePID, st.PID, st.State)
	}
	return nil
}
