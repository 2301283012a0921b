package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"github.com/jackc/pgx/v5"
)

// The serverless section: neonproxy's http_listen, which serves Neon's
// serverless driver protocol (POST /sql with the connection string in a
// header and the query as JSON; pgwire over WebSocket), against the TCP
// -pooler route and the compute's unix socket. It runs on its own
// neonproxy (data in <tmp>/serverless, log.level warn, the config of the
// other sections plus http_listen on a free 127.0.0.1 port, plain HTTP: no
// tls.cert_file).
//
// Round trip: one client per path, the same query with one parameter,
// the paths taking turns query by query (so that the machine's drift
// affects all of them). Throughput: -serverless-clients HTTP clients
// (each its own keep-alive connection) posting in a loop for
// -serverless-duration, then as many pgx connections to the -pooler
// route.
const (
	serverlessDefaultTries    = 2000
	serverlessQuickTries      = 300
	serverlessDefaultClients  = 50
	serverlessDefaultDuration = 15 * time.Second
	serverlessQuickDuration   = 5 * time.Second

	serverlessQuery = "select $1::int as i"
	serverlessParam = "1" // as the driver sends it: a JSON string
	serverlessDB    = branch + "-pooler"
	// serverlessWarmup queries per path are run, not timed, before the
	// round trips (HTTP connection, /sql pool session, statement caches).
	serverlessWarmup = 50
	// serverlessRequestLimit bounds one request or query.
	serverlessRequestLimit = 30 * time.Second
	// serverlessMaxErrors: a round-trip path is left out of the remaining
	// tries after so many errors.
	serverlessMaxErrors = 20
	// serverlessErrorPause keeps a load client that fails from spinning.
	serverlessErrorPause = 10 * time.Millisecond
	// serverlessStopLimit bounds the wait for neonproxy's exit after
	// SIGTERM (its shutdown_timeout is 30 s) before daemon.stop.
	serverlessStopLimit = 3 * time.Minute
	// serverlessShutdownTimeout is neonproxy's default shutdown_timeout,
	// which the section's config does not set.
	serverlessShutdownTimeout = 30 * time.Second

	clientConnsMetric = "neonproxy_client_connections"
)

// Paths of the section.
const (
	slHTTP   = "HTTP POST /sql (keep-alive)"
	slTCP    = "pgx TCP → " + serverlessDB + " (transaction mode)"
	slWS     = "pgx over WebSocket → " + serverlessDB
	slDirect = "pgx direct (compute's unix socket, trust)"
)

// serverlessSection runs the section against its own neonproxy.
type serverlessSection struct {
	opts     options
	env      *env
	px       *proxy
	rep      *serverlessReport
	httpAddr string // http_listen
	// sqlDials counts the TCP connections the bench's HTTP clients opened
	// (keep-alive: one per client).
	sqlDials atomic.Int64
}

// runServerless starts the section's neonproxy and measures. Its problems
// go to b.rep; the results are returned for printing after the report.
func (b *bench) runServerless(ctx context.Context) *serverlessReport {
	b.sectionMachine(ctx)
	o := b.opts
	s := &serverlessSection{opts: o, env: &env{dir: b.env.path("serverless"), keep: b.env.keep},
		rep: &serverlessReport{tries: o.serverlessTries, clients: o.serverlessClients, duration: o.serverlessDuration, poolSize: o.poolSize}}
	if !b.phase(ctx, "serverless: start neonproxy", s.start) {
		return s.rep
	}
	defer func() {
		s.stop(ctx)
		s.readLog()
		for _, p := range s.rep.problems() {
			b.rep.problem("serverless: " + p)
		}
		if left := processesUnder(s.env.dir); len(left) > 0 {
			b.rep.problem("serverless: processes left after neonproxy stopped:\n" + strings.Join(left, "\n"))
		}
	}()
	if !b.phase(ctx, "serverless: first connection (compute start), POST /sql", s.firstQuery) {
		return s.rep
	}
	b.phase(ctx, fmt.Sprintf("serverless: round trips (%d per path)", o.serverlessTries), s.roundTrips)
	b.phase(ctx, fmt.Sprintf("serverless: %d HTTP clients for %s", o.serverlessClients, o.serverlessDuration),
		func(ctx context.Context) error { return s.load(ctx, slHTTP) })
	b.phase(ctx, fmt.Sprintf("serverless: %d pgx clients for %s", o.serverlessClients, o.serverlessDuration),
		func(ctx context.Context) error { return s.load(ctx, slTCP) })
	return s.rep
}

