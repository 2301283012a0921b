package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/neonproxy/neonproxy/internal/admin"
	"github.com/neonproxy/neonproxy/internal/config"
	"github.com/neonproxy/neonproxy/internal/pgwire"
	"github.com/neonproxy/neonproxy/wake"
)

// TestRoutingAndAuth covers every routing key, SNI over TLS, and the errors
// a client sees, against one server with branches main and dev.
func TestRoutingAndAuth(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := e.srv.Computes.Clone(ctx, "main", "dev", wake.Point{}); err != nil {
		t.Fatal(err)
	}
	if err := e.srv.Registry.Create(ctx, branch("dev", "main")); err != nil {
		t.Fatal(err)
	}
	// Tell the branches apart by a marker table.
	for _, b := range []string{"main", "dev"} {
		c, err := pgx.Connect(ctx, e.url("postgres", testPassword, b))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Exec(ctx, fmt.Sprintf("CREATE TABLE marker AS SELECT '%s'::text AS b", b)); err != nil {
			t.Fatal(err)
		}
		c.Close(ctx)
	}
	whichBranch := func(t *testing.T, cfg *pgconn.Config) string {
		t.Helper()
		conn, err := pgconn.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		defer conn.Close(ctx)
		res := conn.ExecParams(ctx, "SELECT b || '/' || current_database() FROM marker", nil, nil, nil, nil).Read()
		if res.Err != nil {
			t.Fatal(res.Err)
		}
		return string(res.Rows[0][0])
	}
	parse := func(t *testing.T, s string) *pgconn.Config {
		cfg, err := pgconn.ParseConfig(s)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}

	t.Run("keys", func(t *testing.T) {
		tests := []struct {
			name string
			cfg  func() *pgconn.Config
			want string
		}{
			{"dbname branch", func() *pgconn.Config { return parse(t, e.url("postgres", testPassword, "dev")) }, "dev/postgres"},
			{"dbname branch.db", func() *pgconn.Config { return parse(t, e.url("postgres", testPassword, "dev.postgres")) }, "dev/postgres"},
			{"options endpoint", func() *pgconn.Config {
				return parse(t, e.url("postgres", testPassword, "postgres", "options", "endpoint=dev -c application_name=x"))
			}, "dev/postgres"},
			{"default branch", func() *pgconn.Config { return parse(t, e.url("postgres", testPassword, "postgres")) }, "main/postgres"},
			{"sni over tls", func() *pgconn.Config {
				c := parse(t, e.url("postgres", testPassword, "postgres"))
				c.TLSConfig = tlsConfig("dev.localtest.me")
				return c
			}, "dev/postgres"},
			{"sni pooler suffix", func() *pgconn.Config {
				c := parse(t, e.url("postgres", testPassword, "postgres"))
				c.TLSConfig = tlsConfig("dev-pooler.localtest.me")
				return c
			}, "dev/postgres"},
			{"tls without sni key", func() *pgconn.Config {
				c := parse(t, e.url("postgres", testPassword, "main"))
				c.TLSConfig = tlsConfig("localhost")
				return c
			}, "main/postgres"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				if got := whichBranch(t, tt.cfg()); got != tt.want {
					t.Fatalf("routed to %s, want %s", got, tt.want)
				}
			})
		}
	})

	t.Run("options other settings reach postgres", func(t *testing.T) {
		c, err := pgx.Connect(ctx, e.url("postgres", testPassword, "postgres", "options", "endpoint=dev -c statement_timeout=1234"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		var v string
		if err := c.QueryRow(ctx, "SHOW statement_timeout").Scan(&v); err != nil || v != "1234ms" {
			t.Fatalf("statement_timeout %q, %v", v, err)
		}
		// The client sees the real server's version.
		if sv := c.PgConn().ParameterStatus("server_version"); !strings.HasPrefix(sv, "15.") {
			t.Fatalf("server_version %q", sv)
		}
	})

	t.Run("errors", func(t *testing.T) {
		tlsSNI := func(s string, sni string) *pgconn.Config {
			c := parse(t, s)
			c.TLSConfig = tlsConfig(sni)
			return c
		}
		tests := []struct {
			name string
			cfg  *pgconn.Config
			code string
			msg  string
		}{
			{"wrong password", parse(t, e.url("postgres", "nope", "main")), "28P01", `password authentication failed for user "postgres"`},
			{"unknown role", parse(t, e.url("ghost", "nope", "main")), "28P01", `password authentication failed for user "ghost"`},
			{"unknown branch dbname", parse(t, e.url("postgres", testPassword, "nosuch.postgres")), "3D000", `branch "nosuch" does not exist`},
			{"unknown branch options", parse(t, e.url("postgres", testPassword, "postgres", "options", "endpoint=nosuch")), "3D000", `branch "nosuch" does not exist`},
			{"unknown branch sni", tlsSNI(e.url("postgres", testPassword, "postgres"), "nosuch.localtest.me"), "3D000", `branch "nosuch" does not exist`},
			{"conflicting sni and options", tlsSNI(e.url("postgres", testPassword, "postgres", "options", "endpoint=main"), "dev.localtest.me"), "08004", "inconsistent branch names"},
			{"conflicting options and dbname", parse(t, e.url("postgres", testPassword, "main.postgres", "options", "endpoint=dev")), "08004", "inconsistent branch names"},
			{"invalid branch name", parse(t, e.url("postgres", testPassword, "postgres", "options", "endpoint=Not_Valid")), "08004", "invalid branch name"},
			{"missing database on compute", parse(t, e.url("postgres", testPassword, "dev.nodb")), "3D000", `database "nodb" does not exist`},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				conn, err := pgconn.ConnectConfig(ctx, tt.cfg)
				if err == nil {
					conn.Close(ctx)
					t.Fatal("connected")
				}
				wantPgError(t, err, tt.code, tt.msg)
			})
		}
	})

	t.Run("unknown role looks like wrong password", func(t *testing.T) {
		// Same message, and the SCRAM exchange runs to the end for both (the
		// client gets a server-first message with a salt either way).
		_, err1 := pgx.Connect(ctx, e.url("postgres", "bad", "main"))
		_, err2 := pgx.Connect(ctx, e.url("nobody", "bad", "main"))
		p1, p2 := wantPgError(t, err1, "28P01", "password authentication failed"), wantPgError(t, err2, "28P01", "password authentication failed")
		if p1.Hint != p2.Hint || p1.Detail != p2.Detail || p1.Severity != p2.Severity {
			t.Fatalf("responses differ: %+v vs %+v", p1, p2)
		}
	})

	t.Run("alter role password takes effect for the next connection", func(t *testing.T) {
		c, err := pgx.Connect(ctx, e.url("postgres", testPassword, "dev"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Exec(ctx, "CREATE ROLE app LOGIN PASSWORD 'first'"); err != nil {
			t.Fatal(err)
		}
		if got := e.mustQueryInt(e.url("app", "first", "dev"), "SELECT 1"); got != 1 {
			t.Fatal(got)
		}
		if _, err := c.Exec(ctx, "ALTER ROLE app PASSWORD 'second'"); err != nil {
			t.Fatal(err)
		}
		c.Close(ctx)
		if got := e.mustQueryInt(e.url("app", "second", "dev"), "SELECT 2"); got != 2 {
			t.Fatal(got)
		}
		_, err = pgx.Connect(ctx, e.url("app", "first", "dev"))
		wantPgError(t, err, "28P01", `user "app"`)
		// A role on dev does not exist on main: branches have their own roles.
		_, err = pgx.Connect(ctx, e.url("app", "second", "main"))
		wantPgError(t, err, "28P01", `user "app"`)
	})

	t.Run("psql", func(t *testing.T) {
		out, err := runCmd(t, []string{"PGPASSWORD=" + testPassword, "PGCONNECT_TIMEOUT=30"}, "psql",
			"-X", "-At", "-h", "127.0.0.1", "-p", fmt.Sprint(e.port()), "-U", "postgres", "-d", "dev",
			"-c", "SELECT b FROM marker", "-c", "SELECT current_setting('server_version_num')")
		if err != nil || !strings.HasPrefix(out, "dev\n15") {
			t.Fatalf("psql: %v\n%s", err, out)
		}
		// SNI through libpq: host names the branch, hostaddr avoids DNS.
		out, err = runCmd(t, []string{"PGPASSWORD=" + testPassword},
			"psql", "-X", "-At", fmt.Sprintf("host=dev.localtest.me hostaddr=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=require", e.port()),
			"-c", "SELECT b FROM marker")
		if err != nil || strings.TrimSpace(out) != "dev" {
			t.Fatalf("psql sni: %v\n%s", err, out)
		}
		// Channel binding (SCRAM-SHA-256-PLUS) over TLS.
		out, err = runCmd(t, []string{"PGPASSWORD=" + testPassword},
			"psql", "-X", "-At", fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=main sslmode=require channel_binding=require", e.port()),
			"-c", "SELECT b FROM marker")
		if err != nil || strings.TrimSpace(out) != "main" {
			t.Fatalf("psql channel_binding=require: %v\n%s", err, out)
		}
		out, err = runCmd(t, []string{"PGPASSWORD=wrong"}, "psql", "-X", "-At", "-h", "127.0.0.1", "-p", fmt.Sprint(e.port()), "-U", "postgres", "-d", "main", "-c", "SELECT 1")
		if err == nil || !strings.Contains(out, `password authentication failed for user "postgres"`) {
			t.Fatalf("psql wrong password: %v\n%s", err, out)
		}
	})

	t.Run("pgbench", func(t *testing.T) {
		pe := e.libpqEnv("dev")
		if out, err := runCmd(t, pe, "pgbench", "-i", "-s", "1", "-q"); err != nil {
			t.Fatalf("pgbench -i: %v\n%s", err, out)
		}
		out, err := runCmd(t, pe, "pgbench", "-n", "-c", "4", "-j", "2", "-t", "100", "-M", "extended")
		if err != nil || !strings.Contains(out, "number of transactions actually processed: 400/400") {
			t.Fatalf("pgbench: %v\n%s", err, out)
		}
		out, err = runCmd(t, pe, "pgbench", "-n", "-S", "-C", "-c", "4", "-j", "2", "-t", "25")
		if err != nil || !strings.Contains(out, "number of transactions actually processed: 100/100") {
			t.Fatalf("pgbench -C: %v\n%s", err, out)
		}
	})
}

// TestColdStartSingleFlight: 20 clients arriving at a stopped branch cause
// exactly one start, and all of them get through.
func TestColdStartSingleFlight(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e.waitState("main", wake.StateStopped)
	before := e.srv.Computes.Status("main").Generation
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			c, err := pgx.Connect(ctx, e.url("postgres", testPassword, "main"))
			if err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
				return
			}
			defer c.Close(ctx)
			var got int
			if err := c.QueryRow(ctx, "SELECT $1::int", i).Scan(&got); err != nil || got != i {
				errs <- fmt.Errorf("client %d: %d, %v", i, got, err)
			}
		}(i)
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if starts := e.srv.Computes.Status("main").Generation - before; starts != 1 {
		t.Fatalf("%d starts, want 1", starts)
	}
	// main's local directory is kept while it is suspended: a warm start.
	if got := counterValue(t, e, "neonproxy_wake_duration_seconds", "kind", "warm"); got < 1 {
		t.Fatalf("warm wake histogram count %v", got)
	}
}

