package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/neonproxy/neonproxy/wake"
)

// The agents section (branch expiry: the seeds' 12,000 branches an hour):
// -agents-branches short-lived branches of a ~100 MB main, one arriving
// every -agents-duration / -agents-branches (open loop: each arrival runs
// in its own goroutine, none waits for the one before). Each agent
// creates its branch with a TTL (POST /v1/branches), connects through the
// front door (the first query includes the cold wake), creates a table,
// writes a few rows, reads them back and disconnects. Even-numbered agents
// use -agents-ttl and leave their branch to the reaper; odd-numbered ones
// get agentsLongTTL and DELETE their branch after the work. Once every
// branch but main is gone, the page store (after a GC pass) and the data
// directory must be back to within agentsStorageTolerance of where they
// were before the first agent, and there must have been no error.
//
// It runs on its own neonproxy (data in <tmp>/agents, log.level info) with
// compute.max_running -agents-max-running, compute.suspend_timeout 5s (an
// agent's compute stops soon after it left), compute.wake_timeout
// agentsWakeTimeout and the bench's other settings (embedded WAL keeper,
// compute.cache_bytes at its default).
const (
	agentsDefaultBranches   = 1000
	agentsQuickBranches     = 40
	agentsDefaultDuration   = 5 * time.Minute
	agentsQuickDuration     = 30 * time.Second
	agentsDefaultTTL        = 2 * time.Minute
	agentsQuickTTL          = 30 * time.Second
	agentsDefaultMaxRunning = 8
	// agentsLongTTL is the odd agents' TTL: they delete their branch
	// themselves, long before it.
	agentsLongTTL        = time.Hour
	agentsScale          = 6 // pgbench -i -s of main: ~100 MB
	agentsSuspendTimeout = 5 * time.Second
	agentsWakeTimeout    = 60 * time.Second
	agentsRows           = 5 // rows each agent writes (one INSERT each)
	agentsSampleEvery    = 500 * time.Millisecond
	// agentsLimit bounds one agent from its arrival: an agent still busy
	// then hangs (its context ends).
	agentsLimit = agentsWakeTimeout + 2*time.Minute
	// agentsGoneMargin is how long after the last expiry the bench waits
	// for the reaper; past it, it goes on waiting while the count of
	// branches still falls (at least once per agentsGoneProgress), up to
	// agentsGoneLimit after the last expiry, then gives up on the rest.
	agentsGoneMargin   = 3 * time.Minute
	agentsGoneProgress = time.Minute
	agentsGoneLimit    = 30 * time.Minute
	// agentsStorageTolerance is the requirement: storage after, once every
	// agent's branch is gone, within 5 % of before.
	agentsStorageTolerance = 0.05
	// agentsGCPasses bounds the GC passes after the run (10 s apart) while
	// the store is not back within the tolerance.
	agentsGCPasses = 3
	agentsGCPause  = 10 * time.Second
	// agentsGCLimit bounds one POST /v1/pagestore/gc: it waits for the
	// passes neonproxy runs after each deletion (one at a time) to finish
	// first, so it is far beyond the admin calls' usual limit.
	agentsGCLimit   = 30 * time.Minute
	agentsStopLimit = 10 * time.Minute
	agentsPrefix    = "agent-"
	agentsCSV       = "agents.csv"
	agentsSamples   = "samples.csv"

	branchesMetric        = "neonproxy_branches"
	branchesExpiredMetric = "neonproxy_branches_expired_total"
	clientConnsGauge      = "neonproxy_client_connections"
	pagestoreBytesMetric  = "neonproxy_pagestore_bytes"
)

// Stages of an agent, in order; a failed agent records the stage it failed in.
const (
	agentCreate  = "create"
	agentConnect = "connect"
	agentTable   = "create table"
	agentInsert  = "insert"
	agentSelect  = "select"
	agentDelete  = "delete"
	agentHung    = "hung"
)

