package e2e

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/neonproxy/neonproxy/internal/config"
)

// consoleConn logs in to the admin console with the simple protocol.
func (e *env) consoleConn(ctx context.Context, user, password string) (*pgx.Conn, *notices, error) {
	cfg, err := pgx.ParseConfig(e.url(user, password, "neonproxy"))
	if err != nil {
		return nil, nil, err
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	n := &notices{}
	cfg.OnNotice = func(_ *pgconn.PgConn, nt *pgconn.Notice) { n.add(nt.Message) }
	c, err := pgx.ConnectConfig(ctx, cfg)
	return c, n, err
}

type notices struct {
	mu   sync.Mutex
	msgs []string
}

func (n *notices) add(m string) { n.mu.Lock(); n.msgs = append(n.msgs, m); n.mu.Unlock() }
func (n *notices) all() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return strings.Join(n.msgs, "\n")
}

// show runs a SHOW and returns its column names and rows (text values).
func show(t *testing.T, ctx context.Context, c *pgx.Conn, cmd string) ([]string, []map[string]string) {
	t.Helper()
	rows, err := c.Query(ctx, cmd)
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	defer rows.Close()
	var cols []string
	for _, f := range rows.FieldDescriptions() {
		cols = append(cols, f.Name)
	}
	var out []map[string]string
	for rows.Next() {
		m := map[string]string{}
		for i, v := range rows.RawValues() {
			m[cols[i]] = string(v)
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	return cols, out
}

func wantCols(t *testing.T, cmd string, got []string, want string) {
	t.Helper()
	if strings.Join(got, " ") != want {
		t.Fatalf("%s columns:\n got  %s\n want %s", cmd, strings.Join(got, " "), want)
	}
}

func findRow(rows []map[string]string, col, val string) map[string]string {
	for _, r := range rows {
		if r[col] == val {
			return r
		}
	}
	return nil
}

// TestAdminConsole: psql -d neonproxy reaches the console; SHOW commands
// describe a held transaction-pooled transaction; PAUSE holds new work
// back (08006 once query_wait_timeout passes) and RESUME lets it through;
// RELOAD applies a new default_pool_size from the file; only admins get in.
func TestAdminConsole(t *testing.T) {
	e := newEnvWithFile(t, func(c *config.Config) {
		c.Pool.QueryWaitTimeout = config.Duration(2 * time.Second)
		c.Pool.AdminUsers = []string{"ops"}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	super, err := pgx.Connect(ctx, e.url("postgres", testPassword, "main"))
	if err != nil {
		t.Fatal(err)
	}
	defer super.Close(ctx)
	for _, q := range []string{
		"CREATE ROLE ops LOGIN PASSWORD 'ops-pw'",
		"CREATE ROLE app LOGIN PASSWORD 'app-pw'",
	} {
		if _, err := super.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}

	// A transaction-pooled client holds a server connection in a transaction.
	pooled, err := pgx.Connect(ctx, e.poolerURL())
	if err != nil {
		t.Fatal(err)
	}
	defer pooled.Close(ctx)
	tx, err := pooled.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}

	con, _, err := e.consoleConn(ctx, "postgres", testPassword)
	if err != nil {
		t.Fatal(err)
	}
	defer con.Close(ctx)

	cols, pools := show(t, ctx, con, "SHOW POOLS")
	wantCols(t, "SHOW POOLS", cols, "database user cl_active cl_waiting sv_active sv_idle sv_used sv_login maxwait maxwait_us pool_mode")
	var txnPool map[string]string
	for _, r := range pools {
		if r["database"] == "main.postgres" && r["user"] == "postgres" && r["pool_mode"] == "transaction" {
			txnPool = r
		}
	}
	if txnPool == nil || txnPool["sv_active"] != "1" || txnPool["sv_idle"] != "0" || txnPool["cl_active"] != "1" || txnPool["cl_waiting"] != "0" {
		t.Fatalf("transaction pool of main.postgres: %v (all: %v)", txnPool, pools)
	}
	if r := findRow(pools, "pool_mode", "session"); r == nil || r["sv_active"] != "1" || r["cl_active"] != "1" {
		t.Fatalf("session pool (the superuser's connection): %v", pools)
	}

	cols, clients := show(t, ctx, con, "show clients;")
	wantCols(t, "SHOW CLIENTS", cols, "type user database state addr port local_addr local_port connect_time request_time wait wait_us close_needed ptr link remote_pid tls application_name")
	if len(clients) != 2 || clients[0]["type"] != "C" || clients[0]["addr"] != "127.0.0.1" || clients[1]["state"] != "active" || clients[1]["database"] != "main.postgres" {
		t.Fatalf("clients: %v", clients)
	}

	cols, servers := show(t, ctx, con, "SHOW SERVERS")
	wantCols(t, "SHOW SERVERS", cols, "type user database state addr port connect_time request_time remote_pid prepared_statements")
	sv := findRow(servers, "remote_pid", strconv.Itoa(pid))
	if sv == nil || sv["state"] != "active" || sv["addr"] != "unix" || sv["type"] != "S" || sv["port"] == "0" {
		t.Fatalf("server of the held transaction (pid %d): %v", pid, servers)
	}

	cols, branches := show(t, ctx, con, "SHOW BRANCHES")
	wantCols(t, "SHOW BRANCHES", cols, "name parent compute_state clients paused")
	if b := findRow(branches, "name", "main"); b == nil || b["compute_state"] != "running" || b["clients"] != "2" || b["paused"] != "false" {
		t.Fatalf("branches: %v", branches)
	}

	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	cols, stats := show(t, ctx, con, "SHOW STATS")
	wantCols(t, "SHOW STATS", cols, "database total_xact_count total_query_count total_received total_sent total_wait_time avg_wait_time")
	// The superuser's session counts at its end; the pooled client's
	// BEGIN, SELECT and COMMIT are in.
	if r := findRow(stats, "database", "main.postgres"); r == nil || atoi(r["total_xact_count"]) < 1 || atoi(r["total_query_count"]) < 3 {
		t.Fatalf("stats: %v", stats)
	}
	// The server connection goes back to the pool just after the client
	// has its ReadyForQuery.
	waitFor(t, "the server connection back in the pool", func() bool {
		_, pools := show(t, ctx, con, "SHOW POOLS")
		r := findRow(pools, "pool_mode", "transaction")
		return r != nil && r["sv_active"] == "0" && r["sv_idle"] == "1" && r["cl_active"] == "1"
	})

	// Several statements in one query; errors; the extended protocol.
	if _, err := con.Exec(ctx, "SHOW POOLS; SHOW STATS;"); err != nil {
		t.Fatal(err)
	}
	_, err = con.Exec(ctx, "SHOW DATABASES")
	if pe := wantPgError(t, err, "42601", "unsupported admin console command"); !strings.Contains(pe.Hint, "SHOW POOLS") {
		t.Fatalf("hint %q", pe.Hint)
	}
	err = con.PgConn().ExecParams(ctx, "SHOW POOLS", nil, nil, nil, nil).Read().Err
	wantPgError(t, err, "0A000", "simple query protocol only")
	show(t, ctx, con, "SHOW STATS") // still in step after the Sync
	_, err = con.Exec(ctx, "PAUSE nosuch")
	wantPgError(t, err, "3D000", `branch "nosuch" does not exist`)

	// PAUSE: a new transaction waits, and fails after query_wait_timeout.
	if _, err := con.Exec(ctx, "PAUSE main"); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	_, err = pooled.Exec(ctx, "SELECT 1")
	if pgCode(err) != "08006" || time.Since(t0) < 1900*time.Millisecond {
		t.Fatalf("query while paused: %v after %s", err, time.Since(t0))
	}
	// One that comes in while paused goes through at RESUME.
	second, err := pgx.Connect(ctx, e.poolerURL())
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close(ctx)
	done := make(chan error, 1)
	go func() { _, err := second.Exec(ctx, "SELECT 1"); done <- err }()
	waitFor(t, "the second client to wait in the pool", func() bool {
		_, pools := show(t, ctx, con, "SHOW POOLS")
		r := findRow(pools, "pool_mode", "transaction")
		return r != nil && r["cl_waiting"] == "1"
	})
	if _, err := con.Exec(ctx, "resume main;"); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("query after RESUME: %v", err)
	}
	// Mix-ups are errors, as in PgBouncer; bare PAUSE/RESUME cover every branch.
	_, err = con.Exec(ctx, "RESUME main")
	wantPgError(t, err, "55000", `branch "main" is not paused`)
	for _, q := range []string{"PAUSE", "SHOW BRANCHES", "RESUME"} {
		if _, err := con.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		if q == "PAUSE" && !e.srv.Pool.Paused("main") {
			t.Fatal("bare PAUSE did not pause main")
		}
	}
	if e.srv.Pool.Paused("main") {
		t.Fatal("bare RESUME left main paused")
	}
	_, err = con.Exec(ctx, "RESUME")
	wantPgError(t, err, "55000", "no branch is paused")

	// RELOAD applies default_pool_size and names keys that need a restart
	// (the listen addresses, which the harness rewrote to the real ports).
	reloader, notes, err := e.consoleConn(ctx, "ops", "ops-pw")
	if err != nil {
		t.Fatalf("admin_users role: %v", err)
	}
	defer reloader.Close(ctx)
	e.cfg.Pool.DefaultPoolSize = 7
	e.writeConfig()
	if _, err := reloader.Exec(ctx, "RELOAD"); err != nil {
		t.Fatal(err)
	}
	if got := e.srv.Pool.Options().PoolSize; got != 7 {
		t.Fatalf("pool size after RELOAD = %d", got)
	}
	if n := notes.all(); !strings.Contains(n, "applied: tls certificate (re-read), pool.default_pool_size") || !strings.Contains(n, "not applied") || !strings.Contains(n, "listen") {
		t.Fatalf("RELOAD notice %q", n)
	}

	// Who gets in.
	_, _, err = e.consoleConn(ctx, "postgres", "wrong")
	wantPgError(t, err, "28P01", "password authentication failed")
	_, _, err = e.consoleConn(ctx, "app", "app-pw")
	wantPgError(t, err, "28000", "not allowed to use the admin console")
	_, _, err = e.consoleConn(ctx, "app", "wrong")
	wantPgError(t, err, "28P01", "password authentication failed")

	out, err := runCmd(t, []string{"PGPASSWORD=" + testPassword}, "psql", "-X", "-h", "127.0.0.1", "-p", strconv.Itoa(e.port()),
		"-U", "postgres", "-d", "neonproxy", "-c", "SHOW POOLS")
	if err != nil || !strings.Contains(out, "cl_active") || !strings.Contains(out, "main.postgres") {
		t.Fatalf("psql -d neonproxy: %v\n%s", err, out)
	}
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		return -1
	}
	return n
}
