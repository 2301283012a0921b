package wake

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/neonproxy/neonproxy/pagestore"
	"github.com/neonproxy/neonproxy/walkeeper"
)

func TestNewPostgresDriverChecks(t *testing.T) {
	t.Run("missing binaries", func(t *testing.T) {
		_, err := NewPostgresDriver(DriverOptions{DataDir: mkTemp(t), BinDir: "/nonexistent/bin", Store: tmpl.store})
		if err == nil || !strings.Contains(err.Error(), "postgresql-15") {
			t.Fatalf("want a missing-binaries error naming postgresql-15, got %v", err)
		}
	})
	t.Run("ancestor not searchable", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("only checked when running as root")
		}
		parent, err := os.MkdirTemp("", "wake-private-") // 0700
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(parent)
		_, err = NewPostgresDriver(DriverOptions{DataDir: filepath.Join(parent, "data"), Store: tmpl.store})
		if err == nil {
			t.Fatal("want an error for a data dir under a 0700 directory")
		}
		for _, want := range []string{parent, "0700", "/var/lib/neonproxy"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not mention %q", err, want)
			}
		}
		if fi, _ := os.Stat(parent); fi.Mode().Perm() != 0o700 {
			t.Errorf("ancestor mode changed to %o", fi.Mode().Perm())
		}
	})
}

func TestSocketDir(t *testing.T) {
	dir := mkTemp(t)
	long := filepath.Join(dir, strings.Repeat("d", 90))
	tests := []struct {
		name, dataDir string
		short         bool
	}{
		{"short path", dir, false},
		{"too long for sun_path", long, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			store := openStore(t)
			d, err := NewPostgresDriver(DriverOptions{DataDir: tc.dataDir, NoSync: true, Store: store})
			if err != nil {
				t.Fatal(err)
			}
			got := d.SocketDir("main")
			if !tc.short {
				if want := filepath.Join(tc.dataDir, "run", "main"); got != want {
					t.Fatalf("socket dir %s, want %s", got, want)
				}
				return
			}
			if !strings.HasPrefix(got, filepath.Join(os.TempDir(), "npx-")) || len(filepath.Base(got)) != len("npx-")+12 {
				t.Fatalf("socket dir %s, want %s/npx-<12 hex>", got, os.TempDir())
			}
			if len(Endpoint{SocketDir: got, Port: Port}.SocketPath()) > maxSocketPath {
				t.Fatalf("socket path still too long")
			}
			if d.SocketDir("other") == got {
				t.Fatal("two branches share a socket dir")
			}
			// A compute really starts there.
			e := &env{t: t, drv: d, store: store}
			e.addBranch("main")
			p, err := d.Start(ctxT(t), "main", 1)
			if err != nil {
				t.Fatal(err)
			}
			query(t, connect(t, p.Endpoint()), "select 1")
			if err := p.Stop(ctxT(t)); err != nil {
				t.Fatal(err)
			}
			if err := d.Destroy(ctxT(t), "main"); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(got); !os.IsNotExist(err) {
				t.Fatalf("socket dir %s not removed: %v", got, err)
			}
			assertNoPostgres(t, tc.dataDir)
		})
	}
}

func TestBootstrapStartConnect(t *testing.T) {
	e := newEnv(t, Options{})
	ctx := ctxT(t)
	t0 := time.Now()
	if err := e.m.Bootstrap(ctx, "main", "s3cret"); err != nil {
		t.Fatal(err)
	}
	t.Logf("bootstrap took %s", time.Since(t0))
	if !e.drv.exists("main") {
		t.Fatal("no data after Bootstrap")
	}
	pgdata := e.drv.pgdata("main")
	hba, err := os.ReadFile(filepath.Join(pgdata, "pg_hba.conf"))
	if err != nil || string(hba) != hbaConf {
		t.Fatalf("pg_hba.conf = %q, %v", hba, err)
	}
	fi, err := os.Stat(pgdata)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("pgdata mode %o, want 700", fi.Mode().Perm())
	}
	if os.Geteuid() == 0 {
		u, _ := user.Lookup("postgres")
		if st := fi.Sys().(*syscall.Stat_t); strconv.Itoa(int(st.Uid)) != u.Uid {
			t.Errorf("pgdata owned by uid %d, want postgres (%s)", st.Uid, u.Uid)
		}
	}
	if _, err := os.Stat(filepath.Join(e.drv.branchDir("main"), ".pwfile")); !os.IsNotExist(err) {
		t.Errorf("password file left behind: %v", err)
	}
	// Bootstrap of an existing branch is a no-op.
	if err := e.m.Bootstrap(ctx, "main", "other"); err != nil {
		t.Fatal(err)
	}

	l, err := e.m.Acquire(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	if !started(l.Kind) || l.Endpoint.Port != 5432 || l.Endpoint.SocketDir != e.drv.SocketDir("main") || l.Endpoint.Generation != 1 {
		t.Fatalf("lease %+v", l)
	}
	t.Logf("cold wake took %s", l.Waited)
	if fi, err := os.Stat(l.Endpoint.SocketDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("socket dir: %v %v", fi, err)
	}
	c := connect(t, l.Endpoint)
	if pw := query(t, c, "select rolpassword from pg_authid where rolname = 'postgres'"); len(pw) != 1 || !strings.HasPrefix(pw[0], "SCRAM-SHA-256$") {
		t.Fatalf("stored password %q is not a SCRAM verifier", pw)
	}
	if got := query(t, c, "show listen_addresses"); len(got) != 1 || got[0] != "" {
		t.Fatalf("listen_addresses = %q", got)
	}
	if got := query(t, c, "show shared_buffers"); got[0] != "16MB" {
		t.Fatalf("shared_buffers = %q", got)
	}

	l2, err := e.m.Acquire(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	if l2.Kind != WakeRunning || l2.Endpoint != l.Endpoint {
		t.Fatalf("second lease %+v", l2)
	}
	st := e.m.Status("main")
	if st.State != StateRunning || st.Clients != 2 || st.PID == 0 || st.Generation != 1 || st.StartedAt.IsZero() {
		t.Fatalf("status %+v", st)
	}
	if g := gauge(t, e.met.Computes, "running"); g != 1 {
		t.Fatalf("computes{running} = %v", g)
	}
	l2.Release()
	l2.Release()
	if st := e.m.Status("main"); st.Clients != 1 {
		t.Fatalf("clients after double release = %d", st.Clients)
	}
	if st, err := e.m.Storage(context.Background(), "main"); err != nil || st.LogicalBytes < 1<<20 || st.LocalBytes < 1<<20 || !st.Unstored || st.Timeline == 0 {
		t.Fatalf("storage %+v, %v", st, err)
	}
}

func TestSingleFlight(t *testing.T) {
	e := newEnv(t, Options{}, "main")
	ctx := ctxT(t)
	const n = 20
	var (
		wg     sync.WaitGroup
		leases = make([]*Lease, n)
		errs   = make([]error, n)
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			leases[i], errs[i] = e.m.Acquire(ctx, "main")
		}()
	}
	wg.Wait()
	if got := e.cd.starts.Load(); got != 1 {
		t.Fatalf("%d starts for %d concurrent Acquires, want 1", got, n)
	}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("acquire %d: %v", i, errs[i])
		}
		if leases[i].Endpoint != leases[0].Endpoint {
			t.Fatalf("endpoints differ: %+v vs %+v", leases[i].Endpoint, leases[0].Endpoint)
		}
		if !started(leases[i].Kind) {
			t.Errorf("acquire %d kind %s, want a start (warm or cold)", i, leases[i].Kind)
		}
	}
	if st := e.m.Status("main"); st.Clients != n || st.State != StateRunning {
		t.Fatalf("status %+v", st)
	}
	for _, l := range leases {
		l.Release()
	}
	if st := e.m.Status("main"); st.Clients != 0 {
		t.Fatalf("clients after release: %d", st.Clients)
	}
	l, err := e.m.Acquire(ctx, "main")
	if err != nil || l.Kind != WakeRunning {
		t.Fatalf("warm acquire: %+v %v", l, err)
	}
	l.Release()
	if g := counter(t, e.met.ComputeStarts, "ok"); g != 1 {
		t.Fatalf("compute_starts_total{ok} = %v", g)
	}

	// Close stops everything and refuses new work.
	if err := e.m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Acquire(ctx, "main"); !errors.Is(err, ErrClosed) {
		t.Fatalf("acquire after close: %v", err)
	}
	if st := e.m.Status("main"); st.State != StateStopped {
		t.Fatalf("after close: %+v", st)
	}
	if g := gauge(t, e.met.Computes, "stopped"); g != 1 || gauge(t, e.met.Computes, "running") != 0 {
		t.Fatalf("computes gauges after close: stopped=%v running=%v", g, gauge(t, e.met.Computes, "running"))
	}
	if c := counter(t, e.met.ComputeStopsTotal, StopShutdown); c != 1 {
		t.Fatalf("stops{shutdown} = %v", c)
	}
	assertNoPostgres(t, e.dir)
}

