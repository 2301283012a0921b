// Command bench measures neonproxy against direct PostgreSQL and PgBouncer:
// cold wake (stopped compute → first row), warm connection setup, and pgbench
// throughput / per-query latency; the resume latency of each tier an
// unused compute steps down to (idle, suspended, zero); what predictive
// pre-warm does for a periodic workload (hit rate, extra compute time); and neonproxy's
// branches (create latency, storage, cold and warm start); and durability (kill -9 of neonproxy and the
// compute with the local data lost, then a check that every acknowledged
// commit is back; commit latency with and without the WAL keeper's wait,
// and with three standalone keepers, quorum 2). It
// starts its own neonproxy (and
// PgBouncer) on free 127.0.0.1 ports in a temporary data directory and prints
// a plain-text report. Timings are never pass/fail; the exit status is
// non-zero only when the harness itself fails.
//
//	go run ./bench -neonproxy ./bin/neonproxy [-tries 25] [-duration 15s] [-quick] [-only pooling,branching,durability,cluster,tiers,prewarm,storm,soak,serverless,agents]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Sections of the report that -only selects.
const (
	sectionLatency    = "latency"    // cold wake, warm connect, round trips
	sectionPgbench    = "pgbench"    // session-mode pgbench -S and -S -C
	sectionPooling    = "pooling"    // -pooler route vs PgBouncer transaction mode, idle clients
	sectionBranching  = "branching"  // branch create latency, storage, cold/warm start (own neonproxy)
	sectionDurability = "durability" // crash cycles with lost local data, commit latency (own neonproxy)
	sectionCluster    = "cluster"    // Consul mode: relayed connect, lock failover (own agent, two nodes)
	sectionTiers      = "tiers"      // resume latency per tier: hot, warm, cold (own neonproxy)
	sectionPrewarm    = "prewarm"    // a periodic workload with predictive pre-warm off and on (own neonproxy)
	sectionStorm      = "storm"      // wake storm: many stopped branches connected to at once under compute.max_running (own neonproxy)
	sectionSoak       = "soak"       // idle clients held for minutes under steady queries: fds, goroutines, RSS; max_client_conn (own neonproxy)
	sectionServerless = "serverless" // http_listen: POST /sql vs pgwire over TCP, round trip and throughput (own neonproxy)
	sectionAgents     = "agents"     // short-lived branches with a TTL at a fixed arrival rate: latency, reaper, storage back (own neonproxy)
)

var allSections = []string{sectionLatency, sectionPgbench, sectionPooling, sectionBranching, sectionDurability, sectionCluster, sectionTiers, sectionPrewarm, sectionStorm, sectionSoak, sectionServerless, sectionAgents}