// agentRun is one agent's arrival and what it saw.
type agentRun struct {
	i      int // 1-based
	name   string
	expire bool // left to the reaper (even i)

	at   time.Duration // scheduled arrival, since the first
	late time.Duration // the goroutine's start − its schedule
	// create: the POST round trip; connect: dial → authenticated (the
	// wake happens here); firstQuery: dial → CREATE TABLE done; work: the
	// INSERTs and the SELECT; del: the DELETE round trip (odd agents);
	// total: arrival → disconnected (and deleted).
	create, connect, firstQuery, work, del, total time.Duration
	end                                           time.Duration // arrival of the first agent → this one done
	expiresAt                                     time.Time     // from the create response
	noExpiry                                      bool          // the create response had no expires_at

	stage, code, msg string // the failure: stage, SQLSTATE, message

	// From neonproxy's log: its compute's start (took: an evicted
	// compute's stop, materialization, PostgreSQL start) and
	// materialization; the reaper's deletion (expired branches).
	startTook, matTook time.Duration
	starts             int
	reapedAt           time.Time
	// wakeWait is the front door's wait for the compute (its "connection"
	// line's wake_wait: a queue for a running slot + the start); wakeKind
	// its wake (cold, warm, hot or "").
	wakeWait time.Duration
	wakeKind string
	// delErr is the DELETE's error of an odd agent that failed before it
	// (its branch is deleted all the same, so that the storage check
	// still means something); the failure recorded is the earlier one.
	delErr string
}

func (a *agentRun) ok() bool { return a.stage == "" }

// fail records the first failure of a.
func (a *agentRun) fail(stage string, err error) {
	if a.stage != "" {
		return
	}
	a.stage, a.msg = stage, err.Error()
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		a.code, a.msg = pe.Code, pe.Message
	}
}

// agentsSection runs the section against its own neonproxy.
type agentsSection struct {
	px   *proxy
	env  *env
	rep  *agentsReport
	opts options
	// stopSampling ends the /metrics sampler that run starts and waits
	// for it (nil when it is not running).
	stopSampling func()
}

// runAgents starts the section's neonproxy, loads main, runs the agents,
// waits for every branch to be gone and compares the storage. Its
// problems go to b.rep; the results are returned for printing.
func (b *bench) runAgents(ctx context.Context) *agentsReport {
	b.sectionMachine(ctx)
	o := b.opts
	s := &agentsSection{env: &env{dir: b.env.path("agents"), keep: b.env.keep}, opts: o,
		rep: &agentsReport{branches: o.agentsBranches, duration: o.agentsDuration, ttl: o.agentsTTL, maxRunning: o.agentsMaxRunning,
			scale: agentsScale, loadStart: loadAvg(), started: time.Now()}}
	r := s.rep
	if !b.phase(ctx, "agents: start neonproxy", s.start) {
		return r
	}
	defer func() {
		if s.stopSampling != nil {
			s.stopSampling()
		}
		s.px.stop()
		if left := processesUnder(s.env.dir); len(left) > 0 {
			b.rep.problem("agents: processes left after neonproxy stopped:\n" + strings.Join(left, "\n"))
		}
	}()
	if !b.phase(ctx, fmt.Sprintf("agents: load main (pgbench -i -s %d) and suspend it", agentsScale), s.loadMain) {
		return r
	}
	if !b.phase(ctx, "agents: storage before", func(ctx context.Context) error {
		st, err := s.storage(ctx, "before")
		r.before = append(r.before, st)
		return err
	}) {
		return r
	}
	b.phase(ctx, fmt.Sprintf("agents: %d agents over %s (TTL %s)", o.agentsBranches, o.agentsDuration, shortDuration(o.agentsTTL)), s.run)
	// Also after a failed run: whatever was created must still go.
	if b.phase(ctx, "agents: wait until every agent's branch is gone", s.waitGone) {
		b.phase(ctx, "agents: storage after", s.storageAfter)
	}
	s.readLog()
	s.writeCSV()
	r.wall = time.Since(r.started)
	r.loadEnd = loadAvg()
	for _, p := range r.problems() {
		b.rep.problem("agents: " + p)
	}
	return r
}

