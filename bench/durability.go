package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/neonproxy/neonproxy/wake"
)

// The durability section (issue 5): every acknowledged commit survives a
// crash of neonproxy (with its embedded WAL keeper) and of the compute at
// the same moment, even when the compute's local data directory is lost;
// and what waiting for the keeper's fsync costs a commit. It runs on its
// own neonproxy (data in <tmp>/durability), which it kills and restarts on
// the same config, ports and data dir.
const (
	chaosBranch       = "chaos"
	chaosWriters      = 4
	chaosDelayMin     = 300 * time.Millisecond
	chaosDelayMax     = 1500 * time.Millisecond
	chaosConnectLimit = 60 * time.Second // writers' connect (the first cycle may start the compute)
	chaosStopLimit    = 30 * time.Second // writers, neonproxy and the compute gone after the kill
	chaosRecoverLimit = 3 * time.Minute  // restart → first successful SELECT
	chaosRetryEvery   = 100 * time.Millisecond
	tpcbBranch        = "tpcb"
	tpcbScale         = 1
	tpcbClients       = 4
	tpcbThreads       = 2
	chaosMissingShown = 20 // missing ids listed in the report
)

// The standalone-keepers variant of the commit latency: a second serve
// with walkeeper.peers listing this many `neonproxy walkeeper` processes
// and walkeeper.quorum.
const (
	standaloneKeepers = 3
	standaloneQuorum  = 2
)

// commitMode is one pgbench TPC-B variant: a per-connection setting
// (PGOPTIONS), on the section's serve (embedded keeper) or, with
// standalone, on the serve with the standalone keepers.
type commitMode struct {
	name, pgoptions string
	standalone      bool
}

// commitModes are the pgbench TPC-B variants, in the order each round runs
// them.
var commitModes = []commitMode{
	{"synchronous_commit=on (keeper fsync; default)", "", false},
	{"synchronous_commit=local (local fsync only)", "-c synchronous_commit=local", false},
	{"synchronous_commit=off (no wait)", "-c synchronous_commit=off", false},
	{fmt.Sprintf("synchronous_commit=on (%d standalone keepers, quorum %d)", standaloneKeepers, standaloneQuorum), "", true},
}

// wantStandbyNames is the synchronous_standby_names that serve gives a
// compute with standaloneKeepers peers and standaloneQuorum:
// 'ANY 2 (wk1, wk2, wk3)'.
func wantStandbyNames() string {
	names := make([]string, standaloneKeepers)
	for i := range names {
		names[i] = fmt.Sprintf("wk%d", i+1)
	}
	return fmt.Sprintf("ANY %d (%s)", standaloneQuorum, strings.Join(names, ", "))
}

// durability runs the section's phases against one neonproxy.
type durability struct {
	px *proxy
	// The standalone-keepers variant's serve and keepers (nil until
	// started by commitLatency).
	spx     *proxy
	keepers *walkeepers
	env     *env
	rep     *durabilityReport
	opts    options
	rng     *rand.Rand

	nextID int64  // last id handed to a writer (ids are 1, 2, 3, … over all cycles)
	status []byte // by id: idAttempted or idAcked
}

const (
	idAttempted = 1 // INSERT sent, no success seen
	idAcked     = 2 // INSERT returned success
)