// stop sends neonproxy SIGTERM and times its exit, with the front-door
// sessions it then has (the /sql pools keep theirs after the bench's
// clients closed). After serverlessStopLimit (or on Ctrl-C) daemon.stop
// takes over: SIGTERM again, SIGKILL after daemonStopLimit.
func (s *serverlessSection) stop(ctx context.Context) {
	if s.px == nil || !s.px.running() {
		return
	}
	// The bench's clients have closed; neonproxy sees their ends a moment
	// later: read the gauge until it holds still (at most 5 s).
	mctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	last := -1
	for mctx.Err() == nil {
		m, err := readMetrics(mctx, s.px)
		if err != nil {
			break
		}
		n := int(m[clientConnsMetric])
		s.rep.sessionsAtStop = n
		if n == last {
			break
		}
		last = n
		time.Sleep(250 * time.Millisecond)
	}
	cancel()
	logf("serverless: SIGTERM to neonproxy (%d client sessions open) …", s.rep.sessionsAtStop)
	start := time.Now()
	_ = s.px.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.px.exited:
		s.rep.stopTook = time.Since(start)
		logf("serverless: neonproxy exited %s after SIGTERM", s.rep.stopTook.Round(time.Millisecond))
	case <-time.After(serverlessStopLimit):
		s.rep.stopTook, s.rep.stopForced = time.Since(start), true
		s.px.stop()
	case <-ctx.Done():
		s.rep.stopTook, s.rep.stopForced = time.Since(start), true
		s.px.stop()
	}
}

// start writes the bench's config with http_listen added and starts
// neonproxy on it.
func (s *serverlessSection) start(ctx context.Context) error {
	p, err := ownProxy(s.env, s.opts)
	if err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	s.httpAddr = fmt.Sprintf("127.0.0.1:%d", port)
	cfg, err := os.ReadFile(p.cfgPath)
	if err != nil {
		return fmt.Errorf("read neonproxy config: %w", err)
	}
	cfg = fmt.Appendf(cfg, "http_listen: %s\n", s.httpAddr)
	if err := os.WriteFile(p.cfgPath, cfg, 0o600); err != nil {
		return fmt.Errorf("write neonproxy config: %w", err)
	}
	s.rep.config = string(cfg)
	if err := p.launch(ctx); err != nil {
		return err
	}
	s.px = p
	s.rep.admin, s.rep.port, s.rep.httpAddr = p.admin, p.port, s.httpAddr
	return nil
}

// connString is what the bench sends in Neon-Connection-String: branch
// main by the database name (the host is not looked at without
// tls.sni_suffix).
func (s *serverlessSection) connString() string {
	return fmt.Sprintf("postgresql://postgres:%s@%s/%s", s.px.password, s.httpAddr, branch)
}

// firstQuery starts main's compute (pgx connect + SELECT 1 over TCP), then
// sends one POST /sql and keeps its response for the report.
func (s *serverlessSection) firstQuery(ctx context.Context) error {
	d, err := connectFirstRow(ctx, s.px.url("disable"))
	if err != nil {
		return err
	}
	s.rep.firstStart = d
	c := s.newSQLClient()
	defer c.close()
	body, err := c.query(ctx)
	if err != nil {
		return fmt.Errorf("POST /sql: %w", err)
	}
	s.rep.sample = strings.TrimSpace(string(body))
	dir, port, err := s.px.computeSocketDir()
	if err != nil {
		return err
	}
	s.rep.directDSN = fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable", dir, port)
	return nil
}