// start writes the section's config — the bench's, with compute.max_running,
// compute.wake_timeout and a short compute.suspend_timeout — and starts
// neonproxy on it (log.level info).
func (s *agentsSection) start(ctx context.Context) error {
	o := s.opts
	o.proxyLogLevel = "info"
	o.suspendTimeout = agentsSuspendTimeout
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
	extra := fmt.Sprintf("  max_running: %d\n  wake_timeout: %s\n", o.agentsMaxRunning, shortDuration(agentsWakeTimeout))
	cfg = []byte(strings.Replace(string(cfg), key, key+extra, 1))
	if err := os.WriteFile(p.cfgPath, cfg, 0o600); err != nil {
		return err
	}
	s.rep.config = string(cfg)
	if err := p.launch(ctx); err != nil {
		return err
	}
	s.px = p
	s.rep.admin, s.rep.port, s.rep.dataDir = p.admin, p.port, p.dataDir
	return nil
}

// loadMain loads main with pgbench -i through neonproxy and suspends it,
// which stores its image: every agent's branch starts from it.
func (s *agentsSection) loadMain(ctx context.Context) error {
	r := s.rep
	t := pgTarget{name: branch, host: "127.0.0.1", port: s.px.port, dbname: branch, password: s.px.password}
	start := time.Now()
	cmd, err := pgbenchInit(ctx, t, agentsScale)
	r.command(cmd)
	if err != nil {
		return err
	}
	r.loadTook = time.Since(start)
	r.command(fmt.Sprintf("curl -X POST %s/v1/branches/%s/suspend   # then GET /v1/branches/%s until compute.state is stopped", s.px.admin, branch, branch))
	if err := s.px.suspendBranch(ctx, branch); err != nil {
		return err
	}
	if err := s.px.waitBranchState(ctx, branch, string(wake.StateStopped), agentsStopLimit); err != nil {
		return err
	}
	info, err := s.px.branchInfo(ctx, branch)
	if err != nil {
		return err
	}
	r.mainLogical, r.mainUnique, r.mainLocal = info.LogicalSizeBytes, info.UniqueBytes, info.LocalBytes
	logf("  main: logical_size_bytes %d, unique_bytes %d, local_bytes %d", info.LogicalSizeBytes, info.UniqueBytes, info.LocalBytes)
	if info.LogicalSizeBytes == 0 {
		return errors.New("main: logical_size_bytes is 0 after suspend")
	}
	return nil
}

// gcResult is the body of POST /v1/pagestore/gc.
type gcResult struct {
	VersionsDeleted int     `json:"versions_deleted"`
	BytesFreed      int64   `json:"bytes_freed"`
	DurationMS      float64 `json:"duration_ms"`
	StoreBytes      int64   `json:"store_bytes"`
}

// agentsStorage is one storage reading: a GC pass's result, the
// page store's gauge and du of the data directory and its entries.
type agentsStorage struct {
	label   string
	at      time.Time
	gc      gcResult
	gcTook  time.Duration // the POST's round trip
	gcErr   string        // the POST failed (or timed out): metric and du only
	metric  int64         // neonproxy_pagestore_bytes after the pass
	du      int64         // du -s of data_dir
	entries []countedBytes
	// storeFiles is the page store directory's files by kind: pebble's
	// tables (.sst), its write-ahead logs (.log, recycled in ~4 MB
	// segments) and the rest (apparent sizes).
	storeSST, storeLog, storeOther int64
}

type countedBytes struct {
	name  string
	bytes int64
}

