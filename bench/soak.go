package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The soak section (issue "Hardening"): -soak-idle clients that log in
// through the -pooler route (transaction mode) and then stay idle, while
// -soak-active other clients send a steady stream of short queries for
// -soak-duration. neonproxy's open descriptors, goroutines and RSS are
// sampled every soakSampleEvery: they must not grow from the soak's start
// to its end. Then, with every client still connected, the clients are
// topped up to exactly pool.max_client_conn and one more must be refused
// with SQLSTATE 53300. It runs on its own neonproxy (data in <tmp>/soak,
// log.level warn).
const (
	// soakMargin is pool.max_client_conn − idle − active: room for an
	// active client's reconnect during the soak; the margin is filled with
	// extra clients before the 53300 probe.
	soakMargin      = 5
	soakSampleEvery = 10 * time.Second
	// soakThink is each active client's pause between queries (≈ 50 / 20 ms
	// = 2,500 queries/s at most on a fast machine).
	soakThink = 20 * time.Millisecond
	soakQuery = "SELECT 1"
	// soakQueryLimit bounds one query's round trip (also the idle check's).
	soakQueryLimit   = 30 * time.Second
	soakCheckWorkers = 8
	soakSettle       = 2 * time.Second
	// Growth tolerance of descriptors and goroutines from start to end:
	// the larger of soakGrowthAbs and soakGrowthPct % of the start value.
	soakGrowthAbs = 20
	soakGrowthPct = 1.0
	// soakDrainLimit bounds the wait for neonproxy_client_connections to
	// reach 0 after the clients closed; soakReleaseLimit the wait for a
	// freed slot to be accepted again.
	soakDrainLimit   = 30 * time.Second
	soakReleaseLimit = 5 * time.Second
	soakDB           = branch + "-pooler"
	soakCSV          = "samples.csv"
	soakConfigName   = "<tmp>/soak/neonproxy.yaml"
	soakGCPath       = "/debug/pprof/heap?gc=1"
	// poolWaitMetric counts a transaction's wait for a server connection
	// (observed only when it waited); poolWaitSlowLE is one of its bucket
	// bounds (ExponentialBuckets(0.0001, 4, 10)).
	poolWaitMetric = "neonproxy_pool_wait_seconds"
	poolWaitSlowLE = "0.1024"
	// The memory samples (baseline, idle open) wait for RSS to stop
	// moving: less than soakRSSStable over soakRSSWindow readings a second
	// apart, at most soakRSSSettleLimit.
	soakRSSStable      = 512 << 10
	soakRSSWindow      = 6
	soakRSSSettleLimit = 60 * time.Second
)

// Labels of the samples the report's table shows (periodic samples have
// none).
const (
	soakBaseline   = "baseline"
	soakIdleOpen   = "idle open"
	soakStart      = "start"
	soakEnd        = "end"
	soakAfterClose = "after close"
)

// soakPoint is one sample of neonproxy's process.
type soakPoint struct {
	label      string
	at         time.Duration // since the baseline sample
	fds        int           // entries of /proc/PID/fd
	metricFDs  int           // process_open_fds
	goroutines int           // go_goroutines
	rss        int64         // VmRSS, bytes
	// goMem is go_memstats_heap_inuse_bytes + go_memstats_stack_inuse_bytes:
	// what the Go runtime uses now (RSS also keeps freed heap pages until
	// the scavenger returns them).
	goMem int64
	// From /metrics: neonproxy_client_connections and
	// neonproxy_pool_server_connections{state}.
	clients, serverActive, serverIdle int
}

// soakClient is one active client: a raw connection and what it saw.
type soakClient struct {
	c          net.Conn
	r          *bufio.Reader
	lat        []time.Duration
	errs       int
	firstErr   string
	reconnects int
}

