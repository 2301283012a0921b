package main

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"
)

// durabilityReport is the durability section's results.
type durabilityReport struct {
	admin           string // the section's admin API, for the printed requests
	port            int
	seed            int64
	cycles          []chaosCycle
	missingIDs      []int64 // the first chaosMissingShown distinct missing ids
	distinctMissing int
	missingSeen     map[int64]bool
	// From neonproxy's log, for the chaos branch.
	logReplays, logMaterialized, logStartFailed int
	settings                                    []kv   // SHOW … on the tpcb branch, default options
	replication                                 string // pg_stat_replication of the tpcb compute
	modes                                       []commitModeResult
	// The standalone keepers' variant: their HTTP addresses, and SHOW
	// synchronous_standby_names and pg_stat_replication of its compute.
	keeperAddrs           []string
	standbyNames          string
	standaloneReplication string
	// Keeper loss on the standalone keepers' serve: its port, the rounds,
	// and the final check of the acknowledged ids.
	keeperLossPort       int
	keeperLoss           []keeperLossRound
	keeperLossChecked    bool
	keeperLossAcked      int
	keeperLossRows       int
	keeperLossMissing    int
	keeperLossMissingIDs []int64
	commands             []string
	notes                []string
}

func (r *durabilityReport) command(c string) {
	if c != "" {
		r.commands = append(r.commands, c)
	}
}

func (r *durabilityReport) note(s string) { r.notes = append(r.notes, s) }

// noteMissing records an acknowledged id that a recovery did not return
// (counted once however many checks miss it).
func (r *durabilityReport) noteMissing(id int64) {
	if r.missingSeen == nil {
		r.missingSeen = map[int64]bool{}
	}
	if r.missingSeen[id] {
		return
	}
	r.missingSeen[id] = true
	r.distinctMissing++
	if len(r.missingIDs) < chaosMissingShown {
		r.missingIDs = append(r.missingIDs, id)
	}
}

func (r *report) printDurability(p printer) {
	d := r.durability
	if d.admin == "" {
		return
	}
	p("")
	p("## Durability (issue 5): crash cycles with lost local data, commit latency, keeper loss")
	p("")
	p("A separate neonproxy (own data dir, log.level info, same config otherwise) with its embedded WAL keeper")
	p("(quorum 1): computes stream WAL to it as a synchronous standby, so a COMMIT returns once the keeper fsynced it.")
	r.printChaos(p)
	r.printCommitLatency(p)
	r.printKeeperLoss(p)
	for _, n := range d.notes {
		p("- note: %s", n)
	}
	printCommands(p, "durability", d.commands...)
}

