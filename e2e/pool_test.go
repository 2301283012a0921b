package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/neonproxy/neonproxy/internal/config"
)

// poolerURL is a transaction-pooled route to branch main.
func (e *env) poolerURL(query ...string) string {
	return e.url("postgres", testPassword, "main-pooler", query...)
}

// TestTransactionPoolingSharesServers: 30 clients on 3 server connections
// run interleaved transactions; none sees another's uncommitted state and
// the compute never has more than 3 backends for them.
func TestTransactionPoolingSharesServers(t *testing.T) {
	e := newEnv(t, func(c *config.Config) { c.Pool.DefaultPoolSize = 3 })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	admin, err := pgx.Connect(ctx, e.url("postgres", testPassword, "main"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE TABLE counters (client int PRIMARY KEY, n int NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	const clients, rounds = 30, 20
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs <- func() error {
				cfg, err := pgx.ParseConfig(e.poolerURL())
				if err != nil {
					return err
				}
				cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
				c, err := pgx.ConnectConfig(ctx, cfg)
				if err != nil {
					return err
				}
				defer c.Close(ctx)
				if _, err := c.Exec(ctx, "INSERT INTO counters VALUES ($1, 0)", i); err != nil {
					return err
				}
				for r := 0; r < rounds; r++ {
					tx, err := c.Begin(ctx)
					if err != nil {
						return err
					}
					if _, err := tx.Exec(ctx, "UPDATE counters SET n = n + 1 WHERE client = $1", i); err != nil {
						return err
					}
					// Inside the transaction the client sees its own write and
					// its own backend for every statement.
					var n, pid1, pid2 int
					if err := tx.QueryRow(ctx, "SELECT n, pg_backend_pid() FROM counters WHERE client = $1", i).Scan(&n, &pid1); err != nil {
						return err
					}
					if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid2); err != nil {
						return err
					}
					if n != r+1 || pid1 != pid2 {
						return fmt.Errorf("client %d round %d: n=%d pids %d/%d", i, r, n, pid1, pid2)
					}
					if r%5 == 4 {
						if err := tx.Rollback(ctx); err != nil {
							return err
						}
						if _, err := c.Exec(ctx, "UPDATE counters SET n = n + 1 WHERE client = $1", i); err != nil {
							return err
						}
						continue
					}
					if err := tx.Commit(ctx); err != nil {
						return err
					}
				}
				return nil
			}()
		}(i)
	}
	stop, done := make(chan struct{}), make(chan struct{})
	maxSeen := int64(0)
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			var n int64
			err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND application_name <> 'neonproxy-auth' AND pid <> pg_backend_pid()").Scan(&n)
			if err == nil && n > maxSeen {
				maxSeen = n
			}
		}
	}()
	wg.Wait()
	close(stop)
	<-done
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	var total int64
	if err := admin.QueryRow(ctx, "SELECT sum(n) FROM counters").Scan(&total); err != nil || total != clients*rounds {
		t.Fatalf("sum %d, %v; want %d", total, err, clients*rounds)
	}
	// The admin connection is a session-mode client with its own backend,
	// excluded above; the 30 pooled clients shared at most 3.
	if maxSeen > 3 {
		t.Fatalf("%d server connections for the pooled clients, want at most 3", maxSeen)
	}
}

// TestTransactionPoolingPinsSessionState: SET of an untracked setting,
// LISTEN and temporary tables pin the client to its backend; tracked
// settings (TimeZone) follow the client without pinning.
func TestTransactionPoolingPinsSessionState(t *testing.T) {
	// Pinned clients keep their backends: room for the four pinned below.
	e := newEnv(t, func(c *config.Config) { c.Pool.DefaultPoolSize = 8 })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	simple := func() *pgx.Conn {
		cfg, err := pgx.ParseConfig(e.poolerURL())
		if err != nil {
			t.Fatal(err)
		}
		cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
		c, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(context.Background()) })
		return c
	}
	str := func(c *pgx.Conn, sql string) string {
		var s string
		if err := c.QueryRow(ctx, sql).Scan(&s); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return s
	}
	// Keep other backends busy so a client would move between them.
	busy := simple()

	a := simple()
	if _, err := a.Exec(ctx, "SET TimeZone = 'Asia/Tokyo'"); err != nil {
		t.Fatal(err)
	}
	b := simple()
	for i := 0; i < 5; i++ {
		if got := str(a, "SHOW TimeZone"); got != "Asia/Tokyo" {
			t.Fatalf("a's TimeZone %q", got)
		}
		if got := str(b, "SHOW TimeZone"); got == "Asia/Tokyo" {
			t.Fatal("b saw a's TimeZone")
		}
		_ = str(busy, "SELECT 'x'")
	}
	if got := counterValue(t, e, "neonproxy_pool_pinned_total", "reason", "set"); got != 0 {
		t.Fatalf("tracked SET pinned a client (%v)", got)
	}

	for _, tt := range []struct {
		reason string
		setup  string
		check  string
		want   string
	}{
		{"set", "SET search_path = pinned_schema, public", "SHOW search_path", "pinned_schema, public"},
		{"temp_table", "CREATE TEMP TABLE scratch AS SELECT 'kept'::text AS v", "SELECT v FROM scratch", "kept"},
		{"listen", "LISTEN chan1", "SELECT count(*)::text FROM pg_listening_channels()", "1"},
	} {
		t.Run(tt.reason, func(t *testing.T) {
			c := simple()
			if _, err := c.Exec(ctx, tt.setup); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 5; i++ {
				_ = str(busy, "SELECT 'x'")
				if got := str(c, tt.check); got != tt.want {
					t.Fatalf("after %q: %s = %q, want %q", tt.setup, tt.check, got, tt.want)
				}
			}
			if got := counterValue(t, e, "neonproxy_pool_pinned_total", "reason", tt.reason); got < 1 {
				t.Fatalf("pinned_total{reason=%s} = %v", tt.reason, got)
			}
		})
	}
	// A pinned LISTEN receives notifications.
	l := simple()
	if _, err := l.Exec(ctx, "LISTEN news"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Exec(ctx, "NOTIFY news, 'hello'"); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	n, err := l.WaitForNotification(wctx)
	if err != nil || n.Payload != "hello" {
		t.Fatalf("notification %+v, %v", n, err)
	}
}

