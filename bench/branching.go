package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// The branching section (issue 4): branch creation latency against parent
// size, the store's size when branches change little, and a branch's cold
// (materialized from the store) and warm (local copy) start. It runs on its
// own neonproxy (data in <tmp>/branching, log.level info): the store then
// holds only main and this section's branches, and the log has the
// "data directory materialized" lines.
const (
	branchCreates     = 20 // timed creates per parent
	branchSmallScale  = 1  // ~10 MB parent
	storageScale      = 12 // ~190 MB parent; -quick: storageQuickScale
	storageQuickScale = 2
	storageBranches   = 10 // each updates its own 1% of pgbench_accounts
	startScale        = 6  // ~100 MB parent of the cold/warm branches
	startTries        = 10
	accountsPerScale  = 100000 // pgbench_accounts rows per scale unit
	// branchStopLimit bounds a suspend: stopping a compute stores its
	// changed pages, which for a freshly loaded 1 GB parent is all of them.
	branchStopLimit = 10 * time.Minute
	mb              = 1e6 // as neonproxy's mb_per_s
)

// branching runs the section's phases against one neonproxy.
type branching struct {
	px   *proxy
	env  *env
	rep  *branchingReport
	opts options
}

// runBranching starts the section's neonproxy and runs its phases; each
// phase's failure is recorded and the others still run.
func (b *bench) runBranching(ctx context.Context) {
	b.sectionMachine(ctx)
	s := &branching{env: &env{dir: b.env.path("branching"), keep: b.env.keep}, rep: &b.rep.branching, opts: b.opts}
	if !b.phase(ctx, "branching: start neonproxy", s.start) {
		return
	}
	defer s.px.stop()
	s.rep.storeStart, _ = s.storeSize(ctx) // main only; best effort
	// Storage first, while the store holds nothing but main: its ratio is
	// then the section's own.
	b.phase(ctx, "branching: storage", s.storage)
	b.phase(ctx, "branching: create latency", s.createLatency)
	b.phase(ctx, "branching: cold and warm start", s.startLatency)
	s.readMaterializations()
}

// start starts a second neonproxy in a subdirectory of the bench's temp
// dir (mode 0711 like it: computes run as the OS user postgres).
func (s *branching) start(ctx context.Context) error {
	px, err := startOwnProxy(ctx, s.opts, s.env)
	if err != nil {
		return err
	}
	s.px = px
	s.rep.admin = px.admin
	s.rep.port = px.port
	return nil
}

// target is how pgbench reaches branch name through neonproxy.
func (s *branching) target(name string) pgTarget {
	return pgTarget{name: name, host: "127.0.0.1", port: s.px.port, dbname: name, password: s.px.password}
}

func (s *branching) create(ctx context.Context, name, parent string) error {
	return s.px.send(ctx, http.MethodPost, "/v1/branches", map[string]string{"name": name, "parent": parent}, nil)
}

func (s *branching) remove(ctx context.Context, name string) error {
	return s.px.call(ctx, http.MethodDelete, "/v1/branches/"+name, nil)
}

// suspend stops name's compute, which stores its changed pages, and waits
// until the admin API shows it stopped.
func (s *branching) suspend(ctx context.Context, name string) error {
	if err := s.px.suspendBranch(ctx, name); err != nil {
		return err
	}
	return s.px.waitBranchState(ctx, name, "stopped", branchStopLimit)
}

// loadParent creates name from main, loads pgbench data at scale through
// neonproxy and suspends it, so that branches of it see the data.
func (s *branching) loadParent(ctx context.Context, name string, scale int) (branchInfo, error) {
	if err := s.create(ctx, name, branch); err != nil {
		return branchInfo{}, err
	}
	logf("  %s: pgbench -i -s %d", name, scale)
	cmd, err := pgbenchInit(ctx, s.target(name), scale)
	s.rep.command(cmd)
	if err != nil {
		return branchInfo{}, err
	}
	if err := s.suspend(ctx, name); err != nil {
		return branchInfo{}, err
	}
	info, err := s.px.branchInfo(ctx, name)
	if err == nil && info.LogicalSizeBytes == 0 {
		err = fmt.Errorf("%s: logical_size_bytes is 0 after suspend", name)
	}
	return info, err
}