// TestCancel: a CancelRequest with the proxy's key reaches the backend that
// runs pg_sleep; garbage keys are ignored.
func TestCancel(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgx.Connect(ctx, e.url("postgres", testPassword, "main"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var realPID uint32
	if err := c.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&realPID); err != nil {
		t.Fatal(err)
	}
	if c.PgConn().PID() == realPID {
		t.Fatal("client was given the compute's real backend pid")
	}
	// An unknown key is ignored: the query is not cancelled by it.
	sendCancel(t, e, c.PgConn().PID()+1, []byte{1, 2, 3, 4})

	done := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, "SELECT pg_sleep(60)")
		done <- err
	}()
	// Cancel once the backend is really sleeping.
	waitFor(t, "the backend to sleep", func() bool {
		return e.mustQueryInt(e.url("postgres", testPassword, "main"),
			"SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'") == 1
	})
	if err := c.PgConn().CancelRequest(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		wantPgError(t, err, "57014", "canceling statement due to user request")
	case <-ctx.Done():
		t.Fatal("pg_sleep was not cancelled")
	}
	// The session survives a cancel.
	var one int
	if err := c.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatal(err)
	}
}

func sendCancel(t *testing.T, e *env, pid uint32, key []byte) {
	t.Helper()
	conn, err := net.Dial("tcp", e.srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	b, _ := (&pgproto3.CancelRequest{ProcessID: pid, SecretKey: key}).Encode(nil)
	if _, err := conn.Write(b); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := conn.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("cancel connection: want close, got %d bytes, %v", n, err)
	}
}