func (r *report) printChaos(p printer) {
	d := r.durability
	if len(d.cycles) == 0 {
		return
	}
	p("")
	p("### 1. Chaos cycles: kill -9 neonproxy and the compute together, delete the local data directory, restart")
	p("")
	p("Each cycle: %d pgx writers (TCP, SCRAM, database %s) insert consecutive ids into `acked`, one autocommit", chaosWriters, chaosBranch)
	p("INSERT at a time; an id counts as acknowledged once its INSERT returned success. After a random delay")
	p("(%s–%s, seed %d) neonproxy (SIGKILL) and the compute's postmaster process group (kill -9 -PID, pid from", chaosDelayMin, chaosDelayMax, d.seed)
	p("the branch JSON read just before) are killed; then `<data_dir>/computes/branches/%s` is deleted and", chaosBranch)
	p("neonproxy restarted on the same config. Recovery = restart → first successful `SELECT 1` on the branch")
	p("(neonproxy start, materialization of the stored image, replay of the keeper's WAL, connect); then every")
	p("acknowledged id so far must be in `SELECT id FROM acked`. Extra = this cycle's unacknowledged INSERTs")
	p("(in flight at the kill) whose commit survived: allowed. Processes gone = kill → neonproxy exited and every")
	p("process of the compute's group reaped (zombies included: this VM's init reaps orphans about once a second,")
	p("and until then PostgreSQL's socket lock check sees the dead postmaster as alive); the restart waits for it.")
	p("")
	if d.distinctMissing > 0 {
		p("**DATA LOSS — PRODUCT BUG: %d acknowledged commit(s) missing after recovery.** First ids: %v.",
			d.distinctMissing, sortedMissing(d.missingIDs))
		p("")
	}
	p("| cycle | kill after | compute pid | processes gone | local dir deleted | acked | unacked | rows after | missing (this cycle) | missing (earlier) | extra | neonproxy ready | recovery |")
	p("|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
	var totalAcked, totalUnacked, totalExtra, unknown int
	var rec, ready []time.Duration
	var preKill []string
	recovered := 0
	for _, c := range d.cycles {
		totalAcked += c.acked
		totalUnacked += c.unacked
		unknown += c.unknown
		for _, e := range c.preKillErrs {
			preKill = append(preKill, fmt.Sprintf("cycle %d: %s", c.n, e))
		}
		if c.recovery == 0 { // did not recover: the phase failed here
			p("| %d | %s | %d | %s | %s | %d | %d | – | – | – | – | %s | **not recovered** |", c.n, ms(c.delay), c.computePID,
				msOrDash(c.gone), yesNo(c.dirExisted), c.acked, c.unacked, msOrDash(c.ready))
			continue
		}
		recovered++
		totalExtra += c.extra
		rec, ready = append(rec, c.recovery), append(ready, c.ready)
		miss := fmt.Sprint(c.missingNew)
		if c.missingNew > 0 {
			miss = "**" + miss + "**"
		}
		old := fmt.Sprint(c.missingOld)
		if c.missingOld > 0 {
			old = "**" + old + "**"
		}
		p("| %d | %s | %d | %s | %s | %d | %d | %d | %s | %s | %d | %s | %s |", c.n, ms(c.delay), c.computePID, ms(c.gone), yesNo(c.dirExisted),
			c.acked, c.unacked, c.rows, miss, old, c.extra, ms(c.ready), ms(c.recovery))
	}
	missing := fmt.Sprintf("**%d**", d.distinctMissing)
	p("| **%d cycles (%d recovered)** | | | | | **%d** | %d | | %s (distinct ids) | | %d | median %s | median %s |",
		len(d.cycles), recovered, totalAcked, totalUnacked, missing, totalExtra, msOrDash(summarize(ready).median), msOrDash(summarize(rec).median))
	p("")
	if len(rec) > 0 {
		s := summarize(rec)
		p("Recovery time over %d cycles: median %s, p90 %s, min %s, max %s.", s.n, ms(s.median), ms(s.p90), ms(s.min), ms(s.max))
	}
	if d.distinctMissing == 0 && recovered == len(d.cycles) {
		p("Every acknowledged commit (%d over %d cycles) was there after every recovery.", totalAcked, len(d.cycles))
	}
	p("- neonproxy's log for branch %s: %d \"data directory materialized\", %d \"replaying WAL from the keepers on top of",
		chaosBranch, d.logMaterialized, d.logReplays)
	p("  the stored image\", %d \"compute start failed\" (the first materialization is the branch's first start).", d.logStartFailed)
	if unknown > 0 {
		p("- **%d row(s) with ids the writers never sent** (should be 0).", unknown)
	}
	if len(preKill) > 0 {
		p("- writer errors before the kill (the writer stopped early): %s", strings.Join(preKill, "; "))
	}
	for _, c := range d.cycles {
		if c.postKillErr != "" {
			p("- a writer's error after the kill (cycle %d): `%s`", c.n, c.postKillErr)
			break
		}
	}
	var attempts []string
	for _, c := range d.cycles {
		if c.connectAttempts > 1 {
			attempts = append(attempts, fmt.Sprintf("cycle %d: %d (first error: %s)", c.n, c.connectAttempts, c.firstConnectFail))
		}
	}
	if len(attempts) > 0 {
		p("- recovery needed more than one connect attempt (every %s): %s", ms(chaosRetryEvery), strings.Join(attempts, "; "))
	}
}

func (r *report) printCommitLatency(p printer) {
	d := r.durability
	if len(d.modes) == 0 {
		return
	}
	p("")
	p("### 2. Commit latency: pgbench TPC-B (`-s %d`, `-c %d -j %d -T %d -n`) through neonproxy, branch %s",
		tpcbScale, tpcbClients, tpcbThreads, int(r.opts.duration.Round(time.Second)/time.Second), tpcbBranch)
	p("")
	p("Medians over %d round(s), the variants taking turns in each round; a 2 s unreported warm-up with the default first.", r.opts.durabilityRounds)
	p("Each variant's setting is chosen per connection with PGOPTIONS, which neonproxy passes to the compute. The last")
	p("variant runs on a second neonproxy serve (own data dir and ports, running meanwhile) whose `walkeeper.peers`")
	p("lists %d standalone `neonproxy walkeeper` processes with `walkeeper.quorum: %d`: a commit waits for %d of their fsyncs.",
		standaloneKeepers, standaloneQuorum, standaloneQuorum)
	p("")
	p("| synchronous_commit (PGOPTIONS) | compute saw | runs | TPS (median) | latency avg (median) | TPS per run | failed tx |")
	p("|---|---|---:|---:|---:|---|---:|")
	for _, m := range d.modes {
		tps, lat := m.medians()
		var per []string
		var failed int64
		for _, run := range m.runs {
			per = append(per, fmt.Sprintf("%.0f", run.tps))
			failed += run.failed
		}
		opts := m.pgoptions
		if opts == "" {
			opts = "(none)"
		}
		tpsCol, latCol := "–", "–"
		if len(m.runs) > 0 {
			tpsCol, latCol = fmt.Sprintf("%.0f", tps), fmt.Sprintf("%.3f ms", lat)
		}
		p("| %s `%s` | %s | %d | %s | %s | %s | %d |", m.name, opts, cmp.Or(m.seen, "?"), len(m.runs), tpsCol, latCol, strings.Join(per, ", "), failed)
	}
	p("")
	keeperTPS, keeperLat := d.modes[0].medians()
	for _, m := range d.modes[1:] {
		tps, lat := m.medians()
		if tps == 0 || keeperTPS == 0 {
			continue
		}
		if m.standalone {
			p("- %d standalone keepers (quorum %d) vs the embedded keeper: latency %+.3f ms per transaction, TPS %s",
				standaloneKeepers, standaloneQuorum, lat-keeperLat, ratio(tps, keeperTPS))
			continue
		}
		p("- keeper wait vs %s: latency %+.3f ms per transaction, TPS %s", m.name, keeperLat-lat, ratio(keeperTPS, tps))
	}
	if len(d.settings) > 0 {
		var s []string
		for _, kv := range d.settings {
			s = append(s, fmt.Sprintf("%s=%s", kv.key, kv.value))
		}
		p("- compute settings (SHOW, default connection): %s.", strings.Join(s, ", "))
	}
	if d.replication != "" {
		p("- pg_stat_replication of the compute: %s.", d.replication)
	}
	if len(d.keeperAddrs) > 0 {
		p("- standalone keepers (wk1, wk2, …): %s.", strings.Join(d.keeperAddrs, ", "))
	}
	if d.standbyNames != "" {
		verdict := "as expected"
		if want := wantStandbyNames(); d.standbyNames != want {
			verdict = fmt.Sprintf("**expected '%s'**", want)
		}
		p("- standalone keepers' compute: `SHOW synchronous_standby_names` through neonproxy = '%s' (%s); pg_stat_replication: %s.",
			d.standbyNames, verdict, d.standaloneReplication)
	}
	p("- `local` waits for the compute's own WAL fsync only (with fsync=on); `off` waits for nothing, a crash can")
	p("  lose the last transactions (never corrupts). The default waits for the compute's fsync and the keeper's;")
	p("  with standalone keepers, for the fastest %d of %d keepers' fsyncs (each a separate process with its own pebble", standaloneQuorum, standaloneKeepers)
	p("  store and replication connection to the compute; all on this machine's disk and CPUs).")
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func msOrDash(d time.Duration) string {
	if d == 0 {
		return "–"
	}
	return ms(d)
}

func (r *report) printKeeperLoss(p printer) {
	d := r.durability
	if len(d.keeperLoss) == 0 {
		return
	}
	p("")
	p("### 3. Keeper loss: kill -9 one of the %d standalone keepers (quorum %d) under writes, restart it", standaloneKeepers, standaloneQuorum)
	p("")
	p("On the standalone keepers' serve (section 2), branch %s: %d pgx writers insert consecutive ids into `acked`", keeperLossBranch, chaosWriters)
	p("(one autocommit INSERT at a time, as fast as they can). %s after they start, one keeper is killed (kill -9;", keeperLossBefore)
	p("wk1, wk2, wk3 in turn); they write on for %s, then stop. Window = %s before the kill to %s after:", keeperLossWindow, keeperLossLead, keeperLossWindow)
	p("commits = INSERTs acknowledged in it, longest = the longest INSERT overlapping it (a commit waits for %d keepers'", standaloneQuorum)
	p("fsyncs). Then the keeper is restarted (same config, port, data dir); back to streaming = restart → the branch JSON")
	p("(`wal_keeper.keepers[]`) shows it `streaming`; caught up = restart → its `GET /v1/wal/<timeline>` flush ≥ the other")
	p("keepers' (checked for at most %s after streaming; no writes meanwhile). Seen not streaming = kill → the branch", keeperCatchUpLimit)
	p("JSON shows the killed keeper other than `streaming` (polled every %s from the kill on).", keeperPollEvery)
	p("")
	p("| round | killed keeper | commits in window | longest commit | seen not streaming after kill | back to streaming after | caught up after | acked | unacked |")
	p("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
	var commits []float64
	var longest, streaming, caught []time.Duration
	var stall time.Duration
	stallRound := 0
	for _, k := range d.keeperLoss {
		long := ms(k.longest)
		if k.longestFailed {
			long += " (failed)"
		}
		if k.longest > stallGoal {
			long = "**" + long + "**"
		}
		caughtCol := msOrDash(k.caughtUp)
		if k.caughtUp == 0 && k.streaming > 0 {
			caughtCol = fmt.Sprintf("**not within %s**", keeperCatchUpLimit)
		}
		streamCol := msOrDash(k.streaming)
		if k.err != "" {
			streamCol += " (" + k.err + ")"
		}
		p("| %d | %s | %d | %s | %s | %s | %s | %d | %d |", k.n, k.keeper, k.commits, long, msOrDash(k.down), streamCol, caughtCol, k.acked, k.unacked)
		commits = append(commits, float64(k.commits))
		longest = append(longest, k.longest)
		if k.longest > stall {
			stall, stallRound = k.longest, k.n
		}
		if k.streaming > 0 {
			streaming = append(streaming, k.streaming)
		}
		if k.caughtUp > 0 {
			caught = append(caught, k.caughtUp)
		}
	}
	ls, ss, cs := summarize(longest), summarize(streaming), summarize(caught)
	p("| **median** | | %.0f | %s | | %s | %s | | |", medianFloat(commits), msOrDash(ls.median), msOrDash(ss.median), msOrDash(cs.median))
	p("| **max** | | %.0f | %s | | %s | %s | | |", slices.Max(commits), msOrDash(ls.max), msOrDash(ss.max), msOrDash(cs.max))
	p("")
	verdict := "within the goal"
	if stall > stallGoal {
		verdict = "**over the goal**"
	}
	p("Goal (issue): no write stalls more than %s. Longest commit over %d round(s): %s (round %d): %s.",
		stallGoal, len(d.keeperLoss), ms(stall), stallRound, verdict)
	if d.keeperLossChecked {
		if d.keeperLossMissing > 0 {
			p("**DATA LOSS — PRODUCT BUG: acknowledged %d, missing %d** (first ids %v); rows in the table: %d.",
				d.keeperLossAcked, d.keeperLossMissing, sortedMissing(d.keeperLossMissingIDs), d.keeperLossRows)
		} else {
			p("Final check (`SELECT id FROM acked`): acknowledged %d, missing 0 (rows in the table: %d).", d.keeperLossAcked, d.keeperLossRows)
		}
	} else {
		p("Final check of the acknowledged ids: **not done** (see the problems).")
	}
	for _, k := range d.keeperLoss {
		if k.writerErr != "" {
			p("- a writer's error (round %d): `%s`", k.n, k.writerErr)
		}
		if k.caughtUp == 0 && len(k.flushes) > 0 {
			p("- round %d: last flushes (%s first, then the others): %v", k.n, k.keeper, k.flushes)
		}
	}
}
