package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/neonproxy/neonproxy/router"
)

const (
	clusterNameOwner   = "A: owner of main (TCP, SCRAM)"
	clusterNameRelayed = "B → A: relayed (TCP, SCRAM)"
)

// clusterReport is the cluster section's results.
type clusterReport struct {
	skipped       string // why the section did not run (no Consul binary)
	consulVersion string
	consulAddr    string // the agent's HTTP API
	nodeA, nodeB  string // listen = consul.node
	firstStartA   time.Duration
	computePID    int   // main's compute on A during the connect samples
	bootstrappedB bool  // B logged "bootstrapping branch"
	localBytesB   int64 // B's local_bytes of main
	stateB        string
	connect       []namedStats // owner, relayed
	failovers     []failoverRound
	leftover      []string // processes under <tmp>/cluster after stopping
	commands      []string
}

func (r *clusterReport) command(c string) { r.commands = append(r.commands, c) }

func (r *report) printCluster(p printer) {
	c := r.cluster
	if c.skipped == "" && c.consulAddr == "" {
		return
	}
	p("")
	p("## Cluster (issue 6): Consul mode, relayed connect and lock failover")
	p("")
	if c.skipped != "" {
		p("%s", c.skipped)
		return
	}
	p("A Consul dev agent (%s; `consul agent -dev`, every port on 127.0.0.1, DNS and gRPC off, HTTP API %s) and", c.consulVersion, c.consulAddr)
	p("two `neonproxy serve` nodes on it, each with its own data dir and ports, `consul.address` the agent and")
	p("`consul.node` its own `listen` address: A (%s) and B (%s), both with `bootstrap.password` set to one", c.nodeA, orDash(c.nodeB))
	p("generated password. A started first and bootstrapped main (in Consul KV `%s%s`); B started after it.", router.DefaultConsulPrefix, branch)
	if c.nodeB != "" {
		p("B found main in Consul and did not bootstrap it (its log has no \"bootstrapping branch\"; B's `local_bytes` of main: %d).", c.localBytesB)
	}
	r.printRelay(p)
	r.printFailover(p)
	if len(c.leftover) > 0 {
		p("")
		p("**Processes left after stopping everything:** %s", strings.Join(c.leftover, "; "))
	}
	printCommands(p, "cluster", c.commands...)
}

func (r *report) printRelay(p printer) {
	c := r.cluster
	if len(c.connect) == 0 {
		return
	}
	p("")
	p("### 1. Connect through main's node and through another node")
	p("")
	p("The first query through A started main's compute on A (%s; A then holds main's lock). Then each path %d", ms(c.firstStartA), c.connect[0].s.n)
	p("times, taking turns, after one unreported warm-up each: pgx connect + `SELECT 1` (simple protocol,")
	p("sslmode=disable; timed to the first row, the close after it is not timed). B relays to A's front door,")
	p("where A authenticates the client.")
	p("")
	statsHeader(p, "path")
	for _, s := range c.connect {
		statsRow(p, s.name, s.s)
	}
	owner, ok1 := findStats(c.connect, clusterNameOwner)
	relayed, ok2 := findStats(c.connect, clusterNameRelayed)
	if !ok1 || !ok2 {
		return
	}
	p("")
	p("- relayed / owner: median %s (%s), p90 %s (%s).",
		ratio(float64(relayed.median), float64(owner.median)), delta(relayed.median-owner.median),
		ratio(float64(relayed.p90), float64(owner.p90)), delta(relayed.p90-owner.p90))
	if c.stateB != "" {
		p("- After the samples: main's lock still held by A, A's compute the same process (pid %d), B's compute for main `%s`.",
			c.computePID, c.stateB)
	}
}

func (r *report) printFailover(p printer) {
	c := r.cluster
	if len(c.failovers) == 0 {
		return
	}
	p("")
	p("### 2. Lock failover detection: kill -9 of A's neonproxy → main's lock free in Consul")
	p("")
	p("Each round, with main's compute running on A: `compute.pid` from A's `GET /v1/branches/%s`, then kill -9 of", branch)
	p("A's neonproxy process only, then `GET /v1/kv/%s` every %s until the key has no `Session`", lockKey(branch), clusterPollEvery)
	p("(404 or no field): **freed** = kill → that answer. A's compute is killed by nobody (its node is dead), so")
	p("it stays running, orphaned; after the measurement the bench kills its process group (kill -9 -PID) and waits")
	p("until it is reaped, restarts A on the same config and data dir, and retries connect + `SELECT 1` through A")
	p("(every %s) until it succeeds, A holding main's lock again (crash recovery of main included).", chaosRetryEvery)
	p("")
	p("| round | compute pid | freed after kill | polls | compute alive when freed | A restart → ready | A restart → holds main | connect attempts |")
	p("|---:|---:|---:|---:|---|---:|---:|---:|")
	var freed, holds []time.Duration
	alive := 0
	for _, f := range c.failovers {
		if f.freed > 0 {
			freed = append(freed, f.freed)
		}
		if f.holds > 0 {
			holds = append(holds, f.holds)
		}
		if f.computeAlive {
			alive++
		}
		p("| %d | %d | %s | %d | %s | %s | %s | %d |", f.n, f.computePID, msOrDash(f.freed), f.polls, yesNo(f.computeAlive),
			msOrDash(f.ready), msOrDash(f.holds), f.attempts)
	}
	p("")
	if len(freed) == 0 {
		return
	}
	s := summarize(freed)
	p("**Lock freed after the kill: median %s, max %s** (%d rounds), against the session TTL of %s: without the",
		ms(s.median), ms(s.max), s.n, router.SessionTTL)
	p("front-door health check (which each node registers in Consul and ties its lock sessions to) a dead node's")
	p("branches would stay locked until its session expired, between %s and %s after its last renewal.", router.SessionTTL, 2*router.SessionTTL)
	if len(holds) > 0 {
		p("A restarted and holding main again: median %s.", ms(summarize(holds).median))
	}
	p("- Freed ≈ the check's 1 s interval (it connects to the front door, timeout 1 s) + Consul ending the sessions,")
	p("  ± the %s poll: the kill can fall anywhere within an interval.", clusterPollEvery)
	p("- A's compute was still running when main's lock was free in %d of %d rounds: until the bench killed it, a", alive, len(c.failovers))
	p("  compute outlived its node's lock: a live node that loses a lock kills that compute itself, a killed one cannot.")
	var retried []string
	for _, f := range c.failovers {
		if f.attempts > 1 {
			retried = append(retried, fmt.Sprintf("round %d: %d", f.n, f.attempts))
		}
	}
	if len(retried) > 0 {
		n, msg := firstRetryError(c.failovers)
		msg = strings.ReplaceAll(msg, "`", "'") // inside a code span
		p("- A needed more than one connect attempt after its restart (%s); the first error (round %d): `%s`", strings.Join(retried, ", "), n, msg)
	}
}

// firstRetryError is the first failed connect attempt after a restart of
// A: its round and error.
func firstRetryError(fs []failoverRound) (int, string) {
	for _, f := range fs {
		if f.firstErr != "" {
			return f.n, f.firstErr
		}
	}
	return 0, ""
}

func orDash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}