// options are the command-line flags.
type options struct {
	neonproxy     string
	tries         int
	duration      time.Duration
	connDuration  time.Duration // pgbench -C runs
	clients       int
	keep          bool
	skipPgBouncer bool
	quick         bool
	rounds        int      // pooling: alternating rounds per workload
	idleClients   int      // pooling: idle client connections for the memory measure
	poolSize      int      // pooling: neonproxy pool.default_pool_size and PgBouncer default_pool_size
	sections      []string // from -only; all when the flag is empty
	// floor, floorListen, floorSocket: run as a floor pooler (floor.go),
	// the pooling section's child process, instead of a bench.
	floor, floorListen, floorSocket string
	bigScale                        int   // branching: pgbench scale of the big parent
	chaosCycles                     int   // durability: kill/recover cycles
	chaosSeed                       int64 // durability: seed of the kill delays (0: from the clock)
	keeperKills                     int   // durability: kill -9 rounds of a standalone keeper (0: none)
	// durabilityRounds is the durability section's pgbench rounds: -rounds,
	// or 1 with -quick when -rounds is not given.
	durabilityRounds int
	// proxyLogLevel is neonproxy's log.level (empty: warn); the branching
	// section sets info for the "data directory materialized" lines.
	proxyLogLevel string
	// walkeeperPeers and walkeeperQuorum are neonproxy's walkeeper.peers
	// and walkeeper.quorum (no peers: the embedded keeper); the durability
	// section sets them for its standalone-keepers variant.
	walkeeperPeers  []string
	walkeeperQuorum int
	// consulAddress is neonproxy's consul.address (empty: no Consul;
	// consul.node is then the node's listen address) and
	// bootstrapPassword its bootstrap.password (empty: generated); the
	// cluster section sets both, so that every node knows main's password.
	consulAddress     string
	bootstrapPassword string
	// walkeeperToken is neonproxy's walkeeper.token (sent to the standalone
	// keepers), pagestoreAddress and pagestoreToken its pagestore.address
	// (a standalone `neonproxy pagestore`; empty: its own store) and
	// pagestore.token; the cluster section sets them for its shared
	// storage.
	walkeeperToken   string
	pagestoreAddress string
	pagestoreToken   string
	// walkeeperViaFrontDoor is walkeeper.via_front_door: the keepers
	// stream computes through the node's front door.
	walkeeperViaFrontDoor bool
	// idleAfter, suspendTimeout and offloadAfter are neonproxy's
	// compute.idle_after, compute.suspend_timeout (0: 1h) and
	// compute.offload_after (0: not written, neonproxy's defaults); the
	// tiers section sets them so that every tier is reached in seconds.
	idleAfter, suspendTimeout, offloadAfter time.Duration
	// prewarmOff writes compute.prewarm: false (predictive pre-warm would
	// wake a compute ahead of a try the bench times from a tier).
	prewarmOff bool
	// prewarmOn writes compute.prewarm: true (neonproxy's default, written
	// out for the prewarm section) and noIdleTier compute.idle_after: 0 (no
	// idle tier: an unused compute is suspended after suspend_timeout).
	prewarmOn, noIdleTier bool
	// stormBranches and stormMaxRunning are the storm section's branches
	// (one client each) and its neonproxy's compute.max_running.
	stormBranches, stormMaxRunning int
	// soakIdle and soakActive are the soak section's idle and querying
	// clients, soakDuration how long the queries run.
	soakIdle, soakActive int
	soakDuration         time.Duration
	// serverlessTries, serverlessClients and serverlessDuration are the
	// serverless section's round trips per path, its concurrent clients
	// and the length of each concurrent run.
	serverlessTries, serverlessClients int
	serverlessDuration                 time.Duration
	// agentsBranches, agentsDuration, agentsTTL and agentsMaxRunning are
	// the agents section's arrivals (one branch each), the time they are
	// spread over, the TTL of the expiring half and its neonproxy's
	// compute.max_running.
	agentsBranches, agentsMaxRunning int
	agentsDuration, agentsTTL        time.Duration
}

// has reports whether section s runs.
func (o options) has(s string) bool { return slices.Contains(o.sections, s) }

// needsMainProxy reports whether a section that shares the main neonproxy
// (all but branching, which starts its own) runs.
func (o options) needsMainProxy() bool {
	return o.has(sectionLatency) || o.has(sectionPgbench) || o.has(sectionPooling)
}

