package wake

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/neonproxy/neonproxy/pagestore"
	"github.com/neonproxy/neonproxy/walkeeper"
)

// Port is the port number of every compute. Computes never listen on TCP;
// the number only names the unix socket file (.s.PGSQL.5432).
const Port = 5432

// maxSocketPath is the longest unix socket path PostgreSQL accepts
// (sizeof(sun_path) - 1).
const maxSocketPath = 107

// hbaConf is the only client authentication a compute accepts: local (unix
// socket) connections, whose directory only neonproxy can reach. The proxy
// authenticates clients itself against pg_authid.
const hbaConf = `# Written by neonproxy: computes accept only unix-socket connections.
# TYPE  DATABASE        USER            METHOD
local   all             all             trust
local   replication     all             trust
`

// DriverOptions configure a PostgresDriver.
type DriverOptions struct {
	// DataDir is the root; branch data lives in
	// <DataDir>/branches/<name>/pgdata, its log in
	// <DataDir>/branches/<name>/postgres.log.
	DataDir string
	// BinDir holds the PostgreSQL 15 binaries (default
	// /usr/lib/postgresql/15/bin).
	BinDir string
	// OSUser runs the computes when neonproxy runs as root (default
	// "postgres"). Ignored otherwise: computes run as the current user.
	OSUser string
	// SharedBuffers is PostgreSQL's shared_buffers (default "16MB").
	SharedBuffers string
	// MaxConnections is PostgreSQL's max_connections (default 100).
	MaxConnections int
	// SharedPreloadLibraries is PostgreSQL's shared_preload_libraries
	// ("": none), for extensions that must be loaded at start
	// (pg_stat_statements, auto_explain, ...).
	SharedPreloadLibraries string
	// NoSync skips fsync in initdb and of the local state files (tests only).
	NoSync bool
	// Store holds every branch's data (required): starts materialize from
	// it, clean stops ingest into it.
	Store pagestore.Service
	// CacheBytes is the disk budget of local data directories (0: no
	// limit); beyond it the least recently used stopped branches' copies
	// are evicted.
	CacheBytes int64
	// Keepers are the WAL keepers every compute streams to as a
	// synchronous standby (none: commits are then durable only in the
	// local directory until the next clean stop). They are known to the
	// computes as wk1, wk2, … in this order.
	Keepers []walkeeper.Service
	// KeeperQuorum is how many keepers must have flushed a commit before
	// it is acknowledged (default 1).
	KeeperQuorum int
	// KeeperFrontDoor, when set, is this node's front door (host:port as
	// the keepers reach it): keepers stream through it (TLS, SCRAM with
	// walkeeper.token) instead of the compute's unix socket, so they can
	// run on other machines.
	KeeperFrontDoor string
	// SpareFiles is how many empty files to keep made ahead of time for
	// cold starts (0: none; each file of a materialized directory is then
	// created on the start's critical path).
	SpareFiles int
	// LocalCOW is whether a branch that reads just its parent's image
	// starts on an overlay over one shared template of that image (see
	// overlay.go): "auto" or "" when this host can mount overlayfs, "off"
	// never.
	LocalCOW string
	Logger   *zap.Logger
}

// PostgresDriver runs stock PostgreSQL 15 computes from local data
// directories.
type PostgresDriver struct {
	o       DriverOptions
	dataDir string // absolute
	log     *zap.Logger

	asRoot bool   // computes run as another user
	uid    uint32 // compute user (when asRoot)
	gid    uint32
	groups []uint32

	store   pagestore.Service
	locks   branchLocks
	spares  *spares    // nil without DriverOptions.SpareFiles
	ov      *overlays  // nil: compute.local_cow off or unavailable
	keepers *keeperSet // nil: no WAL keepers
	// streams are the keeper streams of running computes.
	streams keeperStreams

	// mu guards the background cache check (evictSoon): one runs at a
	// time, and requests while it runs coalesce into one more.
	mu struct {
		sync.Mutex
		evicting, evictAgain bool
		// sizes are the disk usage of stored local directories, by
		// branch, valid while the branch's state is the one recorded: a
		// directory does not change between a store and the next start,
		// and walking every directory after every stop (the eviction
		// check) cost seconds of CPU with hundreds of stopped branches.
		sizes map[string]sizedState
	}
	evictWG sync.WaitGroup
}

var (
	_ Driver    = (*PostgresDriver)(nil)
	_ LogTailer = (*PostgresDriver)(nil)
)

