// Package e2e holds neonproxy's integration tests: a whole server started
// in-process with real PostgreSQL 15 computes, driven by real clients (pgx,
// psql, pgbench) over loopback TCP.
package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"gopkg.in/yaml.v3"

	"github.com/neonproxy/neonproxy/internal/config"
	"github.com/neonproxy/neonproxy/internal/mounts"
	"github.com/neonproxy/neonproxy/internal/server"
	"github.com/neonproxy/neonproxy/router"
	"github.com/neonproxy/neonproxy/wake"
)

const testPassword = "e2e-secret-pw"

// env is one neonproxy under test with its own data directory.
type env struct {
	t       *testing.T
	dir     string
	cfg     config.Config
	srv     *server.Server
	logPath string
	// configPath, when set, is the YAML file the server is started with
	// (see newEnvWithFile).
	configPath string
}

// newEnv starts a server on a fresh data directory. mutate adjusts the
// configuration before start.
func newEnv(t *testing.T, mutate func(*config.Config)) *env {
	t.Helper()
	return newEnvOpt(t, mutate, false)
}

// newEnvWithFile is newEnv with the configuration written to a YAML file
// the server is started with (so RELOAD can re-read it; see writeConfig).
func newEnvWithFile(t *testing.T, mutate func(*config.Config)) *env {
	t.Helper()
	return newEnvOpt(t, mutate, true)
}

func newEnvOpt(t *testing.T, mutate func(*config.Config), withFile bool) *env {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test (needs PostgreSQL 15)")
	}
	if _, err := os.Stat("/usr/lib/postgresql/15/bin/postgres"); err != nil {
		t.Fatalf("PostgreSQL 15 is not installed (make test installs it): %v", err)
	}
	// Not t.TempDir: its parents are 0700 and the postgres OS user that runs
	// computes (when tests run as root) must traverse the path.
	dir, err := os.MkdirTemp("", "np-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.AdminListen = "127.0.0.1:0"
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.Bootstrap.Password = testPassword
	cfg.Compute.SuspendTimeout = config.Duration(time.Hour)
	cfg.Compute.SpareFiles = 300 // exercised, without 2,000 creates per server
	cfg.Log.Level = "debug"
	// Tests try wrong passwords one after the other from 127.0.0.1;
	// TestAuthThrottle turns it on.
	cfg.Proxy.AuthThrottle = false
	if mutate != nil {
		mutate(&cfg)
	}
	e := &env{t: t, dir: dir, cfg: cfg, logPath: filepath.Join(dir, "neonproxy.log")}
	if withFile {
		e.configPath = filepath.Join(dir, "config.yaml")
		e.writeConfig()
	}
	// Registered first, so a start that fails still removes the directory.
	t.Cleanup(func() {
		if e.srv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := e.srv.Close(ctx); err != nil {
				t.Errorf("close server: %v", err)
			}
		}
		if left := postgresProcesses(dir); len(left) > 0 {
			t.Errorf("postgres processes left behind: %v", left)
		}
		// neonproxy unmounts its data directory overlays when it exits
		// (compute.local_cow); one still mounted leaks past the test.
		if left := mounts.Under(dir); len(left) > 0 {
			t.Errorf("overlay mounts left behind: %v", left)
			for _, m := range left {
				_ = syscall.Unmount(m, syscall.MNT_DETACH)
			}
		}
		if t.Failed() {
			if b, err := os.ReadFile(e.logPath); err == nil {
				t.Logf("neonproxy log (tail):\n%s", tail(string(b), 60))
			}
		}
		_ = os.RemoveAll(dir)
	})
	e.start()
	return e
}

// start (re)starts the server on the env's data directory.
func (e *env) start() {
	e.t.Helper()
	f, err := os.OpenFile(e.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		e.t.Fatal(err)
	}
	enc := zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig())
	log := zap.New(zapcore.NewCore(enc, zapcore.AddSync(f), zapcore.DebugLevel))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := server.New(ctx, e.cfg, log, server.Options{NoSync: true, ConfigPath: e.configPath})
	if err != nil {
		e.t.Fatalf("server.New: %v", err)
	}
	if err := srv.Start(); err != nil {
		e.t.Fatalf("server.Start: %v", err)
	}
	e.srv = srv
	// Later restarts must reuse the same ports.
	e.cfg.Listen = srv.Addr().String()
	e.cfg.AdminListen = srv.AdminAddr().String()
}

