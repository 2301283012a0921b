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