// soak runs the section against its own neonproxy.
type soak struct {
	opts  options
	env   *env
	px    *proxy
	rep   *soakReport
	cache *saltCache
	t0    time.Time // the baseline sample

	mu      sync.Mutex // guards rep.samples
	idle    []net.Conn
	active  []*soakClient
	fillers []net.Conn
}

// runSoak starts the section's neonproxy, runs the soak and the
// max_client_conn probe, and returns the results (main prints them after
// the report; problems go to the report's list).
func (b *bench) runSoak(ctx context.Context) *soakReport {
	b.sectionMachine(ctx)
	o := b.opts
	rep := &soakReport{idle: o.soakIdle, active: o.soakActive, duration: o.soakDuration,
		maxClientConn: o.soakIdle + o.soakActive + soakMargin, poolSize: o.poolSize, problem: b.rep.problem}
	s := &soak{opts: o, env: &env{dir: b.env.path("soak"), keep: b.env.keep}, rep: rep}
	if !s.phase(ctx, "soak: open-files limit", s.checkLimit) {
		return rep
	}
	if !s.phase(ctx, "soak: start neonproxy", s.start) {
		return rep
	}
	defer func() {
		s.closeClients()
		s.px.stop()
		if left := processesUnder(s.env.dir); len(left) > 0 {
			rep.problem("soak: processes left after neonproxy stopped:\n" + strings.Join(left, "\n"))
		}
	}()
	if !s.phase(ctx, "soak: first connection (compute start)", s.warmUp) {
		return rep
	}
	s.phase(ctx, "soak: idle clients, active load, samples", s.run)
	s.writeCSV()
	if ctx.Err() != nil {
		return rep
	}
	s.phase(ctx, "soak: idle clients still connected", s.checkIdle)
	s.phase(ctx, "soak: max_client_conn", s.probeLimit)
	s.phase(ctx, "soak: close clients", s.drain)
	s.judge()
	return rep
}

// phase is bench.phase with the failure recorded in the soak's report.
func (s *soak) phase(ctx context.Context, name string, f func(context.Context) error) bool {
	if ctx.Err() != nil {
		return false
	}
	logf("%s …", name)
	start := time.Now()
	if err := f(ctx); err != nil {
		s.rep.problem(fmt.Sprintf("%s: %v", name, err))
		logf("%s FAILED after %s: %v", name, time.Since(start).Round(time.Millisecond), err)
		return false
	}
	logf("%s done in %s", name, time.Since(start).Round(time.Millisecond))
	return true
}

// checkLimit makes sure that the bench (every client's socket) and
// neonproxy (every client's socket plus the pool's) fit in
// RLIMIT_NOFILE, which neonproxy inherits.
func (s *soak) checkLimit(context.Context) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("getrlimit NOFILE: %w", err)
	}
	s.rep.nofile = lim.Cur
	// Clients (with the probe and the release check), the pool, listeners,
	// logs, the admin API's scrapes, the Go runtime's own.
	need := uint64(s.rep.maxClientConn + 2 + s.opts.poolSize + 200)
	s.rep.nofileNeed = need
	if lim.Cur < need {
		return fmt.Errorf("RLIMIT_NOFILE %d < %d (max_client_conn %d + pool + slack): raise the hard limit or lower -soak-idle",
			lim.Cur, need, s.rep.maxClientConn)
	}
	return nil
}

// maxClientConnLine is the pool.max_client_conn line proxy.writeConfig
// writes (the pooling section's value), replaced by the soak's.
var maxClientConnLine = regexp.MustCompile(`(?m)^  max_client_conn: \d+$`)

