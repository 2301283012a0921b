package e2e

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/neonproxy/neonproxy/internal/admin"
	"github.com/neonproxy/neonproxy/internal/config"
	"github.com/neonproxy/neonproxy/wake"
)

// conn connects to db as the superuser; the test closes it at its end.
func (e *env) conn(ctx context.Context, db string) *pgx.Conn {
	e.t.Helper()
	c, err := pgx.Connect(ctx, e.url("postgres", testPassword, db))
	if err != nil {
		e.t.Fatalf("connect %s: %v", db, err)
	}
	e.t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// ids reads the ids in table t of db through a fresh connection.
func (e *env) ids(db string) []int64 {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := e.conn(ctx, db)
	defer c.Close(ctx)
	rows, err := c.Query(ctx, "SELECT id FROM t ORDER BY id")
	if err != nil {
		e.t.Fatalf("%s: select: %v", db, err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		e.t.Fatalf("%s: select: %v", db, err)
	}
	return out
}

func (e *env) exec(db, sql string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := e.conn(ctx, db)
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, sql); err != nil {
		e.t.Fatalf("%s: %s: %v", db, sql, err)
	}
}

func (e *env) admin() *admin.Client {
	return &admin.Client{BaseURL: "http://" + e.srv.AdminAddr().String()}
}

// TestBranchExpiry: a branch created with a ttl is deleted by the reaper
// when it expires; each kind of connected client (session mode idle or in
// a transaction, transaction-pooled idle or in a transaction) is told
// 57P01 naming the expiry, and a new connection is refused.
func TestBranchExpiry(t *testing.T) {
	e := newEnv(t, func(c *config.Config) { c.Branches.ReapInterval = config.Duration(time.Hour) })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e.exec("main", "CREATE TABLE t (id int primary key); INSERT INTO t VALUES (1)")
	// Long enough for the clients below to connect on a loaded machine;
	// the test waits for the expiry itself, not for a guess of it.
	b, err := e.admin().Create(ctx, admin.CreateBranchRequest{Name: "exp", TTL: "20s"})
	if err != nil {
		t.Fatal(err)
	}
	if b.ExpiresAt == nil {
		t.Fatal("no expires_at in the created branch")
	}
	type client struct {
		name string
		db   string
		txn  bool
		c    *pgx.Conn
	}
	clients := []*client{{name: "session idle", db: "exp"}, {name: "session in transaction", db: "exp", txn: true},
		{name: "pooled idle", db: "exp-pooler"}, {name: "pooled in transaction", db: "exp-pooler", txn: true}}
	for i, cl := range clients {
		c, err := pgx.Connect(ctx, e.url("postgres", testPassword, cl.db))
		if err != nil {
			t.Fatalf("%s: connect: %v", cl.name, err)
		}
		defer c.Close(context.Background())
		cl.c = c
		if cl.txn {
			// Distinct keys: the open transactions must not wait on each other.
			if _, err := c.Exec(ctx, fmt.Sprintf("BEGIN; INSERT INTO t VALUES (%d)", 10+i)); err != nil {
				t.Fatalf("%s: %v", cl.name, err)
			}
		} else if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatalf("%s: %v", cl.name, err)
		}
	}
	if time.Now().After(*b.ExpiresAt) {
		t.Skip("the clients connected after the branch expired (machine too slow for the 20 s ttl)")
	}
	waitFor(t, "the reaper to delete the expired branch", func() bool {
		_, err := e.srv.Registry.Get(ctx, "exp")
		return err != nil
	})
	want := fmt.Sprintf(`branch "exp" expired at %s`, b.ExpiresAt.UTC().Format(time.RFC3339))
	for _, cl := range clients {
		_, err := cl.c.Exec(ctx, "SELECT 1")
		pe := wantPgError(t, err, "57P01", want)
		if pe.Hint == "" {
			t.Errorf("%s: no hint", cl.name)
		}
	}
	if got := counterValue(t, e, "neonproxy_branches_expired_total", "result", "deleted"); got != 1 {
		t.Errorf("neonproxy_branches_expired_total{result=deleted} = %v, want 1", got)
	}
	_, err = pgx.Connect(ctx, e.url("postgres", testPassword, "postgres", "options", "endpoint=exp"))
	wantPgError(t, err, "3D000", `branch "exp" does not exist`)
	// Its usage outlives it, and the tiers add up.
	rep, err := e.admin().Usage(ctx, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	var total admin.UsageJSON
	found := false
	for _, u := range rep.Branches {
		total.Add(u.UsageJSON)
		if u.Branch == "exp" {
			found = true
			if !u.Deleted || u.RunningSeconds < 1 || u.ComputeSeconds != u.RunningSeconds+u.IdleSeconds || u.ColdWakes != 1 {
				t.Errorf("usage of the expired branch: %+v", u)
			}
		}
	}
	// Float sums in another order: equal to within rounding.
	if !found || math.Abs(total.ComputeSeconds-rep.Total.ComputeSeconds) > 1e-6 || total.Wakes != rep.Total.Wakes || total.UniqueBytes != rep.Total.UniqueBytes {
		t.Errorf("usage report: exp listed %v; total %+v, sum of branches %+v", found, rep.Total, total)
	}
	if out, err := runCLI(t, e, "usage"); err != nil || !strings.Contains(out, "exp (deleted)") || !strings.Contains(out, "TOTAL") {
		t.Errorf("neonproxy usage: %v\n%s", err, out)
	}
	if left := postgresProcesses(e.cfg.DataDir + "/branches/exp/"); len(left) > 0 {
		t.Errorf("the expired branch's compute still runs: %v", left)
	}
}

// TestBranchReset: a reset branch reads its parent's latest state; its
// own changes are gone. Without wait its client is told why it was cut;
// with wait the reset waits for the client to leave.
func TestBranchReset(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	e.exec("main", "CREATE TABLE t (id int primary key); INSERT INTO t VALUES (1)")
	if _, err := e.admin().Create(ctx, admin.CreateBranchRequest{Name: "rst"}); err != nil {
		t.Fatal(err)
	}
	e.exec("rst", "INSERT INTO t VALUES (2)")
	e.exec("main", "INSERT INTO t VALUES (3)") // the parent moves on while main runs
	if got := e.ids("rst"); !slices.Equal(got, []int64{1, 2}) {
		t.Fatalf("rst before reset: %v", got)
	}
	before, err := e.admin().GetBranch(ctx, "rst")
	if err != nil {
		t.Fatal(err)
	}

	// Without wait: a connected client is cut with the reason.
	c, err := pgx.Connect(ctx, e.url("postgres", testPassword, "rst"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	after, err := e.admin().ResetBranch(ctx, "rst", false, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Exec(ctx, "SELECT 1")
	wantPgError(t, err, "57P01", `branch "rst" was reset to the latest state of its parent "main"`)
	// The parent's commits up to the reset (3, acknowledged while main
	// runs) are there; the branch's own (2) are gone.
	if got := e.ids("rst"); !slices.Equal(got, []int64{1, 3}) {
		t.Fatalf("rst after reset: %v, want [1 3]", got)
	}
	if after.Timeline == before.Timeline || after.Timeline == 0 {
		t.Errorf("timeline %d before and %d after the reset: want a new one", before.Timeline, after.Timeline)
	}
	if after.ResetAt == nil {
		t.Error("no reset_at after the reset")
	}
	// The old timeline went: no branch read from it.
	tls, err := e.srv.Store.Timelines(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tl := range tls {
		if uint64(tl.ID) == before.Timeline {
			t.Errorf("the old timeline %d of rst is still in the store", tl.ID)
		}
	}

	// With wait: the reset waits while a client stays connected, which
	// keeps working meanwhile; it happens once the client leaves.
	e.exec("rst", "INSERT INTO t VALUES (4)")
	c2, err := pgx.Connect(ctx, e.url("postgres", testPassword, "rst"))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := e.admin().ResetBranch(ctx, "rst", true, 2*time.Minute)
		done <- err
	}()
	// The reset is waiting: it cannot finish while c2 is connected, and
	// c2 keeps being served (a reset would have cut it).
	for i := 0; i < 5; i++ {
		var n int64
		if err := c2.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil || n != 3 {
			t.Fatalf("client during a waiting reset: %d rows, %v", n, err)
		}
		select {
		case err := <-done:
			t.Fatalf("reset with wait returned (%v) while a client was connected", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	if e.srv.Computes.Status("rst").State != wake.StateRunning {
		t.Errorf("compute %s during a waiting reset", e.srv.Computes.Status("rst").State)
	}
	_ = c2.Close(ctx)
	if err := <-done; err != nil {
		t.Fatalf("reset with wait: %v", err)
	}
	if got := e.ids("rst"); !slices.Equal(got, []int64{1, 3}) {
		t.Fatalf("rst after the second reset: %v, want [1 3]", got)
	}
	if _, err := e.admin().ResetBranch(ctx, "main", false, 0); err == nil {
		t.Error("reset of main (no parent) succeeded")
	}
}

// TestBranchDiff: after known changes in a child and in its parent, the
// diff lists exactly the user relations touched on each side (a table, its
// primary key index, a TOAST table and its index, a new table), from the
// page store alone, and the schema diff lists the DDL the child ran.
func TestBranchDiff(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	// Few rows: no autovacuum pass may touch the tables behind the test.
	e.exec("main", `CREATE TABLE a (id int PRIMARY KEY, v text);
		CREATE TABLE b (id int, v text);
		CREATE TABLE docs (id int, body text);
		INSERT INTO a SELECT g, 'a' FROM generate_series(1, 20) g;
		INSERT INTO b SELECT g, 'b' FROM generate_series(1, 20) g;
		INSERT INTO docs VALUES (1, 'short')`)
	ac := e.admin()
	// Stored first: a branch of a running parent starts from its image
	// plus WAL, which the diff would count as the branch's own.
	if _, err := ac.Suspend(ctx, "main"); err != nil {
		t.Fatal(err)
	}
	if _, err := ac.Create(ctx, admin.CreateBranchRequest{Name: "dx"}); err != nil {
		t.Fatal(err)
	}
	// The child: key changes (heap and index), a value large enough to be
	// stored out of line (TOAST table and its index), a new table, a new
	// column (catalogs only).
	e.exec("dx", `UPDATE a SET id = id + 1000 WHERE id <= 5;
		INSERT INTO docs SELECT 2, string_agg(md5(g::text), '') FROM generate_series(1, 1000) g;
		CREATE TABLE newt (x int);
		ALTER TABLE a ADD COLUMN note text`)
	// The parent, after the branch point.
	e.exec("main", "UPDATE b SET v = 'changed'")
	for _, b := range []string{"dx", "main"} {
		if _, err := ac.Suspend(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	d, err := ac.DiffBranch(ctx, "dx", admin.DiffOptions{Schema: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("diff: %+v", d)
	if d.Against != "main" || d.Ancestor != "main" || len(d.UnstoredChanges) != 0 {
		t.Errorf("against %q, ancestor %q, unstored %v", d.Against, d.Ancestor, d.UnstoredChanges)
	}
	var gotBranch, gotAgainst []string
	toastOf := map[string]string{}
	for _, r := range d.Relations {
		if r.Database != "postgres" {
			t.Errorf("relation %s in database %q", r.Name, r.Database)
		}
		name := r.Name
		if strings.HasPrefix(name, "pg_toast.") {
			toastOf[name] = r.Of
			name = "toast"
			if r.Kind == "index" {
				name = "toast index"
			}
		}
		if r.PagesBranch > 0 || r.Created == "branch" {
			gotBranch = append(gotBranch, name)
		}
		if r.PagesAgainst > 0 || r.Created == "against" {
			gotAgainst = append(gotAgainst, name)
		}
		if name == "public.newt" && r.Created != "branch" {
			t.Errorf("public.newt: created %q, want branch", r.Created)
		}
	}
	slices.Sort(gotBranch)
	slices.Sort(gotAgainst)
	if want := []string{"public.a", "public.a_pkey", "public.docs", "public.newt", "toast", "toast index"}; !slices.Equal(gotBranch, want) {
		t.Errorf("relations changed in dx: %v, want %v", gotBranch, want)
	}
	if want := []string{"public.b"}; !slices.Equal(gotAgainst, want) {
		t.Errorf("relations changed in main: %v, want %v", gotAgainst, want)
	}
	for toast, of := range toastOf {
		if of != "public.docs" && !strings.HasPrefix(of, "pg_toast.") {
			t.Errorf("%s belongs to %q, want public.docs (or its TOAST table)", toast, of)
		}
	}
	var schema []string
	for _, c := range d.Schema {
		schema = append(schema, c.Text)
	}
	want := []string{"+ table public.newt", "+ column public.a.note"}
	if len(schema) != 2 || !slices.ContainsFunc(schema, func(s string) bool { return strings.HasPrefix(s, want[0]) }) ||
		!slices.ContainsFunc(schema, func(s string) bool { return strings.HasPrefix(s, want[1]) }) {
		t.Errorf("schema changes %q, want %q", schema, want)
	}
	// The CLI prints the same.
	out, err := runCLI(t, e, "branch", "diff", "dx")
	if err != nil || !strings.Contains(out, "public.a_pkey") || !strings.Contains(out, "created in dx") {
		t.Errorf("neonproxy branch diff: %v\n%s", err, out)
	}
}

// TestExtensions: a branch's compute sees exactly the extensions installed
// on the host (Debian's postgresql-15 contrib, and any postgresql-15-*
// package added later: their control files are where every compute looks),
// and contrib extensions, including one that needs
// compute.shared_preload_libraries, can be created and used.
func TestExtensions(t *testing.T) {
	e := newEnv(t, func(c *config.Config) { c.Compute.SharedPreloadLibraries = "pg_stat_statements" })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := e.admin().Create(ctx, admin.CreateBranchRequest{Name: "ext"}); err != nil {
		t.Fatal(err)
	}
	c, err := pgx.Connect(ctx, e.url("postgres", testPassword, "ext"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var sharedir string
	if err := c.QueryRow(ctx, "SELECT setting FROM pg_config WHERE name = 'SHAREDIR'").Scan(&sharedir); err != nil {
		t.Fatal(err)
	}
	controls, err := filepath.Glob(filepath.Join(sharedir, "extension", "*.control"))
	if err != nil || len(controls) == 0 {
		t.Fatalf("no control files under %s: %v", sharedir, err)
	}
	var onDisk []string
	for _, f := range controls {
		onDisk = append(onDisk, strings.TrimSuffix(filepath.Base(f), ".control"))
	}
	rows, err := c.Query(ctx, "SELECT name FROM pg_available_extensions ORDER BY name")
	if err != nil {
		t.Fatal(err)
	}
	avail, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(onDisk)
	if !slices.Equal(avail, onDisk) {
		t.Errorf("pg_available_extensions %v, control files in %s/extension %v", avail, sharedir, onDisk)
	}
	for _, sql := range []string{
		"CREATE EXTENSION pg_trgm", "CREATE EXTENSION hstore", "CREATE EXTENSION pgcrypto",
		`CREATE EXTENSION "uuid-ossp"`, "CREATE EXTENSION pg_stat_statements", "CREATE EXTENSION btree_gist",
	} {
		if _, err := c.Exec(ctx, sql); err != nil {
			t.Errorf("%s: %v", sql, err)
		}
	}
	var sim float64
	var h, digest string
	var calls int64
	err = c.QueryRow(ctx, `SELECT similarity('neonproxy', 'neon proxy'), ('a=>1'::hstore)->'a',
		encode(digest('x', 'sha256'), 'hex'), (SELECT count(*) FROM pg_stat_statements)`).Scan(&sim, &h, &digest, &calls)
	if err != nil || sim <= 0 || h != "1" || len(digest) != 64 || calls == 0 {
		t.Errorf("extension functions: similarity %v, hstore %q, digest %q, statements %d: %v", sim, h, digest, calls, err)
	}
}
