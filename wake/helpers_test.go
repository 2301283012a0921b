package wake

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"

	"github.com/neonproxy/neonproxy/internal/metrics"
	"github.com/neonproxy/neonproxy/internal/mounts"
	"github.com/neonproxy/neonproxy/pagestore"
	"github.com/neonproxy/neonproxy/walkeeper"
)

// tmpl is a driver holding one bootstrapped branch "tmpl" (password
// "secret") whose data directory tests ingest instead of running initdb
// each time.
var tmpl *PostgresDriver

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "wake-tmpl-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o711); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	store, err := pagestore.Open(pagestore.Options{Dir: filepath.Join(dir, "pagestore"), NoSync: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer store.Close()
	d, err := NewPostgresDriver(DriverOptions{DataDir: dir, NoSync: true, Store: store, Logger: testLogger()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := d.Bootstrap(ctx, "tmpl", "secret"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	tmpl = d
	return m.Run()
}

func testLogger() *zap.Logger {
	if os.Getenv("WAKE_TEST_LOG") != "" {
		l, _ := zap.NewDevelopment()
		return l
	}
	return zap.NewNop()
}

// mkTemp makes a directory the compute user can traverse, removed at the
// end of the test.
func mkTemp(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "wake-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// A compute killed by a test leaves its overlay mounted.
		for _, m := range mounts.Under(dir) {
			_ = syscall.Unmount(m, syscall.MNT_DETACH)
		}
		os.RemoveAll(dir)
	})
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	return dir
}