// start writes the config (proxy.writeConfig with the soak's
// max_client_conn) and starts neonproxy.
func (s *soak) start(ctx context.Context) error {
	p, err := ownProxy(s.env, s.opts)
	if err != nil {
		return err
	}
	cfg, err := os.ReadFile(p.cfgPath)
	if err != nil {
		return fmt.Errorf("read neonproxy config: %w", err)
	}
	if !maxClientConnLine.Match(cfg) {
		return fmt.Errorf("%s: no pool.max_client_conn line", p.cfgPath)
	}
	cfg = maxClientConnLine.ReplaceAll(cfg, fmt.Appendf(nil, "  max_client_conn: %d", s.rep.maxClientConn))
	if err := os.WriteFile(p.cfgPath, cfg, 0o600); err != nil {
		return fmt.Errorf("write neonproxy config: %w", err)
	}
	s.rep.config = string(cfg)
	if err := p.launch(ctx); err != nil {
		return err
	}
	s.px, s.cache = p, newSaltCache(p.password)
	s.rep.admin, s.rep.port = p.admin, p.port
	return nil
}

func (s *soak) addr() string { return s.px.listenAddr() }

// open logs one client in through the -pooler route.
func (s *soak) open(ctx context.Context) (net.Conn, error) {
	return openIdle(ctx, s.addr(), "postgres", soakDB, s.cache)
}

// warmUp starts main's compute with a first connection and query, so the
// baseline has the compute (and one pool connection) up.
func (s *soak) warmUp(ctx context.Context) error {
	start := time.Now()
	c, err := s.open(ctx)
	if err != nil {
		return err
	}
	defer closeAll([]net.Conn{c})
	if err := simpleQuery(c, bufio.NewReaderSize(c, 512), soakQuery); err != nil {
		return err
	}
	s.rep.firstConnect = time.Since(start)
	return nil
}

// run samples the baseline, opens the idle clients, starts the active ones
// and keeps sampling until the soak's end; every client stays connected.
func (s *soak) run(ctx context.Context) error {
	time.Sleep(soakSettle)
	s.t0 = time.Now()
	if err := s.sample(ctx, soakBaseline); err != nil {
		return err
	}
	samplerCtx, stopSampler := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { s.sampler(samplerCtx) })
	defer func() { stopSampler(); wg.Wait() }()

	logf("  %d idle clients to %s (database %s)", s.rep.idle, s.addr(), soakDB)
	start := time.Now()
	conns, failed, err := openIdleClients(ctx, s.rep.idle, idleWorkers, s.addr(), "postgres", soakDB, s.cache)
	s.idle = conns
	s.rep.opened, s.rep.openTime, s.rep.openFailed = len(conns), time.Since(start), failed
	if err != nil {
		s.rep.openErr = err.Error()
		s.rep.problem(fmt.Sprintf("soak: reached %d of %d idle clients: %v", len(conns), s.rep.idle, err))
	}
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	time.Sleep(soakSettle)
	if err := s.sample(ctx, soakIdleOpen); err != nil {
		return err
	}

	logf("  %d active clients: %s every %s for %s", s.rep.active, soakQuery, soakThink, s.rep.duration)
	for i := range s.rep.active {
		c, err := s.open(ctx)
		if err != nil {
			return fmt.Errorf("active client %d: %w", i+1, err)
		}
		s.active = append(s.active, &soakClient{c: c, r: bufio.NewReaderSize(c, 4096)})
	}
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	var load sync.WaitGroup
	for _, ac := range s.active {
		load.Go(func() { s.drive(loadCtx, ac) })
	}
	began := time.Now()
	cpu0, _ := cpuTime(s.px.pid())
	wait0, _ := s.metrics(ctx)
	defer func() {
		stopLoad()
		load.Wait()
		s.rep.soakTime = time.Since(began)
	}()
	// The start sample comes one sampling period into the load: the pool
	// has its server connections, every active client has run queries.
	if err := sleepCtx(ctx, soakSampleEvery); err != nil {
		return err
	}
	if err := s.sample(ctx, soakStart); err != nil {
		return err
	}
	if err := sleepCtx(ctx, time.Until(began.Add(s.rep.duration))); err != nil {
		return err
	}
	// The end sample is taken under the same load as the start sample.
	if err := s.sample(ctx, soakEnd); err != nil {
		return err
	}
	if cpu1, err := cpuTime(s.px.pid()); err == nil {
		s.rep.cpu = cpu1 - cpu0
	}
	if wait1, err := s.metrics(ctx); err == nil && wait0 != nil {
		d := func(k string) float64 { return wait1[k] - wait0[k] }
		s.rep.poolWaits = int(d(poolWaitMetric + "_count"))
		s.rep.poolWaitSum = time.Duration(d(poolWaitMetric+"_sum") * float64(time.Second))
		s.rep.poolWaitsSlow = s.rep.poolWaits - int(d(poolWaitMetric+`_bucket{le="`+poolWaitSlowLE+`"}`))
		for _, kind := range []string{"hot", "warm", "cold"} {
			s.rep.wakes += int(d(wakeCountMetric + `{kind="` + kind + `"}`))
		}
	}
	return nil
}

