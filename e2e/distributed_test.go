package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/neonproxy/neonproxy/internal/admin"
	"github.com/neonproxy/neonproxy/internal/config"
	"github.com/neonproxy/neonproxy/internal/testconsul"
	"github.com/neonproxy/neonproxy/wake"
	"github.com/neonproxy/neonproxy/walkeeper"
)

// TestDistributedCluster is issue 6's proof on one machine: a Consul agent,
// one standalone pagestore (`neonproxy serve` with roles: [pagestore]) and
// three standalone keepers (quorum 2), all separate processes, and two
// proxy+compute nodes A and B sharing them.
//   - A branch created through A is routable through B at once (B starts
//     it from the shared pagestore).
//   - 20 clients split over A and B hit a cold branch at the same time:
//     exactly one compute starts cluster-wide, and all 20 succeed.
//   - Node A dies (nothing stopped or stored, its computes killed with
//     SIGKILL) while clients commit in a loop through B: B takes main's
//     lock, starts main from the pagestore plus the keepers' WAL, and
//     every acknowledged commit is there. The failover time (last
//     acknowledgement before, first after) is logged.
func TestDistributedCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	agent := testconsul.Start(t)
	sdir, err := os.MkdirTemp("", "np-cluster-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(sdir) })
	bin := buildBinary(t, sdir)
	// The pagestore as a serve node with roles: [pagestore].
	ps := startServiceProcAs(t, bin, filepath.Join(sdir, "pagestore"), "pagestore", true)
	keepers := []*keeperProc{startKeeperProc(t, bin, sdir, 1), startKeeperProc(t, bin, sdir, 2), startKeeperProc(t, bin, sdir, 3)}
	node := func(c *config.Config) {
		c.Consul.Address = agent.Addr
		c.Listen = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		c.Consul.Node = c.Listen
		c.Pagestore.Address, c.Pagestore.Token = ps.addr, keeperToken
		c.Walkeeper.Peers = []string{keepers[0].addr, keepers[1].addr, keepers[2].addr}
		c.Walkeeper.Quorum, c.Walkeeper.Token = 2, keeperToken
		// As if the keepers ran on other machines: they stream through
		// the nodes' front doors, not the computes' unix sockets.
		c.Walkeeper.ViaFrontDoor = true
	}
	a := newEnv(t, node)
	b := newEnv(t, node)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	apiA := &admin.Client{BaseURL: a.srv.AdminAddr().String()}
	runsOn := func(branch string) (on []string) {
		for name, e := range map[string]*env{"A": a, "B": b} {
			if e.srv != nil && e.srv.Computes.Status(branch).State == wake.StateRunning {
				on = append(on, name)
			}
		}
		return on
	}
	materialized := func(e *env, branch string) bool {
		_, err := os.Stat(filepath.Join(e.cfg.DataDir, "computes", "branches", branch))
		return err == nil
	}

	// Created through A, routable through B at once.
	if _, err := apiA.CreateBranch(ctx, "dev", "main"); err != nil {
		t.Fatal(err)
	}
	if b.mustQueryInt(b.url("postgres", testPassword, "dev"), "SELECT 1") != 1 {
		t.Fatal("dev through B")
	}
	if on := runsOn("dev"); len(on) != 1 || on[0] != "B" || materialized(a, "dev") {
		t.Fatalf("dev runs on %v (A materialized it: %v); want B alone, which the first client reached", on, materialized(a, "dev"))
	}

	// 20 clients over A and B at once on a cold branch.
	if _, err := apiA.CreateBranch(ctx, "cold", "main"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, 20)
	for i := range 20 {
		e := a
		if i%2 == 1 {
			e = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			c, err := pgx.Connect(ctx, e.url("postgres", testPassword, "cold"))
			if err == nil {
				var one int
				err = c.QueryRow(ctx, "SELECT 1").Scan(&one)
				c.Close(ctx)
			}
			if err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
			}
		}()
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	on := runsOn("cold")
	if len(on) != 1 {
		t.Fatalf("cold runs on %v; want exactly one node", on)
	}
	if materialized(a, "cold") && materialized(b, "cold") {
		t.Fatal("both nodes materialized cold: two computes started")
	}
	t.Logf("20 clients over A and B on a cold branch: all served in %s, one compute (on %s)", time.Since(t0).Round(time.Millisecond), on[0])

	// main runs on A; clients commit in a loop through B.
	if a.mustQueryInt(a.url("postgres", testPassword, "main"), "SELECT 1") != 1 {
		t.Fatal("main through A")
	}
	if on := runsOn("main"); len(on) != 1 || on[0] != "A" {
		t.Fatalf("main runs on %v, want A", on)
	}
	log, _ := os.ReadFile(a.logPath)
	for _, wk := range []string{"wk1", "wk2", "wk3"} {
		want := fmt.Sprintf(`"branch": "main", "keeper": "%s"`, wk)
		if !slices.ContainsFunc(strings.Split(string(log), "\n"), func(l string) bool {
			return strings.Contains(l, "keeper streaming through the front door") && strings.Contains(l, want)
		}) {
			t.Fatalf("A's log does not show %s streaming main through the front door", wk)
		}
	}
	// Only the keepers' secret, only over TLS, opens that door.
	for _, tc := range []struct{ query, code string }{
		{"sslmode=require&password=wrong", "28P01"},
		{"sslmode=disable&password=" + keeperToken, "28000"},
	} {
		u := fmt.Sprintf("postgres://%s@%s/postgres?options=endpoint%%3Dmain&replication=true&%s", walkeeper.ReplicationUser, a.srv.Addr(), tc.query)
		c, err := pgconn.Connect(ctx, u)
		if err == nil {
			c.Close(ctx)
		}
		wantPgError(t, err, tc.code, "")
	}
	setup, err := pgx.Connect(ctx, b.url("postgres", testPassword, "main"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := setup.Exec(ctx, "CREATE TABLE acked (id bigint PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	setup.Close(ctx)
	// Two rounds: A dies while clients commit through B; A comes back
	// (with its now stale local copy of main) and B dies while clients
	// commit through A.
	w := newAckWriters()
	nodes := map[string]*env{"A": a, "B": b}
	for _, round := range []struct{ owner, via string }{{"A", "B"}, {"B", "A"}} {
		owner, via := nodes[round.owner], nodes[round.via]
		if on := runsOn("main"); len(on) != 1 || on[0] != round.owner {
			t.Fatalf("main runs on %v, want %s", on, round.owner)
		}
		wctx, stopWriters := context.WithCancel(ctx)
		w.runRetrying(wctx, via.url("postgres", testPassword, "main"), 4)
		before := w.count()
		waitFor(t, "commits before the kill", func() bool { return w.count() >= before+300 })

		// The owner dies: its front door and its computes at once.
		var pids []int
		for _, br := range []string{"main", "cold", "dev"} {
			if st := owner.srv.Computes.Status(br); st.PID > 0 {
				pids = append(pids, st.PID)
			}
		}
		killedAt := time.Now()
		if err := owner.srv.Abandon(ctx); err != nil {
			t.Fatal(err)
		}
		owner.srv = nil
		for _, pid := range pids {
			// ESRCH: gone already (the dying node's lock watcher may have
			// stopped it first).
			if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				t.Fatal(err)
			}
		}
		acked := w.count()
		waitFor(t, "commits after the kill", func() bool { return w.count() >= acked+300 })
		stopWriters()
		w.wait()
		last, first := w.longestGap(killedAt)
		if on := runsOn("main"); len(on) != 1 || on[0] != round.via {
			t.Fatalf("after %s died main runs on %v, want %s", round.owner, on, round.via)
		}
		rows, missing := w.check(t, ctx, via.url("postgres", testPassword, "main"))
		t.Logf("%s killed: failover %s (the longest time without an acknowledged commit after the kill); %d acknowledged, %d rows, %d missing",
			round.owner, first.Sub(last).Round(time.Millisecond), w.count(), rows, len(missing))
		if len(missing) > 0 {
			t.Fatalf("%d acknowledged commits lost, first %v", len(missing), missing[:min(len(missing), 10)])
		}
		waitFor(t, "the killed computes to be gone", func() bool { return len(postgresProcesses(owner.dir)) == 0 })
		owner.start()
		// The restarted node serves main relayed; it runs nothing of it.
		if owner.mustQueryInt(owner.url("postgres", testPassword, "main"), "SELECT count(*) FROM acked") < int64(rows) {
			t.Fatalf("main through the restarted %s misses rows", round.owner)
		}
	}
}