// sqlClient is one HTTP client of POST /sql: its own transport, so its own
// keep-alive connection.
type sqlClient struct {
	c       *http.Client
	url     string
	connStr string
	body    []byte
}

// serverlessRequest is the request body of every POST /sql.
var serverlessRequest = fmt.Sprintf(`{"query": %q, "params": [%q]}`, serverlessQuery, serverlessParam)

func (s *serverlessSection) newSQLClient() *sqlClient {
	dialer := &net.Dialer{Timeout: 10 * time.Second}
	tr := &http.Transport{
		Proxy: nil, // never the environment's proxy
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			s.sqlDials.Add(1)
			return dialer.DialContext(ctx, network, addr)
		},
		MaxIdleConns: 1, MaxIdleConnsPerHost: 1, IdleConnTimeout: 5 * time.Minute,
		DisableCompression: true,
	}
	return &sqlClient{c: &http.Client{Transport: tr, Timeout: serverlessRequestLimit},
		url: "http://" + s.httpAddr + "/sql", connStr: s.connString(), body: []byte(serverlessRequest)}
}

func (c *sqlClient) close() { c.c.CloseIdleConnections() }

// serverlessResult is the part of a /sql response the bench checks.
type serverlessResult struct {
	Command  string      `json:"command"`
	RowCount int64       `json:"rowCount"`
	Rows     [][]*string `json:"rows"`
	Fields   []struct {
		Name       string `json:"name"`
		DataTypeID uint32 `json:"dataTypeID"`
	} `json:"fields"`
	RowAsArray bool `json:"rowAsArray"`
}

// query sends the section's query as the serverless driver does (array
// mode, raw text output), reads the whole response and checks it: one row
// [["1"]], field i of type int4 (OID 23). It returns the response body.
func (c *sqlClient) query(ctx context.Context) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(c.body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Neon-Connection-String", c.connStr)
	req.Header.Set("Neon-Array-Mode", "true")
	req.Header.Set("Neon-Raw-Text-Output", "true")
	resp, err := c.c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("read response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Message, Code string }
		if json.Unmarshal(body, &e) == nil && e.Message != "" {
			return body, fmt.Errorf("HTTP %d: %s (SQLSTATE %s)", resp.StatusCode, e.Message, e.Code)
		}
		return body, fmt.Errorf("HTTP %d: %s", resp.StatusCode, truncate(strings.TrimSpace(string(body)), 200))
	}
	var r serverlessResult
	if err := json.Unmarshal(body, &r); err != nil {
		return body, fmt.Errorf("decode response: %w", err)
	}
	if r.Command != "SELECT" || r.RowCount != 1 || !r.RowAsArray || len(r.Rows) != 1 || len(r.Rows[0]) != 1 ||
		r.Rows[0][0] == nil || *r.Rows[0][0] != serverlessParam || len(r.Fields) != 1 || r.Fields[0].Name != "i" || r.Fields[0].DataTypeID != 23 {
		return body, fmt.Errorf("unexpected response: %s", truncate(strings.TrimSpace(string(body)), 300))
	}
	return body, nil
}

// pgxClient is one pgx connection of a path: TCP to the -pooler route, the
// WebSocket tunnel to the same route, or the compute's unix socket. It uses
// pgx's default query mode (the statement prepared once, then one round
// trip per query).
type pgxClient struct {
	conn *pgx.Conn
	cfg  *pgx.ConnConfig
}

// pgxConfig is the connection config of path (slTCP, slWS or slDirect).
func (s *serverlessSection) pgxConfig(path string) (*pgx.ConnConfig, error) {
	switch path {
	case slTCP:
		return pgx.ParseConfig(s.px.branchURL(serverlessDB, "disable"))
	case slDirect:
		return pgx.ParseConfig(s.rep.directDSN)
	case slWS:
		cfg, err := pgx.ParseConfig(s.px.branchURL(serverlessDB, "disable"))
		if err != nil {
			return nil, err
		}
		u := "ws://" + s.httpAddr + "/v2"
		cfg.LookupFunc = func(_ context.Context, host string) ([]string, error) { return []string{host}, nil }
		cfg.DialFunc = func(ctx context.Context, _, _ string) (net.Conn, error) {
			c, _, err := websocket.Dial(ctx, u, nil)
			if err != nil {
				return nil, fmt.Errorf("websocket %s: %w", u, err)
			}
			// The tunnel outlives the dial's context.
			return websocket.NetConn(context.Background(), c, websocket.MessageBinary), nil
		}
		return cfg, nil
	}
	return nil, fmt.Errorf("no pgx path %q", path)
}