// drive runs one active client's queries until ctx ends. An error is
// counted and the client reconnects.
func (s *soak) drive(ctx context.Context, ac *soakClient) {
	_ = sleepCtx(ctx, rand.N(soakThink))
	for ctx.Err() == nil {
		if ac.c == nil {
			c, err := s.open(ctx)
			if err != nil {
				if ctx.Err() == nil {
					ac.fail(fmt.Errorf("reconnect: %w", err))
					_ = sleepCtx(ctx, time.Second)
				}
				continue
			}
			ac.c, ac.r = c, bufio.NewReaderSize(c, 4096)
			ac.reconnects++
		}
		t := time.Now()
		if err := simpleQuery(ac.c, ac.r, soakQuery); err != nil {
			if ctx.Err() != nil {
				return
			}
			ac.fail(err)
			ac.c.Close()
			ac.c = nil
			continue
		}
		ac.lat = append(ac.lat, time.Since(t))
		_ = sleepCtx(ctx, soakThink)
	}
}

func (ac *soakClient) fail(err error) {
	ac.errs++
	if ac.firstErr == "" {
		ac.firstErr = err.Error()
	}
}

// sampler adds an unlabelled sample every soakSampleEvery until ctx ends.
func (s *soak) sampler(ctx context.Context) {
	t := time.NewTicker(soakSampleEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.sample(ctx, ""); err != nil && ctx.Err() == nil {
				logf("  soak: sample: %v", err)
			}
		}
	}
}

// sample reads neonproxy's process and /metrics and records the result
// under label. A labelled sample first has neonproxy run a garbage
// collection (GET /debug/pprof/heap?gc=1 on the admin API), so that its
// Go heap is the live heap, comparable between labelled samples.
func (s *soak) sample(ctx context.Context, label string) error {
	if label != "" {
		if err := s.gc(ctx); err != nil {
			return fmt.Errorf("sample %q: %w", label, err)
		}
	}
	if label == soakBaseline || label == soakIdleOpen {
		if err := s.settleRSS(ctx); err != nil {
			return fmt.Errorf("sample %q: %w", label, err)
		}
	}
	pt, err := s.read(ctx)
	if err != nil {
		return fmt.Errorf("sample %q: %w", label, err)
	}
	pt.label = label
	s.mu.Lock()
	s.rep.samples = append(s.rep.samples, pt)
	s.mu.Unlock()
	if label != "" {
		logf("  %s: fds %d, goroutines %d, RSS %s, Go heap+stacks %s, client connections %d",
			label, pt.fds, pt.goroutines, mib(pt.rss), mib(pt.goMem), pt.clients)
	}
	return nil
}