// openStore opens an empty pagestore closed at the end of the test.
func openStore(t *testing.T) *pagestore.Store {
	t.Helper()
	s, err := pagestore.Open(pagestore.Options{Dir: filepath.Join(mkTemp(t), "pagestore"), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// countingDriver is the real PostgresDriver, counting starts and optionally
// holding stops until a gate opens.
type countingDriver struct {
	*PostgresDriver
	starts   atomic.Int32
	stopGate atomic.Pointer[chan struct{}]
}

func (c *countingDriver) Start(ctx context.Context, branch string, gen uint64) (Process, error) {
	c.starts.Add(1)
	p, err := c.PostgresDriver.Start(ctx, branch, gen)
	if err != nil {
		return nil, err
	}
	return &gatedProcess{Process: p, c: c}, nil
}

type gatedProcess struct {
	Process
	c *countingDriver
}

func (g *gatedProcess) Freeze() error      { return freezeOf(g.Process) }
func (g *gatedProcess) Thaw() error        { return thawOf(g.Process) }
func (g *gatedProcess) Materialized() bool { return materializedOf(g.Process) }

func (g *gatedProcess) Stop(ctx context.Context) error {
	if ch := g.c.stopGate.Load(); ch != nil {
		select {
		case <-*ch:
		case <-ctx.Done():
		}
	}
	return g.Process.Stop(ctx)
}

type env struct {
	t     *testing.T
	dir   string
	store *pagestore.Store
	drv   *PostgresDriver
	cd    *countingDriver
	m     *Manager
	met   *metrics.Metrics
	// keeper is the (first) embedded WAL keeper of newKeeperEnv
	// (newKeepersEnv: keepers).
	keeper  *walkeeper.Keeper
	keepers []*walkeeper.Keeper
}

// newEnv makes a fresh data dir and store with the template branch's data
// as root branches named branches, and a Manager over it, stopped and
// checked at the end.
func newEnv(t *testing.T, o Options, branches ...string) *env {
	return newEnvDriver(t, o, DriverOptions{}, branches...)
}

// newEnvDriver is newEnv with driver options (DataDir, Store, NoSync and
// Logger are set here).
func newEnvDriver(t *testing.T, o Options, do DriverOptions, branches ...string) *env {
	t.Helper()
	dir := mkTemp(t)
	store, err := pagestore.Open(pagestore.Options{Dir: filepath.Join(dir, "pagestore"), NoSync: true, Retention: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	do.DataDir, do.Store, do.NoSync, do.Logger = dir, store, true, testLogger()
	drv, err := NewPostgresDriver(do)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, dir: dir, store: store, drv: drv, cd: &countingDriver{PostgresDriver: drv}, met: metrics.New()}
	for _, b := range branches {
		e.addBranch(b)
	}
	o.Metrics = e.met
	o.Logger = testLogger()
	e.m = NewManager(e.cd, o)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := e.m.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
		assertNoPostgres(t, dir)
		drv.Close()
		if err := store.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	return e
}

// addBranch makes name a root branch holding the template's data (ingested
// from the template's stopped data directory) with a local copy
// materialized, as after a first start and clean stop.
func (e *env) addBranch(name string) {
	e.t.Helper()
	ctx := context.Background()
	cp, err := tmpl.controlData(ctx, tmpl.pgdata("tmpl"))
	if err != nil {
		e.t.Fatal(err)
	}
	tl, err := e.store.CreateTimeline(ctx, name, 0, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.store.Ingest(ctx, tl.ID, tmpl.pgdata("tmpl"), cp, ""); err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.drv.prepare(ctx, name); err != nil {
		e.t.Fatal(err)
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (e *env) waitState(branch string, s State) {
	e.t.Helper()
	waitFor(e.t, 10*time.Second, fmt.Sprintf("%s to be %s", branch, s), func() bool { return e.m.Status(branch).State == s })
}

// postgresUnder lists live processes whose command line or working
// directory is under dir.
func postgresUnder(dir string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, de := range ents {
		pid, err := strconv.Atoi(de.Name())
		if err != nil {
			continue
		}
		if st, _, ok := procStat(pid); !ok || st == "Z" || st == "X" {
			continue
		}
		cmd, _ := os.ReadFile(filepath.Join("/proc", de.Name(), "cmdline"))
		cwd, _ := os.Readlink(filepath.Join("/proc", de.Name(), "cwd"))
		if strings.Contains(string(cmd), dir) || strings.HasPrefix(cwd, dir) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func assertNoPostgres(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids := postgresUnder(dir)
		if len(pids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("processes left running under %s: %v", dir, pids)
			for _, p := range pids {
				_ = syscall.Kill(p, syscall.SIGKILL)
			}
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func connect(t *testing.T, ep Endpoint) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable", ep.SocketDir, ep.Port))
	if err != nil {
		t.Fatalf("connect to %s: %v", ep.SocketPath(), err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// query runs sql and returns the first column of the last result's rows.
func query(t *testing.T, c *pgconn.PgConn, sql string) []string {
	t.Helper()
	res, err := c.Exec(context.Background(), sql).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	var out []string
	if len(res) > 0 {
		for _, r := range res[len(res)-1].Rows {
			out = append(out, string(r[0]))
		}
	}
	return out
}

func gauge(t *testing.T, v *prometheus.GaugeVec, label string) float64 {
	t.Helper()
	var m dto.Metric
	if err := v.WithLabelValues(label).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}

func value(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func counter(t *testing.T, v *prometheus.CounterVec, label string) float64 {
	t.Helper()
	var m dto.Metric
	if err := v.WithLabelValues(label).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// crashAndLoseLocalDir kills branch's running compute (SIGKILL of its
// process group), waits for the manager to notice, and deletes the
// branch's local directory.
func (e *env) crashAndLoseLocalDir(branch string) {
	e.t.Helper()
	pid := e.m.Status(branch).PID
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil {
		e.t.Fatal(err)
	}
	e.waitState(branch, StateStopped)
	// An overlay's mount goes with the disk.
	if err := unmountIfMounted(e.drv.pgdata(branch)); err != nil {
		e.t.Fatal(err)
	}
	if err := os.RemoveAll(e.drv.branchDir(branch)); err != nil {
		e.t.Fatal(err)
	}
}

// newKeeperEnv is newEnv with a WAL keeper (e.keeper, closed after the
// env) and the template's data as branch "main".
func newKeeperEnv(t *testing.T) *env {
	t.Helper()
	return newKeepersEnv(t, 1, 1)
}

// newKeepersEnv is newKeeperEnv with n embedded keepers (e.keepers, wk1 …
// wkn) and a quorum.
func newKeepersEnv(t *testing.T, n, quorum int) *env {
	t.Helper()
	var ks []*walkeeper.Keeper
	var svcs []walkeeper.Service
	for i := range n {
		k, err := walkeeper.Open(walkeeper.Options{Dir: filepath.Join(mkTemp(t), fmt.Sprintf("wk%d", i+1)), NoSync: true, Logger: testLogger()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { k.Close() }) // after the env's cleanup (LIFO)
		ks, svcs = append(ks, k), append(svcs, k)
	}
	e := newEnvDriver(t, Options{}, DriverOptions{Keepers: svcs, KeeperQuorum: quorum}, "main")
	e.keeper, e.keepers = ks[0], ks
	return e
}

// on wakes branch, runs each statement on one connection in turn, and
// returns the first column of the last one's rows.
func (e *env) on(branch string, sqls ...string) []string {
	e.t.Helper()
	ctx := ctxT(e.t)
	l, err := e.m.Acquire(ctx, branch)
	if err != nil {
		e.t.Fatalf("acquire %s: %v", branch, err)
	}
	defer l.Release()
	c := connect(e.t, l.Endpoint)
	defer c.Close(ctx)
	var out []string
	for _, sql := range sqls {
		out = query(e.t, c, sql)
	}
	return out
}

// exists is Exists for tests, failing on an error.
func (d *PostgresDriver) exists(branch string) bool {
	ok, err := d.Exists(context.Background(), branch)
	if err != nil {
		panic(err)
	}
	return ok
}

// started says whether a lease's client waited for a start.
func started(k WakeKind) bool { return k == WakeWarm || k == WakeCold }
