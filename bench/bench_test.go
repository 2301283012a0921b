package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/neonproxy/neonproxy/internal/config"
	"github.com/neonproxy/neonproxy/wake"
)

func TestParsePgbench(t *testing.T) {
	out := `pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 10
number of clients: 8
number of threads: 2
duration: 3 s
number of transactions actually processed: 158602
number of failed transactions: 2 (0.000%)
latency average = 0.151 ms
initial connection time = 15.026 ms
tps = 52867.123456 (without initial connection time)
`
	r, err := parsePgbench(out)
	if err != nil {
		t.Fatal(err)
	}
	if r.tps != 52867.123456 || r.latencyMS != 0.151 || r.failed != 2 {
		t.Errorf("got %+v", r)
	}
	if _, err := parsePgbench("connection to server failed\n"); err == nil {
		t.Error("want an error without a tps line")
	}
}

func TestSummarize(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	s := summarize(d)
	want := stats{n: 100, min: time.Millisecond, median: 50 * time.Millisecond, p90: 90 * time.Millisecond,
		p99: 99 * time.Millisecond, max: 100 * time.Millisecond}
	if s != want {
		t.Errorf("summarize = %+v, want %+v", s, want)
	}
	if got := summarize([]time.Duration{7}); got.median != 7 || got.p99 != 7 {
		t.Errorf("one sample: %+v", got)
	}
}