func (s *soak) read(ctx context.Context) (soakPoint, error) {
	pid := s.px.pid()
	pt := soakPoint{at: time.Since(s.t0)}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return pt, fmt.Errorf("count fds: %w", err)
	}
	pt.fds = len(ents)
	if pt.rss, err = rss(pid); err != nil {
		return pt, err
	}
	m, err := s.metrics(ctx)
	if err != nil {
		return pt, err
	}
	heap, okH := m["go_memstats_heap_inuse_bytes"]
	stack, okS := m["go_memstats_stack_inuse_bytes"]
	if !okH || !okS {
		return pt, errors.New("GET /metrics: no go_memstats_heap_inuse_bytes or go_memstats_stack_inuse_bytes")
	}
	pt.goMem = int64(heap + stack)
	for _, f := range []struct {
		name string
		dst  *int
	}{
		{"go_goroutines", &pt.goroutines},
		{"process_open_fds", &pt.metricFDs},
		{"neonproxy_client_connections", &pt.clients},
		{`neonproxy_pool_server_connections{state="active"}`, &pt.serverActive},
		{`neonproxy_pool_server_connections{state="idle"}`, &pt.serverIdle},
	} {
		v, ok := m[f.name]
		if !ok {
			return pt, fmt.Errorf("GET /metrics: no %s", f.name)
		}
		*f.dst = int(v)
	}
	return pt, nil
}

// settleRSS waits (up to soakRSSSettleLimit) until neonproxy's RSS has
// moved less than soakRSSStable over the last soakRSSWindow readings, one
// a second: after a GC the runtime returns freed pages to the OS
// gradually, and the memory-per-client measure should not count that.
func (s *soak) settleRSS(ctx context.Context) error {
	start := time.Now()
	var last []int64
	for {
		v, err := rss(s.px.pid())
		if err != nil {
			return err
		}
		last = append(last, v)
		if len(last) > soakRSSWindow {
			last = last[1:]
		}
		if len(last) == soakRSSWindow && slices.Max(last)-slices.Min(last) < soakRSSStable {
			return nil
		}
		if time.Since(start) > soakRSSSettleLimit {
			logf("  RSS still moving after %s (%s → %s over the last %d s)", soakRSSSettleLimit,
				mib(last[0]), mib(last[len(last)-1]), len(last)-1)
			return nil
		}
		if err := sleepCtx(ctx, time.Second); err != nil {
			return err
		}
	}
}

// gc has neonproxy run runtime.GC (the heap profile's gc=1), and drops
// the profile.
func (s *soak) gc(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.px.admin+soakGCPath, nil)
	if err != nil {
		return err
	}
	resp, err := s.px.http.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", soakGCPath, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", soakGCPath, resp.Status)
	}
	return nil
}

// metrics reads neonproxy's /metrics into a map from series (name with
// its labels, as printed) to value.
func (s *soak) metrics(ctx context.Context) (map[string]float64, error) {
	return readMetrics(ctx, s.px)
}

// checkIdle runs soakQuery on every idle client (soakCheckWorkers at a
// time) and collects the active clients' results.
func (s *soak) checkIdle(ctx context.Context) error {
	r := s.rep
	for _, ac := range s.active {
		r.queries += len(ac.lat)
		r.errors += ac.errs
		r.reconnects += ac.reconnects
		if r.firstQueryErr == "" {
			r.firstQueryErr = ac.firstErr
		}
		if ac.c != nil {
			r.activeConnected++
		}
	}
	all := make([]time.Duration, 0, r.queries)
	for _, ac := range s.active {
		all = append(all, ac.lat...)
		ac.lat = nil
	}
	r.latency = summarize(all)
	if m, err := s.metrics(ctx); err == nil {
		r.clientsBeforeCheck = int(m["neonproxy_client_connections"])
	}

	start := time.Now()
	var next, failed atomic.Int64
	var once sync.Once
	var wg sync.WaitGroup
	for range soakCheckWorkers {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= len(s.idle) {
					return
				}
				c := s.idle[i]
				if err := simpleQuery(c, bufio.NewReaderSize(c, 512), soakQuery); err != nil {
					failed.Add(1)
					once.Do(func() { r.idleCheckErr = fmt.Sprintf("idle client %d: %v", i+1, err) })
				}
			}
		})
	}
	wg.Wait()
	r.idleChecked, r.idleCheckFailed, r.idleCheckTime = len(s.idle), int(failed.Load()), time.Since(start)
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return nil
}