// writeConfig writes e.cfg to e.configPath.
func (e *env) writeConfig() {
	e.t.Helper()
	b, err := yaml.Marshal(e.cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(e.configPath, b, 0o600); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) port() int { return e.srv.Addr().(*net.TCPAddr).Port }

// url builds a connection URL to the proxy for database db with extra query
// parameters.
func (e *env) url(user, password, db string, query ...string) string {
	u := url.URL{Scheme: "postgres", Host: e.srv.Addr().String(), Path: "/" + db, User: url.UserPassword(user, password)}
	q := url.Values{}
	q.Set("sslmode", "disable")
	for i := 0; i+1 < len(query); i += 2 {
		q.Set(query[i], query[i+1])
	}
	// %20, not +: libpq and pgx do not read + as a space.
	u.RawQuery = strings.ReplaceAll(q.Encode(), "+", "%20")
	return u.String()
}

// libpqEnv is the environment for psql and pgbench to reach database db
// through the proxy as the superuser.
func (e *env) libpqEnv(db string) []string {
	return []string{"PGPASSWORD=" + testPassword, "PGHOST=127.0.0.1", fmt.Sprintf("PGPORT=%d", e.port()),
		"PGUSER=postgres", "PGDATABASE=" + db, "PGSSLMODE=disable"}
}

// mustQueryInt runs a one-value query on a fresh connection.
func (e *env) mustQueryInt(connString, sql string) int64 {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := pgx.Connect(ctx, connString)
	if err != nil {
		e.t.Fatalf("connect %s: %v", redact(connString), err)
	}
	defer c.Close(ctx)
	var v int64
	if err := c.QueryRow(ctx, sql).Scan(&v); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
	return v
}

// tlsConfig is a client TLS config presenting sni, trusting the generated
// development certificate.
func tlsConfig(sni string) *tls.Config {
	return &tls.Config{ServerName: sni, InsecureSkipVerify: true} //nolint:gosec // test certificate
}

// waitState polls the branch's compute state until it is want.
func (e *env) waitState(branch string, want wake.State) {
	e.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if e.srv.Computes.Status(branch).State == want {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.t.Fatalf("branch %s: state %s, want %s", branch, e.srv.Computes.Status(branch).State, want)
}

// pgCode extracts a PostgreSQL error code.
func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

func wantPgError(t *testing.T, err error, code, msgPart string) *pgconn.PgError {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		t.Fatalf("want PostgreSQL error %s, got %v", code, err)
	}
	if pe.Code != code || !strings.Contains(pe.Message, msgPart) {
		t.Fatalf("want %s containing %q, got %s %q (hint %q)", code, msgPart, pe.Code, pe.Message, pe.Hint)
	}
	return pe
}

// runCmd runs a client binary (psql, pgbench) with a timeout.
func runCmd(t *testing.T, env []string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// postgresProcesses lists live processes whose command line mentions dir:
// computes of this test that were not stopped.
func postgresProcesses(dir string) []string {
	entries, _ := os.ReadDir("/proc")
	var found []string
	for _, ent := range entries {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil || !bytes.Contains(cmdline, []byte(dir)) {
			continue
		}
		stat, _ := os.ReadFile(filepath.Join("/proc", ent.Name(), "stat"))
		if i := bytes.LastIndexByte(stat, ')'); i > 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
			continue // zombie: already dead
		}
		found = append(found, fmt.Sprintf("%d %s", pid, strings.ReplaceAll(string(cmdline), "\x00", " ")))
	}
	return found
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func redact(s string) string { return strings.ReplaceAll(s, testPassword, "***") }

func branch(name, parent string) router.Branch {
	return router.Branch{Name: name, Parent: parent, CreatedAt: time.Now().UTC()}
}

// counterValue reads a counter's value or a histogram's sample count from
// the server's metrics registry (0 when absent).
func counterValue(t *testing.T, e *env, name, label, value string) float64 {
	v, _ := metricValue(t, e, name, label, value)
	return v
}

// metricValue reads a counter, gauge or histogram sample count and says
// whether the series exists.
func metricValue(t *testing.T, e *env, name, label, value string) (float64, bool) {
	t.Helper()
	mfs, err := e.srv.Metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := label == ""
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					match = true
				}
			}
			if !match {
				continue
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue(), true
			case m.GetHistogram() != nil:
				return float64(m.GetHistogram().GetSampleCount()), true
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue(), true
			}
		}
	}
	return 0, false
}

// freePort asks the kernel for a free loopback port.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// waitFor polls cond until it holds, failing the test after a minute.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after a minute waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