// storage runs a GC pass and reads the store's size (store_bytes, the
// gauge) and du of the data directory.
func (s *agentsSection) storage(ctx context.Context, label string) (agentsStorage, error) {
	st := agentsStorage{label: label, at: time.Now()}
	t := time.Now()
	if err := s.gc(ctx, &st.gc); err != nil {
		if ctx.Err() != nil {
			return st, err
		}
		// Still read the gauge and du: the store's size is what matters.
		st.gcErr = err.Error()
		logf("  storage %s: %v", label, err)
	}
	st.gcTook = time.Since(t)
	m, err := readMetrics(ctx, s.px)
	if err != nil {
		return st, err
	}
	st.metric = int64(m[pagestoreBytesMetric])
	if st.du, err = duBytes(ctx, s.px.dataDir); err != nil {
		return st, err
	}
	ents, err := os.ReadDir(s.px.dataDir)
	if err != nil {
		return st, err
	}
	for _, e := range ents {
		n, err := duBytes(ctx, filepath.Join(s.px.dataDir, e.Name()))
		if err != nil {
			return st, err
		}
		st.entries = append(st.entries, countedBytes{e.Name(), n})
	}
	if files, err := os.ReadDir(filepath.Join(s.px.dataDir, "pagestore")); err == nil {
		for _, f := range files {
			fi, err := f.Info()
			if err != nil || !fi.Mode().IsRegular() {
				continue
			}
			switch filepath.Ext(f.Name()) {
			case ".sst":
				st.storeSST += fi.Size()
			case ".log":
				st.storeLog += fi.Size()
			default:
				st.storeOther += fi.Size()
			}
		}
	}
	logf("  storage %s: store_bytes %d (gc freed %d, %d versions), neonproxy_pagestore_bytes %d, du data_dir %d",
		label, st.gc.StoreBytes, st.gc.BytesFreed, st.gc.VersionsDeleted, st.metric, st.du)
	return st, nil
}