// NewPostgresDriver checks the PostgreSQL installation and the data
// directory and returns a driver.
func NewPostgresDriver(o DriverOptions) (*PostgresDriver, error) {
	if o.DataDir == "" {
		return nil, errors.New("wake: DataDir is required")
	}
	if o.Store == nil {
		return nil, errors.New("wake: Store is required")
	}
	if o.BinDir == "" {
		o.BinDir = "/usr/lib/postgresql/15/bin"
	}
	if o.OSUser == "" {
		o.OSUser = "postgres"
	}
	if o.SharedBuffers == "" {
		o.SharedBuffers = "16MB"
	}
	if o.MaxConnections <= 0 {
		o.MaxConnections = 100
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	abs, err := filepath.Abs(o.DataDir)
	if err != nil {
		return nil, fmt.Errorf("wake: data dir: %w", err)
	}
	if o.KeeperQuorum == 0 {
		o.KeeperQuorum = 1
	}
	keepers, err := newKeeperSet(o.Keepers, o.KeeperQuorum, o.Logger)
	if err != nil {
		return nil, err
	}
	d := &PostgresDriver{o: o, dataDir: abs, log: o.Logger, store: o.Store, keepers: keepers}

	if fi, err := os.Stat(filepath.Join(o.BinDir, "postgres")); err != nil || fi.IsDir() {
		return nil, fmt.Errorf("wake: PostgreSQL 15 not found: %s/postgres is missing (set compute.postgres_bin_dir; `make run` installs postgresql-15)", o.BinDir)
	}

	if os.Geteuid() == 0 {
		u, err := user.Lookup(o.OSUser)
		if err != nil {
			return nil, fmt.Errorf("wake: neonproxy runs as root and PostgreSQL refuses root, but compute user %q does not exist: %w", o.OSUser, err)
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("wake: compute user %q has a non-numeric uid/gid", o.OSUser)
		}
		if uid == 0 {
			return nil, fmt.Errorf("wake: compute user %q is root; PostgreSQL refuses to run as root", o.OSUser)
		}
		d.asRoot, d.uid, d.gid = true, uint32(uid), uint32(gid)
		d.groups = []uint32{uint32(gid)}
		if ids, err := u.GroupIds(); err == nil {
			for _, s := range ids {
				if g, err := strconv.ParseUint(s, 10, 32); err == nil && !slices.Contains(d.groups, uint32(g)) {
					d.groups = append(d.groups, uint32(g))
				}
			}
		}
	}

	if _, err := os.Stat(abs); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(abs, 0o711); err != nil {
			return nil, fmt.Errorf("wake: create data dir: %w", err)
		}
		if err := os.Chmod(abs, 0o711); err != nil {
			return nil, fmt.Errorf("wake: data dir: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("wake: data dir: %w", err)
	}
	if d.asRoot {
		if err := d.checkSearchable(abs); err != nil {
			return nil, err
		}
	}
	for _, sub := range []string{"branches", "run", "spare"} {
		p := filepath.Join(abs, sub)
		if err := os.Mkdir(p, 0o711); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("wake: %w", err)
		}
		if err := os.Chmod(p, 0o711); err != nil {
			return nil, fmt.Errorf("wake: %w", err)
		}
	}
	if o.SpareFiles > 0 {
		if d.spares, err = newSpares(filepath.Join(abs, "spare"), o.SpareFiles, d.owner(), d.log); err != nil {
			return nil, fmt.Errorf("wake: %w", err)
		}
	}
	switch o.LocalCOW {
	case "", "auto":
		if d.ov, err = d.newOverlays(); err != nil {
			d.ov = nil
			d.log.Info("compute.local_cow: overlayfs is not available here, so every new branch materializes its whole data directory",
				zap.Error(err))
		}
	case "off":
	default:
		return nil, fmt.Errorf("wake: compute.local_cow %q: want auto or off", o.LocalCOW)
	}
	return d, nil
}

// Close stops the driver's background work (keeper stream supervision,
// the spare-file filler). The computes are the Manager's to stop.
func (d *PostgresDriver) Close() {
	d.streams.stopAll()
	d.evictWG.Wait()
	if d.ov != nil {
		d.unmountAll()
	}
	if d.spares != nil {
		d.spares.close()
	}
}

// owner is who a compute's files must belong to.
func (d *PostgresDriver) owner() pagestore.Owner {
	if d.asRoot {
		return pagestore.Owner{UID: int(d.uid), GID: int(d.gid)}
	}
	return pagestore.Owner{UID: -1, GID: -1}
}

// checkSearchable verifies that the compute user can traverse dir and every
// directory above it.
func (d *PostgresDriver) checkSearchable(dir string) error {
	for p := dir; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("wake: data dir: %w", err)
		}
		if !d.searchable(fi) {
			return fmt.Errorf("wake: data_dir %s is not usable: directory %s (mode %04o) is not searchable by the compute user %q (uid %d), "+
				"which PostgreSQL runs as because neonproxy runs as root; choose a data_dir under a world-searchable directory (e.g. /var/lib/neonproxy) "+
				"or allow traversal of %s (chmod o+x)", dir, p, fi.Mode().Perm(), d.o.OSUser, d.uid, p)
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

func (d *PostgresDriver) searchable(fi fs.FileInfo) bool {
	perm := fi.Mode().Perm()
	if perm&0o001 != 0 {
		return true
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return false
	}
	if st.Uid == d.uid {
		return perm&0o100 != 0
	}
	if slices.Contains(d.groups, st.Gid) {
		return perm&0o010 != 0
	}
	return false
}

// DataDir returns the absolute root directory of the driver.
func (d *PostgresDriver) DataDir() string { return d.dataDir }

func (d *PostgresDriver) branchDir(b string) string { return filepath.Join(d.dataDir, "branches", b) }
func (d *PostgresDriver) pgdata(b string) string    { return filepath.Join(d.branchDir(b), "pgdata") }
func (d *PostgresDriver) logPath(b string) string {
	return filepath.Join(d.branchDir(b), "postgres.log")
}

// SocketDir is the directory of branch's unix socket: <DataDir>/run/<name>,
// or a short directory under os.TempDir() when that path would exceed the
// unix socket path limit.
func (d *PostgresDriver) SocketDir(branch string) string {
	dir := filepath.Join(d.dataDir, "run", branch)
	if len(dir)+len("/.s.PGSQL.")+len(strconv.Itoa(Port)) <= maxSocketPath {
		return dir
	}
	sum := sha256.Sum256([]byte(d.dataDir + branch))
	return filepath.Join(os.TempDir(), "npx-"+hex.EncodeToString(sum[:])[:12])
}

func validBranch(b string) error {
	if b == "" || b == "." || b == ".." || strings.ContainsAny(b, "/\\\x00") || len(b) > 63 {
		return fmt.Errorf("wake: invalid branch name %q", b)
	}
	return nil
}

// Exists reports whether branch has a timeline with data in the store.
func (d *PostgresDriver) Exists(ctx context.Context, branch string) (bool, error) {
	if validBranch(branch) != nil {
		return false, nil
	}
	tl, ok, err := d.timeline(ctx, branch)
	return ok && tl.Head() != 0, err
}

// chown gives path to the compute user (no-op unless running as root).
func (d *PostgresDriver) chown(path string) error {
	if !d.asRoot {
		return nil
	}
	return os.Lchown(path, int(d.uid), int(d.gid))
}

// mkdirOwned creates dir (if needed) with mode perm, owned by the compute user.
func (d *PostgresDriver) mkdirOwned(dir string, perm fs.FileMode) error {
	if err := os.Mkdir(dir, perm); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	if err := os.Chmod(dir, perm); err != nil {
		return err
	}
	return d.chown(dir)
}

// command prepares a PostgreSQL binary to run as the compute user in its
// own process group.
func (d *PostgresDriver) command(ctx context.Context, dir, bin string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(d.o.BinDir, bin), args...)
	cmd.Dir = dir
	env := make([]string, 0, len(os.Environ())+2)
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_") || strings.HasPrefix(kv, "LANG=") || strings.HasPrefix(kv, "HOME=") {
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "LANG=C.UTF-8", "HOME="+dir)
	cmd.Env = env
	attr := &syscall.SysProcAttr{Setpgid: true}
	if d.asRoot {
		attr.Credential = &syscall.Credential{Uid: d.uid, Gid: d.gid, Groups: d.groups}
	}
	cmd.SysProcAttr = attr
	return cmd
}