// createLatency times POST /v1/branches from a small and a big parent,
// taking turns so that drift affects both; each branch is deleted after
// (not timed).
func (s *branching) createLatency(ctx context.Context) error {
	parents := []struct {
		name  string
		scale int
	}{{"create-small", branchSmallScale}, {"create-big", s.opts.bigScale}}
	samples := make([][]time.Duration, len(parents))
	for _, p := range parents {
		info, err := s.loadParent(ctx, p.name, p.scale)
		if err != nil {
			return fmt.Errorf("parent %s: %w", p.name, err)
		}
		s.rep.createParents = append(s.rep.createParents, createParent{name: p.name, scale: p.scale, logical: info.LogicalSizeBytes})
	}
	s.rep.command(fmt.Sprintf(`curl -X POST %s/v1/branches -d '{"name":"create-small-1","parent":"create-small"}'   # timed`, s.px.admin))
	s.rep.command(fmt.Sprintf(`curl -X DELETE %s/v1/branches/create-small-1   # not timed`, s.px.admin))
	for try := 1; try <= branchCreates; try++ {
		for i, p := range parents {
			name := fmt.Sprintf("%s-%d", p.name, try)
			start := time.Now()
			err := s.create(ctx, name, p.name)
			d := time.Since(start)
			if err != nil {
				return fmt.Errorf("create %s: %w", name, err)
			}
			samples[i] = append(samples[i], d)
			if err := s.remove(ctx, name); err != nil {
				return fmt.Errorf("delete %s: %w", name, err)
			}
		}
	}
	for i := range parents {
		s.rep.createParents[i].create = summarize(samples[i])
	}
	return nil
}

// storage loads a parent, records the store's size, then lets each of
// storageBranches branches update a disjoint 1% of pgbench_accounts and
// suspends it, and records the store's size again.
func (s *branching) storage(ctx context.Context) error {
	r := &s.rep.storage
	r.scale = storageScale
	if s.opts.quick {
		r.scale = storageQuickScale
	}
	const parent = "storage-parent"
	info, err := s.loadParent(ctx, parent, r.scale)
	if err != nil {
		return fmt.Errorf("parent: %w", err)
	}
	r.parentLogical, r.parentUnique = info.LogicalSizeBytes, info.UniqueBytes
	if r.before, err = s.storeSize(ctx); err != nil {
		return err
	}
	chunk := r.scale * accountsPerScale / 100
	for i := 1; i <= storageBranches; i++ {
		name := fmt.Sprintf("storage-%02d", i)
		lo, hi := (i-1)*chunk+1, i*chunk
		logf("  %s: update aid %d..%d", name, lo, hi)
		if err := s.create(ctx, name, parent); err != nil {
			return err
		}
		sql := fmt.Sprintf("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN %d AND %d", lo, hi)
		if i == 1 {
			s.rep.command(fmt.Sprintf("psql 'postgres://postgres:…@127.0.0.1:%d/%s?sslmode=disable' -c '%s'   # then POST /v1/branches/%s/suspend",
				s.px.port, name, sql, name))
		}
		n, err := s.exec(ctx, name, sql)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if n != int64(chunk) {
			return fmt.Errorf("%s: updated %d rows, want %d", name, n, chunk)
		}
		if err := s.suspend(ctx, name); err != nil {
			return err
		}
		r.branches = append(r.branches, storageBranch{name: name, lo: lo, hi: hi})
	}
	for i := range r.branches {
		info, err := s.px.branchInfo(ctx, r.branches[i].name)
		if err != nil {
			return err
		}
		r.branches[i].unique, r.branches[i].logical = info.UniqueBytes, info.LogicalSizeBytes
	}
	r.after, err = s.storeSize(ctx)
	return err
}

// exec runs one statement on branch name through neonproxy and returns
// the rows it affected.
func (s *branching) exec(ctx context.Context, name, sql string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, connectLimit+time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.px.branchURL(name, "disable"))
	if err != nil {
		return 0, fmt.Errorf("connect: %w", err)
	}
	defer closeConn(conn)
	tag, err := conn.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}