// probeLimit fills pool.max_client_conn with extra clients, expects one
// more to be refused with 53300, then closes one and expects a new client
// to be accepted again.
func (s *soak) probeLimit(ctx context.Context) error {
	r := s.rep
	m, err := s.metrics(ctx)
	if err != nil {
		return err
	}
	r.clientsBeforeFill = int(m["neonproxy_client_connections"])
	tooMany0 := m[`neonproxy_connections_total{result="too_many"}`]
	r.fillWant = r.maxClientConn - r.clientsBeforeFill
	for range max(r.fillWant, 0) {
		c, err := s.open(ctx)
		if err != nil {
			r.fillErr = err.Error()
			break
		}
		s.fillers = append(s.fillers, c)
	}
	if m, err := s.metrics(ctx); err == nil {
		r.clientsFull = int(m["neonproxy_client_connections"])
	}
	logf("  filled %d of %d; client connections %d of max_client_conn %d", len(s.fillers), r.fillWant, r.clientsFull, r.maxClientConn)

	r.probed = true
	c, err := s.open(ctx)
	var we *wireError
	switch {
	case err == nil:
		r.probeAccepted = true
		closeAll([]net.Conn{c})
	case errors.As(err, &we):
		r.probeCode, r.probeMsg = we.code, we.msg
	default:
		r.probeOther = err.Error()
	}
	logf("  one more client: %s", r.probeText())
	if m, err := s.metrics(ctx); err == nil {
		r.tooManyCounted = int(m[`neonproxy_connections_total{result="too_many"}`] - tooMany0)
	}

	// A slot freed by a closing client is usable again.
	var victim net.Conn
	switch {
	case len(s.fillers) > 0:
		victim, s.fillers = s.fillers[len(s.fillers)-1], s.fillers[:len(s.fillers)-1]
	case len(s.idle) > 0:
		victim, s.idle = s.idle[len(s.idle)-1], s.idle[:len(s.idle)-1]
	default:
		return nil
	}
	closeAll([]net.Conn{victim})
	start := time.Now()
	for {
		c, err := s.open(ctx)
		if err == nil {
			r.releaseTime, r.releaseOK = time.Since(start), true
			s.fillers = append(s.fillers, c)
			break
		}
		r.releaseTries++
		if !errors.As(err, &we) || we.code != "53300" || time.Since(start) > soakReleaseLimit {
			r.releaseErr = err.Error()
			break
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

// drain closes every client, waits for neonproxy to count none, and
// takes the after-close sample.
func (s *soak) drain(ctx context.Context) error {
	s.closeClients()
	deadline := time.Now().Add(soakDrainLimit)
	for {
		m, err := s.metrics(ctx)
		if err != nil {
			return err
		}
		n := int(m["neonproxy_client_connections"])
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			s.rep.problem(fmt.Sprintf("soak: neonproxy_client_connections still %d %s after every client closed", n, soakDrainLimit))
			break
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
	time.Sleep(soakSettle)
	return s.sample(ctx, soakAfterClose)
}

// closeClients closes every client the section holds (idempotent).
func (s *soak) closeClients() {
	closeAll(s.idle)
	closeAll(s.fillers)
	s.idle, s.fillers = nil, nil
	for _, ac := range s.active {
		if ac.c != nil {
			closeAll([]net.Conn{ac.c})
			ac.c = nil
		}
	}
}

// judge turns the results into problems: descriptor or goroutine growth
// beyond the tolerance, idle clients lost, query errors, the limit not
// enforced with 53300.
func (s *soak) judge() {
	r := s.rep
	start, okS := r.point(soakStart)
	end, okE := r.point(soakEnd)
	if okS && okE {
		if g, allowed := end.fds-start.fds, growthAllowed(start.fds); g > allowed {
			r.problem(fmt.Sprintf("soak: open fds grew %d → %d (+%d, tolerance +%d) over the soak", start.fds, end.fds, g, allowed))
		}
		if g, allowed := end.goroutines-start.goroutines, growthAllowed(start.goroutines); g > allowed {
			r.problem(fmt.Sprintf("soak: goroutines grew %d → %d (+%d, tolerance +%d) over the soak", start.goroutines, end.goroutines, g, allowed))
		}
	}
	if r.idleCheckFailed > 0 {
		r.problem(fmt.Sprintf("soak: %d of %d idle clients failed `%s` after the soak; the first: %s",
			r.idleCheckFailed, r.idleChecked, soakQuery, r.idleCheckErr))
	}
	if r.errors > 0 {
		r.problem(fmt.Sprintf("soak: %d active-client errors (%d reconnects); the first: %s", r.errors, r.reconnects, r.firstQueryErr))
	}
	if r.fillErr != "" {
		r.problem(fmt.Sprintf("soak: filling max_client_conn %d: refused after %d of %d extra clients (%d connected before): %s",
			r.maxClientConn, len(s.fillers), r.fillWant, r.clientsBeforeFill, r.fillErr))
	}
	if r.probed && !r.probeRefused53300() {
		r.problem(fmt.Sprintf("soak: client %d with max_client_conn %d: %s (want a refusal with SQLSTATE 53300)",
			r.maxClientConn+1, r.maxClientConn, r.probeText()))
	}
	if r.probed && !r.releaseOK {
		r.problem(fmt.Sprintf("soak: after closing one client, a new one was still not accepted (%d tries): %s", r.releaseTries, r.releaseErr))
	}
}

// growthAllowed is the tolerated growth of a count that was v at the
// soak's start.
func growthAllowed(v int) int {
	return max(soakGrowthAbs, int(float64(v)*soakGrowthPct/100+0.5))
}

// writeCSV writes every sample to <tmp>/soak/samples.csv (kept with -keep).
func (s *soak) writeCSV() {
	var b strings.Builder
	b.WriteString("t_s,label,fds,process_open_fds,goroutines,rss_kib,go_heap_stack_kib,client_connections,server_active,server_idle\n")
	s.mu.Lock()
	for _, pt := range s.rep.samples {
		fmt.Fprintf(&b, "%.1f,%s,%d,%d,%d,%d,%d,%d,%d,%d\n", pt.at.Seconds(), pt.label, pt.fds, pt.metricFDs,
			pt.goroutines, pt.rss/1024, pt.goMem/1024, pt.clients, pt.serverActive, pt.serverIdle)
	}
	s.mu.Unlock()
	if err := os.WriteFile(s.env.path(soakCSV), []byte(b.String()), 0o644); err != nil {
		logf("  soak: %v", err)
	}
}

// simpleQuery sends sql as a simple Query on a logged-in raw connection and
// reads up to ReadyForQuery (r must be the connection's only reader); an
// ErrorResponse is returned once ReadyForQuery has arrived.
func simpleQuery(c net.Conn, r *bufio.Reader, sql string) error {
	_ = c.SetDeadline(time.Now().Add(soakQueryLimit))
	defer c.SetDeadline(time.Time{})
	if err := writeMessage(c, 'Q', append([]byte(sql), 0)); err != nil {
		return err
	}
	var qerr error
	rows := 0
	for {
		typ, body, err := readMessage(r)
		if err != nil {
			return err
		}
		switch typ {
		case 'D':
			rows++
		case 'E':
			if qerr == nil {
				qerr = serverError(body)
			}
		case 'Z':
			if qerr == nil && rows != 1 {
				qerr = fmt.Errorf("%s: %d rows, want 1", sql, rows)
			}
			return qerr
		}
	}
}

// sleepCtx sleeps for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}