// run runs a PostgreSQL tool to completion (killing its whole process
// group when ctx ends) and returns its combined output.
func (d *PostgresDriver) run(ctx context.Context, dir, bin string, args ...string) ([]byte, error) {
	cmd := d.command(ctx, dir, bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if ctx.Err() != nil && err != nil {
		err = fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return out.Bytes(), err
}

func (d *PostgresDriver) writeHBA(pgdata string) error {
	p := filepath.Join(pgdata, "pg_hba.conf")
	if err := os.WriteFile(p, []byte(hbaConf), 0o600); err != nil {
		return fmt.Errorf("write pg_hba.conf: %w", err)
	}
	if err := os.Chmod(p, 0o600); err != nil {
		return err
	}
	return d.chown(p)
}

// Bootstrap runs initdb for a root branch whose superuser "postgres" gets
// password (stored as a SCRAM-SHA-256 verifier; empty: no password).
func (d *PostgresDriver) Bootstrap(ctx context.Context, branch, password string) (err error) {
	if err := validBranch(branch); err != nil {
		return err
	}
	if exists, err := d.Exists(ctx, branch); err != nil || exists {
		if err != nil {
			return fmt.Errorf("wake: bootstrap %s: %w", branch, err)
		}
		return fmt.Errorf("wake: branch %s already has data", branch)
	}
	t0 := time.Now()
	bdir := d.branchDir(branch)
	if err := d.removeBranchDir(branch); err != nil { // leftovers of a failed attempt
		return fmt.Errorf("wake: bootstrap %s: %w", branch, err)
	}
	if err := d.mkdirOwned(bdir, 0o700); err != nil {
		return fmt.Errorf("wake: bootstrap %s: %w", branch, err)
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(bdir)
		}
	}()
	pgdata := d.pgdata(branch)
	args := []string{"-D", pgdata, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-instructions"}
	if password != "" {
		pw := filepath.Join(bdir, ".pwfile")
		if err := os.WriteFile(pw, []byte(password+"\n"), 0o600); err != nil {
			return fmt.Errorf("wake: bootstrap %s: %w", branch, err)
		}
		defer os.Remove(pw)
		if err := d.chown(pw); err != nil {
			return fmt.Errorf("wake: bootstrap %s: %w", branch, err)
		}
		args = append(args, "--pwfile="+pw)
	}
	if d.o.NoSync {
		args = append(args, "-N")
	}
	out, err := d.run(ctx, bdir, "initdb", args...)
	if err != nil {
		return fmt.Errorf("wake: initdb for branch %s failed: %w\n%s", branch, err, tailLines(out, 15))
	}
	if err := d.writeHBA(pgdata); err != nil {
		return fmt.Errorf("wake: bootstrap %s: %w", branch, err)
	}
	tInitdb := time.Since(t0)
	// initdb ends with a clean shutdown: its directory is the first image.
	l := d.locks.get(branch)
	l.Lock()
	defer l.Unlock()
	if err := d.dropOrphan(ctx, branch); err != nil {
		return fmt.Errorf("wake: bootstrap %s: %w", branch, err)
	}
	tl, err := d.store.CreateTimelineWith(ctx, branch, 0, pagestore.CreateOptions{})
	if err != nil {
		return fmt.Errorf("wake: bootstrap %s: %w", branch, err)
	}
	if err := d.ingest(ctx, branch, tl.ID); err != nil {
		_ = d.store.DropTimeline(context.Background(), tl.ID)
		return fmt.Errorf("wake: bootstrap %s: %w", branch, err)
	}
	d.log.Info("branch bootstrapped", zap.String("branch", branch), zap.Uint64("timeline", uint64(tl.ID)),
		zap.Duration("initdb", tInitdb), zap.Duration("took", time.Since(t0)))
	return nil
}

// Clone creates branch as a new timeline whose parent is parent's, at the
// parent's newest stored image: O(1), nothing is copied. The child's data
// directory is materialized at its first start.
func (d *PostgresDriver) Clone(ctx context.Context, parent, branch string, point Point) error {
	at := point.LSN
	if err := validBranch(parent); err != nil {
		return err
	}
	if err := validBranch(branch); err != nil {
		return err
	}
	ptl, ok, err := d.timeline(ctx, parent)
	if err != nil {
		return fmt.Errorf("wake: create %s: %w", branch, err)
	}
	if !ok || ptl.Head() == 0 {
		return fmt.Errorf("wake: parent branch %s has no data", parent)
	}
	if !point.Time.IsZero() || at != 0 {
		if d.keepers == nil {
			return errors.New("wake: branching at an LSN or a time needs the WAL keeper")
		}
		v, err := d.keepers.durable(ctx, uint64(ptl.ID))
		if err != nil {
			return fmt.Errorf("wake: create %s: %w", branch, err)
		}
		start, flush := pagestore.LSN(v.info.Start), pagestore.LSN(v.info.Flush)
		if !point.Time.IsZero() {
			if err := pointInTimeAt(ptl, point.Time, start); err != nil {
				return err
			}
		} else {
			if err := pointInTime(ptl, pagestore.LSN(at), start, flush); err != nil {
				return err
			}
			if pagestore.LSN(at) >= flush && ptl.Head() < pagestore.LSN(at) {
				at = 0 // the newest durable commit: replay to the end
			}
		}
	}
	l := d.locks.get(branch)
	l.Lock()
	defer l.Unlock()
	if exists, err := d.Exists(ctx, branch); err != nil {
		return fmt.Errorf("wake: create %s: %w", branch, err)
	} else if exists {
		// The caller checked the registry: a timeline of this name that
		// no branch owns is a leftover of a creation that crashed.
		if err := d.dropOrphan(ctx, branch); err != nil {
			return fmt.Errorf("wake: create %s: %w", branch, err)
		}
	}
	// A leftover local directory of an earlier branch of this name would
	// otherwise be mistaken for this one's.
	if err := d.removeBranchDir(branch); err != nil {
		return fmt.Errorf("wake: create %s: %w", branch, err)
	}
	tl, err := d.store.CreateTimelineWith(ctx, branch, ptl.ID, pagestore.CreateOptions{At: pagestore.LSN(at), AtTime: point.Time})
	if err != nil {
		return fmt.Errorf("wake: create %s from %s: %w", branch, parent, err)
	}
	// A running (or crashed) parent has durable commits after its image:
	// the child starts from the image plus that WAL, replayed at its first
	// start, so it sees every commit acknowledged before it was created.
	if d.keepers != nil && (at == 0 || tl.Target != 0) {
		// Latest, or replay up to an LSN or a time: the WAL after the image.
		end, err := d.keepers.branch(ctx, uint64(ptl.ID), uint64(tl.ID), tl.ParentLSN, startsAtHead(ptl, tl))
		if err != nil {
			_ = d.store.DropTimeline(context.WithoutCancel(ctx), tl.ID)
			return fmt.Errorf("wake: create %s from %s: %w", branch, parent, err)
		}
		if end > 0 {
			d.log.Info("branch starts at the parent's latest durable WAL", zap.String("parent", parent),
				zap.String("branch", branch), zap.Stringer("image", ptl.Head()), zap.Stringer("lsn", pagestore.LSN(end)))
		}
	}
	d.log.Debug("timeline created", zap.String("parent", parent), zap.String("branch", branch),
		zap.Uint64("timeline", uint64(tl.ID)), zap.Stringer("parent_lsn", tl.ParentLSN))
	return nil
}

// Destroy drops branch's timeline from the store (freeing what only it
// holds) and removes its local directory and socket directory.
func (d *PostgresDriver) Destroy(ctx context.Context, branch string) error {
	if err := validBranch(branch); err != nil {
		return err
	}
	l := d.locks.get(branch)
	l.Lock()
	defer l.Unlock()
	defer d.locks.forget(branch)
	for {
		tl, ok, err := d.timeline(ctx, branch)
		if err != nil {
			return fmt.Errorf("wake: destroy %s: %w", branch, err)
		}
		if !ok {
			break
		}
		if err := d.dropTimeline(ctx, tl); err != nil {
			return fmt.Errorf("wake: destroy %s: %w", branch, err)
		}
		if tl.Parent != 0 {
			// A reset parent's old timeline may have waited for this
			// child to go.
			if ptl, err := d.store.Timeline(ctx, tl.Parent); err == nil {
				d.dropUnreferenced(ctx, ptl)
			}
		}
	}
	if err := d.removeBranchDir(branch); err != nil {
		return fmt.Errorf("wake: destroy %s: %w", branch, err)
	}
	if err := os.RemoveAll(d.SocketDir(branch)); err != nil {
		return fmt.Errorf("wake: destroy %s: %w", branch, err)
	}
	return nil
}

// LogTail returns the last n lines of branch's postgres.log.
func (d *PostgresDriver) LogTail(branch string, n int) string {
	if validBranch(branch) != nil {
		return ""
	}
	return fileTail(d.logPath(branch), 0, n)
}

// fileTail returns the last n lines of path written at or after offset.
func fileTail(path string, offset int64, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	start := max(offset, fi.Size()-64<<10, 0)
	buf := make([]byte, fi.Size()-start)
	if _, err := f.ReadAt(buf, start); err != nil && !errors.Is(err, io.EOF) {
		return ""
	}
	return tailLines(buf, n)
}

func tailLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Start launches the postmaster of branch and returns once postmaster.pid
// says "ready" (accepting connections).
func (d *PostgresDriver) Start(ctx context.Context, branch string, generation uint64) (Process, error) {
	if err := validBranch(branch); err != nil {
		return nil, err
	}
	t0 := time.Now()
	l := d.locks.get(branch)
	l.Lock()
	defer l.Unlock()
	materialized, err := d.prepare(ctx, branch)
	if err != nil {
		return nil, err
	}
	tPrepare := time.Since(t0)
	st, _ := d.readState(branch)
	st.Unstored, st.UsedAt = true, time.Now().UTC()
	if d.keepers != nil {
		// A generation above every earlier start's fences off what an
		// earlier compute of the branch left in the keepers.
		if st.Gen, err = d.nextGeneration(ctx, uint64(st.Timeline)); err != nil {
			return nil, fmt.Errorf("wake: start %s: %w", branch, err)
		}
	}
	if err := d.writeState(branch, st); err != nil {
		return nil, fmt.Errorf("wake: start %s: %w", branch, err)
	}
	pgdata := d.pgdata(branch)
	sock := d.SocketDir(branch)
	if err := d.mkdirOwned(sock, 0o700); err != nil {
		return nil, fmt.Errorf("wake: socket dir for %s: %w", branch, err)
	}
	logPath := d.logPath(branch)
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("wake: open %s: %w", logPath, err)
	}
	var logStart int64
	if fi, err := logf.Stat(); err == nil {
		logStart = fi.Size()
	}
	_ = d.chown(logPath)
	// A postmaster killed together with neonproxy is reparented to init
	// and stays a zombie until init reaps it; PostgreSQL's stale-lock check
	// takes a zombie for a live postmaster and refuses to start.
	for _, lock := range []string{filepath.Join(sock, ".s.PGSQL."+strconv.Itoa(Port)+".lock"), filepath.Join(pgdata, "postmaster.pid")} {
		d.removeStaleLock(branch, lock)
	}
	args := append([]string{
		"-D", pgdata,
		"-c", "listen_addresses=",
		"-c", "unix_socket_directories=" + sock,
		"-c", "unix_socket_permissions=0700",
		"-c", "port=" + strconv.Itoa(Port),
		"-c", "shared_buffers=" + d.o.SharedBuffers,
		"-c", "max_connections=" + strconv.Itoa(d.o.MaxConnections),
	}, d.keeperSettings()...)
	if d.o.SharedPreloadLibraries != "" {
		args = append(args, "-c", "shared_preload_libraries="+d.o.SharedPreloadLibraries)
	}
	cmd := d.command(context.Background(), d.branchDir(branch), "postgres", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	err = cmd.Start()
	logf.Close()
	if err != nil {
		return nil, fmt.Errorf("wake: start postgres for branch %s: %w", branch, err)
	}
	tSpawn := time.Since(t0) - tPrepare
	pid := cmd.Process.Pid
	p := &pgProcess{
		ep:           Endpoint{SocketDir: sock, Port: Port, Generation: generation},
		pid:          pid,
		materialized: materialized,
		done:         make(chan struct{}),
		signal:       func(s syscall.Signal) error { return cmd.Process.Signal(s) },
	}
	go func() {
		p.exitErr = cmd.Wait()
		// A postmaster killed with SIGKILL leaves its children behind for a
		// moment; they hold the shared memory a restart needs.
		killGroup(pid, pgdata)
		close(p.done)
	}()

	fail := func(why string) (Process, error) {
		_ = p.kill()
		return nil, fmt.Errorf("wake: postgres for branch %s %s; last lines of %s:\n%s", branch, why, logPath, fileTail(logPath, logStart, 15))
	}
	pidFile := filepath.Join(pgdata, "postmaster.pid")
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		if lines, err := readPidFile(pidFile); err == nil && len(lines) >= 8 {
			if lp, _ := strconv.Atoi(lines[0]); lp == pid && strings.TrimSpace(lines[7]) == "ready" {
				break
			}
		}
		select {
		case <-p.done:
			return fail(fmt.Sprintf("exited during start (%v)", p.exitErr))
		case <-ctx.Done():
			return fail(fmt.Sprintf("was not ready in time (%v)", ctx.Err()))
		case <-tick.C:
		}
	}
	tReady := time.Since(t0)
	// Running for clients only once the keeper streams: before that every
	// commit would wait.
	var ks *keeperStream
	if d.keepers != nil {
		// The compute's own history begins at its first checkpoint (the
		// shutdown checkpoint it started from, or the end-of-recovery one).
		genStart, err := walkeeper.CheckpointLSN(pgdata)
		if err == nil {
			ks, err = d.startKeeper(ctx, branch, uint64(st.Timeline), st.LSN, st.Gen, genStart, sock, p.done)
		}
		if err != nil {
			_ = p.kill()
			return nil, err
		}
	}
	d.streams.set(branch, ks)
	d.log.Debug("postgres started", zap.String("branch", branch), zap.Uint64("generation", generation),
		zap.Int("pid", pid), zap.Bool("materialized", materialized), zap.Duration("prepare", tPrepare),
		zap.Duration("spawn", tSpawn), zap.Duration("ready", tReady-tSpawn-tPrepare), zap.Duration("total", tReady))
	return p, nil
}

// removeStaleLock removes a PostgreSQL lock file (socket lock or
// postmaster.pid) whose process is gone or a zombie.
func (d *PostgresDriver) removeStaleLock(branch, path string) {
	pid, ok := pidFilePID(path)
	if !ok {
		return
	}
	if _, alive := procStartTime(pid); alive {
		return // alive: PostgreSQL decides
	}
	if err := os.Remove(path); err == nil {
		d.log.Info("removed the lock file of a dead postmaster", zap.String("branch", branch), zap.String("path", path), zap.Int("pid", pid))
	}
}

// readPidFile returns the lines of postmaster.pid.
func readPidFile(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return strings.Split(string(b), "\n"), nil
}

// Adopt finds a ready postmaster left running on branch's data directory
// by an earlier neonproxy process.
func (d *PostgresDriver) Adopt(ctx context.Context, branch string, generation uint64) (Process, bool, error) {
	if err := validBranch(branch); err != nil {
		return nil, false, err
	}
	pgdata := d.pgdata(branch)
	pidFile := filepath.Join(pgdata, "postmaster.pid")
	lines, err := readPidFile(pidFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	} else if err != nil {
		return nil, false, fmt.Errorf("wake: adopt %s: %w", branch, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(lines[0]))
	if err != nil || pid <= 0 {
		return nil, false, nil
	}
	start, ok := procStartTime(pid)
	if !ok || !isPostmasterOf(pid, pgdata) {
		return nil, false, nil // stale pid file; PostgreSQL handles it at start
	}
	// The earlier neonproxy may have left it frozen (the idle tier).
	signalCompute(pid, syscall.SIGCONT)
	// Wait for it to finish starting (or to go away).
	for len(lines) < 8 || strings.TrimSpace(lines[7]) != "ready" {
		if !procAlive(pid, start) {
			return nil, false, nil
		}
		select {
		case <-ctx.Done():
			return nil, false, fmt.Errorf("wake: adopt %s: postmaster %d not ready: %w", branch, pid, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
		if lines, err = readPidFile(pidFile); err != nil {
			return nil, false, nil
		}
	}
	ep := Endpoint{SocketDir: d.SocketDir(branch), Port: Port, Generation: generation}
	if len(lines) >= 5 && strings.TrimSpace(lines[4]) != "" {
		ep.SocketDir = strings.TrimSpace(lines[4])
	}
	if port, err := strconv.Atoi(strings.TrimSpace(lines[3])); err == nil && port > 0 {
		ep.Port = port
	}
	p := &pgProcess{
		ep:   ep,
		pid:  pid,
		done: make(chan struct{}),
		signal: func(s syscall.Signal) error {
			if !procAlive(pid, start) {
				return os.ErrProcessDone
			}
			return syscall.Kill(pid, s)
		},
	}
	go func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for range t.C {
			if !procAlive(pid, start) {
				killGroup(pid, pgdata) // leftover children
				close(p.done)
				return
			}
		}
	}()
	// The keeper's stream from the earlier neonproxy went with it: until a
	// new one streams, the adopted compute's commits wait.
	if st, ok := d.readState(branch); ok && d.keepers != nil {
		gen, genStart, err := d.adoptedGeneration(ctx, st, pgdata)
		var ks *keeperStream
		if err == nil {
			ks, err = d.startKeeper(ctx, branch, uint64(st.Timeline), st.LSN, gen, genStart, ep.SocketDir, p.done)
		}
		if err != nil {
			return nil, false, fmt.Errorf("wake: adopt %s: %w", branch, err)
		}
		d.streams.set(branch, ks)
	}
	d.log.Debug("postgres adopted", zap.String("branch", branch), zap.Int("pid", pid), zap.Uint64("generation", generation))
	return p, true, nil
}

// procStat returns the state and start time fields of /proc/<pid>/stat.
func procStat(pid int) (state string, start string, ok bool) {
	f := procStatFields(pid)
	if len(f) < 20 {
		return "", "", false
	}
	return f[0], f[19], true
}

// procStatFields are the fields of /proc/PID/stat after "(comm)": state,
// ppid, pgrp, … (nil when pid is gone).
func procStatFields(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

// pidFilePID is the process id on the first line of a postmaster.pid or
// socket lock file.
func pidFilePID(path string) (int, bool) {
	lines, err := readPidFile(path)
	if err != nil || len(lines) == 0 {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(lines[0]))
	return pid, err == nil && pid > 0
}

func procStartTime(pid int) (string, bool) {
	st, start, ok := procStat(pid)
	if !ok || st == "Z" || st == "X" {
		return "", false
	}
	return start, true
}

// procAlive reports whether pid is still the (non-zombie) process that
// started at start.
func procAlive(pid int, start string) bool {
	s, ok := procStartTime(pid)
	return ok && s == start
}

// isPostmasterOf reports whether pid is a postgres postmaster serving pgdata.
func isPostmasterOf(pid int, pgdata string) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || len(b) == 0 {
		return false
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	if base := filepath.Base(args[0]); base != "postgres" && base != "postmaster" {
		return false
	}
	want, err := filepath.EvalSymlinks(pgdata)
	if err != nil {
		want = pgdata
	}
	if cwd, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/cwd"); err == nil && cwd == want {
		return true
	}
	for i, a := range args {
		if a == "-D" && i+1 < len(args) && (args[i+1] == pgdata || args[i+1] == want) {
			return true
		}
	}
	return false
}

// pgProcess is a running postmaster, our child or adopted.
type pgProcess struct {
	ep           Endpoint
	pid          int
	done         chan struct{}
	exitErr      error // set before done is closed (children only)
	signal       func(syscall.Signal) error
	materialized bool // its start materialized the data directory

	mu struct {
		sync.Mutex
		// frozen are the processes outside the postmaster's group that
		// Freeze stopped, for Thaw to resume without a /proc scan.
		frozen []int
	}
}

var (
	_ Freezer      = (*pgProcess)(nil)
	_ Materializer = (*pgProcess)(nil)
)

func (p *pgProcess) Endpoint() Endpoint    { return p.ep }
func (p *pgProcess) PID() int              { return p.pid }
func (p *pgProcess) Done() <-chan struct{} { return p.done }
func (p *pgProcess) Materialized() bool    { return p.materialized }

// Freeze stops every process of the compute with SIGSTOP: no CPU, memory
// and sockets kept. PostgreSQL gives each child its own session (setsid),
// so the postmaster's process group holds only the postmaster: the others
// (backends, walsenders, background workers) are found as its children,
// after it has stopped and can fork no more. Everything stops, so no
// process can wait on a lock a frozen one holds. The walsenders' timeouts
// count from the last reply they read; the keepers report their position
// every few seconds whether asked or not (walkeeper's statusInterval), so a
// thawed walsender reads a fresh report before it checks its timeout.
func (p *pgProcess) Freeze() error {
	if err := syscall.Kill(-p.pid, syscall.SIGSTOP); err != nil {
		return fmt.Errorf("wake: freeze postgres %d: %w", p.pid, err)
	}
	// SIGSTOP takes effect asynchronously: until the postmaster has
	// stopped it may fork once more, so list again until nothing is new.
	var stopped []int
	seen := map[int]bool{}
	for range 5 {
		fresh := 0
		for _, pid := range childrenOf(p.pid) {
			if seen[pid] {
				continue
			}
			seen[pid] = true
			fresh++
			if syscall.Kill(pid, syscall.SIGSTOP) == nil {
				stopped = append(stopped, pid)
			}
		}
		if fresh == 0 {
			break
		}
	}
	p.mu.Lock()
	p.mu.frozen = stopped
	p.mu.Unlock()
	return nil
}

// Thaw resumes a frozen compute: the processes Freeze stopped, then the
// postmaster's group. A stopped process cannot exit unless killed, so the
// pids are still theirs unless someone killed them meanwhile; a SIGCONT to
// a pid reused since is harmless.
func (p *pgProcess) Thaw() error {
	p.mu.Lock()
	stopped := p.mu.frozen
	p.mu.frozen = nil
	p.mu.Unlock()
	for _, pid := range stopped {
		_ = syscall.Kill(pid, syscall.SIGCONT)
	}
	if err := syscall.Kill(-p.pid, syscall.SIGCONT); err != nil {
		return fmt.Errorf("wake: thaw postgres %d: %w", p.pid, err)
	}
	return nil
}

// Stop performs a fast shutdown, escalating to immediate shutdown and
// SIGKILL when ctx ends first.
func (p *pgProcess) Stop(ctx context.Context) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	if err := p.signal(syscall.SIGINT); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("wake: stop postgres %d: %w", p.pid, err)
	}
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
	}
	if err := p.kill(); err != nil {
		return err
	}
	return fmt.Errorf("wake: fast shutdown of postgres %d did not finish (%w); shut down immediately", p.pid, ctx.Err())
}

