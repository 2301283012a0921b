package walkeeper

import (
	"bytes"
	"context"
	"fmt"
	"io"
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

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

const pgBinDir = "/usr/lib/postgresql/15/bin"

// syncSettings make every commit wait for the keeper.
var syncSettings = []string{"-c", "synchronous_standby_names=ANY 1 (wk1)", "-c", "synchronous_commit=on"}

type pgOwner struct{ uid, gid int }

func requirePG(t *testing.T) pgOwner {
	t.Helper()
	for _, b := range []string{"postgres", "initdb", "pg_controldata"} {
		if _, err := os.Stat(filepath.Join(pgBinDir, b)); err != nil {
			t.Skipf("PostgreSQL 15 binaries missing: %v", err)
		}
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Fatalf("no postgres OS user: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return pgOwner{uid, gid}
}

// tempDir is a directory the postgres user can traverse (t.TempDir's
// parents are 0700).
func tempDir(t *testing.T, parent, prefix string) string {
	t.Helper()
	d, err := os.MkdirTemp(parent, prefix)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d, 0o711); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}

func (o pgOwner) cmd(name string, args ...string) *exec.Cmd {
	c := exec.Command(filepath.Join(pgBinDir, name), args...)
	c.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: uint32(o.uid), Gid: uint32(o.gid)},
		Setpgid:    true,
	}
	c.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C.UTF-8", "HOME=/tmp"}
	return c
}