// runDurability starts the section's neonproxy and runs its phases.
func (b *bench) runDurability(ctx context.Context) {
	b.sectionMachine(ctx)
	seed := b.opts.chaosSeed
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	s := &durability{env: &env{dir: b.env.path("durability"), keep: b.env.keep}, rep: &b.rep.durability, opts: b.opts,
		rng: rand.New(rand.NewPCG(uint64(seed), 0x6e656f6e))}
	s.rep.seed = seed
	logf("durability: chaos seed %d (-chaos-seed %d repeats the delays)", seed, seed)
	if !b.phase(ctx, "durability: start neonproxy", s.start) {
		return
	}
	defer s.stop()
	if b.phase(ctx, "durability: chaos setup", s.chaosSetup) {
		b.phase(ctx, "durability: chaos cycles", s.chaosCycles)
		s.readLog()
	}
	if n := s.rep.distinctMissing; n > 0 {
		b.rep.problem(fmt.Sprintf("durability: DATA LOSS: %d acknowledged commit(s) missing after crash recovery (ids %v)", n, s.rep.missingIDs))
	}
	if s.px == nil || !s.running() {
		b.rep.problem("durability: neonproxy is not running after the chaos cycles; commit latency skipped")
		return
	}
	b.phase(ctx, "durability: commit latency", s.commitLatency)
	if s.opts.keeperKills == 0 || ctx.Err() != nil {
		return
	}
	if s.spx == nil || !s.spx.running() || s.keepers == nil {
		b.rep.problem("durability: the standalone keepers' serve is not running; keeper loss skipped")
		return
	}
	b.phase(ctx, "durability: keeper loss", s.keeperLoss)
	if n := s.rep.keeperLossMissing; n > 0 {
		b.rep.problem(fmt.Sprintf("durability: DATA LOSS: %d acknowledged commit(s) missing after keeper loss (ids %v)", n, s.rep.keeperLossMissingIDs))
	}
}

func (s *durability) start(ctx context.Context) error {
	px, err := startOwnProxy(ctx, s.opts, s.env)
	if err != nil {
		return err
	}
	s.px = px
	s.rep.admin, s.rep.port = px.admin, px.port
	return nil
}

func (s *durability) running() bool { return s.px.running() }

// stop stops the section's processes: each serve before the keepers its
// computes stream to.
func (s *durability) stop() {
	for _, px := range []*proxy{s.spx, s.px} {
		if px != nil {
			px.stop()
		}
	}
	if s.keepers != nil {
		s.keepers.stop()
	}
}

func (s *durability) url(name string) string { return s.px.branchURL(name, "disable") }