// startLatency times connect + SELECT 1 on fresh branches (cold: the data
// directory is materialized from the store) and then on one of them after
// suspends (warm: PostgreSQL starts on the local copy).
func (s *branching) startLatency(ctx context.Context) error {
	r := &s.rep.start
	r.scale = startScale
	const parent = "start-parent"
	pinfo, err := s.loadParent(ctx, parent, startScale)
	if err != nil {
		return fmt.Errorf("parent: %w", err)
	}
	// What a fresh branch reads is its parent's stored image.
	r.logical = pinfo.LogicalSizeBytes
	var cold, warm, suspends []time.Duration
	var names []string
	// Deleted at the end, not after each try: a deletion's store work
	// would otherwise overlap the next timed start.
	defer func() {
		for _, n := range names {
			if err := s.remove(context.WithoutCancel(ctx), n); err != nil {
				logf("  delete %s: %v", n, err)
			}
		}
	}()
	s.rep.command(fmt.Sprintf("pgx connect 'postgres://postgres:…@127.0.0.1:%d/start-01?sslmode=disable' + SELECT 1   # cold: fresh branch of %s; warm: after POST /v1/branches/start-%02d/suspend",
		s.px.port, parent, startTries))
	for i := 1; i <= startTries; i++ {
		name := fmt.Sprintf("start-%02d", i)
		if err := s.create(ctx, name, parent); err != nil {
			return err
		}
		names = append(names, name)
		info, err := s.px.branchInfo(ctx, name)
		if err != nil {
			return err
		}
		if info.LocalBytes != 0 {
			return fmt.Errorf("%s: fresh branch has local_bytes %d, want 0 (a cold start materializes)", name, info.LocalBytes)
		}
		r.freshLogical = info.LogicalSizeBytes
		d, err := connectFirstRow(ctx, s.px.branchURL(name, "disable"))
		if err != nil {
			return fmt.Errorf("cold start %s: %w", name, err)
		}
		cold = append(cold, d)
		// Stopped so that at most one compute runs; the last one is the
		// warm branch.
		if err := s.suspend(ctx, name); err != nil {
			return err
		}
	}
	r.cold = summarize(cold)
	r.warmBranch = names[len(names)-1]
	for i := 0; i < startTries; i++ {
		if i > 0 { // the cold loop suspended it already
			t := time.Now()
			if err := s.suspend(ctx, r.warmBranch); err != nil {
				return err
			}
			suspends = append(suspends, time.Since(t))
		}
		info, err := s.px.branchInfo(ctx, r.warmBranch)
		if err != nil {
			return err
		}
		if info.LocalBytes == 0 {
			r.warmWithoutLocal++
		}
		d, err := connectFirstRow(ctx, s.px.branchURL(r.warmBranch, "disable"))
		if err != nil {
			return fmt.Errorf("warm start %s: %w", r.warmBranch, err)
		}
		warm = append(warm, d)
	}
	r.warm, r.suspend = summarize(warm), summarize(suspends)
	return nil
}

// storeSize reads neonproxy_pagestore_bytes from /metrics and du of
// <data_dir>/pagestore.
func (s *branching) storeSize(ctx context.Context) (storeSize, error) {
	var st storeSize
	var err error
	if st.metric, err = s.metric(ctx, "neonproxy_pagestore_bytes"); err != nil {
		return st, err
	}
	dir := s.px.dataDir + "/pagestore"
	out, err := exec.CommandContext(ctx, "du", "-s", "--block-size=1", dir).Output()
	if err != nil {
		return st, fmt.Errorf("du %s: %w", dir, err)
	}
	f := strings.Fields(string(out))
	if len(f) == 0 {
		return st, fmt.Errorf("du %s: empty output", dir)
	}
	st.du, err = strconv.ParseInt(f[0], 10, 64)
	return st, err
}

// metric reads one unlabelled gauge from neonproxy's /metrics.
func (s *branching) metric(ctx context.Context, name string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.px.admin+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := s.px.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("GET /metrics: %w", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 8<<20))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return int64(f), err
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("GET /metrics: %w", err)
	}
	return 0, fmt.Errorf("GET /metrics: no %s", name)
}

// materialization is one "data directory materialized" log line.
type materialization struct {
	Msg    string  `json:"msg"`
	Branch string  `json:"branch"`
	Bytes  int64   `json:"bytes"`
	MBps   float64 `json:"mb_per_s"`
	Took   string  `json:"took"`
}

// readMaterializations collects the start branches' materializations from
// neonproxy's log (JSON, one object per line).
func (s *branching) readMaterializations() {
	f, err := os.Open(s.px.logPath)
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var m materialization
		if json.Unmarshal(sc.Bytes(), &m) != nil || m.Msg != "data directory materialized" {
			continue
		}
		// start-01 … start-NN; not start-parent, whose first start (for
		// pgbench -i) materialized main's image.
		if n := strings.TrimPrefix(m.Branch, "start-"); n != m.Branch && n != "parent" {
			s.rep.start.materialized = append(s.rep.start.materialized, m)
		}
	}
}

// startOwnProxy starts a section's own neonproxy (log.level info) in env's
// directory, made 0711 like the bench's temp dir: computes run as the OS
// user postgres.
func startOwnProxy(ctx context.Context, o options, e *env) (*proxy, error) {
	if err := mkdirTraversable(e.dir); err != nil {
		return nil, err
	}
	o.proxyLogLevel = "info"
	return startProxy(ctx, o, e)
}