// TestIdleSuspendAndRewake: a compute stops after suspend_timeout without
// clients and the next client wakes it again; a connected client keeps it
// running.
func TestIdleSuspendAndRewake(t *testing.T) {
	e := newEnv(t, func(c *config.Config) { c.Compute.SuspendTimeout = config.Duration(time.Second) })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgx.Connect(ctx, e.url("postgres", testPassword, "main"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "CREATE TABLE t AS SELECT 42 AS v"); err != nil {
		t.Fatal(err)
	}
	gen := e.srv.Computes.Status("main").Generation
	// Held open for three suspend timeouts: must stay running.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if st := e.srv.Computes.Status("main"); st.State != wake.StateRunning || st.Generation != gen {
			t.Fatalf("compute left running while a client was connected: %+v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.Close(ctx)
	e.waitState("main", wake.StateStopped)
	if v := e.mustQueryInt(e.url("postgres", testPassword, "main"), "SELECT v FROM t"); v != 42 {
		t.Fatalf("after re-wake: %d", v)
	}
	if st := e.srv.Computes.Status("main"); st.Generation != gen+1 {
		t.Fatalf("generation %d, want %d", st.Generation, gen+1)
	}
}

// TestSuspendDisconnectsClearly: an admin suspend ends connected sessions
// with PostgreSQL's own 57P01, and the next connection wakes the compute.
func TestSuspendDisconnectsClearly(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgx.Connect(ctx, e.url("postgres", testPassword, "main"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if err := e.srv.Computes.Suspend(ctx, "main"); err != nil {
		t.Fatal(err)
	}
	_, err = c.Exec(ctx, "SELECT 1")
	if err == nil {
		t.Fatal("query on a suspended compute succeeded")
	}
	if code := pgCode(err); code != "" && code != "57P01" {
		t.Fatalf("want 57P01 or a closed connection, got %v", err)
	}
	if v := e.mustQueryInt(e.url("postgres", testPassword, "main"), "SELECT 7"); v != 7 {
		t.Fatal(v)
	}
}

// TestRestartAdoptsRunningCompute: a neonproxy that dies leaves its computes
// running; the next one adopts them (same postmaster) and stops them on
// shutdown.
func TestRestartAdoptsRunningCompute(t *testing.T) {
	e := newEnv(t, nil)
	if v := e.mustQueryInt(e.url("postgres", testPassword, "main"), "SELECT pg_backend_pid()"); v == 0 {
		t.Fatal(v)
	}
	pid := e.srv.Computes.Status("main").PID
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.srv.Abandon(ctx); err != nil {
		t.Fatal(err)
	}
	e.srv = nil
	if len(postgresProcesses(e.dir)) == 0 {
		t.Fatal("the abandoned compute is not running")
	}
	e.start()
	st := e.srv.Computes.Status("main")
	if st.State != wake.StateRunning || st.PID != pid {
		t.Fatalf("after restart: %+v, want running pid %d", st, pid)
	}
	if v := e.mustQueryInt(e.url("postgres", testPassword, "main"), "SELECT 5"); v != 5 {
		t.Fatal(v)
	}
	if got := e.srv.Computes.Status("main").PID; got != pid {
		t.Fatalf("compute restarted instead of adopted: pid %d, was %d", got, pid)
	}
}

// TestBrokenComputeGets57P03: a branch whose PostgreSQL cannot start gives
// clients 57P03; after breaker_failures attempts the breaker answers at
// once with the retry delay.
func TestBrokenComputeGets57P03(t *testing.T) {
	e := newEnv(t, func(c *config.Config) {
		c.Compute.BreakerFailures = 2
		c.Compute.BreakerOpen = config.Duration(time.Minute)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := e.srv.Computes.Clone(ctx, "main", "broken", wake.Point{}); err != nil {
		t.Fatal(err)
	}
	if err := e.srv.Registry.Create(ctx, branch("broken", "main")); err != nil {
		t.Fatal(err)
	}
	// A first start and clean stop leave a current local copy, which the
	// next start uses as it is.
	if n := e.mustQueryInt(e.url("postgres", testPassword, "broken"), "SELECT 1"); n != 1 {
		t.Fatal(n)
	}
	if err := e.srv.Computes.Suspend(ctx, "broken"); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(e.cfg.DataDir, "computes", "branches", "broken", "pgdata", "postgresql.conf")
	if err := os.WriteFile(conf, []byte("this is not a setting\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		_, err := pgx.Connect(ctx, e.url("postgres", testPassword, "broken"))
		wantPgError(t, err, "57P03", `compute for branch "broken"`)
	}
	_, err := pgx.Connect(ctx, e.url("postgres", testPassword, "broken"))
	pe := wantPgError(t, err, "57P03", "not retrying")
	if !strings.Contains(pe.Hint, "Retry in") {
		t.Fatalf("hint %q", pe.Hint)
	}
	// Other branches are unaffected.
	if v := e.mustQueryInt(e.url("postgres", testPassword, "main"), "SELECT 3"); v != 3 {
		t.Fatal(v)
	}
}

// TestTLSRequire refuses plaintext with a clear message and accepts TLS.
func TestTLSRequireAndLimits(t *testing.T) {
	e := newEnv(t, func(c *config.Config) {
		c.TLS.Require = true
		c.Pool.MaxClientConn = 2
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, err := pgx.Connect(ctx, e.url("postgres", testPassword, "main"))
	wantPgError(t, err, "28000", "only TLS connections")
	tlsURL := strings.Replace(e.url("postgres", testPassword, "main"), "sslmode=disable", "sslmode=require", 1)
	c1, err := pgx.Connect(ctx, tlsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close(ctx)
	c2, err := pgx.Connect(ctx, tlsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close(ctx)
	_, err = pgx.Connect(ctx, tlsURL)
	wantPgError(t, err, "53300", "max_client_conn = 2")
}

// TestHostileInput: garbage, protocol 2, oversized and truncated startup
// packets get an ErrorResponse or a closed socket, and the proxy keeps
// serving others.
func TestHostileInput(t *testing.T) {
	e := newEnv(t, func(c *config.Config) { c.Proxy.StartupTimeout = config.Duration(2 * time.Second) })
	startup := func(version uint32, kv ...string) []byte {
		body := binary.BigEndian.AppendUint32(nil, version)
		for _, s := range kv {
			body = append(append(body, s...), 0)
		}
		body = append(body, 0)
		return append(binary.BigEndian.AppendUint32(nil, uint32(len(body)+4)), body...)
	}
	// raw is a startup-phase packet: length word, code, body as given.
	raw := func(length uint32, rest ...byte) []byte {
		return append(binary.BigEndian.AppendUint32(nil, length), rest...)
	}
	code := func(c uint32, body ...byte) []byte {
		return raw(uint32(8+len(body)), append(binary.BigEndian.AppendUint32(nil, c), body...)...)
	}
	manyParams := func(n int) []string {
		kv := []string{"user", "postgres"}
		for i := range n {
			kv = append(kv, fmt.Sprintf("p%d", i), "v")
		}
		return kv
	}
	random := make([]byte, 1024)
	for i := range random {
		random[i] = byte(i*131 + 7)
	}
	tests := []struct {
		name string
		in   []byte
		code string // "" means: closed without an ErrorResponse is fine
	}{
		// Other protocols.
		{"http get", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "08P01"},
		{"http post", []byte("POST /sql HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"), "08P01"},
		{"tls hello without SSLRequest", []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03}, "08P01"},
		{"ssh banner", []byte("SSH-2.0-OpenSSH_9.2\r\n"), "08P01"},
		{"smtp", []byte("EHLO example.com\r\n"), "08P01"},
		{"redis", []byte("*1\r\n$4\r\nPING\r\n"), "08P01"},
		{"binary garbage", random, "08P01"},
		{"all zeros", make([]byte, 64), "08P01"},
		{"all 0xff", bytes.Repeat([]byte{0xff}, 64), "08P01"},
		// Protocol versions.
		{"protocol 2", startup(2<<16, "user", "postgres"), "0A000"},
		{"protocol 1", startup(1<<16, "user", "postgres"), "0A000"},
		{"protocol 4", startup(4<<16, "user", "postgres"), "0A000"},
		{"protocol 0", startup(0, "user", "postgres"), "0A000"},
		{"unknown request code", code(1234<<16 | 5690), "0A000"},
		// Length words.
		{"huge length", []byte{0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0}, "08P01"},
		{"negative length", []byte{0xff, 0xff, 0xff, 0xff}, "08P01"},
		{"length 0", raw(0, 0, 3, 0, 0), "08P01"},
		{"length 3", raw(3, 0, 3, 0, 0), "08P01"},
		{"length 4", raw(4, 0, 3, 0, 0), "08P01"},
		{"length 7", raw(7, 0, 3, 0, 0), "08P01"},
		{"length above the startup limit", raw(10001, 0, 3, 0, 0), "08P01"},
		{"length 1 GiB", raw(1<<30, 0, 3, 0, 0), "08P01"},
		// Special requests with wrong sizes.
		{"SSLRequest too long", code(80877103, 0, 0, 0, 0), "08P01"},
		{"GSSENCRequest too long", code(80877104, 1), "08P01"},
		{"CancelRequest too short", code(80877102, 0, 0, 0, 1), "08P01"},
		{"CancelRequest too long", code(80877102, make([]byte, 12)...), ""},
		{"CancelRequest unknown key", code(80877102, 0, 0, 0, 1, 0, 0, 0, 2), ""},
		// Startup parameters.
		{"no user", startup(3<<16, "database", "main"), "28000"},
		{"empty user", startup(3<<16, "user", ""), "28000"},
		{"no parameters", startup(3 << 16), "08P01"},
		{"invalid utf8 user", startup(3<<16, "user", "\xff\xfe"), "22021"},
		{"invalid utf8 database", startup(3<<16, "user", "postgres", "database", "ma\xc3in"), "22021"},
		{"invalid utf8 options", startup(3<<16, "user", "postgres", "options", "endpoint=\xe2\x82"), "22021"},
		{"invalid utf8 name", startup(3<<16, "user", "postgres", "\xff", "x"), "22021"},
		{"overlong utf8", startup(3<<16, "user", "\xc0\xaf"), "22021"},
		{"surrogate utf8", startup(3<<16, "user", "\xed\xa0\x80"), "22021"},
		{"empty parameter name", startup(3<<16, "user", "postgres", "", "x"), "08P01"},
		{"duplicate parameter", startup(3<<16, "user", "postgres", "user", "other"), "08P01"},
		{"65 parameters", startup(3<<16, manyParams(64)...), "08P01"},
		{"10,000 parameters", startup(3<<16, manyParams(10000)...), "08P01"},
		{"name without value", append(raw(uint32(8+len("user\x00postgres\x00dangling\x00")+1), 0, 3, 0, 0), []byte("user\x00postgres\x00dangling\x00\x00")...), "08P01"},
		{"missing terminator", append(raw(uint32(8+len("user\x00postgres")), 0, 3, 0, 0), []byte("user\x00postgres")...), "08P01"},
		{"no NUL at all", append(raw(8+8, 0, 3, 0, 0), []byte("userpost")...), "08P01"},
		{"replication true", startup(3<<16, "user", "postgres", "replication", "true"), "0A000"},
		{"replication database", startup(3<<16, "user", "postgres", "replication", "database"), "0A000"},
		// Routing.
		{"unknown branch", startup(3<<16, "user", "postgres", "options", "endpoint=nosuchbranch"), "3D000"},
		{"invalid endpoint name", startup(3<<16, "user", "postgres", "options", "endpoint=Not_A_Name"), "08004"},
		{"endpoint name too long", startup(3<<16, "user", "postgres", "options", "endpoint="+strings.Repeat("a", 100)), "08004"},
		// Cut short.
		{"truncated then silent", []byte{0, 0, 0, 40, 0, 3, 0, 0}, ""},
		{"half a length word", []byte{0, 0}, ""},
		{"nothing", nil, ""},
	}
	if len(tests) < 50 {
		t.Fatalf("%d hostile inputs, want at least 50", len(tests))
	}
	// All at once, then: the proxy still serves others.
	t.Run("inputs", func(t *testing.T) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				conn, err := net.Dial("tcp", e.srv.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				if _, err := conn.Write(tt.in); err != nil {
					t.Fatal(err)
				}
				_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
				fe := pgproto3.NewFrontend(conn, conn)
				msg, err := fe.Receive()
				if tt.code == "" {
					if err == nil {
						t.Fatalf("got %T, want close", msg)
					}
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						t.Fatal("connection left hanging past the startup timeout")
					}
					return
				}
				er, ok := msg.(*pgproto3.ErrorResponse)
				if err != nil || !ok || er.Code != tt.code || er.Severity != "FATAL" {
					t.Fatalf("got %#v, %v; want FATAL %s", msg, err, tt.code)
				}
			})
		}
		// Slow-loris: a startup packet trickling in a byte every 300 ms is cut
		// off at proxy.startup_timeout (2s here), however long it keeps going.
		t.Run("slow loris", func(t *testing.T) {
			t.Parallel()
			conn, err := net.Dial("tcp", e.srv.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			pkt := startup(3<<16, "user", "postgres", "database", "main", "application_name", strings.Repeat("x", 40))
			t0 := time.Now()
			for _, c := range pkt {
				if _, err := conn.Write([]byte{c}); err != nil {
					break // cut off
				}
				time.Sleep(300 * time.Millisecond) // the attack's pace
				if time.Since(t0) > 20*time.Second {
					t.Fatal("still accepting bytes 20s into a startup packet")
				}
			}
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadAll(conn); err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Fatal("connection still open after the startup timeout")
				}
			}
			if d := time.Since(t0); d > 10*time.Second {
				t.Fatalf("cut off after %s", d)
			}
		})
		// A client that sends an SSLRequest and then plaintext instead of a TLS
		// handshake (the CVE-2021-23214 shape) is cut off.
		t.Run("plaintext after SSLRequest", func(t *testing.T) {
			conn, err := net.Dial("tcp", e.srv.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ssl := []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}
			if _, err := conn.Write(append(ssl, startup(3<<16, "user", "postgres")...)); err != nil {
				t.Fatal(err)
			}
			_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
			b, _ := io.ReadAll(conn)
			if len(b) == 0 || b[0] != 'S' || strings.Contains(string(b), "SCRAM") {
				t.Fatalf("got %q", b)
			}
		})
	})
	if v := e.mustQueryInt(e.url("postgres", testPassword, "main"), "SELECT 9"); v != 9 {
		t.Fatal(v)
	}
}

// TestAuthThrottle: after a failed authentication, attempts from the same
// address to the same branch are refused with 28000 for a backoff that
// doubles (1s, 2s, ...), before any SCRAM exchange; another branch is not
// affected; a success resets it.
func TestAuthThrottle(t *testing.T) {
	e := newEnv(t, func(c *config.Config) { c.Proxy.AuthThrottle = true })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	api := &admin.Client{BaseURL: e.srv.AdminAddr().String()}
	if _, err := api.CreateBranch(ctx, "other", "main"); err != nil {
		t.Fatal(err)
	}
	connect := func(branch, password string) error {
		c, err := pgx.Connect(ctx, e.url("postgres", password, branch))
		if err == nil {
			c.Close(ctx)
		}
		return err
	}
	wantPgError(t, connect("main", "wrong"), "28P01", "password authentication failed")
	// Refused at once, even with the right password.
	t0 := time.Now()
	wantPgError(t, connect("main", testPassword), "28000", `too many failed authentication attempts for branch "main" from 127.0.0.1`)
	if d := time.Since(t0); d > 500*time.Millisecond {
		t.Logf("refusal took %s", d)
	}
	// Another branch is not throttled.
	if err := connect("other", testPassword); err != nil {
		t.Fatalf("another branch: %v", err)
	}
	// After the backoff: the next failure doubles it.
	waitFor(t, "the 1s backoff to pass", func() bool {
		err := connect("main", "wrong")
		return pgCode(err) == "28P01"
	})
	if pe := wantPgError(t, connect("main", testPassword), "28000", "too many failed authentication attempts"); !strings.Contains(pe.Hint, "Retry in 2s") {
		t.Fatalf("second backoff: hint %q, want 2s", pe.Hint)
	}
	// A success resets it.
	waitFor(t, "the 2s backoff to pass", func() bool { return connect("main", testPassword) == nil })
	wantPgError(t, connect("main", "wrong"), "28P01", "password authentication failed")
	if pe := wantPgError(t, connect("main", testPassword), "28000", "too many failed authentication attempts"); !strings.Contains(pe.Hint, "Retry in 1s") {
		t.Fatalf("after a success the backoff starts again at 1s: hint %q", pe.Hint)
	}
	if got := counterValue(t, e, "neonproxy_connections_total", "result", "throttled"); got < 3 {
		t.Fatalf("throttled connections %v", got)
	}
}

// TestTLSVersionsAndChannelBinding: the front door refuses TLS below 1.2,
// and offers SCRAM-SHA-256-PLUS over TLS (a client requiring channel
// binding logs in).
func TestTLSVersionsAndChannelBinding(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, tc := range []struct {
		version uint16
		ok      bool
	}{{tls.VersionTLS11, false}, {tls.VersionTLS12, true}, {tls.VersionTLS13, true}} {
		conn, err := net.Dial("tcp", e.srv.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		_, err = pgwire.StartTLS(ctx, conn, &tls.Config{InsecureSkipVerify: true, MinVersion: tc.version, MaxVersion: tc.version}) //nolint:gosec // test certificate
		conn.Close()
		if (err == nil) != tc.ok {
			t.Errorf("TLS version %x: handshake error %v, want ok=%v", tc.version, err, tc.ok)
		}
		if !tc.ok && err != nil && !strings.Contains(err.Error(), "protocol version not supported") {
			t.Errorf("TLS version %x refused, but not by the server: %v", tc.version, err)
		}
	}
	u := strings.Replace(e.url("postgres", testPassword, "main"), "sslmode=disable", "sslmode=require&channel_binding=require", 1)
	c, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatalf("SCRAM-SHA-256-PLUS (channel_binding=require): %v", err)
	}
	c.Close(ctx)
}

// TestComputeSocketPrivate: another local user cannot connect to a
// compute directly: its socket directory is 0700, owned by the compute
// user.
func TestComputeSocketPrivate(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to act as another user")
	}
	e := newEnv(t, nil)
	if e.mustQueryInt(e.url("postgres", testPassword, "main"), "SELECT 1") != 1 {
		t.Fatal("main")
	}
	sock := filepath.Join(e.cfg.DataDir, "computes", "run", "main")
	info, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o700 {
		t.Fatalf("socket directory %s has mode %v, want 0700", sock, info.Mode().Perm())
	}
	out, err := exec.Command("runuser", "-u", "nobody", "--", "/usr/lib/postgresql/15/bin/psql",
		"-h", sock, "-p", "5432", "-U", "postgres", "-d", "postgres", "-c", "SELECT 1").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Permission denied") {
		t.Fatalf("user nobody reached the compute's socket: %v\n%s", err, out)
	}
}

// TestShutdownDrains: a shutdown tells a client between transactions to go
// (57P01) at once, lets a transaction in flight commit, then closes that
// client too and stops the compute cleanly; the committed row is there
// after a restart.
func TestShutdownDrains(t *testing.T) {
	e := newEnv(t, func(c *config.Config) { c.ShutdownTimeout = config.Duration(time.Minute) })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	url := e.url("postgres", testPassword, "main")
	idle, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close(ctx)
	busy, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close(ctx)
	if _, err := busy.Exec(ctx, "CREATE TABLE drained (x int)"); err != nil {
		t.Fatal(err)
	}
	tx, err := busy.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO drained VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	srv := e.srv
	closed := make(chan error, 1)
	go func() { closed <- srv.Close(ctx) }()
	// The idle client is told at once.
	_, err = idle.Exec(ctx, "SELECT 1")
	wantPgError(t, err, "57P01", "neonproxy is shutting down")
	select {
	case err := <-closed:
		t.Fatalf("shutdown finished (%v) with a transaction in flight", err)
	case <-time.After(300 * time.Millisecond):
	}
	// The transaction in flight may finish.
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("commit during the shutdown: %v", err)
	}
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("shutdown did not finish after the last transaction")
	}
	e.srv = nil
	if left := postgresProcesses(e.dir); len(left) > 0 {
		t.Fatalf("computes left after the shutdown: %v", left)
	}
	e.start()
	if n := e.mustQueryInt(url, "SELECT count(*) FROM drained"); n != 1 {
		t.Fatalf("rows after the restart: %d", n)
	}
}

// TestAuthLookupSurvivesTerminatedControlConn: the verifier lookup's pooled
// connection is not pinged before use; when its backend was terminated, the
// next login's lookup retries on a fresh connection and the login works.
func TestAuthLookupSurvivesTerminatedControlConn(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	url := e.url("postgres", testPassword, "main")
	c, err := pgx.Connect(ctx, url) // its login opened the control connection
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var n int
	if err := c.QueryRow(ctx, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'neonproxy-auth'").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("no control connection to terminate")
	}
	for i := range 3 {
		c2, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatalf("login %d after the control connection was terminated: %v", i+1, err)
		}
		c2.Close(ctx)
	}
}