// kill shuts the postmaster down immediately (SIGQUIT), then kills its
// process group, and waits for it to exit.
func (p *pgProcess) kill() error {
	_ = p.signal(syscall.SIGQUIT)
	t := time.NewTimer(2 * time.Second)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
	}
	_ = syscall.Kill(-p.pid, syscall.SIGKILL)
	_ = p.signal(syscall.SIGKILL)
	t.Reset(5 * time.Second)
	select {
	case <-p.done:
		return nil
	case <-t.C:
		return fmt.Errorf("wake: postgres %d did not exit after SIGKILL", p.pid)
	}
}

// killGroup SIGKILLs what is left of a postmaster (pgid) that exited or
// must go, and waits (up to 10 s) until none of it is alive: its process
// group, and the processes whose working directory is its data directory.
// The second matters: PostgreSQL puts each backend in a process group of
// its own (setsid), so a postmaster killed with SIGKILL leaves its
// backends outside its group, and until they notice and exit they keep the
// shared memory segment attached and PostgreSQL refuses to start again on
// that directory ("pre-existing shared memory block is still in use").
// Zombies count as gone.
func killGroup(pgid int, pgdata string) {
	if r, err := filepath.EvalSymlinks(pgdata); err == nil {
		pgdata = r // /proc/PID/cwd is the resolved path
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := leftovers(pgid, pgdata)
		if len(left) == 0 || time.Now().After(deadline) {
			return
		}
		for _, pid := range left {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// signalCompute sends sig to a running postmaster's group and to its
// children.
func signalCompute(postmaster int, sig syscall.Signal) {
	_ = syscall.Kill(-postmaster, sig)
	for _, pid := range childrenOf(postmaster) {
		_ = syscall.Kill(pid, sig)
	}
}

// childrenOf lists the processes whose parent is ppid. PostgreSQL forks
// every backend, walsender and background worker from the postmaster, so
// while it runs these are all of the compute; and unlike the working
// directory, the parent is not shared with, say, an operator's shell in the
// data directory. The kernel's list of the (single-threaded) postmaster's
// children is one read; without it (CONFIG_PROC_CHILDREN), /proc is scanned.
func childrenOf(ppid int) []int {
	id := strconv.Itoa(ppid)
	if b, err := os.ReadFile("/proc/" + id + "/task/" + id + "/children"); err == nil {
		var out []int
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				out = append(out, pid)
			}
		}
		return out
	}
	return liveProcs(func(_ int, stat []string) bool { return stat[1] == id })
}

// liveProcs scans /proc for the live (non-zombie) processes that match,
// given the fields of /proc/PID/stat after the command name (state, ppid,
// pgrp, ...).
func liveProcs(match func(pid int, stat []string) bool) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f := procStatFields(pid); len(f) >= 3 && f[0] != "Z" && f[0] != "X" && match(pid, f) {
			out = append(out, pid)
		}
	}
	return out
}

// leftovers lists the live (non-zombie) processes of group pgid and those
// whose working directory is pgdata.
func leftovers(pgid int, pgdata string) []int {
	group := strconv.Itoa(pgid)
	return liveProcs(func(pid int, stat []string) bool {
		if stat[2] == group {
			return true
		}
		cwd, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/cwd")
		return err == nil && pgdata != "" && cwd == pgdata
	})
}