// exec runs statements on branch name through neonproxy.
func (s *durability) exec(ctx context.Context, name string, sqls ...string) error {
	ctx, cancel := context.WithTimeout(ctx, connectLimit+time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.url(name))
	if err != nil {
		return fmt.Errorf("connect to %s: %w", name, err)
	}
	defer closeConn(conn)
	for _, q := range sqls {
		if _, err := conn.Exec(ctx, q, pgx.QueryExecModeSimpleProtocol); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}

// chaosSetup creates the chaos branch and its table.
func (s *durability) chaosSetup(ctx context.Context) error {
	if err := s.px.send(ctx, http.MethodPost, "/v1/branches", map[string]string{"name": chaosBranch, "parent": branch}, nil); err != nil {
		return err
	}
	s.rep.command(fmt.Sprintf(`curl -X POST %s/v1/branches -d '{"name":"%s","parent":"%s"}'`, s.px.admin, chaosBranch, branch))
	const ddl = "CREATE TABLE acked (id bigint PRIMARY KEY)"
	s.rep.command(fmt.Sprintf("psql 'postgres://postgres:…@127.0.0.1:%d/%s?sslmode=disable' -c '%s'", s.px.port, chaosBranch, ddl))
	return s.exec(ctx, chaosBranch, ddl)
}

// chaosCycles runs -chaos-cycles crash cycles. A cycle's failure to
// recover ends the phase (there is no neonproxy to go on with).
func (s *durability) chaosCycles(ctx context.Context) error {
	s.rep.command(fmt.Sprintf("%d × pgx 'postgres://postgres:…@127.0.0.1:%d/%s?sslmode=disable': INSERT INTO acked (id) VALUES (<next id>)   # autocommit, simple protocol, until an error",
		chaosWriters, s.px.port, chaosBranch))
	s.rep.command(fmt.Sprintf("after %s–%s (seeded): curl %s/v1/branches/%s → compute.pid; kill -9 <neonproxy pid>; kill -9 -<compute.pid>",
		chaosDelayMin, chaosDelayMax, s.px.admin, chaosBranch))
	s.rep.command(fmt.Sprintf("rm -rf %s; neonproxy serve --config %s   # same config, ports, data dir",
		filepath.Join(s.px.dataDir, "computes", "branches", chaosBranch), s.px.cfgPath))
	s.rep.command(fmt.Sprintf("retry pgx connect + SELECT 1 on %s until it succeeds (recovery time), then SELECT id FROM acked", chaosBranch))
	for i := 1; i <= s.opts.chaosCycles; i++ {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c, err := s.cycle(ctx, i)
		s.rep.cycles = append(s.rep.cycles, c)
		if err != nil {
			return fmt.Errorf("cycle %d: %w", i, err)
		}
		logf("  cycle %d: delay %s, acked %d, unacked %d, rows %d, missing %d (+%d earlier), extra %d, recovery %s",
			i, c.delay.Round(time.Millisecond), c.acked, c.unacked, c.rows, c.missingNew, c.missingOld, c.extra, ms(c.recovery))
	}
	return nil
}

// chaosCycle is one crash cycle's result.
type chaosCycle struct {
	n                int
	delay            time.Duration // writers' start → kill
	acked, unacked   int           // this cycle's INSERTs that returned success / did not
	rows             int           // rows of acked after recovery
	missingNew       int           // this cycle's acknowledged ids not recovered
	missingOld       int           // earlier cycles' acknowledged ids not recovered
	extra            int           // this cycle's unacknowledged ids that were recovered
	unknown          int           // recovered ids never sent (must be 0)
	gone             time.Duration // kill → neonproxy and every compute process gone (reaped)
	ready            time.Duration // restart → connection string printed
	recovery         time.Duration // restart → first successful SELECT 1 on the branch
	computePID       int
	dirExisted       bool
	preKillErrs      []string // writer errors before the kill
	postKillErr      string   // one writer's error after the kill (for the report)
	connectAttempts  int      // until the first success
	firstConnectFail string
}

func (s *durability) cycle(ctx context.Context, n int) (chaosCycle, error) {
	c := chaosCycle{n: n}
	c.delay = chaosDelayMin + time.Duration(s.rng.Int64N(int64(chaosDelayMax-chaosDelayMin)+1))
	startID := s.nextID

	// Connect every writer first: the delay counts from the first INSERT.
	conns, err := connectWriters(ctx, s.url(chaosBranch), chaosWriters)
	if err != nil {
		return c, err
	}
	var next atomic.Int64
	next.Store(s.nextID)
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	ws, done := runWriters(wctx, conns, &next, nil, false)

	select {
	case <-time.After(c.delay):
	case <-done: // every writer failed before the kill
	case <-ctx.Done():
		wcancel()
		<-done
		return c, ctx.Err()
	}
	info, infoErr := s.px.branchInfo(ctx, chaosBranch) // just before the kill
	c.computePID = info.Compute.PID
	killedAt := time.Now()
	proxyErr := syscall.Kill(s.px.pid(), syscall.SIGKILL)
	var computeErr error
	if c.computePID > 0 {
		computeErr = syscall.Kill(-c.computePID, syscall.SIGKILL)
	}
	switch {
	case infoErr != nil:
		return c, fmt.Errorf("branch info before the kill: %w", infoErr)
	case proxyErr != nil:
		return c, fmt.Errorf("kill -9 neonproxy %d: %w", s.px.pid(), proxyErr)
	case c.computePID <= 0:
		return c, fmt.Errorf("branch %s: no compute.pid (state %q) before the kill", chaosBranch, info.Compute.State)
	case computeErr != nil:
		return c, fmt.Errorf("kill -9 -%d (compute): %w", c.computePID, computeErr)
	}

	select {
	case <-done:
	case <-time.After(chaosStopLimit):
		wcancel() // a writer hangs on a dead connection
		<-done
	}
	select {
	case <-s.px.exited:
	case <-time.After(chaosStopLimit):
		return c, errors.New("neonproxy still running after SIGKILL")
	}
	if err := waitGroupGone(ctx, c.computePID, chaosStopLimit); err != nil {
		return c, err
	}
	c.gone = time.Since(killedAt)

	// Tally this cycle's ids.
	maxID := next.Load()
	s.nextID = maxID
	if need := int(maxID) + 1; len(s.status) < need {
		s.status = append(s.status, make([]byte, need-len(s.status))...)
	}
	for _, w := range ws {
		for _, id := range w.attempted {
			s.status[id] = idAttempted
		}
	}
	for _, w := range ws {
		for _, id := range w.acked {
			s.status[id] = idAcked
		}
		c.acked += len(w.acked)
		c.unacked += len(w.attempted) - len(w.acked)
		if w.err != nil {
			if w.errAt.Before(killedAt) {
				c.preKillErrs = append(c.preKillErrs, firstLine(w.err.Error()))
			} else if c.postKillErr == "" {
				c.postKillErr = firstLine(w.err.Error())
			}
		}
	}

	// Lose the compute's local directory and restart.
	dir := filepath.Join(s.px.dataDir, "computes", "branches", chaosBranch)
	if _, err := os.Stat(dir); err == nil {
		c.dirExisted = true
	}
	if err := os.RemoveAll(dir); err != nil {
		return c, fmt.Errorf("remove %s: %w", dir, err)
	}
	start := time.Now()
	if err := s.px.restart(ctx); err != nil {
		return c, err
	}
	c.ready = time.Since(start)
	conn, err := s.awaitBranch(ctx, &c)
	if err != nil {
		return c, err
	}
	c.recovery = time.Since(start)
	defer closeConn(conn)

	qctx, qcancel := context.WithTimeout(ctx, time.Minute)
	defer qcancel()
	rows, err := conn.Query(qctx, "SELECT id FROM acked", pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		return c, fmt.Errorf("SELECT id FROM acked: %w", err)
	}
	present := make([]bool, len(s.status))
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return c, err
		}
		c.rows++
		if id <= 0 || id >= int64(len(present)) || s.status[id] == 0 {
			c.unknown++
			continue
		}
		present[id] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return c, fmt.Errorf("SELECT id FROM acked: %w", err)
	}
	for id := int64(1); id < int64(len(s.status)); id++ {
		switch {
		case s.status[id] == idAcked && !present[id]:
			if id > startID {
				c.missingNew++
			} else {
				c.missingOld++
			}
			s.rep.noteMissing(id)
		case s.status[id] == idAttempted && present[id] && id > startID:
			c.extra++
		}
	}
	return c, nil
}