func (o pgOwner) run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := o.cmd(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// syncBuffer collects a process's output while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// cluster is one PostgreSQL data directory and, while started, its postmaster.
type cluster struct {
	t     *testing.T
	owner pgOwner
	data  string
	sock  string
	cmd   *exec.Cmd
	log   *syncBuffer
	done  chan struct{}
}

// newCluster runs initdb in a new directory.
func newCluster(t *testing.T, o pgOwner) *cluster {
	root := tempDir(t, "", "wk-pg-")
	data := filepath.Join(root, "data")
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(data, o.uid, o.gid); err != nil {
		t.Fatal(err)
	}
	o.run(t, "initdb", "-N", "-A", "trust", "-U", "postgres", "-D", data)
	hba, err := os.ReadFile(filepath.Join(data, "pg_hba.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(hba), "\nlocal   replication     all                                     trust") {
		t.Fatalf("pg_hba.conf does not allow local replication:\n%s", hba)
	}
	return &cluster{t: t, owner: o, data: data}
}

func (c *cluster) connString() string {
	return fmt.Sprintf("host=%s user=postgres dbname=postgres", c.sock)
}

func (c *cluster) start(extra ...string) {
	t := c.t
	t.Helper()
	c.sock = tempDir(t, "/tmp", "wks")
	if err := os.Chmod(c.sock, 0o777); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"-D", c.data, "-k", c.sock, "-c", "listen_addresses=", "-c", "fsync=off",
		"-c", "shared_buffers=16MB", "-c", "max_wal_senders=4"}, extra...)
	c.cmd = c.owner.cmd("postgres", args...)
	c.log = &syncBuffer{}
	c.cmd.Stdout = c.log
	c.cmd.Stderr = c.log
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c.done = make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(c.done) }()
	t.Cleanup(func() { c.kill() })
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn, err := pgconn.Connect(ctx, c.connString())
		cancel()
		if err == nil {
			_ = conn.Close(context.Background())
			return
		}
		select {
		case <-c.done:
			t.Fatalf("postgres exited:\n%s", c.log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("postgres not ready: %v\n%s", err, c.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop shuts down cleanly (fast shutdown).
func (c *cluster) stop() {
	c.t.Helper()
	_ = c.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		c.t.Fatalf("postgres did not stop:\n%s", c.log)
	}
}

// kill SIGKILLs the postmaster's whole process group.
func (c *cluster) kill() {
	if c.cmd == nil {
		return
	}
	select {
	case <-c.done:
		return
	default:
	}
	_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
	<-c.done
}

func (c *cluster) connect(ctx context.Context) *pgconn.PgConn {
	c.t.Helper()
	conn, err := pgconn.Connect(ctx, c.connString())
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// query runs sql and returns the first column of the first row.
func query(ctx context.Context, t *testing.T, conn *pgconn.PgConn, sql string) string {
	t.Helper()
	res, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	r := res[len(res)-1]
	if len(r.Rows) == 0 {
		return ""
	}
	return string(r.Rows[0][0])
}

func controlData(t *testing.T, o pgOwner, data string) map[string]string {
	t.Helper()
	out := o.run(t, "pg_controldata", "-D", data)
	m := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	m["_raw"] = out
	return m
}

func parseLSN(t *testing.T, s string) LSN {
	t.Helper()
	l, err := pglogrepl.ParseLSN(s)
	if err != nil {
		t.Fatalf("parse LSN %q: %v", s, err)
	}
	return LSN(l)
}

func openKeeper(t *testing.T, noSync bool) *Keeper {
	t.Helper()
	k, err := Open(Options{Dir: filepath.Join(t.TempDir(), "wk"), NoSync: noSync,
		Logger: zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k.Close() })
	return k
}

// TestStreamSyncCommit: commits return only because the keeper acks; the
// keeper's flush covers every committed LSN; PostgreSQL counts it as a
// synchronous standby.
func TestStreamSyncCommit(t *testing.T) {
	o := requirePG(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := newCluster(t, o)
	from := parseLSN(t, controlData(t, o, c.data)["Latest checkpoint location"])
	c.start(syncSettings...)

	k := openKeeper(t, false)
	s, err := k.Stream(ctx, 1, c.connString(), "wk_1", from, 1)
	if err != nil {
		t.Fatal(err)
	}
	conn := c.connect(ctx)
	query(ctx, t, conn, "CREATE TABLE t (i int)")
	for i := range 200 {
		cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
		query(cctx, t, conn, fmt.Sprintf("INSERT INTO t VALUES (%d)", i))
		ccancel()
	}
	flushed := parseLSN(t, query(ctx, t, conn, "SELECT pg_current_wal_flush_lsn()"))
	if got := k.FlushLSN(1); got < flushed {
		t.Fatalf("keeper FlushLSN %s < compute flush %s", fmtLSN(got), fmtLSN(flushed))
	}
	if got := s.FlushLSN(); got < flushed {
		t.Fatalf("stream FlushLSN %s < compute flush %s", fmtLSN(got), fmtLSN(flushed))
	}
	if got := k.StartLSN(1); got != pageOf(from) {
		t.Fatalf("StartLSN %s, want %s", fmtLSN(got), fmtLSN(pageOf(from)))
	}
	res, err := conn.Exec(ctx, "SELECT application_name, sync_state FROM pg_stat_replication").ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	rows := res[0].Rows
	if len(rows) != 1 || string(rows[0][0]) != "wk1" || (string(rows[0][1]) != "quorum" && string(rows[0][1]) != "sync") {
		t.Fatalf("pg_stat_replication: %q", rows)
	}
	if _, err := k.Stream(ctx, 1, c.connString(), "wk_1", from, 1); err == nil {
		t.Fatal("a second stream of the same namespace started")
	}
	// Bad requests fail cleanly and leave the keeper serving: a timeline
	// the server does not have, a bad slot name.
	for _, bad := range []struct {
		name string
		from LSN
		tli  uint32
		slot string
	}{
		{"unknown timeline", from, 7, "wk_2"},
		{"invalid slot name", from, 1, "Bad-Slot"},
	} {
		if _, err := k.Stream(ctx, 2, c.connString(), bad.slot, bad.from, bad.tli); err == nil {
			t.Fatalf("%s: stream started", bad.name)
		}
	}
	query(ctx, t, conn, "INSERT INTO t VALUES (-1)") // still acknowledged through stream 1
	if got := k.FlushLSN(1); got < parseLSN(t, query(ctx, t, conn, "SELECT pg_current_wal_flush_lsn()")) {
		t.Fatalf("keeper stopped keeping up after bad requests: %s", fmtLSN(got))
	}
	s.Stop()
	if err := s.Err(); err != nil {
		t.Fatalf("stopped stream: %v", err)
	}
	select {
	case <-s.Done():
	default:
		t.Fatal("Done not closed after Stop")
	}
}

// TestNoKeeperNoCommit: without the keeper a commit waits; once the keeper
// streams again, it completes.
func TestNoKeeperNoCommit(t *testing.T) {
	o := requirePG(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := newCluster(t, o)
	// A short wal_sender_timeout: the keeper must answer the walsender's
	// keepalives or the stream is cut.
	c.start(append([]string{"-c", "wal_sender_timeout=1s"}, syncSettings...)...)
	k := openKeeper(t, true)
	admin := c.connect(ctx)
	from := parseLSN(t, query(ctx, t, admin, "SELECT pg_current_wal_lsn()"))
	s, err := k.Stream(ctx, 2, c.connString(), "wk_2", from, 1)
	if err != nil {
		t.Fatal(err)
	}
	query(ctx, t, admin, "CREATE TABLE t (i int)")
	s.Stop()
	if err := s.Err(); err != nil {
		t.Fatalf("stopped stream: %v", err)
	}

	var notices []string
	var nmu sync.Mutex
	cfg, err := pgconn.ParseConfig(c.connString())
	if err != nil {
		t.Fatal(err)
	}
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		nmu.Lock()
		notices = append(notices, n.Message)
		nmu.Unlock()
	}
	client, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close(context.Background())
	result := make(chan error, 1)
	go func() {
		_, err := client.Exec(ctx, "INSERT INTO t VALUES (1)").ReadAll()
		result <- err
	}()
	select {
	case err := <-result:
		t.Fatalf("INSERT returned without the keeper: %v", err)
	case <-time.After(2 * time.Second):
	}
	if n := query(ctx, t, admin, "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"); n != "1" {
		t.Fatalf("%s backends wait for synchronous replication, want 1", n)
	}

	s2, err := k.Stream(ctx, 2, c.connString(), "wk_2", k.FlushLSN(2), 1)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Stop()
	select {
	case err := <-result:
		if err != nil {
			t.Fatalf("INSERT: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("INSERT still waits with the keeper streaming")
	}
	nmu.Lock()
	defer nmu.Unlock()
	if len(notices) > 0 {
		t.Fatalf("notices: %q", notices)
	}
	if n := query(ctx, t, admin, "SELECT count(*) FROM t"); n != "1" {
		t.Fatalf("%s rows", n)
	}

	// Idle for longer than wal_sender_timeout: keepalives are answered.
	time.Sleep(2500 * time.Millisecond)
	select {
	case <-s2.Done():
		t.Fatalf("stream ended while idle: %v", s2.Err())
	default:
	}
	if n := query(ctx, t, admin, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'wk1'"); n != "1" {
		t.Fatalf("%s keeper walsenders after idling", n)
	}
	_ = admin.Close(ctx)

	// A clean compute shutdown ends the stream normally, with the
	// shutdown checkpoint stored.
	c.stop()
	select {
	case <-s2.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("stream still running after the compute stopped")
	}
	if err := s2.Err(); err != nil {
		t.Fatalf("stream after a clean shutdown: %v", err)
	}
	cp := parseLSN(t, controlData(t, o, c.data)["Latest checkpoint location"])
	if got := k.FlushLSN(2); got <= cp {
		t.Fatalf("keeper flush %s does not cover the shutdown checkpoint %s", fmtLSN(got), fmtLSN(cp))
	}
}

// TestRecoverFromKeeper: after the compute's data directory is lost, the
// image plus the keeper's WAL recovers every acknowledged commit.
func TestRecoverFromKeeper(t *testing.T) {
	o := requirePG(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := newCluster(t, o)
	c.start()
	conn := c.connect(ctx)
	query(ctx, t, conn, "CREATE TABLE t (i int PRIMARY KEY, v text)")
	_ = conn.Close(ctx)
	c.stop()

	// The image: the cleanly shut down data directory.
	root := filepath.Dir(c.data)
	image := filepath.Join(root, "image")
	if out, err := exec.Command("cp", "-a", c.data, image).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	cd := controlData(t, o, image)
	checkpoint := parseLSN(t, cd["Latest checkpoint location"])
	segSize, err := strconv.Atoi(cd["Bytes per WAL segment"])
	if err != nil {
		t.Fatal(err)
	}

	c.start(syncSettings...)
	k := openKeeper(t, false)
	const ns = 3
	s, err := k.Stream(ctx, ns, c.connString(), "wk_3", checkpoint, 1)
	if err != nil {
		t.Fatal(err)
	}
	// 1,000 single-row commits from 4 clients at once (several commits
	// per keeper fsync).
	const clients, rows = 4, 1000
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for cl := range clients {
		cc := c.connect(ctx)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := cl; i < rows; i += clients {
				sql := fmt.Sprintf("INSERT INTO t VALUES (%d, 'row %d')", i, i)
				if _, err := cc.Exec(ctx, sql).ReadAll(); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	conn = c.connect(ctx)
	committed := parseLSN(t, query(ctx, t, conn, "SELECT pg_current_wal_flush_lsn()"))
	c.kill()

	select {
	case <-s.Done():
		t.Logf("stream ended after SIGKILL: %v", s.Err())
	case <-time.After(10 * time.Second):
		t.Fatal("stream still running after the compute was killed")
	}
	flush := k.FlushLSN(ns)
	if flush < committed {
		t.Fatalf("keeper flush %s < committed %s", fmtLSN(flush), fmtLSN(committed))
	}
	// Every record up to the last commit checks out (CRC, back-links)...
	valid := validEnd(t, k, ns, checkpoint)
	if (valid+7)&^7 < committed || valid > flush {
		t.Fatalf("ValidEnd = %s, want the committed end %s (keeper flush %s)", fmtLSN(valid), fmtLSN(committed), fmtLSN(flush))
	}
	// ...and a copy with one flipped byte ends before it: a recovery
	// reading that copy would stop there, so the keepers' set reads
	// another. The keeper serves on.
	corrupt := pageOf(checkpoint+(committed-checkpoint)/2) + 4000
	wal, err := k.Export(ctx, ns, checkpoint, 0)
	if err != nil {
		t.Fatal(err)
	}
	buf, err := io.ReadAll(wal.Body)
	wal.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	buf[corrupt-wal.Start] ^= 0x40
	if err := k.Import(ctx, ns+100, &WAL{Start: wal.Start, Flush: wal.Flush, Body: io.NopCloser(bytes.NewReader(buf))}); err != nil {
		t.Fatal(err)
	}
	if bad := validEnd(t, k, ns+100, checkpoint); bad > corrupt || bad <= checkpoint {
		t.Fatalf("ValidEnd of the corrupted copy = %s, want between %s and the corrupt byte at %s", fmtLSN(bad), fmtLSN(checkpoint), fmtLSN(corrupt))
	} else {
		t.Logf("valid end %s; with a byte flipped at %s: %s", fmtLSN(valid), fmtLSN(corrupt), fmtLSN(bad))
	}

	// Rebuild: the image, without its WAL except the first page of the
	// checkpoint's segment (what the caller's sparse segment holds).
	restored := filepath.Join(root, "restored")
	if out, err := exec.Command("cp", "-a", image, restored).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	pgwal := filepath.Join(restored, "pg_wal")
	segs, _ := filepath.Glob(filepath.Join(pgwal, "0*"))
	segName := SegmentName(1, checkpoint/uint64(segSize), segSize)
	var firstPage []byte
	for _, f := range segs {
		if filepath.Base(f) == segName {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			firstPage = b[:PageSize]
		}
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	if firstPage == nil {
		t.Fatalf("image has no segment %s", segName)
	}
	sparse := filepath.Join(pgwal, segName)
	if err := os.WriteFile(sparse, firstPage, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(sparse, int64(segSize)); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(sparse, o.uid, o.gid); err != nil {
		t.Fatal(err)
	}

	end, err := WriteSegments(context.Background(), k, ns, checkpoint, 1, segSize, pgwal, o.uid, o.gid)
	if err != nil {
		t.Fatal(err)
	}
	if end != flush {
		t.Fatalf("WriteSegments end %s, want %s", fmtLSN(end), fmtLSN(flush))
	}
	if err := MarkCrashed(restored); err != nil {
		t.Fatal(err)
	}
	if st := controlData(t, o, restored)["Database cluster state"]; st != "in production" {
		t.Fatalf("cluster state %q", st)
	}

	r := &cluster{t: t, owner: o, data: restored}
	r.start()
	rc := r.connect(ctx)
	if n := query(ctx, t, rc, "SELECT count(*) FROM t"); n != strconv.Itoa(rows) {
		t.Fatalf("restored %s rows, want %d\n%s", n, rows, r.log)
	}
	if sum := query(ctx, t, rc, "SELECT sum(i) FROM t WHERE v = 'row ' || i"); sum != strconv.Itoa(rows*(rows-1)/2) {
		t.Fatalf("restored rows sum %s", sum)
	}
	if !strings.Contains(r.log.String(), "redo done") {
		t.Fatalf("no redo in the restored server's log:\n%s", r.log)
	}
}

// TestMarkCrashed flips a cleanly shut down cluster to "in production"
// with a valid control file CRC.
func TestMarkCrashed(t *testing.T) {
	o := requirePG(t)
	t.Parallel()
	c := newCluster(t, o)
	cd := controlData(t, o, c.data)
	if st := cd["Database cluster state"]; st != "shut down" {
		t.Fatalf("fresh cluster state %q", st)
	}
	// CheckpointLSN reads what pg_controldata prints.
	if got, err := CheckpointLSN(c.data); err != nil || got != parseLSN(t, cd["Latest checkpoint location"]) {
		t.Fatalf("CheckpointLSN = %s, %v; pg_controldata says %s", fmtLSN(got), err, cd["Latest checkpoint location"])
	}
	if err := MarkCrashed(c.data); err != nil {
		t.Fatal(err)
	}
	cd = controlData(t, o, c.data)
	if st := cd["Database cluster state"]; st != "in production" {
		t.Fatalf("cluster state %q", st)
	}
	if strings.Contains(cd["_raw"], "WARNING") {
		t.Fatalf("pg_controldata complains:\n%s", cd["_raw"])
	}
	if err := MarkCrashed(t.TempDir()); err == nil {
		t.Fatal("MarkCrashed of a directory without pg_control succeeded")
	}
}

// validEnd is ValidEnd over k's WAL of ns from `from`.
func validEnd(t *testing.T, k *Keeper, ns uint64, from LSN) LSN {
	t.Helper()
	w, err := k.Export(context.Background(), ns, from, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Body.Close()
	end, err := ValidEnd(w, from)
	if err != nil {
		t.Fatal(err)
	}
	return end
}