func parseFlags() (options, error) {
	var o options
	flag.StringVar(&o.neonproxy, "neonproxy", "./bin/neonproxy", "path to the neonproxy binary")
	flag.IntVar(&o.tries, "tries", 25, "samples for the cold-wake and warm-connect measurements (cluster: at least 40; tiers: at least 20 per tier and path)")
	flag.DurationVar(&o.duration, "duration", 15*time.Second, "length of each pgbench -S run")
	flag.IntVar(&o.clients, "clients", 8, "pgbench clients (-c)")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory (logs, data) after the run")
	flag.BoolVar(&o.skipPgBouncer, "skip-pgbouncer", false, "do not run the PgBouncer comparison")
	flag.BoolVar(&o.quick, "quick", false, "smoke run: -tries 5 -duration 3s -rounds 2 (durability: 1) -idle-clients 1000 -branch-big-scale 8 -chaos-cycles 3 -keeper-kills 2 -storm-branches 40 -soak-idle 1000 -soak-duration 1m -serverless-tries 300 -serverless-duration 5s -agents-branches 40 -agents-duration 30s -agents-ttl 30s (explicit flags win)")
	flag.IntVar(&o.rounds, "rounds", 3, "pooling: runs per path and workload, alternating neonproxy, PgBouncer, direct")
	flag.IntVar(&o.idleClients, "idle-clients", 10000, "pooling: idle client connections opened for the memory-per-client measure")
	flag.IntVar(&o.poolSize, "pool-size", 20, "pooling: server connections per pool (neonproxy pool.default_pool_size, PgBouncer default_pool_size)")
	flag.IntVar(&o.bigScale, "branch-big-scale", 64, "branching: pgbench scale of the big parent (64 ≈ 1 GB)")
	flag.IntVar(&o.chaosCycles, "chaos-cycles", 20, "durability: kill -9 / lose local data / recover cycles")
	flag.Int64Var(&o.chaosSeed, "chaos-seed", 0, "durability: seed of the random kill delays (0: from the clock; the report prints it)")
	flag.IntVar(&o.keeperKills, "keeper-kills", 10, "durability: rounds of kill -9 of one standalone keeper under writes, then restart (0: none)")
	flag.IntVar(&o.stormBranches, "storm-branches", stormDefaultBranches, "storm: stopped branches connected to at once, one client each")
	flag.IntVar(&o.stormMaxRunning, "storm-max-running", stormDefaultMaxRunning, "storm: compute.max_running of the section's neonproxy")
	flag.IntVar(&o.soakIdle, "soak-idle", 10000, "soak: idle clients held for the whole soak")
	flag.IntVar(&o.soakActive, "soak-active", 50, "soak: clients sending a steady stream of SELECT 1")
	flag.DurationVar(&o.soakDuration, "soak-duration", 10*time.Minute, "soak: how long the active clients query while the idle ones stay connected")
	flag.IntVar(&o.serverlessTries, "serverless-tries", serverlessDefaultTries, "serverless: sequential queries per path for the round trip")
	flag.IntVar(&o.serverlessClients, "serverless-clients", serverlessDefaultClients, "serverless: concurrent clients per path for the throughput runs")
	flag.DurationVar(&o.serverlessDuration, "serverless-duration", serverlessDefaultDuration, "serverless: length of each throughput run")
	flag.IntVar(&o.agentsBranches, "agents-branches", agentsDefaultBranches, "agents: branches created (one agent each) at a fixed rate over -agents-duration")
	flag.DurationVar(&o.agentsDuration, "agents-duration", agentsDefaultDuration, "agents: time the arrivals are spread over")
	flag.DurationVar(&o.agentsTTL, "agents-ttl", agentsDefaultTTL, "agents: TTL of the even-numbered branches, left to expire (odd ones are deleted explicitly)")
	flag.IntVar(&o.agentsMaxRunning, "agents-max-running", agentsDefaultMaxRunning, "agents: compute.max_running of the section's neonproxy")
	flag.StringVar(&o.floor, "floor", "", "internal: serve as the pooling section's floor pooler of this mode ("+floorGoroutine+" or "+floorEventLoop+") on -floor-listen, with -pool-size connections to -floor-socket")
	flag.StringVar(&o.floorListen, "floor-listen", "", "internal: -floor's TCP address")
	flag.StringVar(&o.floorSocket, "floor-socket", "", "internal: -floor's PostgreSQL unix socket path")
	only := flag.String("only", "", "comma-separated sections to run: "+strings.Join(allSections, ", ")+" (default: all)")
	flag.Parse()
	if flag.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %v", flag.Args())
	}
	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	o.durabilityRounds = o.rounds
	if o.quick {
		if !set["rounds"] {
			o.durabilityRounds = 1
		}
		quick := map[string]func(){
			"tries":            func() { o.tries = 5 },
			"duration":         func() { o.duration = 3 * time.Second },
			"rounds":           func() { o.rounds = 2 },
			"idle-clients":     func() { o.idleClients = 1000 },
			"branch-big-scale": func() { o.bigScale = 8 },
			"chaos-cycles":     func() { o.chaosCycles = 3 },
			"keeper-kills":     func() { o.keeperKills = 2 },
			"storm-branches":   func() { o.stormBranches = stormQuickBranches },
			"soak-idle":        func() { o.soakIdle = 1000 },
			"soak-duration":    func() { o.soakDuration = time.Minute },
		}
		for name, apply := range quick {
			if !set[name] {
				apply()
			}
		}
		if !set["serverless-tries"] {
			o.serverlessTries = serverlessQuickTries
		}
		if !set["serverless-duration"] {
			o.serverlessDuration = serverlessQuickDuration
		}
		if !set["agents-branches"] {
			o.agentsBranches = agentsQuickBranches
		}
		if !set["agents-duration"] {
			o.agentsDuration = agentsQuickDuration
		}
		if !set["agents-ttl"] {
			o.agentsTTL = agentsQuickTTL
		}
	}
	if o.tries < 1 || o.clients < 1 || o.duration < time.Second {
		return o, errors.New("-tries and -clients must be ≥ 1 and -duration ≥ 1s")
	}
	if o.stormBranches < 1 || o.stormMaxRunning < 1 {
		return o, errors.New("-storm-branches and -storm-max-running must be ≥ 1")
	}
	if o.soakIdle < 1 || o.soakActive < 1 || o.soakDuration < 2*soakSampleEvery {
		return o, fmt.Errorf("-soak-idle and -soak-active must be ≥ 1 and -soak-duration ≥ %s", 2*soakSampleEvery)
	}
	if o.serverlessTries < 1 || o.serverlessClients < 1 || o.serverlessDuration < time.Second {
		return o, errors.New("-serverless-tries and -serverless-clients must be ≥ 1 and -serverless-duration ≥ 1s")
	}
	if o.agentsBranches < 1 || o.agentsMaxRunning < 1 || o.agentsDuration < time.Second || o.agentsTTL < time.Second {
		return o, errors.New("-agents-branches and -agents-max-running must be ≥ 1, -agents-duration and -agents-ttl ≥ 1s")
	}
	if o.keeperKills < 0 {
		return o, errors.New("-keeper-kills must be ≥ 0")
	}
	if o.rounds < 1 || o.idleClients < 0 || o.poolSize < 1 || o.bigScale < 1 || o.chaosCycles < 1 {
		return o, errors.New("-rounds, -pool-size, -branch-big-scale and -chaos-cycles must be ≥ 1 and -idle-clients ≥ 0")
	}
	var err error
	if o.sections, err = parseSections(*only); err != nil {
		return o, err
	}
	o.connDuration = min(o.duration, 10*time.Second)
	return o, nil
}