// gc is POST /v1/pagestore/gc with agentsGCLimit (proxy.call's client
// gives up after adminCallTimeout).
func (s *agentsSection) gc(ctx context.Context, out *gcResult) error {
	ctx, cancel := context.WithTimeout(ctx, agentsGCLimit)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.px.admin+"/v1/pagestore/gc", nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{}).Do(req)
	if err != nil {
		return fmt.Errorf("POST /v1/pagestore/gc: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("POST /v1/pagestore/gc: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST /v1/pagestore/gc: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return json.Unmarshal(body, out)
}

// duBytes is du -s --block-size=1 of path (the disk its files use).
func duBytes(ctx context.Context, path string) (int64, error) {
	out, err := exec.CommandContext(ctx, "du", "-s", "--block-size=1", path).Output()
	if err != nil {
		return 0, fmt.Errorf("du %s: %w", path, err)
	}
	f := strings.Fields(string(out))
	if len(f) == 0 {
		return 0, fmt.Errorf("du %s: empty output", path)
	}
	return strconv.ParseInt(f[0], 10, 64)
}

// agentBranch is the i-th agent's branch (1-based): agent-0001-delete,
// agent-0002-expire, ….
func agentBranch(i int) string {
	purpose := "delete"
	if i%2 == 0 {
		purpose = "expire"
	}
	return fmt.Sprintf("%s%04d-%s", agentsPrefix, i, purpose)
}

// run releases the agents at a fixed rate, each in its own goroutine,
// samples /metrics and /proc meanwhile, and waits for every agent.
func (s *agentsSection) run(ctx context.Context) error {
	r := s.rep
	o := s.opts
	r.interval = o.agentsDuration / time.Duration(o.agentsBranches)
	r.command(fmt.Sprintf(`curl -X POST %s/v1/branches -d '{"name": "%s", "parent": "%s", "ttl": "%s"}'   # even agents; odd ones "ttl": "%s", then DELETE`,
		s.px.admin, agentBranch(2), branch, shortDuration(o.agentsTTL), shortDuration(agentsLongTTL)))
	r.command(fmt.Sprintf("pgx connect 'postgres://postgres:…@127.0.0.1:%d/%s?sslmode=disable'   # then, simple protocol:", s.px.port, agentBranch(2)))
	r.command("  " + agentsCreateTable)
	r.command(fmt.Sprintf("  %s   # id = 1 … %d, one INSERT (one commit) each", agentsInsert, agentsRows))
	r.command(fmt.Sprintf("  %s   # want %d, %d", agentsSelect, agentsRows, agentsRows*(agentsRows+1)/2))
	r.command(fmt.Sprintf("curl -X DELETE %s/v1/branches/%s   # odd agents, after disconnecting", s.px.admin, agentBranch(1)))
	r.command(fmt.Sprintf("curl %s/metrics   # every %s: %s{state}, %s, %s", s.px.admin, shortDuration(agentsSampleEvery), computesMetric, branchesMetric, wakesQueuedMetric))
	var err error
	if r.metricsBefore, err = readMetrics(ctx, s.px); err != nil {
		return err
	}
	if fi, err := os.Stat(s.px.logPath); err == nil {
		r.logOff = fi.Size()
	}

	// The sampler goes on until every branch is gone (waitGone), so the
	// peaks include the reaper's work.
	sctx, stopSampling := context.WithCancel(ctx)
	sampled := make(chan struct{})
	r.t0 = time.Now()
	go func() { defer close(sampled); s.sample(sctx) }()
	s.stopSampling = func() { stopSampling(); <-sampled }

	runs := make([]agentRun, o.agentsBranches)
	var wg sync.WaitGroup
	var mu sync.Mutex // guards r.lastCreated
	for i := range runs {
		a := &runs[i]
		a.i = i + 1
		a.name, a.expire = agentBranch(a.i), a.i%2 == 0
		a.at = time.Duration(i) * r.interval
		if d := time.Until(r.t0.Add(a.at)); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			runs = runs[:i]
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.agent(ctx, a)
			if a.create > 0 && a.stage != agentCreate {
				mu.Lock()
				r.lastCreated = max(r.lastCreated, a.at+a.late+a.create)
				if a.expire && !a.noExpiry && a.expiresAt.After(r.lastExpiry) {
					r.lastExpiry = a.expiresAt
				}
				mu.Unlock()
			}
		}()
	}
	r.arrivalsTook = time.Since(r.t0)
	logf("  %d agents released in %s; waiting for them", len(runs), r.arrivalsTook.Round(time.Millisecond))
	wg.Wait()
	r.agentsTook = time.Since(r.t0)
	r.runs = runs
	ok := 0
	for i := range runs {
		if runs[i].ok() {
			ok++
		}
	}
	logf("  agents done in %s: %d ok, %d failed", r.agentsTook.Round(time.Millisecond), ok, len(runs)-ok)
	if r.metricsAfter, err = readMetrics(ctx, s.px); err != nil {
		return err
	}
	return ctx.Err()
}

// The agent's statements.
const (
	agentsCreateTable = "CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)"
	agentsInsert      = "INSERT INTO notes VALUES ($1, 'note ' || $1)"
	agentsSelect      = "SELECT count(*), sum(id) FROM notes"
)