// awaitBranch retries connect + SELECT 1 on the chaos branch until it
// succeeds (the compute starts: materialization and crash recovery).
func (s *durability) awaitBranch(ctx context.Context, c *chaosCycle) (*pgx.Conn, error) {
	conn, attempts, firstErr, err := awaitSelect(ctx, s.url(chaosBranch), chaosRecoverLimit)
	c.connectAttempts, c.firstConnectFail = attempts, firstErr
	if err != nil {
		return nil, fmt.Errorf("branch %s %w", chaosBranch, err)
	}
	return conn, nil
}

// awaitSelect retries connect + SELECT 1 on dsn every chaosRetryEvery
// until it succeeds, for at most limit; it returns the open connection,
// the attempts made and the first failure's first line.
func awaitSelect(ctx context.Context, dsn string, limit time.Duration) (conn *pgx.Conn, attempts int, firstErr string, err error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for {
		attempts++
		if conn, err = trySelect(ctx, dsn); err == nil {
			return conn, attempts, firstErr, nil
		}
		if firstErr == "" {
			firstErr = firstLine(err.Error())
		}
		select {
		case <-ctx.Done():
			return nil, attempts, firstErr, fmt.Errorf("not back after %s (%d attempts): %w", limit, attempts, err)
		case <-time.After(chaosRetryEvery):
		}
	}
}

// trySelect connects to dsn and runs SELECT 1, returning the open
// connection.
func trySelect(ctx context.Context, dsn string) (*pgx.Conn, error) {
	actx, cancel := context.WithTimeout(ctx, connectLimit)
	defer cancel()
	conn, err := pgx.Connect(actx, dsn)
	if err != nil {
		return nil, err
	}
	var one int
	if err := conn.QueryRow(actx, "SELECT 1", pgx.QueryExecModeSimpleProtocol).Scan(&one); err != nil {
		closeConn(conn)
		return nil, err
	}
	return conn, nil
}

