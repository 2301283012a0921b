package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/neonproxy/neonproxy/internal/testconsul"
	"github.com/neonproxy/neonproxy/router"
)

// The cluster section (issue 6, distributed mode on Consul): what relaying
// a client through a node that does not run the branch costs, how soon
// Consul frees the branch lock of a node whose neonproxy was killed, and
// how long clients committing through one node wait when the node running
// the branch dies (and that no acknowledged commit is lost). It runs its
// own Consul dev agent, a standalone pagestore, three standalone keepers
// and two serve nodes, A and B (data in
// <tmp>/cluster/{consul,pagestore,walkeepers,a,b}), each with
// consul.address set, consul.node = its listen address, and the shared
// pagestore and keepers (clusterstore.go).
const (
	clusterMinSamples = 40                             // connect samples per path at least (-tries when larger)
	clusterFailovers  = 5                              // kill -9 A / lock free / restart A rounds
	clusterPollEvery  = 20 * time.Millisecond          // GET of the lock key while waiting for it to be free
	clusterFreeLimit  = 3 * router.SessionTTL          // kill → lock free; a TTL session ends within 2× its TTL
	clusterHoldLimit  = 3 * time.Minute                // A's restart → main answers through A (crash recovery included)
	consulLeaderLimit = time.Minute                    // agent started → leader elected
	consulCallLimit   = 10 * time.Second               // one HTTP call to the agent
	nodeA, nodeB      = "a", "b"                       // the nodes' directories under <tmp>/cluster
	logBootstrapping  = `"msg":"bootstrapping branch"` // neonproxy's log line when it creates main
)

// consulReadyLine is what the agent prints on stdout once its HTTP API
// serves (the leader is elected a moment later).
var consulReadyLine = regexp.MustCompile(`agent: (Consul agent running)!`)

// consulAgent is a running `consul agent -dev`.
type consulAgent struct {
	*daemon
	bin  string
	addr string // HTTP API host:port
	http *http.Client
}

// consulBinary is the agent binary: NEONPROXY_CONSUL, else `make consul`'s
// cache path (the tests' lookup), checked to exist.
func consulBinary() (string, error) {
	bin, err := testconsul.Binary()
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("Consul agent binary: %w", err)
	}
	return bin, nil
}

// startConsul starts the agent in e (data dir <e>/consul, output in
// consul.log and consul.stdout) and returns once it has a leader.
func startConsul(ctx context.Context, bin string, e *env) (*consulAgent, []string, error) {
	ports, err := freePorts(4)
	if err != nil {
		return nil, nil, err
	}
	dataDir := e.path("consul")
	if err := os.Mkdir(dataDir, 0o700); err != nil {
		return nil, nil, err
	}
	args := testconsul.AgentArgs("neonproxy-bench", ports, dataDir)
	d, _, err := startDaemon(ctx, "consul agent", bin, e.path("consul.log"), consulReadyLine, args...)
	if err != nil {
		return nil, args, err
	}
	a := &consulAgent{daemon: d, bin: bin, addr: "127.0.0.1:" + strconv.Itoa(ports[0]), http: &http.Client{Timeout: consulCallLimit}}
	if err := a.waitLeader(ctx); err != nil {
		a.stop()
		return nil, args, fmt.Errorf("consul agent: %w\n--- last lines of %s ---\n%s", err, e.path("consul.stdout"), tail(e.path("consul.stdout"), 20))
	}
	return a, args, nil
}

// get is GET path on the agent's HTTP API: status and body.
func (a *consulAgent) get(ctx context.Context, path string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a.addr+path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("consul GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, nil, fmt.Errorf("consul GET %s: read body: %w", path, err)
	}
	return resp.StatusCode, body, nil
}