// agent is one agent: create the branch, connect, write, read, disconnect
// and (odd agents) delete the branch.
func (s *agentsSection) agent(ctx context.Context, a *agentRun) {
	r := s.rep
	arrived := time.Now()
	a.late = arrived.Sub(r.t0.Add(a.at))
	ctx, cancel := context.WithTimeout(ctx, agentsLimit)
	defer cancel()
	defer func() {
		a.total = time.Since(arrived)
		a.end = time.Since(r.t0)
		if a.stage != "" && ctx.Err() != nil && a.code == "" {
			a.stage, a.msg = agentHung, fmt.Sprintf("still in %q %s after its arrival: %s", a.stage, agentsLimit, a.msg)
		}
	}()

	ttl := s.opts.agentsTTL
	if !a.expire {
		ttl = agentsLongTTL
	}
	var created struct {
		ExpiresAt *time.Time `json:"expires_at"`
	}
	t := time.Now()
	err := s.px.send(ctx, http.MethodPost, "/v1/branches", map[string]string{"name": a.name, "parent": branch, "ttl": shortDuration(ttl)}, &created)
	a.create = time.Since(t)
	if err != nil {
		a.fail(agentCreate, err)
		return
	}
	if created.ExpiresAt == nil {
		a.noExpiry = true
	} else {
		a.expiresAt = *created.ExpiresAt
	}
	if !a.expire {
		// An odd agent deletes its branch after its work, and also when
		// the work failed (as an agent cleaning up would).
		defer s.deleteBranch(ctx, a)
	}

	cfg, err := pgx.ParseConfig(s.px.branchURL(a.name, "disable"))
	if err != nil {
		a.fail(agentConnect, err)
		return
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	dial := time.Now()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	a.connect = time.Since(dial)
	if err != nil {
		a.fail(agentConnect, err)
		return
	}
	defer func() {
		if conn != nil {
			closeConn(conn)
		}
	}()
	if _, err := conn.Exec(ctx, agentsCreateTable); err != nil {
		a.fail(agentTable, err)
		return
	}
	a.firstQuery = time.Since(dial)
	w := time.Now()
	for id := 1; id <= agentsRows; id++ {
		if _, err := conn.Exec(ctx, agentsInsert, id); err != nil {
			a.fail(agentInsert, err)
			return
		}
	}
	var n, sum int64
	if err := conn.QueryRow(ctx, agentsSelect).Scan(&n, &sum); err != nil {
		a.fail(agentSelect, err)
		return
	}
	if want := int64(agentsRows * (agentsRows + 1) / 2); n != agentsRows || sum != want {
		a.fail(agentSelect, fmt.Errorf("read back count %d, sum %d; want %d, %d", n, sum, agentsRows, want))
		return
	}
	a.work = time.Since(w)
	closeConn(conn)
	conn = nil
}

// deleteBranch is an odd agent's DELETE of its branch, once its
// connection is closed.
func (s *agentsSection) deleteBranch(ctx context.Context, a *agentRun) {
	if ctx.Err() != nil {
		// Out of time (or Ctrl-C): still delete, on a fresh bound.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), adminCallTimeout)
		defer cancel()
	}
	t := time.Now()
	err := s.px.call(ctx, http.MethodDelete, "/v1/branches/"+a.name, nil)
	a.del = time.Since(t)
	if err != nil {
		a.delErr = err.Error()
		a.fail(agentDelete, err)
	}
}

// agentsSample is one reading of /metrics (and /proc).
type agentsSample struct {
	at                          time.Duration // since the first arrival
	running, starting, stopping int
	branches                    int   // neonproxy_branches
	clients                     int   // neonproxy_client_connections
	goroutines                  int   // go_goroutines of neonproxy
	store                       int64 // neonproxy_pagestore_bytes
	queued                      int   // neonproxy_compute_wakes_queued_total
	postmasters                 int   // under <tmp>/agents
}

// sample reads /metrics and counts the postmasters every
// agentsSampleEvery until ctx ends.
func (s *agentsSection) sample(ctx context.Context) {
	r := s.rep
	t := time.NewTicker(agentsSampleEvery)
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
			sm := agentsSample{at: time.Since(r.t0),
				running: int(st[string(wake.StateRunning)]), starting: int(st[string(wake.StateStarting)]),
				stopping: int(st[string(wake.StateStopping)]), branches: int(m[branchesMetric]),
				clients: int(m[clientConnsGauge]), queued: int(m[wakesQueuedMetric]),
				goroutines: int(m["go_goroutines"]), store: int64(m[pagestoreBytesMetric])}
			for _, p := range processesUnder(s.env.dir) {
				if strings.Contains(p, " -D ") {
					sm.postmasters++
				}
			}
			r.mu.Lock()
			r.samples = append(r.samples, sm)
			r.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// waitGone waits until neonproxy_branches is 1 (main) — the expiring
// half deleted by the reaper — at most until agentsGoneMargin after the
// last expiry, then checks GET /v1/branches.
func (s *agentsSection) waitGone(ctx context.Context) error {
	r := s.rep
	last := r.lastExpiry
	if last.Before(time.Now()) {
		last = time.Now()
	}
	deadline, limit := last.Add(agentsGoneMargin), last.Add(agentsGoneLimit)
	prev, progressed := -1, time.Now()
	r.command(fmt.Sprintf("curl %s/metrics | grep -E '^(%s|%s)'   # until %s is 1 (main)", s.px.admin, branchesMetric, branchesExpiredMetric, branchesMetric))
	for {
		m, err := readMetrics(ctx, s.px)
		if err != nil {
			return err
		}
		n := int(m[branchesMetric])
		if n <= 1 {
			r.goneAt = time.Since(r.t0)
			break
		}
		if n != prev {
			prev, progressed = n, time.Now()
		}
		if now := time.Now(); now.After(deadline) && (now.Sub(progressed) > agentsGoneProgress || now.After(limit)) {
			r.leftAtDeadline = n - 1
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	if s.stopSampling != nil {
		s.stopSampling()
		s.stopSampling = nil
	}
	m, err := readMetrics(ctx, s.px)
	if err != nil {
		return err
	}
	r.metricsGone = m
	r.command(fmt.Sprintf("curl %s/v1/branches   # only main left", s.px.admin))
	var list []struct {
		Name      string        `json:"name"`
		ExpiresAt *time.Time    `json:"expires_at"`
		Compute   computeStatus `json:"compute"`
	}
	if err := s.px.call(ctx, http.MethodGet, "/v1/branches", &list); err != nil {
		return err
	}
	for _, b := range list {
		if b.Name != branch {
			r.left = append(r.left, b.Name)
		}
	}
	for _, p := range processesUnder(s.env.dir) {
		if strings.Contains(p, " -D ") {
			r.postmastersLeft = append(r.postmastersLeft, p)
		}
	}
	if len(r.left) > 0 {
		return fmt.Errorf("%d agent branch(es) still there %s after the last expiry: %s", len(r.left),
			secs(time.Since(r.lastExpiry)), strings.Join(r.left[:min(5, len(r.left))], ", "))
	}
	return nil
}

// storageAfter takes the storage reading after a GC pass, and up to
// agentsGCPasses − 1 more, agentsGCPause apart, while the store is not
// back within the tolerance.
func (s *agentsSection) storageAfter(ctx context.Context) error {
	r := s.rep
	r.command(fmt.Sprintf("curl -X POST %s/v1/pagestore/gc   # store_bytes; then du -s --block-size=1 <data_dir> <data_dir>/*", s.px.admin))
	for pass := 1; pass <= agentsGCPasses; pass++ {
		if pass > 1 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(agentsGCPause):
			}
		}
		st, err := s.storage(ctx, fmt.Sprintf("after, GC pass %d", pass))
		if err != nil {
			return err
		}
		r.after = append(r.after, st)
		if r.storeWithin() {
			break
		}
	}
	return nil
}

// agentsLogLine is one line of neonproxy's JSON log the section reads.
type agentsLogLine struct {
	Level     string          `json:"level"`
	TS        json.RawMessage `json:"ts"`
	Msg       string          `json:"msg"`
	Branch    string          `json:"branch"`
	Error     string          `json:"error"`
	Took      string          `json:"took"`
	Reason    string          `json:"reason"`
	Trigger   string          `json:"trigger"`
	ExpiresAt time.Time       `json:"expires_at"`
	// "connection" lines: the wake and the wait for it.
	Wake     string `json:"wake"`
	WakeWait string `json:"wake_wait"`
	// "pagestore gc" lines.
	DurationMS float64 `json:"duration_ms"`
}

// logTime reads zap's ts: seconds since the epoch (float) or a time string.
func logTime(raw json.RawMessage) time.Time {
	var f float64
	if json.Unmarshal(raw, &f) == nil {
		return time.Unix(0, int64(f*1e9))
	}
	var t time.Time
	if json.Unmarshal(raw, &t) == nil {
		return t
	}
	return time.Time{}
}

// readLog reads neonproxy's log from the first agent on: per agent its
// compute's starts and materialization and the reaper's deletion; in all
// the stops by reason, evictions, cache evictions, GC passes, and the warn
// and error lines by message.
func (s *agentsSection) readLog() {
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
	byName := map[string]*agentRun{}
	for i := range r.runs {
		byName[r.runs[i].name] = &r.runs[i]
	}
	r.stopReasons = map[string]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l agentsLogLine
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			continue
		}
		took, _ := time.ParseDuration(l.Took)
		a := byName[l.Branch]
		switch l.Msg {
		case "compute started":
			if a != nil {
				a.starts++
				if a.starts == 1 {
					a.startTook = took
				}
			}
		case wake.LogMaterialized:
			if a != nil && a.matTook == 0 {
				a.matTook = took
			}
		case "compute stopped":
			r.stopReasons[l.Reason]++
		case "evicting idle compute":
			r.evictions++
		case "evicted local data directory (compute.cache_bytes)":
			r.cacheEvictions++
			if l.Branch == branch {
				r.mainEvicted = logTime(l.TS)
			}
		case "expired branch deleted":
			if a != nil {
				a.reapedAt = logTime(l.TS)
			}
		case "connection":
			if a != nil && a.wakeKind == "" && a.wakeWait == 0 {
				a.wakeKind = l.Wake
				a.wakeWait, _ = time.ParseDuration(l.WakeWait)
			}
		case "pagestore gc":
			r.gcPasses = appendCount(r.gcPasses, cmp.Or(l.Trigger, "POST /v1/pagestore/gc"))
			r.gcTime += time.Duration(l.DurationMS * float64(time.Millisecond))
			if ts := logTime(l.TS); ts.After(r.lastGC) {
				r.lastGC = ts
			}
		case "branch deleted":
			if ts := logTime(l.TS); ts.After(r.lastDeleted) {
				r.lastDeleted = ts
			}
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

// writeCSV writes one line per agent and one per sample into the
// section's directory (kept with -keep).
func (s *agentsSection) writeCSV() {
	r := s.rep
	var b strings.Builder
	b.WriteString("i,branch,expire,at_s,late_ms,create_ms,connect_ms,first_query_ms,work_ms,delete_ms,total_ms,end_s,stage,sqlstate,message\n")
	for _, a := range r.runs {
		fmt.Fprintf(&b, "%d,%s,%t,%.3f,%.1f,%.1f,%.1f,%.1f,%.1f,%.1f,%.1f,%.3f,%s,%s,%q\n", a.i, a.name, a.expire, a.at.Seconds(),
			msf(a.late), msf(a.create), msf(a.connect), msf(a.firstQuery), msf(a.work), msf(a.del), msf(a.total), a.end.Seconds(),
			a.stage, a.code, a.msg)
	}
	_ = os.WriteFile(filepath.Join(s.env.dir, agentsCSV), []byte(b.String()), 0o644)
	b.Reset()
	b.WriteString("at_s,running,starting,stopping,branches,clients,wakes_queued_total,postmasters,goroutines,pagestore_bytes\n")
	r.mu.Lock()
	for _, sm := range r.samples {
		fmt.Fprintf(&b, "%.3f,%d,%d,%d,%d,%d,%d,%d,%d,%d\n", sm.at.Seconds(), sm.running, sm.starting, sm.stopping, sm.branches, sm.clients, sm.queued,
			sm.postmasters, sm.goroutines, sm.store)
	}
	r.mu.Unlock()
	_ = os.WriteFile(filepath.Join(s.env.dir, agentsSamples), []byte(b.String()), 0o644)
}

func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