// waitGroupGone waits until no process is in process group pgid, zombies
// included: until init has reaped the orphaned postmaster, PostgreSQL's
// socket lock check (kill(pid, 0)) still sees it alive, which a real crash
// (or an init that reaps at once) would not show. This VM's init reaps
// orphans about once a second.
func waitGroupGone(ctx context.Context, pgid int, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		n := inGroup(pgid)
		if n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d process(es) of the compute's group %d still alive %s after SIGKILL", n, pgid, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// inGroup counts the processes of group pgid (zombies too), from
// /proc/PID/stat (fields after the command: state, ppid, pgrp).
func inGroup(pgid int) int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		st := string(b)
		f := strings.Fields(st[strings.LastIndexByte(st, ')')+1:])
		if len(f) < 3 || f[0] == "X" {
			continue
		}
		if g, _ := strconv.Atoi(f[2]); g == pgid {
			n++
		}
	}
	return n
}

// readLog counts the chaos branch's WAL replays, materializations and
// failed starts in neonproxy's log (JSON, one object per line).
func (s *durability) readLog() {
	b, err := os.ReadFile(s.px.logPath)
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(b), "\n") {
		var m struct{ Msg, Branch string }
		if json.Unmarshal([]byte(line), &m) != nil || m.Branch != chaosBranch {
			continue
		}
		switch m.Msg {
		case wake.LogReplayingWAL:
			s.rep.logReplays++
		case wake.LogMaterialized:
			s.rep.logMaterialized++
		case wake.LogStartFailed:
			s.rep.logStartFailed++
		}
	}
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// commitLatency runs pgbench TPC-B on its own branch with the keeper wait
// (default), with synchronous_commit=local and with off, and on a second
// serve with standalone keepers, -rounds times, taking turns. Without the
// standalone keepers (they or their serve fail to start) the other
// variants still run and the phase fails at the end.
func (s *durability) commitLatency(ctx context.Context) error {
	// The chaos branch's compute would only idle; stop it (best effort).
	if err := s.px.suspendBranch(ctx, chaosBranch); err == nil {
		if err := s.px.waitBranchState(ctx, chaosBranch, "stopped", branchStopLimit); err != nil {
			s.rep.note(fmt.Sprintf("suspend of %s after the cycles: %v", chaosBranch, err))
		}
	} else {
		s.rep.note(fmt.Sprintf("suspend of %s after the cycles: %v", chaosBranch, err))
	}
	t, err := s.tpcbSetup(ctx, s.px)
	if err != nil {
		return err
	}
	if s.rep.settings, s.rep.replication, err = s.settings(ctx, s.px); err != nil {
		return err
	}
	var errs []error
	var st pgTarget // the standalone keepers' serve; zero when it did not start
	if err := s.startStandalone(ctx); err != nil {
		errs = append(errs, fmt.Errorf("standalone keepers: %w", err))
		logf("  standalone keepers FAILED (their variant is skipped): %v", err)
	} else {
		st, err = s.tpcbSetup(ctx, s.spx)
		if err == nil {
			err = s.standaloneSettings(ctx)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("standalone keepers' serve: %w", err))
			logf("  standalone keepers' serve FAILED (its variant is skipped): %v", err)
			st = pgTarget{}
		} else if want := wantStandbyNames(); s.rep.standbyNames != want {
			// Measured anyway; the report shows the setting.
			errs = append(errs, fmt.Errorf("standalone keepers' compute: SHOW synchronous_standby_names = %q, want %q", s.rep.standbyNames, want))
		}
	}
	s.rep.modes = make([]commitModeResult, len(commitModes))
	for i, m := range commitModes {
		s.rep.modes[i].commitMode = m
		px := s.px
		if m.standalone {
			if st.port == 0 {
				s.rep.modes[i].seen = "not started"
				continue
			}
			px = s.spx
		}
		if s.rep.modes[i].seen, err = showSyncCommit(ctx, px, m.pgoptions); err != nil {
			return err
		}
	}
	for round := 1; round <= s.opts.durabilityRounds; round++ {
		for i, m := range commitModes {
			target := t
			if m.standalone {
				if st.port == 0 {
					continue
				}
				target = st
			}
			logf("  round %d: %s", round, m.name)
			r, err := pgbenchTPCB(ctx, target, m.pgoptions, s.opts.duration)
			if round == 1 {
				s.rep.command(r.command)
			}
			if err != nil {
				s.rep.modes[i].failedRuns = append(s.rep.modes[i].failedRuns, firstLine(err.Error()))
				logf("  round %d %s FAILED: %v", round, m.name, err)
				continue
			}
			s.rep.modes[i].runs = append(s.rep.modes[i].runs, r)
		}
	}
	for _, m := range s.rep.modes {
		if len(m.failedRuns) > 0 {
			errs = append(errs, fmt.Errorf("%d pgbench run(s) of %s failed: %s", len(m.failedRuns), m.name, m.failedRuns[0]))
		}
	}
	return errors.Join(errs...)
}