func (s *serverlessSection) dialPgx(ctx context.Context, path string) (*pgxClient, error) {
	cfg, err := s.pgxConfig(path)
	if err != nil {
		return nil, err
	}
	c := &pgxClient{cfg: cfg}
	return c, c.connect(ctx)
}

func (c *pgxClient) connect(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, connectLimit)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, c.cfg)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	c.conn = conn
	return nil
}

// query runs the section's query (pgx.Conn.Query, the same parameter) and
// checks the one value; a broken connection is connected again (the
// error is returned all the same).
func (c *pgxClient) query(ctx context.Context) error {
	if c.conn == nil || c.conn.IsClosed() {
		if err := c.connect(ctx); err != nil {
			return err
		}
	}
	rows, err := c.conn.Query(ctx, serverlessQuery, 1)
	if err != nil {
		return err
	}
	v, err := pgx.CollectExactlyOneRow(rows, pgx.RowTo[int32])
	if err != nil {
		return err
	}
	if v != 1 {
		return fmt.Errorf("%s returned %d, want 1", serverlessQuery, v)
	}
	return nil
}

func (c *pgxClient) close() {
	if c.conn != nil {
		closeConn(c.conn)
	}
}

// slClient is one client of a path, whatever its protocol.
type slClient struct {
	query func(context.Context) error
	close func()
}

// newClient opens one client of path (an HTTP client connects on its
// first request).
func (s *serverlessSection) newClient(ctx context.Context, path string) (slClient, error) {
	if path == slHTTP {
		c := s.newSQLClient()
		return slClient{query: func(ctx context.Context) error { _, err := c.query(ctx); return err }, close: c.close}, nil
	}
	c, err := s.dialPgx(ctx, path)
	if err != nil {
		return slClient{}, err
	}
	return slClient{query: c.query, close: c.close}, nil
}

// timedQuery runs one query under serverlessRequestLimit and times it.
func timedQuery(ctx context.Context, q func(context.Context) error) (time.Duration, error) {
	qctx, cancel := context.WithTimeout(ctx, serverlessRequestLimit)
	defer cancel()
	start := time.Now()
	err := q(qctx)
	return time.Since(start), err
}

// roundTrips times -serverless-tries sequential queries per path, one
// client each, the paths taking turns (the first path rotates every try).
func (s *serverlessSection) roundTrips(ctx context.Context) error {
	paths := []string{slHTTP, slTCP, slWS, slDirect}
	r := s.rep
	clients := make([]slClient, len(paths))
	r.roundTrip = make([]serverlessPath, len(paths))
	for i, path := range paths {
		r.roundTrip[i].name = path
		c, err := s.newClient(ctx, path)
		if err != nil {
			r.roundTrip[i].fail(err)
			logf("  %s: %v", path, err)
			continue
		}
		defer c.close()
		for range serverlessWarmup {
			if _, err := timedQuery(ctx, c.query); err != nil {
				r.roundTrip[i].fail(fmt.Errorf("warm-up: %w", err))
				break
			}
		}
		if r.roundTrip[i].errors == 0 {
			clients[i] = c
		}
	}
	dials := s.sqlDials.Load()
	lat := make([][]time.Duration, len(paths))
	for try := range r.tries {
		for k := range paths {
			i := (try + k) % len(paths)
			pr := &r.roundTrip[i]
			if clients[i].query == nil {
				continue
			}
			d, err := timedQuery(ctx, clients[i].query)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err != nil {
				pr.fail(err)
				if pr.errors >= serverlessMaxErrors {
					logf("  %s: %d errors, left out from try %d: %v", pr.name, pr.errors, try+1, err)
					clients[i].query = nil
				}
				continue
			}
			lat[i] = append(lat[i], d)
		}
	}
	r.roundTripDials = s.sqlDials.Load() - dials
	for i := range paths {
		r.roundTrip[i].s = summarize(lat[i])
		logf("  %s: median %s, p99 %s, %d errors", paths[i], ms(r.roundTrip[i].s.median), ms(r.roundTrip[i].s.p99), r.roundTrip[i].errors)
	}
	return nil
}