// TestPoolWaitTimeoutAndDirtyDisconnect: with one server connection held
// by an open transaction, another client waits query_wait_timeout and gets
// 08006; a client killed mid-transaction leaves no open transaction behind.
func TestPoolWaitTimeoutAndDirtyDisconnect(t *testing.T) {
	e := newEnv(t, func(c *config.Config) {
		c.Pool.DefaultPoolSize = 1
		c.Pool.QueryWaitTimeout = config.Duration(time.Second)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	holder, err := pgconn.Connect(ctx, e.poolerURL())
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Exec(ctx, "BEGIN; CREATE TABLE dirty (v int); INSERT INTO dirty VALUES (1)").Close(); err != nil {
		t.Fatal(err)
	}
	other, err := pgconn.Connect(ctx, e.poolerURL())
	if err != nil {
		t.Fatal(err) // startup borrows a connection only briefly... and it is busy
	}
	defer other.Close(ctx)
	_, err = other.Exec(ctx, "SELECT 1").ReadAll()
	wantPgError(t, err, "08006", "is exhausted")

	// Kill the holder mid-transaction: its backend must be rolled back (or
	// closed) before anyone else gets it.
	_ = holder.Conn().Close()
	after, err := pgx.Connect(ctx, e.poolerURL())
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close(ctx)
	var exists bool
	if err := after.QueryRow(ctx, "SELECT to_regclass('dirty') IS NOT NULL", pgx.QueryExecModeSimpleProtocol).Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if exists {
		t.Fatal("the killed client's uncommitted table is visible: its transaction was not rolled back")
	}
}

// TestPoolingCopyAndPgbench: COPY in and out and pgbench through a pooled
// route with more clients than server connections.
func TestPoolingCopyAndPgbench(t *testing.T) {
	e := newEnv(t, func(c *config.Config) { c.Pool.DefaultPoolSize = 2 })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := pgconn.Connect(ctx, e.poolerURL())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if err := c.Exec(ctx, "CREATE TABLE cp (a int, b text)").Close(); err != nil {
		t.Fatal(err)
	}
	tag, err := c.CopyFrom(ctx, strings.NewReader("1\tone\n2\ttwo\n3\tthree\n"), "COPY cp FROM STDIN")
	if err != nil || tag.RowsAffected() != 3 {
		t.Fatalf("copy in: %v %v", tag, err)
	}
	var out strings.Builder
	if _, err := c.CopyTo(ctx, &out, "COPY (SELECT * FROM cp ORDER BY a) TO STDOUT"); err != nil {
		t.Fatal(err)
	}
	if out.String() != "1\tone\n2\ttwo\n3\tthree\n" {
		t.Fatalf("copy out %q", out.String())
	}
	pe := e.libpqEnv("main-pooler")
	if out, err := runCmd(t, pe, "pgbench", "-i", "-s", "1", "-q"); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	for _, mode := range []string{"simple", "extended"} {
		out, err := runCmd(t, pe, "pgbench", "-n", "-c", "8", "-j", "2", "-t", "50", "-M", mode)
		if err != nil || !strings.Contains(out, "number of transactions actually processed: 400/400") {
			t.Fatalf("pgbench -M %s: %v\n%s", mode, err, out)
		}
	}
}

// TestPreparedStatementsAcrossServers: pgx's default statement cache,
// explicit named statements, errors inside extended-protocol batches and
// pgbench -M prepared all work while clients move between two server
// connections.
func TestPreparedStatementsAcrossServers(t *testing.T) {
	e := newEnv(t, func(c *config.Config) { c.Pool.DefaultPoolSize = 2 })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	setup, err := pgx.Connect(ctx, e.url("postgres", testPassword, "main"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := setup.Exec(ctx, "CREATE TABLE items AS SELECT g AS id, 'item ' || g AS name FROM generate_series(1, 100) g"); err != nil {
		t.Fatal(err)
	}
	setup.Close(ctx)

	const clients, rounds = 10, 30
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs <- func() error {
				c, err := pgx.Connect(ctx, e.poolerURL()) // default: cached prepared statements
				if err != nil {
					return err
				}
				defer c.Close(ctx)
				if _, err := c.Prepare(ctx, "by_id", "SELECT name FROM items WHERE id = $1"); err != nil {
					return fmt.Errorf("prepare: %w", err)
				}
				for r := 0; r < rounds; r++ {
					var sum int
					if err := c.QueryRow(ctx, "SELECT $1::int + $2::int", i, r).Scan(&sum); err != nil || sum != i+r {
						return fmt.Errorf("client %d round %d: sum %d, %v", i, r, sum, err)
					}
					var name string
					id := (i*rounds+r)%100 + 1
					if err := c.QueryRow(ctx, "by_id", id).Scan(&name); err != nil || name != fmt.Sprintf("item %d", id) {
						return fmt.Errorf("client %d round %d: by_id %q, %v", i, r, name, err)
					}
					var n int64
					if err := c.QueryRow(ctx, "SELECT count(*) FROM items WHERE id > $1", r).Scan(&n); err != nil || n != int64(100-r) {
						return fmt.Errorf("client %d round %d: count %d, %v", i, r, n, err)
					}
					if r%10 == 5 {
						// An error inside an extended-protocol batch.
						var x int
						err := c.QueryRow(ctx, "SELECT 1 / ($1::int - $1::int)", r).Scan(&x)
						if pgCode(err) != "22012" {
							return fmt.Errorf("client %d: want division_by_zero, got %v", i, err)
						}
					}
				}
				// Close and reuse a name for another query.
				if err := c.Deallocate(ctx, "by_id"); err != nil {
					return fmt.Errorf("deallocate: %w", err)
				}
				if _, err := c.Prepare(ctx, "by_id", "SELECT id FROM items WHERE name = $1"); err != nil {
					return fmt.Errorf("re-prepare: %w", err)
				}
				var id int
				if err := c.QueryRow(ctx, "by_id", "item 7").Scan(&id); err != nil || id != 7 {
					return fmt.Errorf("re-prepared by_id: %d, %v", id, err)
				}
				return nil
			}()
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}

	pe := e.libpqEnv("main-pooler")
	if out, err := runCmd(t, pe, "pgbench", "-i", "-s", "1", "-q"); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	// One thread per client: pgbench -M prepared prepares with a blocking
	// PQprepare inside its transactions, so a thread's client could wait
	// for the server connection another client of the same thread holds.
	for _, args := range [][]string{
		{"-n", "-c", "8", "-j", "8", "-t", "50", "-M", "prepared"},
		{"-n", "-S", "-c", "8", "-j", "2", "-t", "200", "-M", "prepared"},
	} {
		out, err := runCmd(t, pe, "pgbench", args...)
		if err != nil || !strings.Contains(out, "number of failed transactions: 0") || strings.Contains(out, "aborted") {
			t.Fatalf("pgbench %v: %v\n%s", args, err, out)
		}
	}
}

// TestPoolingCopyBothWays: COPY FROM STDIN with the data sent only after the
// server asks (psql) and pipelined behind the query (pgx), several times in
// one session, then an ordinary query.
func TestPoolingCopyBothWays(t *testing.T) {
	e := newEnv(t, func(c *config.Config) { c.Pool.DefaultPoolSize = 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgconn.Connect(ctx, e.poolerURL())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if err := c.Exec(ctx, "CREATE TABLE cb (a int)").Close(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := c.CopyFrom(ctx, strings.NewReader("1\n2\n"), "COPY cb FROM STDIN"); err != nil {
			t.Fatalf("pgx copy %d: %v", i, err)
		}
	}
	script := "COPY cb FROM STDIN;\n3\n4\n\\.\nCOPY cb FROM STDIN;\n5\n\\.\nSELECT count(*) FROM cb;\n"
	pe := []string{"PGPASSWORD=" + testPassword}
	out, err := runCmd(t, pe, "sh", "-c", fmt.Sprintf("printf '%%s' \"$0\" | psql -X -At 'host=127.0.0.1 port=%d user=postgres dbname=main-pooler sslmode=disable'", e.port()), script)
	if err != nil || !strings.HasSuffix(strings.TrimSpace(out), "9") {
		t.Fatalf("psql copy: %v\n%s", err, out)
	}
	res := c.ExecParams(ctx, "SELECT count(*) FROM cb", nil, nil, nil, nil).Read()
	if res.Err != nil || string(res.Rows[0][0]) != "9" {
		t.Fatalf("count %v %v", res.Rows, res.Err)
	}
}