// tpcbSetup creates the tpcb branch on px, loads it with pgbench -i and
// runs the unreported warm-up (default options), and returns pgbench's
// target for it.
func (s *durability) tpcbSetup(ctx context.Context, px *proxy) (pgTarget, error) {
	if err := px.send(ctx, http.MethodPost, "/v1/branches", map[string]string{"name": tpcbBranch, "parent": branch}, nil); err != nil {
		return pgTarget{}, err
	}
	t := pgTarget{name: tpcbBranch, host: "127.0.0.1", port: px.port, dbname: tpcbBranch, password: px.password}
	logf("  %s on :%d: pgbench -i -s %d", tpcbBranch, px.port, tpcbScale)
	cmd, err := pgbenchInit(ctx, t, tpcbScale)
	s.rep.command(cmd)
	if err != nil {
		return pgTarget{}, err
	}
	if _, err := pgbenchTPCB(ctx, t, "", warmupDuration); err != nil {
		return pgTarget{}, fmt.Errorf("warm-up: %w", err)
	}
	return t, nil
}

// startStandalone starts standaloneKeepers keepers in
// <tmp>/durability/walkeepers and a second serve in
// <tmp>/durability/standalone (own data dir and ports) whose
// walkeeper.peers lists them, with walkeeper.quorum standaloneQuorum.
func (s *durability) startStandalone(ctx context.Context) error {
	ks, err := startWalkeepers(ctx, s.opts, &env{dir: s.env.path("walkeepers"), keep: s.env.keep}, standaloneKeepers)
	if err != nil {
		return err
	}
	s.keepers = ks
	s.rep.keeperAddrs = ks.addrs
	for i, addr := range ks.addrs {
		s.rep.command(fmt.Sprintf("neonproxy walkeeper --config %s   # data_dir: %s, walkeeper.listen: %s",
			s.env.path("walkeepers", fmt.Sprintf("wk%d.yaml", i+1)), ks.dirs[i], addr))
	}
	o := s.opts
	o.walkeeperPeers, o.walkeeperQuorum = ks.addrs, standaloneQuorum
	px, err := startOwnProxy(ctx, o, &env{dir: s.env.path("standalone"), keep: s.env.keep})
	if err != nil {
		return err
	}
	s.spx = px
	s.rep.command(fmt.Sprintf("neonproxy serve --config %s   # walkeeper: {peers: [%s], quorum: %d}",
		px.cfgPath, strings.Join(ks.addrs, ", "), standaloneQuorum))
	return nil
}

// standaloneSettings records the standalone keepers' compute's
// synchronous_standby_names (SHOW through neonproxy) and
// pg_stat_replication.
func (s *durability) standaloneSettings(ctx context.Context) error {
	settings, repl, err := s.settings(ctx, s.spx)
	if err != nil {
		return err
	}
	s.rep.standaloneReplication = repl
	for _, kv := range settings {
		if kv.key == "synchronous_standby_names" {
			s.rep.standbyNames = kv.value
		}
	}
	return nil
}