// waitLeader polls GET /v1/status/leader until it names a leader.
func (a *consulAgent) waitLeader(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, consulLeaderLimit)
	defer cancel()
	for {
		status, body, err := a.get(ctx, "/v1/status/leader")
		if err == nil && status == http.StatusOK && len(bytes.Trim(body, "\" \n")) > 0 {
			return nil
		}
		select {
		case <-a.exited:
			return fmt.Errorf("exited before electing a leader: %v", a.cmd.ProcessState)
		case <-ctx.Done():
			return fmt.Errorf("no leader after %s: %w", consulLeaderLimit, context.Cause(ctx))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// lockKey is the KV key of branch name's compute lock.
func lockKey(name string) string { return router.DefaultConsulPrefix + name + "/compute" }

// branchLock is the state of a branch's lock key: free without a session.
type branchLock struct {
	session string
	holder  string // the holder's consul.node (the key's value)
}

// parseLock reads GET /v1/kv/<key>'s answer: 404 (no key) or an entry
// without a Session is a free lock.
func parseLock(status int, body []byte) (branchLock, error) {
	switch status {
	case http.StatusNotFound:
		return branchLock{}, nil
	case http.StatusOK:
	default:
		return branchLock{}, fmt.Errorf("%d: %s", status, strings.TrimSpace(string(body)))
	}
	var entries []struct {
		Session string
		Value   []byte // base64 in the JSON
	}
	if err := json.Unmarshal(body, &entries); err != nil {
		return branchLock{}, fmt.Errorf("decode KV entry: %w", err)
	}
	if len(entries) == 0 {
		return branchLock{}, nil
	}
	return branchLock{session: entries[0].Session, holder: string(entries[0].Value)}, nil
}

// lock reads branch name's lock key.
func (a *consulAgent) lock(ctx context.Context, name string) (branchLock, error) {
	status, body, err := a.get(ctx, "/v1/kv/"+lockKey(name))
	if err != nil {
		return branchLock{}, err
	}
	l, err := parseLock(status, body)
	if err != nil {
		return l, fmt.Errorf("consul GET /v1/kv/%s: %w", lockKey(name), err)
	}
	return l, nil
}

// hasKey reports whether key exists in the KV store.
func (a *consulAgent) hasKey(ctx context.Context, key string) (bool, error) {
	status, body, err := a.get(ctx, "/v1/kv/"+key)
	switch {
	case err != nil:
		return false, err
	case status == http.StatusNotFound:
		return false, nil
	case status == http.StatusOK:
		return true, nil
	}
	return false, fmt.Errorf("consul GET /v1/kv/%s: %d: %s", key, status, strings.TrimSpace(string(body)))
}

// cluster runs the section's phases against one agent and two nodes.
type cluster struct {
	env      *env
	opts     options
	rep      *clusterReport
	agent    *consulAgent
	a, b     *proxy
	password string // bootstrap.password of both nodes
	// The shared storage (nil until started) and its tokens.
	ps                      *pagestoreProc
	keepers                 *walkeepers
	storeToken, keeperToken string
	// orphan is the pid of A's compute while a kill -9 of A has left it
	// running (nobody else stops it); stop kills its group.
	orphan int
}

// runCluster starts the agent and the nodes and runs the section's
// phases; whatever was started is stopped at the end and on errors.
func (b *bench) runCluster(ctx context.Context) {
	b.sectionMachine(ctx)
	bin, err := consulBinary()
	if err != nil {
		b.rep.cluster.skipped = fmt.Sprintf("skipped: run make consul (%v)", err)
		b.rep.problem("cluster: " + b.rep.cluster.skipped)
		logf("cluster: %s", b.rep.cluster.skipped)
		return
	}
	s := &cluster{env: &env{dir: b.env.path("cluster"), keep: b.env.keep}, rep: &b.rep.cluster, opts: b.opts}
	defer s.stop()
	start := func(ctx context.Context) error { return s.startAgent(ctx, bin) }
	if !b.phase(ctx, "cluster: start consul agent", start) ||
		!b.phase(ctx, "cluster: start pagestore and keepers", s.startShared) ||
		!b.phase(ctx, "cluster: start node A, first query", s.startA) ||
		!b.phase(ctx, "cluster: start node B", s.startB) {
		return
	}
	b.phase(ctx, "cluster: connect through A and B", s.connect)
	b.phase(ctx, "cluster: lock failover", s.failover)
	b.phase(ctx, "cluster: commit failover", s.commitFailover)
	s.stop()
	if left := processesUnder(s.env.dir); len(left) > 0 {
		s.rep.leftover = left
		b.rep.problem(fmt.Sprintf("cluster: processes left after stopping everything: %s", strings.Join(left, "; ")))
	}
}

func (s *cluster) startAgent(ctx context.Context, bin string) error {
	if err := mkdirTraversable(s.env.dir); err != nil {
		return err
	}
	s.rep.consulVersion = commandFirstLine(ctx, bin, "version")
	a, args, err := startConsul(ctx, bin, s.env)
	s.rep.command("consul " + strings.Join(args, " "))
	if err != nil {
		return err
	}
	s.agent = a
	s.rep.consulAddr = a.addr
	s.password = randomPassword()
	return nil
}

// randomPassword is main's superuser password, given to both nodes as
// bootstrap.password: B does not bootstrap main (it finds it in Consul), so
// it could not print it otherwise.
func randomPassword() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

// startNode starts node name (A or B) in <tmp>/cluster/<name> on the agent.
func (s *cluster) startNode(ctx context.Context, name string) (*proxy, error) {
	px, err := startOwnProxy(ctx, s.nodeOptions(), &env{dir: s.env.path(name), keep: s.env.keep})
	if err != nil {
		return nil, err
	}
	s.rep.command(fmt.Sprintf("neonproxy serve --config %s   # listen = consul.node = %s, admin %s, consul.address %s%s",
		px.cfgPath, px.listenAddr(), px.admin, s.agent.addr, s.sharedComment()))
	return px, nil
}

// startA starts node A, which bootstraps main (and registers it in
// Consul), and runs the first query on it: main's compute starts on A,
// which takes main's lock.
func (s *cluster) startA(ctx context.Context) error {
	px, err := s.startNode(ctx, nodeA)
	if err != nil {
		return err
	}
	s.a = px
	s.rep.nodeA = px.listenAddr()
	if ok, err := s.agent.hasKey(ctx, router.DefaultConsulPrefix+branch); err != nil {
		return err
	} else if !ok {
		return fmt.Errorf("A is ready but %s%s is not in Consul KV", router.DefaultConsulPrefix, branch)
	}
	if s.rep.firstStartA, err = connectFirstRow(ctx, px.url("disable")); err != nil {
		return fmt.Errorf("first query on A: %w", err)
	}
	if err := s.checkHolder(ctx, "after the first query on A"); err != nil {
		return err
	}
	st, err := px.status(ctx)
	if err != nil {
		return err
	}
	s.rep.computePID = st.PID
	return nil
}

// checkHolder checks that A holds main's lock.
func (s *cluster) checkHolder(ctx context.Context, when string) error {
	l, err := s.agent.lock(ctx, branch)
	if err != nil {
		return err
	}
	if l.session == "" || l.holder != s.a.listenAddr() {
		return fmt.Errorf("%s: main's lock is held by %q (session %q), want A (%s)", when, l.holder, l.session, s.a.listenAddr())
	}
	return nil
}

// startB starts node B after A has bootstrapped main: B finds main in
// Consul and must not bootstrap it (it has no local data of main).
func (s *cluster) startB(ctx context.Context) error {
	px, err := s.startNode(ctx, nodeB)
	if err != nil {
		return err
	}
	s.b = px
	s.rep.nodeB = px.listenAddr()
	log, err := os.ReadFile(px.logPath)
	if err != nil {
		return err
	}
	if s.rep.bootstrappedB = bytes.Contains(log, []byte(logBootstrapping)); s.rep.bootstrappedB {
		return fmt.Errorf("B bootstrapped branch %s although it is in Consul (see %s)", branch, px.logPath)
	}
	info, err := px.branchInfo(ctx, branch)
	if err != nil {
		return fmt.Errorf("B: %w", err)
	}
	s.rep.localBytesB = info.LocalBytes
	return nil
}

// connect times connect + SELECT 1 on A (main's node) and through B
// (relayed to A), taking turns, after an unreported warm-up of each; then
// checks that main ran on A's one compute all along and nowhere on B.
func (s *cluster) connect(ctx context.Context) error {
	ts := []target{
		{name: clusterNameOwner, dsn: s.a.url("disable")},
		{name: clusterNameRelayed, dsn: s.b.url("disable")},
	}
	n := max(s.opts.tries, clusterMinSamples)
	samples := make([][]time.Duration, len(ts))
	for i := -1; i < n; i++ { // try -1 warms up each path
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
		s.rep.connect = append(s.rep.connect, namedStats{t.name, summarize(samples[j])})
	}
	if err := s.checkHolder(ctx, "after the connect samples"); err != nil {
		return err
	}
	st, err := s.a.status(ctx)
	if err != nil {
		return err
	}
	if st.State != "running" || st.PID != s.rep.computePID {
		return fmt.Errorf("A's compute changed during the samples: was pid %d running, now pid %d %s", s.rep.computePID, st.PID, st.State)
	}
	stB, err := s.b.status(ctx)
	if err != nil {
		return fmt.Errorf("B: %w", err)
	}
	s.rep.stateB = stB.State
	if stB.State != "stopped" {
		return fmt.Errorf("B's compute for main is %q; main should run on A only", stB.State)
	}
	return nil
}

// failoverRound is one kill -9 of A's neonproxy.
type failoverRound struct {
	n          int
	computePID int           // A's compute, left orphaned by the kill
	freed      time.Duration // kill → main's lock key without a session
	polls      int           // GETs of the lock key until then
	// computeAlive: A's orphaned compute was still running when the lock
	// was free.
	computeAlive bool
	gone         time.Duration // the bench's kill -9 of the compute's group → reaped
	ready        time.Duration // A's restart → connection string printed
	holds        time.Duration // A's restart → connect + SELECT 1 through A succeeded, A holding main
	attempts     int           // connect attempts until then
	firstErr     string        // the first failed attempt's error
}

// failover kills A's neonproxy (not its compute) clusterFailovers times
// and times how soon Consul frees main's lock; after each, A's orphaned
// compute is killed and A restarted until it holds main again.
func (s *cluster) failover(ctx context.Context) error {
	s.rep.command(fmt.Sprintf("curl %s/v1/branches/%s → compute.pid; kill -9 <A's neonproxy pid>   # not the compute", s.a.admin, branch))
	s.rep.command(fmt.Sprintf("every %s: curl http://%s/v1/kv/%s   # until 404 or no \"Session\"", clusterPollEvery, s.agent.addr, lockKey(branch)))
	s.rep.command(fmt.Sprintf("kill -9 -<compute.pid>; neonproxy serve --config %s   # same config, ports, data dir", s.a.cfgPath))
	s.rep.command(fmt.Sprintf("retry pgx connect + SELECT 1 through A every %s until it succeeds; then A must hold %s", chaosRetryEvery, lockKey(branch)))
	for i := 1; i <= clusterFailovers; i++ {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r, err := s.failoverRound(ctx, i)
		s.rep.failovers = append(s.rep.failovers, r)
		if err != nil {
			return fmt.Errorf("round %d: %w", i, err)
		}
		logf("  round %d: lock free %s after the kill (%d polls), compute alive then: %s; A back holding main after %s",
			i, ms(r.freed), r.polls, yesNo(r.computeAlive), ms(r.holds))
	}
	return nil
}

func (s *cluster) failoverRound(ctx context.Context, n int) (failoverRound, error) {
	r := failoverRound{n: n}
	info, err := s.a.branchInfo(ctx, branch)
	if err != nil {
		return r, err
	}
	if info.Compute.State != "running" || info.Compute.PID <= 0 {
		return r, fmt.Errorf("main's compute on A is %q (pid %d), want running", info.Compute.State, info.Compute.PID)
	}
	r.computePID = info.Compute.PID
	if err := s.checkHolder(ctx, "before the kill"); err != nil {
		return r, err
	}
	s.orphan = r.computePID
	killedAt := time.Now()
	if err := syscall.Kill(s.a.pid(), syscall.SIGKILL); err != nil {
		return r, fmt.Errorf("kill -9 A (%d): %w", s.a.pid(), err)
	}
	r.freed, r.polls, err = s.waitFree(ctx, killedAt)
	r.computeAlive = inGroup(r.computePID) > 0
	if err != nil {
		return r, err
	}
	select {
	case <-s.a.exited:
	case <-time.After(chaosStopLimit):
		return r, errors.New("A still running after SIGKILL")
	}
	start := time.Now()
	if err := killGroup(ctx, r.computePID); err != nil {
		return r, err
	}
	r.gone, s.orphan = time.Since(start), 0

	start = time.Now()
	if err := s.a.restart(ctx); err != nil {
		return r, fmt.Errorf("restart A: %w", err)
	}
	r.ready = time.Since(start)
	conn, attempts, firstErr, err := awaitSelect(ctx, s.a.url("disable"), clusterHoldLimit)
	r.attempts, r.firstErr = attempts, firstErr
	if err != nil {
		return r, fmt.Errorf("main through A after the restart: %w", err)
	}
	closeConn(conn)
	r.holds = time.Since(start)
	return r, s.checkHolder(ctx, "after A's restart")
}

// waitFree polls main's lock key every clusterPollEvery until it has no
// session: the time since killedAt and the polls made.
func (s *cluster) waitFree(ctx context.Context, killedAt time.Time) (time.Duration, int, error) {
	deadline := killedAt.Add(clusterFreeLimit)
	var lastErr error
	for polls := 1; ; polls++ {
		l, err := s.agent.lock(ctx, branch)
		if err == nil && l.session == "" {
			return time.Since(killedAt), polls, nil
		}
		lastErr = err
		if time.Now().After(deadline) {
			return 0, polls, fmt.Errorf("main's lock still held %s after A's kill (session TTL %s; last error: %v)", clusterFreeLimit, router.SessionTTL, lastErr)
		}
		select {
		case <-ctx.Done():
			return 0, polls, ctx.Err()
		case <-time.After(clusterPollEvery):
		}
	}
}

// killGroup kills process group pgid (kill -9 -PGID) and waits until every
// process of it is reaped.
func killGroup(ctx context.Context, pgid int) error {
	if err := syscall.Kill(-pgid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill -9 -%d: %w", pgid, err)
	}
	return waitGroupGone(ctx, pgid, chaosStopLimit)
}

// stop stops the nodes (SIGTERM, SIGKILL after daemonStopLimit; B first),
// A's orphaned compute if a kill left one, the keepers and the pagestore
// (after the nodes, whose computes stream to them), then the agent (which
// exits with status 1 on SIGTERM: normal). Safe to call twice.
func (s *cluster) stop() {
	for _, px := range []*proxy{s.b, s.a} {
		if px != nil && px.daemon != nil {
			px.stop()
		}
	}
	if s.orphan > 0 {
		if err := killGroup(context.Background(), s.orphan); err != nil {
			logf("cluster: A's orphaned compute: %v", err)
		}
		s.orphan = 0
	}
	if s.keepers != nil {
		s.keepers.stop()
	}
	if s.ps != nil {
		s.ps.stop()
	}
	if s.agent != nil {
		s.agent.stop()
	}
}

// processesUnder lists the processes (pid and command) whose command line
// names dir: the nodes, the pagestore and the keepers (--config), the agent
// (-data-dir) and the computes' postmasters (-D); postmasters' children
// die with them.
func processesUnder(dir string) []string {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || !bytes.Contains(b, []byte(dir+"/")) {
			continue
		}
		out = append(out, fmt.Sprintf("%d %s", pid, strings.TrimSpace(string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})))))
	}
	return out
}
