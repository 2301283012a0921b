package main

import (
	"fmt"
	"strconv"
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
	pagestoreAddr string   // the shared standalone pagestore
	keeperAddrs   []string // the shared standalone keepers, wk1, wk2, …
	commitRounds  []commitRound
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
	p("## Cluster (issue 6): Consul mode, relayed connect, lock failover and commit failover")
	p("")
	if c.skipped != "" {
		p("%s", c.skipped)
		return
	}
	p("A Consul dev agent (%s; `consul agent -dev`, every port on 127.0.0.1, DNS and gRPC off, HTTP API %s) and", c.consulVersion, c.consulAddr)
	p("two `neonproxy serve` nodes on it, each with its own data dir and ports, `consul.address` the agent and")
	p("`consul.node` its own `listen` address: A (%s) and B (%s), both with `bootstrap.password` set to one", c.nodeA, orDash(c.nodeB))
	p("generated password. A started first and bootstrapped main (in Consul KV `%s%s`); B started after it.", router.DefaultConsulPrefix, branch)
	if c.pagestoreAddr != "" {
		p("Both nodes share one standalone `neonproxy pagestore` (%s, `pagestore.address`) and %d standalone", c.pagestoreAddr, len(c.keeperAddrs))
		p("`neonproxy walkeeper`s (%s; `walkeeper.peers`, `walkeeper.quorum` %d), each service on 127.0.0.1", strings.Join(c.keeperAddrs, ", "), clusterQuorum)
		p("with its own generated token (`pagestore.token`, `walkeeper.token`): either node can start main.")
	}
	if c.nodeB != "" {
		p("B found main in Consul and did not bootstrap it (its log has no \"bootstrapping branch\"; B's `local_bytes` of main: %d).", c.localBytesB)
	}
	r.printRelay(p)
	r.printFailover(p)
	r.printCommitFailover(p)
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
	p("  (Kept next to part 3 although the storage is shared: it isolates the detection, on an idle cluster, and shows")
	p("  the orphaned compute, which a machine death cannot.)")
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

func (r *report) printCommitFailover(p printer) {
	c := r.cluster
	if len(c.commitRounds) == 0 {
		return
	}
	p("")
	p("### 3. Commit failover: kill -9 of main's node (neonproxy and compute) while clients commit through the other")
	p("")
	p("Each round: main runs on one node, the owner (the holder of main's lock). %d pgx writers insert consecutive ids", commitWriters)
	p("into `%s` (autocommit INSERT, simple protocol) through the other node, relayed to the owner, and reconnect every", commitTable)
	p("%s whenever their connection breaks. After %d acknowledgements, the owner's neonproxy and its compute's process", commitReconnectEvery, commitAcksEach)
	p("group are killed at once (kill -9: a machine death, nothing stopped, nothing stored). The writers go on until %d", commitAcksEach)
	p("more commits are acknowledged on connections opened after the kill, then stop. **Failover** = the first")
	p("acknowledgement on a connection opened after the kill − the last one on a connection opened before it (the killed")
	p("owner served those). Lock columns: main's lock key, polled every %s from the kill, without a session (–: not seen", clusterPollEvery)
	p("between two polls), then held by the survivor. Survivor's start, from its log during the round: main materialized")
	p("from the pagestore, the keepers' WAL replayed, or neither (its local data directory reused); refused = start tries")
	p("refused while the dead node still held the lock (a client connect each); failed = other failed starts. Then")
	p("`SELECT id FROM %s` through the survivor: every id acknowledged so far, all rounds, must be there; main's lock must", commitTable)
	p("be the survivor's. Then the killed node restarts on its config, ports and data dir (its local copy of main kept, as")
	p("after a reboot): it must not bootstrap main again nor take it back (its compute of main `stopped`); the next round")
	p("kills the other node.")
	p("")
	p("| round | killed (owner) | writers via | acks before | acks after | **failover** | kill → first ack after | lock free after kill | lock on survivor after kill | survivor's start | rows | acknowledged so far | missing | lock holder after | killed node restart → ready |")
	p("|---:|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---:|")
	var fo, first, taken []time.Duration
	missing, missingRound, lossRounds, checked := 0, 0, 0, 0
	var missingIDs []int64
	for _, k := range c.commitRounds {
		if f := k.failover(); f > 0 {
			fo = append(fo, f)
		}
		if k.ackedAfter > 0 {
			first = append(first, k.firstAfter)
		}
		if k.lockTaken > 0 {
			taken = append(taken, k.lockTaken)
		}
		rows, acked, miss := "–", "–", "–"
		if k.checked {
			checked++
			rows, acked, miss = strconv.Itoa(k.check.rows), strconv.Itoa(k.check.acked), strconv.Itoa(k.check.missing)
			if k.check.missing > 0 {
				miss = "**" + miss + "**"
				lossRounds++
				if k.check.missing > missing {
					missing, missingRound, missingIDs = k.check.missing, k.n, k.check.missingIDs
				}
			}
		}
		restart := msOrDash(k.restart)
		if k.err != "" {
			restart += " (" + strings.ReplaceAll(k.err, "|", "/") + ")"
		}
		p("| %d | %s | %s | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |", k.n, k.killed, k.via, k.ackedBefore, k.ackedAfter,
			msOrDash(k.failover()), firstAfterCol(k), msOrDash(k.lockFree), msOrDash(k.lockTaken), k.survivorStart(), rows, acked, miss,
			orDash(k.holder), restart)
	}
	if len(fo) > 0 {
		fs, ts := summarize(fo), summarize(taken)
		p("| **median** | | | | | **%s** | %s | | %s | | | | | | |", ms(fs.median), msOrDash(summarize(first).median), msOrDash(ts.median))
		p("| **max** | | | | | **%s** | %s | | %s | | | | | | |", ms(fs.max), msOrDash(summarize(first).max), msOrDash(ts.max))
	}
	p("")
	if len(fo) > 0 {
		fs := summarize(fo)
		p("**Failover (last acknowledged commit before the kill → first after): median %s, max %s** (%d of %d rounds).",
			ms(fs.median), ms(fs.max), fs.n, len(c.commitRounds))
	} else {
		p("**Failover: not measured** (no round had acknowledgements on both sides of the kill; see the problems).")
	}
	switch {
	case missing > 0:
		p("**DATA LOSS — PRODUCT BUG: acknowledged commits missing after %d of %d round(s)**, up to %d in one check (round %d;",
			lossRounds, len(c.commitRounds), missing, missingRound)
		p("first ids %v).", sortedMissing(missingIDs))
	case checked == len(c.commitRounds):
		last := c.commitRounds[len(c.commitRounds)-1].check
		p("Every acknowledged commit was there after every round (%d acknowledged in all, %d rows; unacknowledged INSERTs", last.acked, last.rows)
		p("in flight at the kill may be there too).")
	default:
		p("Acknowledged commits checked after %d of %d rounds (see the problems); none missing in those.", checked, len(c.commitRounds))
	}
	var stale []string
	for _, k := range c.commitRounds {
		if k.check.missing > 0 && k.materialized == 0 {
			stale = append(stale, strconv.Itoa(k.n))
		}
	}
	if len(stale) > 0 {
		p("- Round(s) %s lost commits with main started on the survivor from its own local data directory (no", strings.Join(stale, ", "))
		p("  materialization): the copy it kept from when it last ran main, before the other node committed more.")
	}
	late := 0
	for _, k := range c.commitRounds {
		late += k.late
	}
	if late > 0 {
		p("- %d acknowledgement(s) on connections opened before a kill arrived after it (replies already sent); they count", late)
		p("  as before: the killed owner committed them.")
	}
	for _, k := range c.commitRounds {
		if k.firstErr != "" {
			p("- round %d: the writers' failed connects %d, failed INSERTs %d; the first error after the kill: `%s`", k.n, k.connectFails,
				k.insertFails, strings.ReplaceAll(k.firstErr, "`", "'"))
			break
		}
	}
}

// firstAfterCol is kill → the first acknowledgement after it.
func firstAfterCol(k commitRound) string {
	if k.ackedAfter == 0 {
		return "–"
	}
	return ms(k.firstAfter)
}

// survivorStart describes how main started on the survivor in a round,
// from its log.
func (k commitRound) survivorStart() string {
	var parts []string
	if k.materialized > 0 {
		parts = append(parts, "materialized")
	}
	if k.replayed > 0 {
		parts = append(parts, "WAL replay")
	}
	if len(parts) == 0 {
		parts = append(parts, "local data dir")
	}
	s := strings.Join(parts, " + ")
	if k.refused > 0 {
		s += fmt.Sprintf("; %d refused", k.refused)
	}
	if k.startFailed > 0 {
		s += fmt.Sprintf("; **%d failed**", k.startFailed)
	}
	return s
}
