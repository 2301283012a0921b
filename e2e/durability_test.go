package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/neonproxy/neonproxy/internal/admin"
)

// TestNoAcknowledgedCommitLost: clients commit as fast as they can; then
// neonproxy "crashes" (Abandon: nothing is stopped or stored), the compute
// is killed with SIGKILL and its local data directory deleted. After a
// restart every acknowledged row is there: the embedded WAL keeper had
// each commit before PostgreSQL acknowledged it. Two cycles.
func TestNoAcknowledgedCommitLost(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	url := e.url("postgres", testPassword, "main")
	setup, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := setup.Exec(ctx, "CREATE TABLE acked (id bigint PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	setup.Close(ctx)

	w := newAckWriters()
	for cycle := 1; cycle <= 2; cycle++ {
		// Writers run until the crash breaks their connections.
		wctx, stop := context.WithCancel(ctx)
		w.run(wctx, url, 4)
		// Crash once some commits were acknowledged.
		waitFor(t, "commits to be acknowledged", func() bool { return w.count() >= cycle*300 })
		e.crashMain(ctx, func() { stop(); w.wait() })
		e.start()

		rows, missing := w.check(t, ctx, url)
		b, err := (&admin.Client{BaseURL: e.srv.AdminAddr().String()}).GetBranch(ctx, "main")
		if err != nil || b.WALKeeper == nil || b.WALKeeper.State != "streaming" {
			t.Fatalf("branch JSON after recovery: %+v, %v", b, err)
		}
		if _, ok := metricValue(t, e, "neonproxy_walkeeper_flush_lag_bytes", "branch", "main"); !ok {
			t.Fatal("no neonproxy_walkeeper_flush_lag_bytes{branch=\"main\"}")
		}
		t.Logf("cycle %d: %d acknowledged in total, %d rows recovered, %d missing", cycle, w.count(), rows, len(missing))
		if len(missing) > 0 {
			t.Fatalf("cycle %d: %d acknowledged commits lost, first %v", cycle, len(missing), missing[:min(len(missing), 10)])
		}
	}
}

// TestBranchAtLSN: through the admin API and the CLI, a branch at an LSN
// recorded between two inserts has the first rows and not the second.
func TestBranchAtLSN(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgx.Connect(ctx, e.url("postgres", testPassword, "main"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 100) g"); err != nil {
		t.Fatal(err)
	}
	var lsn string
	if err := c.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&lsn); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "INSERT INTO t SELECT generate_series(101, 150)"); err != nil {
		t.Fatal(err)
	}
	out, err := runCLI(t, e, "branch", "create", "before", "--lsn", lsn)
	if err != nil || !strings.Contains(out, "created branch before (parent main at "+lsn+")") {
		t.Fatalf("branch create --lsn: %v\n%s", err, out)
	}
	if n := e.mustQueryInt(e.url("postgres", testPassword, "before"), "SELECT count(*) FROM t"); n != 100 {
		t.Fatalf("branch at %s has %d rows, want 100", lsn, n)
	}
	api := &admin.Client{BaseURL: e.srv.AdminAddr().String()}
	if _, err := api.Create(ctx, admin.CreateBranchRequest{Name: "nope", LSN: "FF/0"}); !isStatus(err, 400) || !strings.Contains(err.Error(), "valid LSNs are") {
		t.Fatalf("branch in the future: %v", err)
	}
}