// settings reads the durability settings of px's tpcb compute (SHOW
// through neonproxy, default options) and its pg_stat_replication.
func (s *durability) settings(ctx context.Context, px *proxy) (settings []kv, replication string, err error) {
	ctx, cancel := context.WithTimeout(ctx, connectLimit)
	defer cancel()
	conn, err := pgx.Connect(ctx, px.branchURL(tpcbBranch, "disable"))
	if err != nil {
		return nil, "", fmt.Errorf("connect to %s: %w", tpcbBranch, err)
	}
	defer closeConn(conn)
	for _, name := range []string{"fsync", "synchronous_commit", "synchronous_standby_names", "wal_sync_method", "full_page_writes", "wal_level", "shared_buffers"} {
		var v string
		if err := conn.QueryRow(ctx, "SHOW "+name, pgx.QueryExecModeSimpleProtocol).Scan(&v); err != nil {
			return nil, "", fmt.Errorf("SHOW %s: %w", name, err)
		}
		settings = append(settings, kv{name, v})
	}
	rows, err := conn.Query(ctx, "SELECT application_name, state, sync_state FROM pg_stat_replication ORDER BY application_name", pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		return nil, "", fmt.Errorf("pg_stat_replication: %w", err)
	}
	var repl []string
	for rows.Next() {
		var app, state, sync string
		if err := rows.Scan(&app, &state, &sync); err != nil {
			rows.Close()
			return nil, "", err
		}
		repl = append(repl, fmt.Sprintf("%s (%s, %s)", app, state, sync))
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, "", err
	}
	if len(repl) == 0 {
		return settings, "none", nil
	}
	return settings, strings.Join(repl, ", "), nil
}

// showSyncCommit is SHOW synchronous_commit on px's tpcb branch with
// pgoptions, as the compute sees it (PGOPTIONS passes through neonproxy).
func showSyncCommit(ctx context.Context, px *proxy, pgoptions string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, connectLimit)
	defer cancel()
	cfg, err := pgx.ParseConfig(px.branchURL(tpcbBranch, "disable"))
	if err != nil {
		return "", err
	}
	if pgoptions != "" {
		cfg.RuntimeParams["options"] = pgoptions
	}
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return "", fmt.Errorf("connect with options %q: %w", pgoptions, err)
	}
	defer closeConn(c)
	var v string
	if err := c.QueryRow(ctx, "SHOW synchronous_commit", pgx.QueryExecModeSimpleProtocol).Scan(&v); err != nil {
		return "", fmt.Errorf("SHOW synchronous_commit with options %q: %w", pgoptions, err)
	}
	return v, nil
}

// pgbenchTPCB runs pgbench's default TPC-B-like script against t for d,
// with PGOPTIONS set when pgoptions is not empty.
func pgbenchTPCB(ctx context.Context, t pgTarget, pgoptions string, d time.Duration) (pgbenchResult, error) {
	args := []string{"-c", strconv.Itoa(tpcbClients), "-j", strconv.Itoa(tpcbThreads),
		"-T", strconv.Itoa(int(d.Round(time.Second) / time.Second)), "-n"}
	args = append(append(args, t.args()...), t.dbname)
	env := t.env()
	cmdline := printable(t, args)
	if pgoptions != "" {
		env = append(env, "PGOPTIONS="+pgoptions)
		cmdline = "PGOPTIONS='" + pgoptions + "' " + cmdline
	}
	ctx, cancel := context.WithTimeout(ctx, d+pgbenchSlack)
	defer cancel()
	cmd := exec.CommandContext(ctx, "pgbench", args...)
	cmd.Env = cleanEnv(env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", err, context.Cause(ctx))
		}
		msg := lastLines(string(out), 10)
		if first := errorLines(string(out), 5); first != "" && !strings.Contains(msg, first) {
			msg = first + "\n…\n" + msg
		}
		return pgbenchResult{command: cmdline}, fmt.Errorf("%s: %w\n%s", cmdline, err, msg)
	}
	r, err := parsePgbench(string(out))
	r.command = cmdline
	return r, err
}

// commitModeResult is one synchronous_commit variant's pgbench runs.
type commitModeResult struct {
	commitMode
	seen       string // SHOW synchronous_commit with the variant's PGOPTIONS
	runs       []pgbenchResult
	failedRuns []string
}

func (m commitModeResult) medians() (tps, latMS float64) {
	var t, l []float64
	for _, r := range m.runs {
		t = append(t, r.tps)
		l = append(l, r.latencyMS)
	}
	if len(t) == 0 {
		return 0, 0
	}
	return medianFloat(t), medianFloat(l)
}

// sortedMissing is for tests and the report: ascending ids.
func sortedMissing(ids []int64) []int64 {
	out := slices.Clone(ids)
	slices.Sort(out)
	return out
}
