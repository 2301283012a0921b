package pagestore

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const pgBin = "/usr/lib/postgresql/15/bin"

// pgEnv runs PostgreSQL binaries as the postgres OS user when root.
type pgEnv struct {
	t    *testing.T
	cred *syscall.Credential
	uid  int
	gid  int
	sock string
}

func newPGEnv(t *testing.T) *pgEnv {
	if _, err := os.Stat(pgBin); err != nil {
		t.Skipf("PostgreSQL 15 binaries not found at %s", pgBin)
	}
	e := &pgEnv{t: t, uid: os.Getuid(), gid: os.Getgid()}
	if os.Getuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Skipf("running as root without a postgres user: %v", err)
		}
		e.uid, _ = strconv.Atoi(u.Uid)
		e.gid, _ = strconv.Atoi(u.Gid)
		e.cred = &syscall.Credential{Uid: uint32(e.uid), Gid: uint32(e.gid)}
	}
	sock, err := os.MkdirTemp("/tmp", "pgs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sock) })
	if err := os.Chmod(sock, 0o777); err != nil {
		t.Fatal(err)
	}
	e.sock = sock
	return e
}

func (e *pgEnv) cmd(name string, args ...string) *exec.Cmd {
	c := exec.Command(filepath.Join(pgBin, name), args...)
	c.SysProcAttr = &syscall.SysProcAttr{Credential: e.cred}
	c.Env = append(os.Environ(), "LC_ALL=C", "PGTZ=UTC")
	return c
}

func (e *pgEnv) run(name string, args ...string) string {
	e.t.Helper()
	out, err := e.cmd(name, args...).CombinedOutput()
	if err != nil {
		e.t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

func (e *pgEnv) mkdir(p string) {
	e.t.Helper()
	if err := os.Mkdir(p, 0o700); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Chown(p, e.uid, e.gid); err != nil {
		e.t.Fatal(err)
	}
}

// start runs postgres on dir and returns a stop function (fast shutdown).
func (e *pgEnv) start(dir string) func() {
	e.t.Helper()
	var logBuf bytes.Buffer
	c := e.cmd("postgres", "-D", dir, "-k", e.sock, "-c", "listen_addresses=", "-c", "fsync=off",
		"-c", "shared_buffers=16MB", "-c", "max_connections=10", "-c", "logging_collector=off")
	c.Stdout, c.Stderr = &logBuf, &logBuf
	if err := c.Start(); err != nil {
		e.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if err := e.cmd("pg_isready", "-h", e.sock, "-U", "postgres", "-q").Run(); err == nil {
			break
		}
		select {
		case err := <-done:
			e.t.Fatalf("postgres exited: %v\n%s", err, logBuf.String())
		default:
		}
		if time.Now().After(deadline) {
			_ = c.Process.Kill()
			e.t.Fatalf("postgres did not start\n%s", logBuf.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		_ = c.Process.Signal(syscall.SIGINT) // fast shutdown
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = c.Process.Kill()
			<-done
			e.t.Errorf("postgres did not stop\n%s", logBuf.String())
		}
	}
	e.t.Cleanup(stop)
	return stop
}

func (e *pgEnv) psql(sql string) string {
	e.t.Helper()
	return strings.TrimSpace(e.run("psql", "-h", e.sock, "-U", "postgres", "-d", "postgres", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql))
}

// checkpoint reads the shutdown checkpoint with pg_controldata.
func (e *pgEnv) checkpoint(dir string) Checkpoint {
	e.t.Helper()
	out := e.run("pg_controldata", "-D", dir)
	cp, err := ParseControlData(out)
	if err != nil {
		e.t.Fatalf("%v\n%s", err, out)
	}
	return cp
}

func TestPostgresRoundTrip(t *testing.T) {
	pg := newPGEnv(t)
	work, err := os.MkdirTemp("", "pagestore-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	if err := os.Chmod(work, 0o711); err != nil {
		t.Fatal(err)
	}
	bothServices(t, func(t *testing.T) *Store {
		dir := filepath.Join(work, filepath.Base(t.Name()))
		if err := os.Mkdir(dir, 0o711); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, 0o711); err != nil {
			t.Fatal(err)
		}
		s, err := Open(Options{Dir: filepath.Join(dir, "store"), NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}, func(t *testing.T, s *Store, svc Service) {
		work := filepath.Join(work, filepath.Base(t.Name()))
		testPostgresRoundTrip(t, pg, work, s, svc)
	})
}

func testPostgresRoundTrip(t *testing.T, pg *pgEnv, work string, s *Store, svc Service) {
	ctx := context.Background()
	owner := Owner{UID: pg.uid, GID: pg.gid}

	// initdb, a table, fast shutdown.
	data := filepath.Join(work, "data")
	pg.mkdir(data)
	pg.run("initdb", "-N", "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "-D", data)
	stop := pg.start(data)
	pg.psql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 1000) g")
	stop()
	cp := pg.checkpoint(data)

	tl := mustCreate(t, s, "main", 0, 0)
	st, err := svc.Ingest(ctx, tl.ID, data, cp, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first ingest: %+v", st)

	// Materialize into a new directory and start there.
	m1 := filepath.Join(work, "m1")
	mf := filepath.Join(work, "m1.manifest")
	if _, err := svc.Materialize(ctx, tl.ID, 0, m1, MaterializeOptions{Owner: owner, Manifest: mf}); err != nil {
		t.Fatal(err)
	}
	stop = pg.start(m1)
	if got := pg.psql("SELECT count(*) FROM t"); got != "1000" {
		t.Fatalf("count after materialize: %s", got)
	}
	pg.psql("INSERT INTO t SELECT g, 'y' FROM generate_series(1001, 1100) g")
	stop()
	cp2 := pg.checkpoint(m1)
	st, err = svc.Ingest(ctx, tl.ID, m1, cp2, mf)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("second ingest: %+v", st)
	if !st.UsedManifest || st.PagesWritten == 0 || st.PagesWritten > 200 || st.FilesSkipped == 0 {
		t.Fatalf("second ingest wrote too much or used no manifest: %+v", st)
	}

	// A child branch sees the data.
	child := mustCreate(t, s, "child", tl.ID, 0)
	c1 := filepath.Join(work, "c1")
	if _, err := svc.Materialize(ctx, child.ID, 0, c1, MaterializeOptions{Owner: owner}); err != nil {
		t.Fatal(err)
	}
	stop = pg.start(c1)
	if got := pg.psql("SELECT count(*), max(id) FROM t"); got != "1100|1100" {
		t.Fatalf("child: %s", got)
	}
	pg.psql("INSERT INTO t VALUES (5000, 'child')")
	stop()
	cpc := pg.checkpoint(c1)
	st, err = svc.Ingest(ctx, child.ID, c1, cpc, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("child ingest (store comparison): %+v", st)
	if st.PagesWritten > 200 {
		t.Fatalf("child ingest wrote %d pages", st.PagesWritten)
	}
	// The parent at its head does not see the child's row.
	p2 := filepath.Join(work, "p2")
	if _, err := svc.Materialize(ctx, tl.ID, 0, p2, MaterializeOptions{Owner: owner}); err != nil {
		t.Fatal(err)
	}
	stop = pg.start(p2)
	if got := pg.psql("SELECT count(*) FROM t WHERE id = 5000"); got != "0" {
		t.Fatalf("parent sees the child's row: %s", got)
	}
	stop()
}