// load runs -serverless-clients clients of path in a loop for
// -serverless-duration: every client is opened and has run one query
// (not timed) before the clock starts.
func (s *serverlessSection) load(ctx context.Context, path string) error {
	o := s.opts
	lr := serverlessLoad{name: path, clients: o.serverlessClients}
	defer func() { s.rep.loads = append(s.rep.loads, lr) }()
	clients := make([]slClient, o.serverlessClients)
	var wg sync.WaitGroup
	errs := make([]error, len(clients))
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := s.newClient(ctx, path)
			if err == nil {
				_, err = timedQuery(ctx, c.query)
				if err != nil {
					c.close()
				}
			}
			clients[i], errs[i] = c, err
		}()
	}
	wg.Wait()
	defer func() {
		for _, c := range clients {
			if c.close != nil {
				c.close()
			}
		}
	}()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("open %d clients: %w", len(clients), err)
	}
	before, err := readMetrics(ctx, s.px)
	if err != nil {
		return err
	}
	lr.clientConnsBefore = int(before[clientConnsMetric])
	dials := s.sqlDials.Load()
	cpu0, cpuErr := cpuTime(s.px.pid())
	self0 := selfCPU()

	lat := make([][]time.Duration, len(clients))
	fails := make([]serverlessPath, len(clients))
	start := time.Now()
	deadline := start.Add(o.serverlessDuration)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) && ctx.Err() == nil {
				d, err := timedQuery(ctx, clients[i].query)
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					fails[i].fail(err)
					time.Sleep(serverlessErrorPause)
					continue
				}
				lat[i] = append(lat[i], d)
			}
		}()
	}
	wg.Wait()
	lr.wall = time.Since(start)
	if cpu1, err := cpuTime(s.px.pid()); err == nil && cpuErr == nil {
		lr.proxyCPU = cpu1 - cpu0
	}
	lr.benchCPU = selfCPU() - self0
	if err := ctx.Err(); err != nil {
		return err
	}
	var all []time.Duration
	for i := range clients {
		all = append(all, lat[i]...)
		lr.errors += fails[i].errors
		if lr.firstErr == "" {
			lr.firstErr = fails[i].firstErr
		}
	}
	lr.s = summarize(all)
	lr.rps = float64(len(all)) / lr.wall.Seconds()
	if path == slHTTP {
		lr.dials = s.sqlDials.Load() - dials
	}
	after, err := readMetrics(ctx, s.px)
	if err != nil {
		return err
	}
	lr.clientConnsAfter = int(after[clientConnsMetric])
	lr.poolWaits = int(after[poolWaitMetric+"_count"] - before[poolWaitMetric+"_count"])
	logf("  %s: %.0f req/s, p50 %s, p99 %s, %d errors", path, lr.rps, ms(lr.s.median), ms(lr.s.p99), lr.errors)
	return nil
}

// selfCPU is the bench process's CPU time (user + system): the clients'
// side of a load (HTTP + JSON against pgx).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// readLog counts neonproxy's warn and error lines by message (the section
// runs at log.level warn: every line is one).
func (s *serverlessSection) readLog() {
	if s.px == nil {
		return
	}
	f, err := os.Open(s.px.logPath)
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l stormLogLine
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			continue
		}
		if l.Level == "warn" || l.Level == "error" {
			key := l.Level + ": " + l.Msg
			if l.Error != "" {
				key += " (" + truncate(l.Error, 160) + ")"
			}
			s.rep.logIssues = appendCount(s.rep.logIssues, key)
		}
	}
}