// TestSCRAMClient checks the proof and server signature against RFC 7677's
// example exchange (user "user", password "pencil").
func TestSCRAMClient(t *testing.T) {
	s := &scramClient{cache: newSaltCache("pencil"), clientNonce: "rOprNGfwEbeRWgbNEkqO",
		firstBare: "n=user,r=rOprNGfwEbeRWgbNEkqO"}
	final, err := s.clientFinal("r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
	if err != nil {
		t.Fatal(err)
	}
	want := "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
	if string(final) != want {
		t.Errorf("client final\n got %s\nwant %s", final, want)
	}
	if err := s.verifyServer("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="); err != nil {
		t.Error(err)
	}
	if err := s.verifyServer("v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="); err == nil {
		t.Error("want an error for a wrong server signature")
	}
	if _, err := s.clientFinal("r=other,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"); err == nil {
		t.Error("want an error for a nonce that does not extend ours")
	}
}

func TestLogP99(t *testing.T) {
	dir := t.TempDir()
	prefix := filepath.Join(dir, "x")
	var a, b strings.Builder
	for i := 1; i <= 100; i++ {
		w := &a
		if i%2 == 0 {
			w = &b
		}
		fmt.Fprintf(w, "%d %d %d 0 1700000000 %d\n", i%7, i, i*10, i)
	}
	b.WriteString("3 101 failed 0 1700000000 0\n")
	if err := os.WriteFile(prefix+".123", []byte(a.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(prefix+".123.1", []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	p99, n, err := logP99(prefix)
	if err != nil {
		t.Fatal(err)
	}
	if p99 != 990*time.Microsecond || n != 100 {
		t.Errorf("p99 %s over %d, want 990µs over 100", p99, n)
	}
	if left, _ := filepath.Glob(prefix + ".*"); len(left) != 0 {
		t.Errorf("log files left: %v", left)
	}
	if _, _, err := logP99(prefix); err == nil {
		t.Error("want an error without log files")
	}
}

func TestParseSections(t *testing.T) {
	if s, err := parseSections(""); err != nil || len(s) != len(allSections) {
		t.Errorf("empty: %v %v", s, err)
	}
	if s, err := parseSections("pooling, pooling"); err != nil || len(s) != 1 || s[0] != sectionPooling {
		t.Errorf("pooling: %v %v", s, err)
	}
	if _, err := parseSections("pooling,nope"); err == nil {
		t.Error("want an error for an unknown section")
	}
}

func TestSummarizeRuns(t *testing.T) {
	pw := poolWorkload{runs: []poolRun{
		{path: nameProxyPooler, r: pgbenchResult{tps: 30, latencyMS: 1, p99: 3 * time.Millisecond}, base: 40, peak: 61},
		{path: nameDirect, r: pgbenchResult{tps: 100}},
		{path: nameProxyPooler, r: pgbenchResult{tps: 10, latencyMS: 3, p99: time.Millisecond}, base: 40, peak: 45},
		{path: nameProxyPooler, err: "boom", base: 0, peak: 99},
		{path: nameProxyPooler, r: pgbenchResult{tps: 20, latencyMS: 2, p99: 2 * time.Millisecond, failed: 1}, base: -1, peak: 7},
	}}
	s := summarizeRuns(pw, nameProxyPooler)
	if s.runs != 3 || s.errors != 1 || s.medianTPS != 20 || s.medianLatency != 2 ||
		s.medianP99 != 2*time.Millisecond || s.newBackends != 21 || s.failed != 1 {
		t.Errorf("got %+v", s)
	}
	if m := medianFloat([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Errorf("even median %v", m)
	}
}

// TestDurabilityReportMissing checks that a lost acknowledged commit is
// reported loudly and counted once however many checks miss it.
func TestDurabilityReportMissing(t *testing.T) {
	r := newReport(options{sections: []string{sectionDurability}})
	d := &r.durability
	d.admin = "http://127.0.0.1:1"
	d.noteMissing(7)
	d.noteMissing(7)
	d.noteMissing(3)
	d.cycles = []chaosCycle{
		{n: 1, acked: 10, rows: 9, missingNew: 1, recovery: time.Second, ready: time.Millisecond},
		{n: 2, acked: 5, rows: 13, missingNew: 1, missingOld: 1, recovery: time.Second, ready: time.Millisecond},
	}
	if d.distinctMissing != 2 || len(d.missingIDs) != 2 {
		t.Fatalf("distinct missing %d, ids %v; want 2", d.distinctMissing, d.missingIDs)
	}
	wantReport(t, r, "DATA LOSS", "[3 7]", "**2** (distinct ids)", "**15**")
}

func TestInGroup(t *testing.T) {
	// The test's own process group has at least this process.
	if n := inGroup(syscall.Getpgrp()); n < 1 {
		t.Errorf("inGroup(own group) = %d, want ≥ 1", n)
	}
}

// TestWriteConfigWalkeeperPeers checks that the generated serve config
// loads with the standalone keepers and their quorum, and that without
// peers it keeps the embedded keeper.
func TestWriteConfigWalkeeperPeers(t *testing.T) {
	for _, peers := range [][]string{nil, {"127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"}} {
		e := &env{dir: t.TempDir()}
		o := options{poolSize: 20, walkeeperPeers: peers, walkeeperQuorum: standaloneQuorum}
		p := &proxy{dataDir: e.path("data")}
		path, err := p.writeConfig(e, o)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(path, nil)
		if err != nil {
			t.Fatalf("peers %v: %v", peers, err)
		}
		wantQuorum := 1
		if len(peers) > 0 {
			wantQuorum = standaloneQuorum
		}
		if !slices.Equal(cfg.Walkeeper.Peers, peers) || cfg.Walkeeper.Quorum != wantQuorum {
			t.Errorf("peers %v: loaded walkeeper %+v", peers, cfg.Walkeeper)
		}
	}
	if got := wantStandbyNames(); got != "ANY 2 (wk1, wk2, wk3)" {
		t.Errorf("wantStandbyNames() = %q", got)
	}
}

// TestCommitLatencyReport checks the standalone keepers' row and lines.
func TestCommitLatencyReport(t *testing.T) {
	r := newReport(options{sections: []string{sectionDurability}, durabilityRounds: 1, duration: time.Second})
	d := &r.durability
	d.admin = "http://127.0.0.1:1"
	for i, m := range commitModes {
		d.modes = append(d.modes, commitModeResult{commitMode: m, seen: "on",
			runs: []pgbenchResult{{tps: float64(100 * (i + 1)), latencyMS: float64(i + 1)}}})
	}
	d.standbyNames, d.standaloneReplication = "ANY 2 (wk1, wk2)", "wk1 (streaming, quorum)"
	wantReport(t, r,
		"| synchronous_commit=on (3 standalone keepers, quorum 2) `(none)` | on | 1 | 400 | 4.000 ms |",
		"3 standalone keepers (quorum 2) vs the embedded keeper: latency +3.000 ms per transaction, TPS 4.00×",
		"= 'ANY 2 (wk1, wk2)' (**expected 'ANY 2 (wk1, wk2, wk3)'**)",
	)
}

// TestWriteConfigConsul checks that a cluster node's config loads with
// consul.address, consul.node = its listen address, bootstrap.password,
// the shared pagestore (pagestore.address, pagestore.token) and keepers
// (walkeeper.peers, quorum, token), and that other sections' configs have
// no consul section and their own pagestore.
func TestWriteConfigConsul(t *testing.T) {
	peers := []string{"127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"}
	for _, addr := range []string{"", "127.0.0.1:8500"} {
		e := &env{dir: t.TempDir()}
		o := options{poolSize: 20, consulAddress: addr}
		if addr != "" {
			o.bootstrapPassword = "0123abcd"
			o.pagestoreAddress, o.pagestoreToken = "127.0.0.1:7100", "store-secret"
			o.walkeeperPeers, o.walkeeperQuorum, o.walkeeperToken = peers, clusterQuorum, "keeper-secret"
			o.walkeeperViaFrontDoor = true
		}
		p := &proxy{dataDir: e.path("data")}
		path, err := p.writeConfig(e, o)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(path, nil)
		if err != nil {
			t.Fatalf("consul %q: %v", addr, err)
		}
		if cfg.Consul.Address != addr || cfg.Bootstrap.Password != o.bootstrapPassword {
			t.Errorf("consul %q: loaded consul %+v, bootstrap %+v", addr, cfg.Consul, cfg.Bootstrap)
		}
		if addr != "" && (cfg.Consul.Node != cfg.Listen || cfg.Listen != p.listenAddr()) {
			t.Errorf("consul.node %q, listen %q, want both %s", cfg.Consul.Node, cfg.Listen, p.listenAddr())
		}
		if cfg.Pagestore.Address != o.pagestoreAddress || cfg.Pagestore.Token != o.pagestoreToken {
			t.Errorf("consul %q: loaded pagestore %+v", addr, cfg.Pagestore)
		}
		wantQuorum := 1
		if addr != "" {
			wantQuorum = clusterQuorum
		}
		if !slices.Equal(cfg.Walkeeper.Peers, o.walkeeperPeers) || cfg.Walkeeper.Quorum != wantQuorum || cfg.Walkeeper.Token != o.walkeeperToken ||
			cfg.Walkeeper.ViaFrontDoor != o.walkeeperViaFrontDoor {
			t.Errorf("consul %q: loaded walkeeper %+v", addr, cfg.Walkeeper)
		}
	}
}

// TestServiceConfigs checks that the configs the cluster section writes
// for its standalone pagestore and keepers load with their listen address
// and token.
func TestServiceConfigs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pagestore.yaml")
	if err := os.WriteFile(path, []byte(pagestoreConfig(t.TempDir(), 7100, "store-secret")), 0o600); err != nil {
		t.Fatal(err)
	}
	pcfg, err := config.Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if pcfg.Pagestore.Listen != "127.0.0.1:7100" || pcfg.Pagestore.Token != "store-secret" {
		t.Errorf("loaded pagestore %+v", pcfg.Pagestore)
	}

	ks := &walkeepers{env: &env{dir: t.TempDir()}, token: "keeper-secret"}
	// start writes the config before it launches the keeper (no binary
	// here: the launch fails, the config stays).
	ks.bin = filepath.Join(t.TempDir(), "no-such-neonproxy")
	if err := ks.start(t.Context(), "wk1"); err == nil {
		t.Fatal("start without a binary succeeded")
	}
	cfg, err := config.Load(ks.configPath("wk1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Walkeeper.Token != "keeper-secret" || !strings.HasPrefix(cfg.Walkeeper.Listen, "127.0.0.1:") {
		t.Errorf("loaded walkeeper %+v", cfg.Walkeeper)
	}
}

func TestParseLock(t *testing.T) {
	held := `[{"LockIndex":1,"Key":"neonproxy/branches/main/compute","Flags":3304740253564472344,` +
		`"Value":"MTI3LjAuMC4xOjU0MzI=","Session":"5e8c2f1e-0d1b-4a3e-9d7c-1f2e3d4c5b6a","CreateIndex":20,"ModifyIndex":21}]`
	for _, tc := range []struct {
		status int
		body   string
		want   branchLock
		err    bool
	}{
		{200, held, branchLock{session: "5e8c2f1e-0d1b-4a3e-9d7c-1f2e3d4c5b6a", holder: "127.0.0.1:5432"}, false},
		{200, `[{"Key":"neonproxy/branches/main/compute","Value":"MTI3LjAuMC4xOjU0MzI="}]`, branchLock{holder: "127.0.0.1:5432"}, false},
		{404, "", branchLock{}, false},
		{500, "rpc error", branchLock{}, true},
		{200, "not json", branchLock{}, true},
	} {
		got, err := parseLock(tc.status, []byte(tc.body))
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("parseLock(%d, %q) = %+v, %v; want %+v, error %v", tc.status, tc.body, got, err, tc.want, tc.err)
		}
	}
	if got := lockKey("main"); got != "neonproxy/branches/main/compute" {
		t.Errorf("lockKey(main) = %q", got)
	}
}

// TestClusterReport checks the relay ratio and the failover summary, and
// the skipped section.
func TestClusterReport(t *testing.T) {
	r := newReport(options{sections: []string{sectionCluster}})
	c := &r.cluster
	c.consulAddr, c.nodeA, c.nodeB, c.stateB = "127.0.0.1:8500", "127.0.0.1:1", "127.0.0.1:2", "stopped"
	c.connect = []namedStats{
		{clusterNameOwner, stats{n: 40, median: 2 * time.Millisecond, p90: 3 * time.Millisecond}},
		{clusterNameRelayed, stats{n: 40, median: 3 * time.Millisecond, p90: 6 * time.Millisecond}},
	}
	for i, d := range []time.Duration{900, 1100, 950, 1000, 1050} {
		c.failovers = append(c.failovers, failoverRound{n: i + 1, freed: d * time.Millisecond, computeAlive: i != 2, holds: time.Second, attempts: 1})
	}
	c.failovers[3].attempts, c.failovers[3].firstErr = 4, "57P03 boom"
	wantReport(t, r,
		"relayed / owner: median 1.50× (+1.00 ms), p90 2.00× (+3.00 ms)",
		"**Lock freed after the kill: median 1000.00 ms, max 1100.00 ms** (5 rounds), against the session TTL of 10s",
		"still running when main's lock was free in 4 of 5 rounds",
		"| 3 | 0 | 950.00 ms | 0 | no |",
		"more than one connect attempt after its restart (round 4: 4); the first error (round 4): `57P03 boom`",
	)
	r = newReport(options{sections: []string{sectionCluster}})
	r.cluster.skipped = "skipped: run make consul (no binary)"
	var b strings.Builder
	r.print(&b)
	if !strings.Contains(b.String(), "## Cluster") || !strings.Contains(b.String(), "skipped: run make consul") {
		t.Errorf("skipped section:\n%s", b.String())
	}
}

// TestCommitFailoverReport checks the commit-failover table, its median
// and max, the summary, and the data-loss lines.
func TestCommitFailoverReport(t *testing.T) {
	r := newReport(options{sections: []string{sectionCluster}})
	c := &r.cluster
	c.consulAddr, c.nodeA, c.nodeB = "127.0.0.1:8500", "127.0.0.1:1", "127.0.0.1:2"
	c.pagestoreAddr, c.keeperAddrs = "127.0.0.1:7100", []string{"127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"}
	acked := 0
	for i, f := range []time.Duration{900, 1100, 700, 1000, 1300} {
		killed, via := "A", "B"
		if i%2 == 1 {
			killed, via = "B", "A"
		}
		acked += 640
		c.commitRounds = append(c.commitRounds, commitRound{n: i + 1, killed: killed, via: via, ackedBefore: 320, ackedAfter: 320,
			lastBefore: -time.Millisecond, firstAfter: f*time.Millisecond - time.Millisecond, lockFree: 500 * time.Millisecond,
			lockTaken: 600 * time.Millisecond, materialized: 1, replayed: 1, refused: 3, checked: true,
			check: ackCheck{rows: acked + 2, acked: acked}, holder: via, restart: 70 * time.Millisecond})
	}
	c.commitRounds[2].late = 1
	c.commitRounds[0].firstErr, c.commitRounds[0].connectFails, c.commitRounds[0].insertFails = "conn closed", 12, 4
	wantReport(t, r,
		"standalone `neonproxy pagestore` (127.0.0.1:7100",
		"(127.0.0.1:7001, 127.0.0.1:7002, 127.0.0.1:7003; `walkeeper.peers`, `walkeeper.quorum` 2)",
		"### 3. Commit failover",
		"| 2 | B | A | 320 | 320 | 1100.00 ms | 1099.00 ms | 500.00 ms | 600.00 ms | materialized + WAL replay; 3 refused | 1282 | 1280 | 0 | A | 70.00 ms |",
		"| **median** | | | | | **1000.00 ms** | 999.00 ms | | 600.00 ms |",
		"| **max** | | | | | **1300.00 ms** | 1299.00 ms | | 600.00 ms |",
		"**Failover (last acknowledged commit before the kill → first after): median 1000.00 ms, max 1300.00 ms** (5 of 5 rounds).",
		"Every acknowledged commit was there after every round (3200 acknowledged in all, 3202 rows",
		"1 acknowledgement(s) on connections opened before a kill arrived after it",
		"round 1: the writers' failed connects 12, failed INSERTs 4; the first error after the kill: `conn closed`",
	)

	// Round 2 loses commits, resumed from a stale local directory; round
	// 3 ends early.
	c.commitRounds[1].materialized, c.commitRounds[1].replayed = 0, 0
	c.commitRounds[1].check.missing, c.commitRounds[1].check.missingIDs = 2, []int64{700, 650}
	c.commitRounds[1].startFailed = 1
	c.commitRounds = c.commitRounds[:3]
	c.commitRounds[2].checked, c.commitRounds[2].check, c.commitRounds[2].restart = false, ackCheck{}, 0
	c.commitRounds[2].err = "after the failover main's lock is held by A | B"
	wantReport(t, r,
		"| 2 | B | A | 320 | 320 | 1100.00 ms | 1099.00 ms | 500.00 ms | 600.00 ms | local data dir; 3 refused; **1 failed** | 1282 | 1280 | **2** | A | 70.00 ms |",
		"| – | – | – | B | – (after the failover main's lock is held by A / B) |",
		"**DATA LOSS — PRODUCT BUG: acknowledged commits missing after 1 of 3 round(s)**, up to 2 in one check (round 2;",
		"first ids [650 700]).",
		"Round(s) 2 lost commits with main started on the survivor from its own local data directory",
	)
}

// TestAckGap checks the split of acknowledgements around a kill by the
// time their connection was opened.
func TestAckGap(t *testing.T) {
	kill := time.Unix(1000, 0)
	at := func(msec int) time.Time { return kill.Add(time.Duration(msec) * time.Millisecond) }
	acks := []ack{
		{id: 1, at: at(-300), conn: at(-1000)},
		{id: 2, at: at(-5), conn: at(-1000)},
		{id: 3, at: at(1), conn: at(-900)}, // a reply already on its way: before, late
		{id: 5, at: at(950), conn: at(940)},
		{id: 4, at: at(900), conn: at(880)},
	}
	g := gapOf(acks, kill)
	if g.before != 3 || g.after != 2 || g.late != 1 || !g.last.Equal(at(1)) || !g.first.Equal(at(900)) {
		t.Errorf("gapOf = %+v", g)
	}
	r := commitRound{ackedBefore: g.before, ackedAfter: g.after, lastBefore: g.last.Sub(kill), firstAfter: g.first.Sub(kill)}
	if r.failover() != 899*time.Millisecond {
		t.Errorf("failover = %s, want 899ms", r.failover())
	}
	if r.ackedAfter = 0; r.failover() != 0 {
		t.Errorf("failover without acks after = %s, want 0", r.failover())
	}
	w := &ackWriters{acks: acks}
	if before, after := w.split(kill); before != 3 || after != 2 {
		t.Errorf("split = %d, %d", before, after)
	}
}

// TestAckWritersTally checks that attempted ids stay attempted and
// acknowledged ones are acknowledged, across rounds.
func TestAckWritersTally(t *testing.T) {
	var status []byte
	w := &ackWriters{attempted: []int64{1, 2, 3}, acks: []ack{{id: 1}, {id: 3}}}
	w.tally(&status)
	w2 := &ackWriters{attempted: []int64{4, 5}, acks: []ack{{id: 5}}}
	w2.tally(&status)
	want := []byte{0, idAcked, idAttempted, idAcked, idAttempted, idAcked}
	if !slices.Equal(status, want) {
		t.Errorf("status = %v, want %v", status, want)
	}
}

// TestMainLogCounts checks the count of main's starts in a node's log:
// refusals because another node holds the lock apart from other failures.
func TestMainLogCounts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "neonproxy.log")
	lines := []string{
		`{"level":"info","msg":"data directory materialized","branch":"main"}`,
		`{"level":"info","msg":"data directory materialized","branch":"other"}`,
		`{"level":"info","msg":"` + wake.LogReplayingWAL + `","branch":"main"}`,
		`{"level":"error","msg":"compute start failed","branch":"main","error":"wake: start main: ` + wake.ErrOwnedElsewhere.Error() + `: 127.0.0.1:1"}`,
		`{"level":"error","msg":"compute start failed","branch":"main","error":"wake: start main: ` + wake.ErrOwnedElsewhere.Error() + `: 127.0.0.1:1"}`,
		`{"level":"error","msg":"compute start failed","branch":"main","error":"boom"}`,
		`not json`,
		`{"level":"info","msg":"bootstrapping branch","branch":"main"}`,
	}
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got := mainLogCounts(path)
	if got[wake.LogMaterialized] != 1 || got[wake.LogReplayingWAL] != 1 || got[logOwnedElsewhere] != 2 || got[wake.LogStartFailed] != 1 {
		t.Errorf("mainLogCounts = %v", got)
	}
	if n := countInFile(path, logBootstrapping); n != 1 {
		t.Errorf("countInFile(bootstrapping) = %d, want 1", n)
	}
}

// TestConsulBinaryMissing: a NEONPROXY_CONSUL that does not exist is an
// error (the section is then skipped), not a crash later.
func TestConsulBinaryMissing(t *testing.T) {
	t.Setenv("NEONPROXY_CONSUL", filepath.Join(t.TempDir(), "consul"))
	if bin, err := consulBinary(); err == nil {
		t.Errorf("consulBinary() = %q, want an error", bin)
	}
}

// TestKeeperLossReport checks the keeper-loss table, its medians and max,
// the stall goal line and the final check.
func TestKeeperLossReport(t *testing.T) {
	r := newReport(options{sections: []string{sectionDurability}})
	d := &r.durability
	d.admin = "http://127.0.0.1:1"
	d.keeperLoss = []keeperLossRound{
		{n: 1, keeper: "wk1", commits: 900, longest: 30 * time.Millisecond, down: time.Second, streaming: 400 * time.Millisecond, caughtUp: 450 * time.Millisecond, acked: 1200},
		{n: 2, keeper: "wk2", commits: 1000, longest: 1500 * time.Millisecond, streaming: 600 * time.Millisecond, acked: 1300},
		{n: 3, keeper: "wk3", commits: 1100, longest: 20 * time.Millisecond, streaming: 500 * time.Millisecond, caughtUp: 550 * time.Millisecond, acked: 1400},
	}
	d.keeperLossChecked, d.keeperLossAcked, d.keeperLossRows = true, 3900, 3900
	wantReport(t, r,
		"| 1 | wk1 | 900 | 30.00 ms | 1000.00 ms | 400.00 ms | 450.00 ms | 1200 | 0 |",
		"| 2 | wk2 | 1000 | **1500.00 ms** | – | 600.00 ms | **not within 10s** | 1300 | 0 |",
		"| **median** | | 1000 | 30.00 ms | | 500.00 ms | 450.00 ms | | |",
		"| **max** | | 1100 | 1500.00 ms | | 600.00 ms | 550.00 ms | | |",
		"Longest commit over 3 round(s): 1500.00 ms (round 2): **over the goal**.",
		"acknowledged 3900, missing 0",
	)
}

// TestKeeperLossTally checks the window's commits and longest INSERT,
// a failed one included.
func TestKeeperLossTally(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(msec int) time.Time { return t0.Add(time.Duration(msec) * time.Millisecond) }
	ws := []*writer{
		{acked: []int64{1, 2, 3}, attempted: []int64{1, 2, 3}, spans: []span{
			{at(0), at(50)},      // before the window: not counted
			{at(80), at(400)},    // overlaps its start: 320 ms
			{at(2000), at(2150)}, // ends after it: longest counts, commit not
		}},
		{acked: []int64{4}, attempted: []int64{4, 5}, spans: []span{{at(500), at(510)}},
			err: errors.New("boom"), errAt: at(1200), pending: at(600)},
	}
	var r keeperLossRound
	r.tally(ws, at(100), at(2100))
	if r.commits != 2 || r.longest != 600*time.Millisecond || !r.longestFailed || r.acked != 4 || r.unacked != 1 || r.writerErr != "boom" {
		t.Errorf("tally = %+v", r)
	}
}

// wantReport prints r and checks that the report holds every line of want.
func wantReport(t *testing.T, r *report, want ...string) {
	t.Helper()
	var b strings.Builder
	r.print(&b)
	for _, w := range want {
		if !strings.Contains(b.String(), w) {
			t.Errorf("report lacks %q:\n%s", w, b.String())
		}
	}
}

// TestWriteConfigTiers checks that the tiers section's config loads with
// its compute.idle_after, suspend_timeout and offload_after, and that the
// other sections' config keeps suspend_timeout 1h and neonproxy's defaults
// for the other two.
func TestWriteConfigTiers(t *testing.T) {
	for _, tc := range []struct {
		o                      options
		idle, suspend, offload time.Duration
		want                   string // lines of the written config
	}{
		{o: options{poolSize: 20}, idle: config.Default().Compute.IdleAfter.D(), suspend: time.Hour,
			offload: config.Default().Compute.OffloadAfter.D(), want: "  suspend_timeout: 1h\n"},
		{o: options{poolSize: 20, idleAfter: tiersIdleAfter, suspendTimeout: tiersSuspendTimeout, offloadAfter: tiersOffloadAfter, prewarmOff: true},
			idle: 300 * time.Millisecond, suspend: time.Hour, offload: time.Second,
			want: "  suspend_timeout: 1h\n  idle_after: 300ms\n  offload_after: 1s\n  prewarm: false\n"},
	} {
		e := &env{dir: t.TempDir()}
		p := &proxy{dataDir: e.path("data")}
		path, err := p.writeConfig(e, tc.o)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(path, nil)
		if err != nil {
			t.Fatal(err)
		}
		c := cfg.Compute
		if c.Prewarm == tc.o.prewarmOff {
			t.Errorf("options %+v: loaded compute.prewarm %v", tc.o, c.Prewarm)
		}
		if c.IdleAfter.D() != tc.idle || c.SuspendTimeout.D() != tc.suspend || c.OffloadAfter.D() != tc.offload {
			t.Errorf("options %+v: loaded idle_after %s, suspend_timeout %s, offload_after %s; want %s, %s, %s",
				tc.o, c.IdleAfter, c.SuspendTimeout, c.OffloadAfter, tc.idle, tc.suspend, tc.offload)
		}
		b, _ := os.ReadFile(path)
		if !strings.Contains(string(b), tc.want) {
			t.Errorf("config lacks %q:\n%s", tc.want, b)
		}
	}
	for d, want := range map[time.Duration]string{time.Hour: "1h", time.Minute: "1m", 300 * time.Millisecond: "300ms",
		90 * time.Second: "1m30s", time.Hour + time.Second: "1h0m1s"} {
		if got := shortDuration(d); got != want {
			t.Errorf("shortDuration(%s) = %q, want %q", d, got, want)
		}
	}
}

// TestWakeCounts checks the reading of the wake histogram's counts from
// /metrics and the naming of what a try counted.
func TestWakeCounts(t *testing.T) {
	metrics := `# HELP neonproxy_wake_duration_seconds Time a client was held …
# TYPE neonproxy_wake_duration_seconds histogram
neonproxy_wake_duration_seconds_bucket{kind="cold",le="0.5"} 3
neonproxy_wake_duration_seconds_sum{kind="cold"} 0.9
neonproxy_wake_duration_seconds_count{kind="cold"} 4
neonproxy_wake_duration_seconds_count{kind="hot"} 12
neonproxy_wake_duration_seconds_count{kind="running"} 1.5e+06
neonproxy_wake_duration_seconds_count_total 99
`
	got, err := parseWakeCounts(strings.NewReader(metrics))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got["cold"] != 4 || got["hot"] != 12 || got["running"] != 1500000 {
		t.Errorf("parseWakeCounts = %v", got)
	}
	before := map[string]int64{"cold": 4, "hot": 12}
	for _, tc := range []struct {
		after map[string]int64
		want  string
	}{
		{map[string]int64{"cold": 4, "hot": 13}, "hot"},
		{map[string]int64{"cold": 4, "hot": 12}, wakeNone},
		{map[string]int64{"cold": 6, "hot": 12, "warm": 1}, "cold×2+warm"},
	} {
		if got := kindDiff(before, tc.after); got != tc.want {
			t.Errorf("kindDiff(%v) = %q, want %q", tc.after, got, tc.want)
		}
	}
	if k := (tierCase{name: "running"}).wantKind(tierPathPooled); k != wakeNone {
		t.Errorf("running, pooled: want kind %q", k)
	}
	if k := (tierCase{name: "hot"}).wantKind(tierPathPooled); k != "hot" {
		t.Errorf("hot, pooled: want kind %q", k)
	}
}

// TestTiersReport checks the goal table, the per-path tables, the
// mislabeled and failed tries, the pooled client's line and the config in
// the commands block.
func TestTiersReport(t *testing.T) {
	r := newReport(options{sections: []string{sectionTiers}})
	tr := &r.tiers
	tr.admin, tr.port, tr.scale, tr.tries = "http://127.0.0.1:1", 2, tiersScale, 20
	tr.idleAfter, tr.suspendTimeout, tr.offloadAfter = tiersIdleAfter, tiersSuspendTimeout, tiersOffloadAfter
	tr.logical, tr.local = 101_600_000, 185_900_000
	tr.config = "compute:\n  idle_after: 300ms\n"
	tr.command("PGSSLMODE=disable PGPASSWORD=… pgbench -i -s 5 -q -h 127.0.0.1 -p 2 -U postgres main")
	med := map[string]time.Duration{"hot": 2 * time.Millisecond, "running": time.Millisecond, "warm": 70 * time.Millisecond, "cold": 600 * time.Millisecond}
	for _, c := range tierCases {
		for _, path := range tierPaths {
			row := tierRow{kase: c, path: path, seen: map[string]int{c.tier: 20}, kinds: map[string]int{c.wantKind(path): 20},
				tierSeconds: []float64{0.004, 0.005, 0.006},
				s:           stats{n: 20, min: med[c.name] / 2, median: med[c.name], p90: med[c.name] * 2, p99: med[c.name] * 3, max: med[c.name] * 3}}
			if c.name == "warm" && path == tierPathPooled {
				row.s.n, row.kinds = 19, map[string]int{"warm": 18, "cold": 1}
				row.mislabeled, row.mislabel = 1, "round 7: JSON suspended (tier_seconds 0.990), counted cold, 400.00 ms"
				row.failed, row.firstErr = 1, "round 3: pooled client: conn closed (connected again)"
			}
			tr.rows = append(tr.rows, row)
		}
	}
	tr.pooledConnects, tr.pooledQueries, tr.pooledErrors = 2, 119, 1
	tr.suspend = stats{n: 80, median: 50 * time.Millisecond, p99: 150 * time.Millisecond, max: 160 * time.Millisecond}
	tr.warmStarts, tr.coldStarts = stats{n: 40, median: 33 * time.Millisecond, max: 90 * time.Millisecond},
		stats{n: 40, median: 220 * time.Millisecond, max: 530 * time.Millisecond}
	tr.materialize, tr.materializeMBps, tr.materializeBytes = stats{n: 40, median: 170 * time.Millisecond}, 620, 118_400_000
	tr.afterMaterialize = stats{n: 40, median: 60 * time.Millisecond, max: 200 * time.Millisecond}
	wantReport(t, r,
		"## Tiers (issue 7): resume latency to first row, per tier",
		"**logical_size_bytes 101.6 MB** (local_bytes 185.9 MB)",
		"| hot (idle) | ≤ 5.00 ms | 2.00 ms (met) | 6.00 ms (**not met**) | 2.00 ms (met) | 6.00 ms (**not met**) |",
		"| running (running) | – | 1.00 ms | 3.00 ms | 1.00 ms | 3.00 ms |",
		"| cold (zero) | ≤ 500.00 ms | 600.00 ms (**not met**) | 1800.00 ms (**not met**) |",
		"| warm | 20 | 70.00 ms | 140.00 ms | 210.00 ms | 35.00 ms | 210.00 ms | ≤ 150.00 ms | suspended ×20 (0.005 s) | warm ×20 | 0 |",
		"| warm | 19 | 70.00 ms | 140.00 ms | 210.00 ms | 35.00 ms | 210.00 ms | ≤ 150.00 ms | suspended ×20 (0.005 s) | **warm ×18, cold ×1** | 1 |",
		"| running | 20 | 1.00 ms | 2.00 ms | 3.00 ms | 500 µs | 3.00 ms | – | running ×20 (0.005 s) | none ×20 | 0 |",
		"- **warm, pooled client: 1 try(ies) counted another wake kind than warm** (`neonproxy_wake_duration_seconds_count`); the first: round 7: JSON suspended (tier_seconds 0.990), counted cold, 400.00 ms.",
		"**The pooled client did not survive every tier**: 2 connection(s), 1 failed queries, 119 succeeded.",
		"median 50.00 ms, p99 150.00 ms, max 160.00 ms (n 80)",
		"warm median 33.00 ms (n 40, max 90.00 ms); cold median 220.00 ms (n 40, max 530.00 ms).",
		"median took 170.00 ms, 620 MB/s, 118.4 MB (n 40); the rest of each cold start (its took − the materialization's): median 60.00 ms, max 200.00 ms.",
		"### Commands and requests (tiers)",
		"pgbench -i -s 5 -q -h 127.0.0.1 -p 2 -U postgres main",
		"# <tmp>/tiers/neonproxy.yaml (generated)\ncompute:\n  idle_after: 300ms\n```",
	)
	tr.pooledConnects, tr.pooledErrors, tr.prewarms = 1, 0, 2
	wantReport(t, r, "The pooled client stayed on one connection through every tier: 119 queries, none failed.",
		"`compute.prewarm: false`",
		"**neonproxy's log has 2 \"pre-warm\" line(s) for main during the tries**")
	// Not run: nothing printed.
	r = newReport(options{sections: []string{sectionTiers}})
	var b strings.Builder
	r.print(&b)
	if strings.Contains(b.String(), "## Tiers") {
		t.Errorf("section printed without results:\n%s", b.String())
	}
}

// TestWriteConfigPrewarm checks that the prewarm section's config loads
// with no idle tier (idle_after: 0 written out), suspend_timeout 1s,
// offload_after 250ms and prewarm: true.
func TestWriteConfigPrewarm(t *testing.T) {
	e := &env{dir: t.TempDir()}
	p := &proxy{dataDir: e.path("data")}
	o := options{poolSize: 20, noIdleTier: true, suspendTimeout: prewarmSuspendTimeout, offloadAfter: prewarmOffloadAfter, prewarmOn: true}
	path, err := p.writeConfig(e, o)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Compute
	if c.IdleAfter.D() != 0 || c.SuspendTimeout.D() != time.Second || c.OffloadAfter.D() != 250*time.Millisecond || !c.Prewarm {
		t.Errorf("loaded idle_after %s, suspend_timeout %s, offload_after %s, prewarm %v", c.IdleAfter, c.SuspendTimeout, c.OffloadAfter, c.Prewarm)
	}
	b, _ := os.ReadFile(path)
	if want := "  suspend_timeout: 1s\n  idle_after: 0\n  offload_after: 250ms\n  prewarm: true\n"; !strings.Contains(string(b), want) {
		t.Errorf("config lacks %q:\n%s", want, b)
	}
}

// TestPrewarmMetrics checks the /metrics reading and the counters a run
// diffs.
func TestPrewarmMetrics(t *testing.T) {
	read := func(s string) metricSet {
		t.Helper()
		m, err := parseMetrics(strings.NewReader(s))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	before := read(`# HELP neonproxy_prewarm_total Predicted arrivals by result (hit, miss, wasted).
# TYPE neonproxy_prewarm_total counter
neonproxy_prewarm_total{result="hit"} 0
neonproxy_prewarm_total{result="miss"} 0
neonproxy_prewarm_total{result="wasted"} 0
neonproxy_prewarm_compute_seconds_total 0
neonproxy_compute_starts_total{result="ok"} 3
neonproxy_compute_stops_total{reason="idle"} 2
neonproxy_wake_duration_seconds_bucket{kind="cold",le="0.5"} 1
neonproxy_wake_duration_seconds_count{kind="cold"} 2
`)
	after := read(`neonproxy_prewarm_total{result="hit"} 7
neonproxy_prewarm_total{result="miss"} 1
neonproxy_prewarm_total{result="wasted"} 1
neonproxy_prewarm_compute_seconds_total 9.5
neonproxy_compute_starts_total{result="ok"} 16
neonproxy_compute_starts_total{result="error"} 0
neonproxy_compute_stops_total{reason="idle"} 15
neonproxy_wake_duration_seconds_count{kind="cold"} 7
neonproxy_wake_duration_seconds_count{kind="running"} 7
`)
	if got := after.byLabel(prewarmTotalMetric, "result"); len(got) != 3 || got["hit"] != 7 {
		t.Errorf("byLabel = %v", got)
	}
	d := counterDiff(before, after)
	if d.prewarm["hit"] != 7 || d.prewarm["miss"] != 1 || d.prewarm["wasted"] != 1 || d.prewarmSeconds != 9.5 ||
		d.starts != 13 || d.stops["idle"] != 13 || d.wakes["cold"] != 5 || d.wakes["running"] != 7 {
		t.Errorf("counterDiff = %+v", d)
	}
	if k := kindDiff(before.byLabel(wakeCountMetric, "kind"), after.byLabel(wakeCountMetric, "kind")); k != "cold×5+running×7" {
		t.Errorf("kindDiff = %q", k)
	}
	if _, err := parseMetrics(strings.NewReader("neonproxy_x{a=\"b\"} notanumber\n")); err == nil {
		t.Error("parseMetrics accepted a bad value")
	}
}

// TestJitterIntervals checks that the jittery schedule stays within ±40%
// of the period, is the same for a seed, and has no regular window.
func TestJitterIntervals(t *testing.T) {
	specs := prewarmRunSpecs(prewarmCycles)
	if len(specs) != 4 || !specs[0].regular || specs[0].enabled || !specs[1].enabled || specs[2].regular ||
		specs[3].stay != 2500*time.Millisecond || specs[3].period != 4*time.Second || !specs[3].regular || !specs[3].enabled {
		t.Fatalf("specs = %+v", specs)
	}
	ivs := specs[2].intervals
	if len(ivs) != prewarmCycles-1 || !slices.Equal(ivs, prewarmRunSpecs(prewarmCycles)[2].intervals) {
		t.Fatalf("jitter intervals %v (not %d, or not repeatable)", ivs, prewarmCycles-1)
	}
	for _, iv := range ivs {
		if iv < 1800*time.Millisecond || iv > 4200*time.Millisecond {
			t.Errorf("interval %s outside 3 s ± 40%%", iv)
		}
	}
	if n := regularWindows(ivs, prewarmJitterMargin); n != 0 {
		t.Errorf("%d regular windows within %.0f%%: %v", n, prewarmJitterMargin*100, ivs)
	}
	// Arrivals 1–4 … 9–12: each predicts the next (the last one's
	// prediction is what the settle waits for).
	if n := regularWindows(specs[1].intervals, prewarmTolerance); n != prewarmCycles-prewarmLearn+1 {
		t.Errorf("regular schedule: %d regular windows, want %d", n, prewarmCycles-prewarmLearn+1)
	}
	s := time.Second
	if !regularWindow([]time.Duration{3 * s, 3200 * time.Millisecond, 2600 * time.Millisecond}, 0.15) ||
		regularWindow([]time.Duration{3 * s, 3500 * time.Millisecond, 3 * s}, 0.15) {
		t.Error("regularWindow does not follow the 15% rule")
	}
}

// TestComputeTimeline checks the compute time read from the log: up from
// a start's beginning to its stop's end, running from the start's end to
// the stop's beginning, clipped to the run; and the pre-warm line counts.
func TestComputeTimeline(t *testing.T) {
	base := time.Date(2026, 11, 23, 18, 34, 0, 0, time.UTC)
	ts := func(ms int) string { return base.Add(time.Duration(ms) * time.Millisecond).Format(logTimeLayout) }
	lines := []prewarmLogLine{
		{TS: ts(200), Msg: logComputeStopped, Took: "200ms"}, // up before the window: from 0
		{TS: ts(1000), Msg: logComputeStarted, Took: "400ms"},
		{TS: ts(2000), Msg: logSuspendingIdle},
		{TS: ts(2200), Msg: logComputeStopped, Took: "200ms"},
		{TS: ts(2500), Msg: logPrewarm},
		{TS: ts(2600), Msg: logComputeStarted, Took: "100ms"},
		{TS: ts(3500), Msg: "pre-warm hit"},
		{TS: ts(4000), Msg: "pre-warm skipped (breaker open or compute.max_running reached)"},
	}
	l := computeTimeline(lines, base, base.Add(5*time.Second))
	// up: 0→200, 600→2200, 2500→5000 (still up at the end).
	if l.up != 200*time.Millisecond+1600*time.Millisecond+2500*time.Millisecond {
		t.Errorf("up = %s", l.up)
	}
	// running: 0→0, 1000→2000, 2600→5000.
	if l.running != time.Second+2400*time.Millisecond {
		t.Errorf("running = %s", l.running)
	}
	if l.starts != 2 || l.stops != 2 || l.prewarms != 1 || l.hits != 1 || l.skipped != 1 || !l.upAtEnd || len(l.events) != len(lines) {
		t.Errorf("timeline = %+v", l)
	}
}

// TestPrewarmReport checks the summary tables, the on/off comparison, the
// miss diagnosis, the jitter run's line, the per-arrival tables and the
// commands block.
func TestPrewarmReport(t *testing.T) {
	r := newReport(options{sections: []string{sectionPrewarm}})
	pr := &r.prewarm
	pr.admin, pr.port, pr.scale, pr.cycles, pr.learn, pr.period = "http://127.0.0.1:1", 2, 1, 12, 4, 3*time.Second
	pr.suspendTimeout, pr.offloadAfter, pr.jitter, pr.jitterMargin, pr.seed = time.Second, 250*time.Millisecond, 0.4, 0.25, 7
	pr.logical = 38_900_000
	pr.config = "compute:\n  idle_after: 0\n"
	pr.command("PGSSLMODE=disable PGPASSWORD=… pgbench -i -s 1 -q -h 127.0.0.1 -p 2 -U postgres main")
	base := time.Date(2026, 11, 23, 18, 34, 0, 0, time.UTC)
	mk := func(name, br string, enabled, regular bool, arrival func(i int) prewarmArrival) prewarmRun {
		run := prewarmRun{name: name, branch: br, enabled: enabled, regular: regular, start: base, period: 3 * time.Second}
		for i := range 12 {
			a := arrival(i)
			a.n = i + 1
			if a.at == 0 {
				a.at = time.Duration(i) * run.period
			}
			run.arrivals = append(run.arrivals, a)
		}
		return run
	}
	off := mk(prewarmRunOff, "pw-off", false, true, func(i int) prewarmArrival {
		return prewarmArrival{state: "stopped", tier: "zero", kind: "cold", d: time.Duration(400+i) * time.Millisecond}
	})
	off.total = prewarmCounters{prewarm: map[string]int{}, starts: 12}
	off.log = prewarmLog{up: 19 * time.Second, running: 13 * time.Second, startTook: []time.Duration{350 * time.Millisecond},
		spans: []span{{base.Add(33*time.Second + 10*time.Millisecond), base.Add(34300 * time.Millisecond)}}}
	on := mk(prewarmRunOn, "pw-on", true, true, func(i int) prewarmArrival {
		switch {
		case i < 4:
			return prewarmArrival{state: "stopped", tier: "zero", kind: "cold", d: 600 * time.Millisecond}
		case i == 4:
			return prewarmArrival{state: "stopped", tier: "zero", kind: "cold", result: "miss", d: 555 * time.Millisecond,
				predicted: true, predictedIn: 100 * time.Millisecond, period: 3}
		case i == 11:
			return prewarmArrival{state: "starting", tier: "zero", kind: "cold", result: "hit", d: 80 * time.Millisecond,
				predicted: true, predictedIn: 100 * time.Millisecond, period: 3}
		}
		return prewarmArrival{state: "running", tier: "running", kind: "running", result: "hit", d: 20 * time.Millisecond,
			predicted: true, predictedIn: 90 * time.Millisecond, period: 3}
	})
	on.during = prewarmCounters{prewarm: map[string]int{"hit": 7, "miss": 1}}
	on.total = prewarmCounters{prewarm: map[string]int{"hit": 7, "miss": 1, "wasted": 1}, prewarmSeconds: 10, starts: 14}
	// Arrival 4 (9 s) after a 1.04 s start; suspended at +1.70 s; no
	// pre-warm line before arrival 5.
	on.log = prewarmLog{up: 29 * time.Second, running: 20 * time.Second, prewarms: 8,
		startTook: []time.Duration{500 * time.Millisecond, 600 * time.Millisecond},
		// The pre-warm after the last arrival (33 s): up 2.4 s.
		spans: []span{{base.Add(30 * time.Second), base.Add(31 * time.Second)}, {base.Add(35 * time.Second), base.Add(37400 * time.Millisecond)}},
		events: []logEvent{
			{at: base.Add(7 * time.Second), msg: logComputeStarted, took: 1040 * time.Millisecond},
			{at: base.Add(9*time.Second + 580*time.Millisecond), msg: logComputeStarted, took: 580 * time.Millisecond},
			{at: base.Add(10*time.Second + 700*time.Millisecond), msg: logSuspendingIdle},
		}}
	jitter := mk(prewarmRunJitter, "pw-jitter", true, false, func(i int) prewarmArrival {
		ivs := []time.Duration{0, 2240, 6100, 9070, 11190, 14110, 16360, 20480, 22730, 24790, 28700, 32370}
		return prewarmArrival{state: "stopped", tier: "zero", kind: "cold", d: 400 * time.Millisecond, at: ivs[i] * time.Millisecond}
	})
	jitter.total = prewarmCounters{prewarm: map[string]int{}, starts: 12}
	// Long visits every 4 s: each predicted arrival missed, the compute
	// suspended 3.2 s after the previous arrival, the pre-warm due at 3 s.
	long := mk(prewarmRunLong, "pw-long", true, true, func(i int) prewarmArrival {
		a := prewarmArrival{state: "stopped", tier: "zero", kind: "cold", d: 200 * time.Millisecond, at: time.Duration(i) * 4 * time.Second}
		if i >= 4 {
			a.result, a.predicted, a.predictedIn, a.period = "miss", true, 100*time.Millisecond, 4
		}
		return a
	})
	long.period, long.stay = 4*time.Second, 2500*time.Millisecond
	for i := range 12 {
		at := base.Add(time.Duration(i) * 4 * time.Second)
		long.log.events = append(long.log.events, logEvent{at: at.Add(200 * time.Millisecond), msg: logComputeStarted, took: 200 * time.Millisecond},
			logEvent{at: at.Add(3200 * time.Millisecond), msg: logSuspendingIdle})
	}
	long.total = prewarmCounters{prewarm: map[string]int{"miss": 8}, starts: 12}
	pr.runs = []prewarmRun{off, on, jitter, long}
	wantReport(t, r,
		"The prewarm section runs on its own neonproxy (see there).",
		"## Pre-warm (issue 7): a periodic workload, predictive pre-warm off and on",
		"`compute.suspend_timeout: 1s`, `compute.offload_after: 250ms` and `compute.prewarm: true`",
		"(**logical_size_bytes 38.9 MB**)",
		"| off | pw-off | off | 3.00 s × 11 | 8 | 407.00 ms | 411.00 ms | 411.00 ms | cold ×8 | zero ×8 | 0 |",
		"| on | pw-on | on | 3.00 s × 11 | 8 | 20.00 ms | 555.00 ms | 555.00 ms | running ×6, cold ×2 | running ×6, zero ×2 | 0 |",
		"| jitter | pw-jitter | on | 2.06–4.12 s (±40%, seed 7) | 8 |",
		"| off | 0 | 0 | 0 | 0 | 0 | – | 0.00 s | 12 (0) | 19.00 s | 1.58 s | 13.00 s |",
		"| on | 8 | 7 | 1 | 0 | 1 | 88% (7/8) | 10.00 s | 14 (8) | 29.00 s | 2.42 s | 20.00 s |",
		"- **Pre-warm on vs off**, arrivals after the first 4: median 20.00 ms vs 407.00 ms (20.35× faster), p90 555.00 ms vs 411.00 ms",
		"- **Extra compute time of pre-warm**: compute up 29.00 s with vs 19.00 s without: +10.00 s (+53%, +0.83 s per arrival);",
		"`neonproxy_prewarm_compute_seconds_total` 10.00 s",
		"- Starts (\"compute started\" took): off median 350.00 ms (n 1), on median 500.00 ms (n 2); pre-warm's lead is max(2 × the last start, 1 s).",
		"- on, the first 4 arrivals (learning): wake kind cold ×4.",
		"- **on: pre-warm miss at arrival 5 (wake cold, 555.00 ms): no \"pre-warm\" line since arrival 4; by wake/prewarm.go's rule the pre-warm was due at +0.92 s (lead max(2 × 1040.00 ms, 1 s) = 2.08 s); the compute of arrival 4 was suspended (\"suspending idle compute\") at +1.70 s, after the pre-warm was due: the pre-warm found it still running, did nothing, and the suspend timer armed at the client's release stood.**",
		"  of which +2.40 s after the last arrival (the pre-warm for a client that did not come: the workload had ended), the rest +0.95 s per predicted arrival.",
		"| long-visit | pw-long | on | 4.00 s × 11, each visit connected until 2.50 s after its arrival | 8 | 200.00 ms |",
		"| long-visit | 8 | 0 | 8 | 0 | 0 | 0% (0/8) |",
		"- **long-visit: 8 pre-warm misses** (arrivals 5, 6, 7, 8, 9, 10, 11, 12); the first, arrival 5 (wake cold, 200.00 ms): no \"pre-warm\" line since arrival 4; by wake/prewarm.go's rule the pre-warm was due at +3.00 s (lead max(2 × 200.00 ms, 1 s) = 1.00 s); the compute of arrival 4 was suspended (\"suspending idle compute\") at +3.20 s, after the pre-warm was due",
		"In 8 of the 8 the compute of the previous visit was still running when the pre-warm was due.",
		"- **on: 14 compute start(s), but 5 arrival(s) waited for a start of their own and the log has 8 \"pre-warm\" line(s)**.",
		"- **on: 1 arrival(s) counted as a pre-warm hit still waited for a wake** (the first: arrival 12, JSON starting/zero, wake cold, 80.00 ms).",
		"measured windows of 4 arrivals within 15%: 0): **no pre-warm fired** (`neonproxy_prewarm_total` unchanged, no \"pre-warm\" line; 12 compute starts, each for an arrival that waited for it).",
		"### Arrivals: on run (branch pw-on, pre-warm on)",
		"| 5 | 12.00 s | 3.00 s | stopped / zero | 0.10 s (3.00 s) | cold | miss | 555.00 ms |",
		"| 1 (learning) | 0.00 s | – | stopped / zero | – | cold | – | 600.00 ms |",
		"| 2 (learning) | 2.24 s | 2.24 s | stopped / zero | – | cold | – | 400.00 ms |",
		"### Commands and requests (prewarm)",
		"# <tmp>/prewarm/neonproxy.yaml (generated)\ncompute:\n  idle_after: 0\n```",
	)
	// A jitter run in which pre-warm fired, an off run with pre-warm lines,
	// a failed arrival.
	pr.runs[2].total.prewarm = map[string]int{"wasted": 2}
	pr.runs[2].log.prewarms = 2
	pr.runs[0].log.prewarms = 1
	pr.runs[0].arrivals[3].err = "connect: timeout"
	wantReport(t, r,
		"**pre-warm fired**: 2 \"pre-warm\" line(s), hits 0, misses 0, wasted 2.",
		"- **off: pre-warm is off for pw-off, yet the log has 1 \"pre-warm\" line(s)",
		"| 4 (learning) | 9.00 s | 3.00 s | stopped / zero | – | cold | – | failed: connect: timeout |",
	)
	if p := pr.problems(); len(p) != 1 || p[0] != "off run (pw-off), arrival 4: connect: timeout" {
		t.Errorf("problems = %q", p)
	}
	// Not run: nothing printed.
	r = newReport(options{sections: []string{sectionPrewarm}})
	var b strings.Builder
	r.print(&b)
	if strings.Contains(b.String(), "## Pre-warm") {
		t.Errorf("section printed without results:\n%s", b.String())
	}
}