func TestIdleSuspend(t *testing.T) {
	const idle = 300 * time.Millisecond
	e := newEnv(t, Options{SuspendTimeout: idle}, "main")
	ctx := ctxT(t)
	l, err := e.m.Acquire(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	gen := l.Endpoint.Generation

	// While a lease is held, no idle stop; racing Acquire/Release pairs
	// always win against the timer.
	for range 20 {
		l2, err := e.m.Acquire(ctx, "main")
		if err != nil {
			t.Fatal(err)
		}
		l2.Release()
	}
	released := time.Now()
	l.Release()
	e.waitState("main", StateStopped)
	if el := time.Since(released); el < idle {
		t.Fatalf("suspended after %s, before suspend_timeout %s", el, idle)
	}
	if c := counter(t, e.met.ComputeStopsTotal, StopIdle); c != 1 {
		t.Fatalf("stops{idle} = %v", c)
	}
	l, err = e.m.Acquire(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	if !started(l.Kind) || l.Endpoint.Generation != gen+1 {
		t.Fatalf("re-wake lease %+v, want cold generation %d", l, gen+1)
	}
	query(t, connect(t, l.Endpoint), "select 1")
	l.Release()
	e.waitState("main", StateStopped)
}

func TestAcquireDuringStopping(t *testing.T) {
	e := newEnv(t, Options{}, "main")
	ctx := ctxT(t)
	l, err := e.m.Acquire(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
	gate := make(chan struct{})
	e.cd.stopGate.Store(&gate)
	suspended := make(chan error, 1)
	go func() { suspended <- e.m.Suspend(ctx, "main") }()
	e.waitState("main", StateStopping)

	type res struct {
		l   *Lease
		err error
	}
	acquired := make(chan res, 1)
	go func() {
		l, err := e.m.Acquire(ctx, "main")
		acquired <- res{l, err}
	}()
	select {
	case r := <-acquired:
		t.Fatalf("Acquire returned while the compute was stopping: %+v", r)
	default:
	}
	e.cd.stopGate.Store(nil)
	close(gate)
	if err := <-suspended; err != nil {
		t.Fatal(err)
	}
	r := <-acquired
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.l.Release()
	if !started(r.l.Kind) || r.l.Endpoint.Generation != 2 || e.cd.starts.Load() != 2 {
		t.Fatalf("lease %+v after %d starts", r.l, e.cd.starts.Load())
	}
	query(t, connect(t, r.l.Endpoint), "select 1")
	if c := counter(t, e.met.ComputeStopsTotal, StopAdmin); c != 1 {
		t.Fatalf("stops{admin} = %v", c)
	}
	// Suspend of a stopped branch is fine.
	if err := e.m.Suspend(ctx, "nosuch"); err != nil {
		t.Fatal(err)
	}
}

func TestBreaker(t *testing.T) {
	e := newEnv(t, Options{BreakerFailures: 3, BreakerOpen: 700 * time.Millisecond}, "broken")
	ctx := ctxT(t)
	conf := filepath.Join(e.drv.pgdata("broken"), "postgresql.conf")
	good, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, []byte("this is ((( not a config\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		_, err := e.m.Acquire(ctx, "broken")
		var se *StartError
		if !errors.As(err, &se) || se.BreakerOpen {
			t.Fatalf("attempt %d: want a start failure, got %v", i, err)
		}
		if !strings.Contains(err.Error(), "postgresql.conf") || !strings.Contains(err.Error(), "syntax error") {
			t.Fatalf("attempt %d: error lacks the postgres log tail: %v", i, err)
		}
		if st := e.m.Status("broken"); st.State != StateStopped || st.LastError == "" {
			t.Fatalf("status after failure: %+v", st)
		}
	}
	t0 := time.Now()
	_, err = e.m.Acquire(ctx, "broken")
	var se *StartError
	if !errors.As(err, &se) || !se.BreakerOpen {
		t.Fatalf("4th attempt: want breaker open, got %v", err)
	}
	if el := time.Since(t0); el > 100*time.Millisecond {
		t.Fatalf("open breaker took %s to answer", el)
	}
	if se.RetryAfter <= 0 || se.RetryAfter > 700*time.Millisecond {
		t.Fatalf("RetryAfter %s", se.RetryAfter)
	}
	if !strings.Contains(se.Error(), "syntax error") {
		t.Fatalf("breaker error lacks the cause: %v", se)
	}
	if n := e.cd.starts.Load(); n != 3 {
		t.Fatalf("%d starts, want 3", n)
	}
	if c := counter(t, e.met.ComputeStarts, "error"); c != 3 {
		t.Fatalf("compute_starts_total{error} = %v", c)
	}
	assertNoPostgres(t, e.dir)

	// Fixed: once the breaker half-opens, a start goes through.
	if err := os.WriteFile(conf, good, 0o600); err != nil {
		t.Fatal(err)
	}
	var l *Lease
	waitFor(t, 10*time.Second, "the breaker to let a start through", func() bool {
		var err error
		l, err = e.m.Acquire(ctx, "broken")
		if err != nil && !errors.As(err, &se) {
			t.Fatal(err)
		}
		return err == nil
	})
	l.Release()
}

func TestMaxRunningEviction(t *testing.T) {
	e := newEnv(t, Options{MaxRunning: 2, WakeTimeout: 8 * time.Second}, "a", "b", "c")
	ctx := ctxT(t)
	acquire := func(b string) *Lease {
		t.Helper()
		l, err := e.m.Acquire(ctx, b)
		if err != nil {
			t.Fatalf("acquire %s: %v", b, err)
		}
		return l
	}
	acquire("a").Release()
	acquire("b").Release() // b is more recently used than a
	lc := acquire("c")
	defer lc.Release()
	if st := e.m.Status("a"); st.State != StateStopped {
		t.Fatalf("LRU idle compute a not evicted: %+v", st)
	}
	if st := e.m.Status("b"); st.State != StateRunning {
		t.Fatalf("b: %+v", st)
	}
	if c := counter(t, e.met.ComputeStopsTotal, StopEvicted); c != 1 {
		t.Fatalf("stops{evicted} = %v", c)
	}
	if g := gauge(t, e.met.Computes, "running"); g != 2 {
		t.Fatalf("computes{running} = %v", g)
	}

	// Both slots held: a wake queues until a slot's last client leaves,
	// then evicts that compute.
	lb := acquire("b")
	got := make(chan error, 1)
	var la *Lease
	go func() {
		var err error
		la, err = e.m.Acquire(ctx, "a")
		got <- err
	}()
	waitFor(t, 10*time.Second, "the wake of a to queue", func() bool { return value(t, e.met.ComputeWakeQueued) == 1 })
	lb.Release()
	if err := <-got; err != nil {
		t.Fatalf("queued wake: %v", err)
	}
	defer la.Release()
	if st := e.m.Status("b"); st.State == StateRunning {
		t.Fatalf("b not evicted for the queued wake: %+v", st)
	}

	// Nobody leaves: the queued wake gives up after wake_timeout with a
	// retry hint.
	t0 := time.Now()
	_, err := e.m.Acquire(ctx, "b")
	var se *StartError
	if !errors.As(err, &se) || se.BreakerOpen || se.RetryAfter != time.Second || !errors.Is(err, ErrMaxRunning) {
		t.Fatalf("want max-running StartError, got %v", err)
	}
	if took := time.Since(t0); took < 8*time.Second {
		t.Fatalf("gave up after %s, before wake_timeout", took)
	}
	if len(postgresUnder(e.dir)) == 0 {
		t.Fatal("no postgres found under the data dir (process scan broken?)")
	}
}

// TestMaxRunningFIFO: wakes queued for a slot get one in arrival order.
func TestMaxRunningFIFO(t *testing.T) {
	e := newEnv(t, Options{MaxRunning: 1, WakeTimeout: 20 * time.Second}, "a", "b", "c")
	ctx := ctxT(t)
	la, err := e.m.Acquire(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	order := make(chan string, 2)
	for i, name := range []string{"b", "c"} {
		go func() {
			l, err := e.m.Acquire(ctx, name)
			if err != nil {
				order <- "error " + err.Error()
				return
			}
			order <- name
			l.Release()
		}()
		waitFor(t, 10*time.Second, name+" to queue", func() bool { return value(t, e.met.ComputeWakeQueued) == float64(i+1) })
	}
	la.Release()
	for _, want := range []string{"b", "c"} {
		if got := <-order; got != want {
			t.Fatalf("served %q, want %q", got, want)
		}
	}
}

func TestClone(t *testing.T) {
	e := newEnv(t, Options{}, "main")
	ctx := ctxT(t)
	l, err := e.m.Acquire(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	c := connect(t, l.Endpoint)
	query(t, c, "create table t(x int); insert into t values (1)")
	c.Close(ctx)
	l.Release()

	tests := []struct {
		name, branch string
		running      bool   // the parent runs (with a row it has not stored yet) during the clone
		rows         string // what the child sees
	}{
		// A clean stop stores the parent's data: the child sees it.
		{"parent stopped", "off", false, "1"},
		// A running parent's newest stored image is its last clean stop:
		// the row inserted since is not in the child.
		{"parent running", "on", true, "1"},
		// Once the parent stops, a new child sees that row too.
		{"parent stopped again", "on2", false, "2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var pid int
			if tc.running {
				l, err := e.m.Acquire(ctx, "main")
				if err != nil {
					t.Fatal(err)
				}
				defer l.Release()
				query(t, connect(t, l.Endpoint), "insert into t values (2)")
				pid = e.m.Status("main").PID
			} else if err := e.m.Suspend(ctx, "main"); err != nil {
				t.Fatal(err)
			}
			t0 := time.Now()
			if err := e.m.Clone(ctx, "main", tc.branch, Point{}); err != nil {
				t.Fatal(err)
			}
			t.Logf("%s clone took %s", tc.name, time.Since(t0))
			if st := e.m.Status("main"); tc.running && (st.State != StateRunning || st.PID != pid) {
				t.Fatalf("parent disturbed by the clone: %+v (pid was %d)", st, pid)
			}
			if _, err := os.Stat(e.drv.pgdata(tc.branch)); !os.IsNotExist(err) {
				t.Fatalf("clone copied a data directory: %v", err)
			}
			lc, err := e.m.Acquire(ctx, tc.branch)
			if err != nil {
				t.Fatal(err)
			}
			defer lc.Release()
			if lc.Kind != WakeCold {
				t.Fatalf("first start of a new branch: %s", lc.Kind)
			}
			hba, _ := os.ReadFile(filepath.Join(e.drv.pgdata(tc.branch), "pg_hba.conf"))
			if string(hba) != hbaConf {
				t.Fatalf("clone pg_hba.conf = %q", hba)
			}
			if got := query(t, connect(t, lc.Endpoint), "select count(*) from t"); got[0] != tc.rows {
				t.Fatalf("clone sees %v rows, want %s", got, tc.rows)
			}
			st, err := e.m.Storage(context.Background(), tc.branch)
			mainSt, _ := e.m.Storage(context.Background(), "main")
			if err != nil || st.ParentLSN == "" || st.Timeline == mainSt.Timeline {
				t.Fatalf("clone storage %+v (%v), parent %+v", st, err, mainSt)
			}
			if err := e.m.Clone(ctx, "main", tc.branch, Point{}); err == nil {
				t.Fatal("clone onto an existing branch succeeded")
			}
		})
	}

	// A failed clone leaves nothing behind.
	if err := e.m.Clone(ctx, "nosuch", "x", Point{}); err == nil {
		t.Fatal("clone of a missing parent succeeded")
	}
	if _, err := os.Stat(e.drv.branchDir("x")); !os.IsNotExist(err) {
		t.Fatalf("partial branch left: %v", err)
	}
	if e.drv.exists("x") {
		t.Fatal("a timeline was left for x")
	}

	// Delete stops the compute, drops the timeline and removes the data.
	if err := e.m.Delete(ctx, "off"); err != nil {
		t.Fatal(err)
	}
	if e.drv.exists("off") || e.m.Status("off").State != StateStopped {
		t.Fatal("branch off still exists after Delete")
	}
	if _, err := os.Stat(e.drv.branchDir("off")); !os.IsNotExist(err) {
		t.Fatalf("branch dir left after Delete: %v", err)
	}
	if c := counter(t, e.met.ComputeStopsTotal, StopDelete); c != 1 {
		t.Fatalf("stops{delete} = %v", c)
	}
	var se *StartError
	if _, err := e.m.Acquire(ctx, "off"); !errors.As(err, &se) {
		t.Fatalf("acquire of a deleted branch: %v", err)
	}
	// A parent with children cannot lose its timeline.
	if err := e.m.Delete(ctx, "main"); err == nil || !errors.Is(err, pagestore.ErrHasChildren) {
		t.Fatalf("delete of a parent: %v", err)
	}
}

// TestStoreIsTheTruth: a stopped branch's local directory is a cache. Lost,
// it is rebuilt from the store with every commit; a crashed compute's
// directory is kept (it holds unstored commits) until a clean stop stores it.
func TestStoreIsTheTruth(t *testing.T) {
	e := newEnv(t, Options{}, "main")
	ctx := ctxT(t)
	run := func(sql string) []string { t.Helper(); return e.on("main", sql) }
	run("create table t(x int); insert into t select generate_series(1, 1000)")
	if err := e.m.Suspend(ctx, "main"); err != nil {
		t.Fatal(err)
	}
	if st, _ := e.m.Storage(context.Background(), "main"); st.Unstored || st.LocalBytes == 0 {
		t.Fatalf("after a clean stop: %+v", st)
	}

	// Lose the local directory: the next start materializes it.
	if err := os.RemoveAll(e.drv.branchDir("main")); err != nil {
		t.Fatal(err)
	}
	if got := run("select count(*) from t"); got[0] != "1000" {
		t.Fatalf("after rebuild from the store: %v rows", got)
	}

	// Crash: the directory holds commits the store lacks, so it is kept.
	run("insert into t values (1001)")
	pid := e.m.Status("main").PID
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	e.waitState("main", StateStopped)
	if st, _ := e.m.Storage(context.Background(), "main"); !st.Unstored {
		t.Fatalf("after a crash: %+v", st)
	}
	if got := run("select count(*) from t"); got[0] != "1001" {
		t.Fatalf("after crash recovery: %v rows", got)
	}
	// The next clean stop stores it; then the directory can go again.
	if err := e.m.Suspend(ctx, "main"); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(e.drv.branchDir("main")); err != nil {
		t.Fatal(err)
	}
	if got := run("select count(*) from t"); got[0] != "1001" {
		t.Fatalf("after crash, clean stop and rebuild: %v rows", got)
	}
}

// TestCacheEviction: beyond compute.cache_bytes the least recently used
// stopped branch's local directory is dropped, never a running one's.
func TestCacheEviction(t *testing.T) {
	e := newEnv(t, Options{}, "a", "b")
	ctx := ctxT(t)
	use := func(branch string) {
		t.Helper()
		l, err := e.m.Acquire(ctx, branch)
		if err != nil {
			t.Fatal(err)
		}
		query(t, connect(t, l.Endpoint), "create table if not exists t(x int); insert into t values (1)")
		l.Release()
		if err := e.m.Suspend(ctx, branch); err != nil {
			t.Fatal(err)
		}
	}
	local := func(branch string) bool {
		_, err := os.Stat(filepath.Join(e.drv.pgdata(branch), "PG_VERSION"))
		return err == nil
	}
	use("a")
	// A budget that holds a used directory but not two.
	sa, sb := diskUsage(e.drv.pgdata("a")), diskUsage(e.drv.pgdata("b"))
	e.drv.o.CacheBytes = sa + sb/2
	e.drv.evict(ctx) // b is the least recently used
	if !local("a") || local("b") {
		t.Fatalf("after using a (%d + %d bytes, budget %d): local a=%v b=%v", sa, sb, e.drv.o.CacheBytes, local("a"), local("b"))
	}
	use("b") // b is materialized again and used; its stop evicts a (in the background)
	waitFor(t, 30*time.Second, "b's stop to evict a", func() bool { return !local("a") })
	if !local("b") {
		t.Fatalf("after using b: local a=%v b=%v", local("a"), local("b"))
	}
	if got := e.on("a", "select count(*) from t"); got[0] != "1" { // rebuilt from the store, with its row
		t.Fatalf("a after eviction: %v", got)
	}
}

func TestDetachRecover(t *testing.T) {
	e := newEnv(t, Options{SuspendTimeout: time.Minute}, "main")
	ctx := ctxT(t)
	l, err := e.m.Acquire(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	pid := e.m.Status("main").PID
	l.Release()
	e.m.Detach()
	if _, err := e.m.Acquire(ctx, "main"); !errors.Is(err, ErrClosed) {
		t.Fatalf("acquire after detach: %v", err)
	}
	if _, ok := procStartTime(pid); !ok {
		t.Fatal("Detach stopped the compute")
	}

	m2 := NewManager(e.cd, Options{SuspendTimeout: time.Minute, Logger: testLogger()})
	t.Cleanup(func() { _ = m2.Close(context.Background()) })
	m2.Recover(ctx, []string{"main", "nodata"})
	st := m2.Status("main")
	if st.State != StateRunning || st.PID != pid || st.Clients != 0 || st.Generation != 1 {
		t.Fatalf("adopted status %+v, want running pid %d", st, pid)
	}
	if st := m2.Status("nodata"); st.State != StateStopped {
		t.Fatalf("nodata: %+v", st)
	}
	l2, err := m2.Acquire(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	if l2.Kind != WakeRunning || e.cd.starts.Load() != 1 {
		t.Fatalf("lease %+v after %d starts", l2, e.cd.starts.Load())
	}
	query(t, connect(t, l2.Endpoint), "select 1")
	l2.Release()
	if err := m2.Close(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the adopted postmaster to exit", func() bool {
		_, ok := procStartTime(pid)
		return !ok
	})
	// Nothing to adopt any more.
	if _, ok, err := e.drv.Adopt(ctx, "main", 3); ok || err != nil {
		t.Fatalf("adopt after stop: ok=%v err=%v", ok, err)
	}
}

func TestUnexpectedExit(t *testing.T) {
	e := newEnv(t, Options{}, "main")
	ctx := ctxT(t)
	l, err := e.m.Acquire(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	c := connect(t, l.Endpoint)
	query(t, c, "create table t(x int); insert into t values (1)")
	pid := e.m.Status("main").PID
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	e.waitState("main", StateStopped)
	// PostgreSQL puts each backend in its own process group: the
	// connection's backend outlives its postmaster, holding the shared
	// memory a restart needs, unless the driver kills it.
	if left := leftovers(pid, e.drv.pgdata("main")); len(left) > 0 {
		t.Fatalf("processes of the dead compute still alive: %v", left)
	}
	st := e.m.Status("main")
	if st.Clients != 0 || !strings.Contains(st.LastError, "exited") {
		t.Fatalf("status after crash %+v", st)
	}
	if c := counter(t, e.met.ComputeStopsTotal, StopExited); c != 1 {
		t.Fatalf("stops{exited} = %v", c)
	}
	l.Release() // a lease of the dead compute: harmless
	l2, err := e.m.Acquire(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Release()
	if !started(l2.Kind) || l2.Endpoint.Generation != 2 || e.m.Status("main").PID == pid {
		t.Fatalf("restart lease %+v", l2)
	}
	if got := query(t, connect(t, l2.Endpoint), "select count(*) from t"); got[0] != "1" {
		t.Fatalf("after crash recovery: %v rows", got)
	}
}

func TestDriverAdoptStale(t *testing.T) {
	e := newEnv(t, Options{}, "main")
	ctx := ctxT(t)
	pidFile := filepath.Join(e.drv.pgdata("main"), "postmaster.pid")
	tests := []struct {
		name, content string
	}{
		{"no pid file", ""},
		{"dead pid", "999999\n" + e.drv.pgdata("main") + "\n1\n5432\n/tmp\n\n0 0\nready   \n"},
		{"live non-postgres pid", strconv.Itoa(os.Getpid()) + "\n" + e.drv.pgdata("main") + "\n1\n5432\n/tmp\n\n0 0\nready   \n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(pidFile)
			if tc.content != "" {
				if err := os.WriteFile(pidFile, []byte(tc.content), 0o600); err != nil {
					t.Fatal(err)
				}
				_ = e.drv.chown(pidFile)
			}
			if p, ok, err := e.drv.Adopt(ctx, "main", 1); ok || err != nil || p != nil {
				t.Fatalf("adopt: %v %v %v", p, ok, err)
			}
		})
	}
	// PostgreSQL copes with the stale pid file itself.
	l, err := e.m.Acquire(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
}

func TestWakeTimeout(t *testing.T) {
	e := newEnv(t, Options{}, "main")
	ctx := ctxT(t)
	l, err := e.m.Acquire(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
	// The first start may take seconds on a loaded machine; the wait under
	// test is the next one (SetTimeouts as SIGHUP applies it).
	e.m.SetTimeouts(Timeouts{WakeTimeout: 300 * time.Millisecond})
	gate := make(chan struct{})
	e.cd.stopGate.Store(&gate)
	suspended := make(chan error, 1)
	go func() { suspended <- e.m.Suspend(ctx, "main") }()
	e.waitState("main", StateStopping)

	t0 := time.Now()
	_, err = e.m.Acquire(ctx, "main")
	var se *StartError
	if !errors.As(err, &se) || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "wake_timeout") {
		t.Fatalf("want a wake_timeout StartError, got %v", err)
	}
	if el := time.Since(t0); el < 300*time.Millisecond || el > 5*time.Second {
		t.Fatalf("gave up after %s", el)
	}
	// The caller's own context wins over wake_timeout.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := e.m.Acquire(cctx, "main"); !errors.Is(err, context.Canceled) || errors.As(err, &se) {
		t.Fatalf("cancelled acquire: %v", err)
	}
	e.cd.stopGate.Store(nil)
	close(gate)
	if err := <-suspended; err != nil {
		t.Fatal(err)
	}
}

// TestSpareFiles: cold starts take their files from the spare pool, which
// refills; files that cannot be trusted as spares are dropped at load.
func TestSpareFiles(t *testing.T) {
	e := newEnvDriver(t, Options{}, DriverOptions{SpareFiles: 1500}, "main")
	ctx := ctxT(t)
	waitFor(t, 20*time.Second, "the spare pool to fill", func() bool { return e.drv.spares.count() == 1500 })
	before := e.drv.spares.taken()
	if err := os.RemoveAll(e.drv.branchDir("main")); err != nil {
		t.Fatal(err)
	}
	l, err := e.m.Acquire(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	// Counted as taken: the filler may already be topping the pool up.
	used := e.drv.spares.taken() - before
	if used < 500 {
		t.Fatalf("a cold start took %d spare files, want one per file of the data directory", used)
	}
	if got := query(t, connect(t, l.Endpoint), "select count(*) from pg_class"); got[0] == "0" {
		t.Fatal("no catalog")
	}
	l.Release()
	waitFor(t, 20*time.Second, "the spare pool to refill", func() bool { return e.drv.spares.count() == 1500 })

	// Loading a pool: a non-empty file and a file with a second link are
	// not spares (a second link would share an inode with a data file).
	dir := mkTemp(t)
	for name, body := range map[string]string{"1": "", "2": "x", "3": "", "junk": ""} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Link(filepath.Join(dir, "3"), filepath.Join(dir, "elsewhere")); err != nil {
		t.Fatal(err)
	}
	p, err := newSpares(dir, 0, pagestore.Owner{UID: -1}, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	if n := p.count(); n != 1 {
		t.Fatalf("loaded %d spares, want only file 1", n)
	}
	f, err := p.Create(filepath.Join(dir, "taken"))
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := p.Create(filepath.Join(dir, "taken")); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("create over an existing file: %v", err)
	}
}

// TestKeeperDurability: with the WAL keeper every commit waits for it, so
// a compute killed with SIGKILL whose local directory is then deleted
// loses no acknowledged commit: the next start materializes the stored
// image and PostgreSQL replays the keeper's WAL. Three cycles.
func TestKeeperDurability(t *testing.T) {
	e := newKeeperEnv(t)
	k := e.keeper
	ctx := ctxT(t)

	// While the keeper does not stream, commits wait (and the branch says
	// so); the driver reconnects it and the commit completes.
	l0, err := e.m.Acquire(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := e.m.Storage(context.Background(), "main"); st.WALKeeper != "streaming" {
		t.Fatalf("running compute: wal keeper %q", st.WALKeeper)
	}
	ms := e.drv.streams.get("main").members[0]
	ms.mu.Lock()
	cur := ms.mu.cur
	ms.mu.Unlock()
	cur.Stop()
	if st, _ := e.m.Storage(context.Background(), "main"); st.WALKeeper != "disconnected" {
		t.Fatalf("after the stream stopped: wal keeper %q", st.WALKeeper)
	}
	c0 := connect(t, l0.Endpoint)
	t0 := time.Now()
	query(t, c0, "create table w(x int); insert into w values (1)")
	t.Logf("a commit without the keeper waited %s for it to come back", time.Since(t0).Round(time.Millisecond))
	if st, _ := e.m.Storage(context.Background(), "main"); st.WALKeeper != "streaming" {
		t.Fatalf("after the reconnect: wal keeper %q", st.WALKeeper)
	}
	l0.Release()

	acked := 0
	for cycle := 1; cycle <= 3; cycle++ {
		l, err := e.m.Acquire(ctx, "main")
		if err != nil {
			t.Fatalf("cycle %d: %v", cycle, err)
		}
		c := connect(t, l.Endpoint)
		if got := query(t, c, "create table if not exists t(id int); select count(*) from t"); got[0] != strconv.Itoa(acked) {
			t.Fatalf("cycle %d: %s rows after recovery, want the %d acknowledged", cycle, got[0], acked)
		}
		for i := 0; i < 200; i++ {
			query(t, c, "insert into t values (1)") // returns only once the keeper has it
			acked++
		}
		l.Release()
		e.crashAndLoseLocalDir("main")
	}
	l, err := e.m.Acquire(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	if got := query(t, connect(t, l.Endpoint), "select count(*) from t"); got[0] != strconv.Itoa(acked) {
		t.Fatalf("%s rows after the last recovery, want %d", got[0], acked)
	}
	// A clean stop stores it all in the pagestore; the keeper's WAL for
	// the branch is then dropped, and a rebuilt directory still has it.
	if err := e.m.Suspend(ctx, "main"); err != nil {
		t.Fatal(err)
	}
	st, _ := e.m.Storage(context.Background(), "main")
	if f := k.FlushLSN(st.Timeline); f == 0 || k.Covered(st.Timeline) != f {
		t.Fatalf("after a clean stop the image should cover the keeper's WAL (flush %X, covered %X)", f, k.Covered(st.Timeline))
	}
	if err := os.RemoveAll(e.drv.branchDir("main")); err != nil {
		t.Fatal(err)
	}
	l2, err := e.m.Acquire(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Release()
	if got := query(t, connect(t, l2.Endpoint), "select count(*) from t"); got[0] != strconv.Itoa(acked) {
		t.Fatalf("%s rows from the stored image, want %d", got[0], acked)
	}
}

// TestBranchFromRunningParentWithKeeper: with the WAL keeper, a branch
// created while its parent runs starts at the parent's latest durable
// commit (image + the keeper's WAL), and the two then diverge.
func TestBranchFromRunningParentWithKeeper(t *testing.T) {
	e := newKeeperEnv(t)
	ctx := ctxT(t)
	l, err := e.m.Acquire(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	c := connect(t, l.Endpoint)
	query(t, c, "create table t(x int); insert into t select generate_series(1, 500)")
	if err := e.m.Clone(ctx, "main", "child", Point{}); err != nil {
		t.Fatal(err)
	}
	query(t, c, "insert into t values (501)") // after the branch point
	mainSt, _ := e.m.Storage(context.Background(), "main")
	childSt, err := e.m.Storage(context.Background(), "child")
	if err != nil || childSt.ParentLSN == "" || childSt.ParentLSN == mainSt.ParentLSN {
		t.Fatalf("child storage %+v, %v", childSt, err)
	}
	lc, err := e.m.Acquire(ctx, "child")
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Release()
	cc := connect(t, lc.Endpoint)
	if got := query(t, cc, "select count(*) from t"); got[0] != "500" {
		t.Fatalf("child sees %s rows, want the 500 committed before it was created", got[0])
	}
	query(t, cc, "insert into t values (-1)")
	if got := query(t, c, "select count(*) from t where x < 0"); got[0] != "0" {
		t.Fatal("the child's write reached the parent")
	}
	// The child's own WAL goes to its own namespace: lose its directory
	// and it still has its write.
	lc.Release()
	e.crashAndLoseLocalDir("child")
	if got := e.on("child", "select count(*) from t"); got[0] != "501" {
		t.Fatalf("child after losing its directory: %v", got)
	}
}

// TestBranchFromStoppedParentNoRecovery: the keepers' copy of a stopped
// parent's WAL ends with its image's shutdown checkpoint, so a child of it
// starts from the image as PostgreSQL left it (no crash recovery, whose
// fsync of every file cost half a second per new branch), and a parent
// that wrote after its image still hands that WAL on.
func TestBranchFromStoppedParentNoRecovery(t *testing.T) {
	e := newKeeperEnv(t)
	ctx := ctxT(t)
	e.on("main", "create table t(x int); insert into t select generate_series(1, 100)")
	if err := e.m.Suspend(ctx, "main"); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Clone(ctx, "main", "child", Point{}); err != nil {
		t.Fatal(err)
	}
	if got := e.on("child", "select count(*) from t"); got[0] != "100" {
		t.Fatalf("child sees %v rows, want 100", got)
	}
	log, err := os.ReadFile(e.drv.logPath("child"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(log, []byte("database system was shut down")) || bytes.Contains(log, []byte("automatic recovery")) {
		t.Fatalf("the child's first start was not a clean one:\n%s", log)
	}
	// Its own WAL starts empty on the keepers and holds its commits.
	e.on("child", "insert into t values (-1)")
	e.crashAndLoseLocalDir("child")
	if got := e.on("child", "select count(*) from t"); got[0] != "101" {
		t.Fatalf("child after losing its directory sees %v rows, want 101", got)
	}
	// main again, with a commit after its image: the next child replays it.
	l, err := e.m.Acquire(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	c := connect(t, l.Endpoint)
	query(t, c, "insert into t values (101)")
	if err := e.m.Clone(ctx, "main", "child2", Point{}); err != nil {
		t.Fatal(err)
	}
	if got := e.on("child2", "select count(*) from t"); got[0] != "101" {
		t.Fatalf("child2 sees %v rows, want the 101 committed before it was created", got)
	}
}

// TestRemoveStaleLock: a lock file naming a dead process goes; one naming
// a live process stays.
func TestRemoveStaleLock(t *testing.T) {
	d := &PostgresDriver{log: testLogger()}
	dir := mkTemp(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		pid  int
		kept bool
	}{
		{"dead process", dead.Process.Pid, false},
		{"live process", os.Getpid(), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, ".s.PGSQL.5432.lock")
			if err := os.WriteFile(p, []byte(strconv.Itoa(tc.pid)+"\n/data\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			d.removeStaleLock("b", p)
			if _, err := os.Stat(p); (err == nil) != tc.kept {
				t.Fatalf("lock kept = %v, want %v", err == nil, tc.kept)
			}
		})
	}
}

// TestPointInTimeBranch: a branch at a recorded LSN has exactly the rows
// committed before it; a branch of that branch at an LSN of its own works
// too (across PostgreSQL timelines); unreachable points are refused with
// the valid range.
func TestPointInTimeBranch(t *testing.T) {
	e := newKeeperEnv(t)
	ctx := ctxT(t)
	lsnAfter := func(branch, sql string) uint64 {
		t.Helper()
		// Committed (and flushed) before the LSN is read.
		got := e.on(branch, sql, "select pg_current_wal_lsn()")
		lsn, err := pagestore.ParseLSN(got[0])
		if err != nil {
			t.Fatal(err)
		}
		return uint64(lsn)
	}
	count := func(branch string) string { t.Helper(); return e.on(branch, "select count(*) from t")[0] }

	// A time after the parent's image when the keeper has no WAL of it
	// (main never ran): the image itself is the branch point.
	if err := e.m.Clone(ctx, "main", "imageonly", Point{Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	li, err := e.m.Acquire(ctx, "imageonly")
	if err != nil {
		t.Fatal(err)
	}
	if got := query(t, connect(t, li.Endpoint), "select count(*) > 0 from pg_class"); got[0] != "t" {
		t.Fatalf("imageonly: %v", got)
	}
	li.Release()
	if st, _ := e.drv.readState("imageonly"); st.Timeline == 0 || uint64(st.Timeline) != mustStorage(t, e, "imageonly").Timeline {
		t.Fatalf("imageonly local state %+v", st)
	}

	at1 := lsnAfter("main", "create table t(x int); insert into t select generate_series(1, 100)")
	t1 := time.Now() // after the commit of rows 1-100, before that of 101-200
	lsnAfter("main", "insert into t select generate_series(101, 200)")
	if err := e.m.Clone(ctx, "main", "pitr", Point{LSN: at1}); err != nil {
		t.Fatal(err)
	}
	if st, _ := e.m.Storage(context.Background(), "pitr"); st.ParentLSN != pagestore.LSN(at1).String() {
		t.Fatalf("pitr parent_lsn %s, want %s", st.ParentLSN, pagestore.LSN(at1))
	}
	if got := count("pitr"); got != "100" {
		t.Fatalf("branch at %s sees %s rows, want the 100 committed before it", pagestore.LSN(at1), got)
	}
	if got := count("main"); got != "200" {
		t.Fatalf("main has %s rows", got)
	}
	// The same point by time.
	if err := e.m.Clone(ctx, "main", "bytime", Point{Time: t1}); err != nil {
		t.Fatal(err)
	}
	if got := count("bytime"); got != "100" {
		t.Fatalf("branch at %s sees %s rows, want the 100 committed before it", t1.Format(time.RFC3339Nano), got)
	}
	// A time after the last commit: everything up to the end of the WAL.
	if err := e.m.Clone(ctx, "main", "latest", Point{Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if got := count("latest"); got != "200" {
		t.Fatalf("branch at now sees %s rows, want 200", got)
	}

	// A branch of the branch, at an LSN of the branch's own history (after
	// its own image, so its WAL is replayed on its new PostgreSQL timeline).
	at2 := lsnAfter("pitr", "insert into t select -generate_series(1, 10)")
	lsnAfter("pitr", "insert into t select -generate_series(11, 20)")
	if err := e.m.Suspend(ctx, "pitr"); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Clone(ctx, "pitr", "pitr2", Point{LSN: at2}); err != nil {
		t.Fatal(err)
	}
	if got := count("pitr2"); got != "110" {
		t.Fatalf("branch of a branch at %s sees %s rows, want 110", pagestore.LSN(at2), got)
	}

	// Before the parent's history, or after its latest durable commit.
	var te *TargetError
	if err := e.m.Clone(ctx, "main", "early", Point{LSN: 1}); !errors.As(err, &te) || te.To == 0 {
		t.Fatalf("branch before the history: %v", err)
	}
	if err := e.m.Clone(ctx, "main", "late", Point{LSN: uint64(1) << 60}); !errors.As(err, &te) || !strings.Contains(err.Error(), "valid LSNs are") {
		t.Fatalf("branch in the future: %v", err)
	}
	if err := e.m.Clone(ctx, "main", "tomorrow", Point{Time: time.Now().Add(24 * time.Hour)}); !errors.As(err, &te) || !strings.Contains(err.Error(), "valid times are") {
		t.Fatalf("branch at a future time: %v", err)
	}
	if e.drv.exists("early") || e.drv.exists("late") || e.drv.exists("tomorrow") {
		t.Fatal("a refused branch left a timeline")
	}
}

// TestRebootRebuildsLocalDirectory: after a reboot a local directory is
// not trusted (materialized files are never fsynced): it is rebuilt from
// the store and the keeper's WAL, even one holding unstored changes whose
// files were lost.
func TestRebootRebuildsLocalDirectory(t *testing.T) {
	e := newKeeperEnv(t)
	ctx := ctxT(t)
	l, err := e.m.Acquire(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	c := connect(t, l.Endpoint)
	file := query(t, c, "create table t(x int); insert into t select generate_series(1, 300); select pg_relation_filepath('t')")[0]
	l.Release()
	pid := e.m.Status("main").PID
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	e.waitState("main", StateStopped)
	// A reboot lost the table's file, which PostgreSQL had not fsynced
	// yet; the state file says it was written in an earlier boot.
	if err := os.Remove(filepath.Join(e.drv.pgdata("main"), file)); err != nil {
		t.Fatal(err)
	}
	st, ok := e.drv.readState("main")
	if !ok || !st.Unstored {
		t.Fatalf("state %+v", st)
	}
	b, _ := json.Marshal(localState{Timeline: st.Timeline, LSN: st.LSN, Unstored: true, BootID: "an-earlier-boot"})
	if err := os.WriteFile(e.drv.statePath("main"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	before := e.cd.starts.Load()
	l2, err := e.m.Acquire(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Release()
	if got := query(t, connect(t, l2.Endpoint), "select count(*) from t"); got[0] != "300" || e.cd.starts.Load() != before+1 {
		t.Fatalf("after the reboot: %v rows", got)
	}
}

func mustStorage(t *testing.T, e *env, branch string) Storage {
	t.Helper()
	st, err := e.m.Storage(context.Background(), branch)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestStaleKeeperSlotDropped: a replication slot of a keeper the compute no
// longer streams to (an older neonproxy's, or a peer removed from the
// configuration) is dropped at the next start, so it cannot keep WAL
// forever; the current keeper's slot stays.
func TestStaleKeeperSlotDropped(t *testing.T) {
	e := newKeeperEnv(t)
	ctx := ctxT(t)
	slots := "select string_agg(slot_name, ',' order by slot_name) from pg_replication_slots"
	if got := e.on("main", "select pg_create_physical_replication_slot('neonproxy_walkeeper')", slots); got[0] != "neonproxy_walkeeper,neonproxy_wk1" {
		t.Fatalf("slots before the restart: %q", got)
	}
	if err := e.m.Suspend(ctx, "main"); err != nil {
		t.Fatal(err)
	}
	if got := e.on("main", slots); got[0] != "neonproxy_wk1" {
		t.Fatalf("slots after the restart: %q, want only the keeper's", got)
	}
}

// TestDamagedKeeperCopy: three keepers, quorum 2. The copy of the keeper a
// recovery would read first has one byte flipped in the middle of the
// committed WAL; the recovery checks records (CRC32C) and reads another
// keeper's copy instead, so no acknowledged commit is lost. The damaged
// keeper serves on.
func TestDamagedKeeperCopy(t *testing.T) {
	e := newKeepersEnv(t, 3, 2)
	ctx := ctxT(t)
	e.on("main", "create table t(id int)")
	for range 20 {
		e.on("main", "insert into t select generate_series(1, 50)")
	}
	st, err := e.m.Storage(context.Background(), "main")
	if err != nil {
		t.Fatal(err)
	}
	ns := st.Timeline
	e.crashAndLoseLocalDir("main")

	// Damage wk1, the keeper with the highest flush (all equal: the
	// first), in the middle of its WAL.
	k := e.keepers[0]
	in, err := k.Info(ctx, ns)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range e.keepers[1:] {
		if oi, _ := o.Info(ctx, ns); oi.Flush > in.Flush {
			t.Fatalf("wk1 flush %X is behind another keeper's %X", in.Flush, oi.Flush)
		}
	}
	w, err := k.Export(ctx, ns, in.Start, 0)
	if err != nil {
		t.Fatal(err)
	}
	buf, err := io.ReadAll(w.Body)
	w.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	at := (in.Start+(in.Flush-in.Start)/2)&^(walkeeper.PageSize-1) + 4000
	buf[at-w.Start] ^= 0x40
	if err := k.Import(ctx, ns, &walkeeper.WAL{Start: w.Start, Flush: w.Flush, Body: io.NopCloser(bytes.NewReader(buf))}); err != nil {
		t.Fatal(err)
	}
	if got := e.on("main", "select count(*) from t"); got[0] != "1000" {
		t.Fatalf("%s rows after recovery with wk1's copy damaged, want 1000", got[0])
	}
	if _, err := k.Info(ctx, ns); err != nil {
		t.Fatalf("the damaged keeper: %v", err)
	}
}