// parseSections reads -only: a comma-separated list of section names, or
// empty for all of them.
func parseSections(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return slices.Clone(allSections), nil
	}
	var out []string
	for _, name := range strings.Split(s, ",") {
		name = strings.TrimSpace(name)
		if !slices.Contains(allSections, name) {
			return nil, fmt.Errorf("-only: unknown section %q (have %s)", name, strings.Join(allSections, ", "))
		}
		if !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	return out, nil
}

// raiseFileLimit lifts the soft RLIMIT_NOFILE to the hard limit, so that the
// bench can hold -idle-clients connections. Setting it explicitly (not only
// the Go runtime's own raise) makes neonproxy and PgBouncer inherit it.
func raiseFileLimit() (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("getrlimit NOFILE: %w", err)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("setrlimit NOFILE %d: %w", lim.Max, err)
	}
	return lim.Cur, nil
}

func main() {
	o, err := parseFlags()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if o.floor != "" {
		err := runFloor(o.floor, o.floorListen, o.floorSocket, o.poolSize)
		fmt.Fprintln(os.Stderr, "bench -floor:", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench: FAILED:", err)
		stop()
		os.Exit(1)
	}
}

// run sets up the environment, runs every phase and prints the report. Setup
// failures of neonproxy are fatal; failures of single phases are recorded in
// the report and make the run fail at the end.
func run(ctx context.Context, o options) (err error) {
	nofile, err := raiseFileLimit()
	if err != nil {
		logf("%v (keeping the current limit)", err)
	}
	env, err := newEnv(o)
	if err != nil {
		return err
	}
	defer env.cleanup()

	b := &bench{opts: o, env: env, rep: newReport(o), nofile: nofile}
	if o.needsMainProxy() {
		// No idle tier on the main neonproxy: its compute also serves
		// PgBouncer, the floors and direct, whose runs leave neonproxy
		// without a client for longer than compute.idle_after, and a
		// frozen compute serves none of them.
		mo := o
		mo.noIdleTier = true
		px, err := startProxy(ctx, mo, env)
		if err != nil {
			return err
		}
		defer px.stop()
		b.proxy = px
		b.runPhases(ctx)
		// Stopped before the branching section, so that its idle compute
		// and its store take no part in that section's numbers.
		px.stop()
	}
	if o.has(sectionBranching) {
		b.runBranching(ctx)
	}
	if o.has(sectionDurability) {
		b.runDurability(ctx)
	}
	if o.has(sectionCluster) {
		b.runCluster(ctx)
	}
	if o.has(sectionTiers) {
		b.runTiers(ctx)
	}
	if o.has(sectionPrewarm) {
		b.runPrewarm(ctx)
	}
	var storm *stormReport
	if o.has(sectionStorm) {
		storm = b.runStorm(ctx)
	}
	var soak *soakReport
	if o.has(sectionSoak) {
		soak = b.runSoak(ctx)
	}
	var serverless *serverlessReport
	if o.has(sectionServerless) {
		serverless = b.runServerless(ctx)
	}
	var agents *agentsReport
	if o.has(sectionAgents) {
		agents = b.runAgents(ctx)
	}
	b.rep.print(os.Stdout)
	storm.print(os.Stdout) // after the report (its problems are listed there)
	soak.print(os.Stdout)  // likewise
	serverless.print(os.Stdout)
	agents.print(os.Stdout)
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted: %w", context.Cause(ctx))
	}
	if n := len(b.rep.problems); n > 0 {
		return fmt.Errorf("%d phase(s) failed (see report)", n)
	}
	return nil
}
