package wake

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/neonproxy/neonproxy/pagestore"
)

// Local copy-on-write data directories (compute.local_cow).
//
// A branch's first start, before it has an image of its own, reads
// exactly its parent's image at the branch point. Materializing it writes
// the whole data directory for every child (134 MB for a 100 MB pgbench
// parent), which bounds how many new branches a host can start. With
// overlayfs that image is materialized once, as a template nobody writes
// to, and each such child's data directory is an overlay mount over it:
// PostgreSQL's writes land in the child's own upper directory (a file is
// copied up whole the first time it is opened for writing, and PostgreSQL
// opens a table's files read-write even to read it), so a child that
// creates a table and writes a few rows writes ~5 MB, not the whole
// directory; one that reads a big table copies that table.
//
// The child's data directory stays an overlay until it is dropped
// (evicted, offloaded, reset, deleted); its later starts use it as any
// local directory. localState.Lower names the template; a template lives
// while a branch's state names it. neonproxy unmounts its overlays when it
// closes and mounts them again at the next start.

// overlays is the driver's template set.
type overlays struct {
	dir string // <data_dir>/templates
	// boot names this boot in template names: a template is materialized
	// without fsync, so after a reboot its files are not trusted and new
	// starts use a new one. (A branch whose overlay holds the only copy of
	// its changes keeps its old template, as a plain directory would be
	// kept in that case.)
	boot   string
	builds singleflight.Group
	mu     struct {
		sync.Mutex
		refs map[string]int // template dir → branches whose state names it
	}
}

// probeOverlay mounts a throwaway overlay under dir, to learn whether this
// host lets neonproxy mount one (overlayfs in the kernel, CAP_SYS_ADMIN).
func probeOverlay(dir string) error {
	p := filepath.Join(dir, ".probe")
	_ = unmountIfMounted(filepath.Join(p, "m"))
	if err := os.RemoveAll(p); err != nil {
		return err
	}
	defer os.RemoveAll(p)
	for _, s := range []string{"l", "u", "w", "m"} {
		if err := os.MkdirAll(filepath.Join(p, s), 0o700); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(p, "l", "f"), []byte("lower"), 0o600); err != nil {
		return err
	}
	if err := mountOverlay(filepath.Join(p, "l"), filepath.Join(p, "u"), filepath.Join(p, "w"), filepath.Join(p, "m")); err != nil {
		return err
	}
	werr := os.WriteFile(filepath.Join(p, "m", "f"), []byte("upper"), 0o600)
	uerr := syscall.Unmount(filepath.Join(p, "m"), 0)
	if werr != nil {
		return werr
	}
	if uerr != nil {
		return fmt.Errorf("unmount: %w", uerr)
	}
	if b, err := os.ReadFile(filepath.Join(p, "l", "f")); err != nil || string(b) != "lower" {
		return errors.New("a write through the overlay reached its lower directory")
	}
	return nil
}

func mountOverlay(lower, upper, work, at string) error {
	opts := "lowerdir=" + lower + ",upperdir=" + upper + ",workdir=" + work
	if err := syscall.Mount("overlay", at, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount overlay on %s: %w", at, err)
	}
	return nil
}

// isMountpoint reports whether p is mounted on (another device than its
// parent directory).
func isMountpoint(p string) bool {
	var a, b syscall.Stat_t
	if syscall.Lstat(p, &a) != nil || syscall.Lstat(filepath.Dir(p), &b) != nil {
		return false
	}
	return a.Dev != b.Dev
}

// unmountIfMounted unmounts p, every layer if mounts were stacked on it.
// A mount still busy (a crashed compute's last backends exiting) is
// detached: it goes once they have.
func unmountIfMounted(p string) error {
	for i := 0; isMountpoint(p); i++ {
		err := syscall.Unmount(p, 0)
		if errors.Is(err, syscall.EBUSY) {
			err = syscall.Unmount(p, syscall.MNT_DETACH)
		}
		if err != nil {
			return fmt.Errorf("unmount %s: %w", p, err)
		}
		if i == 8 {
			return fmt.Errorf("unmount %s: still mounted after %d unmounts", p, i+1)
		}
	}
	return nil
}

// newOverlays sets up the template directory: it counts the templates the
// branches' states name, unmounts overlays left without a state (an
// eviction that crashed), and removes templates nobody names.
func (d *PostgresDriver) newOverlays() (*overlays, error) {
	ov := &overlays{dir: filepath.Join(d.dataDir, "templates"), boot: "boot"}
	if id := strings.ReplaceAll(bootID(), "-", ""); len(id) >= 8 {
		ov.boot = id[:8]
	}
	ov.mu.refs = map[string]int{}
	if err := os.MkdirAll(ov.dir, 0o711); err != nil {
		return nil, err
	}
	if err := probeOverlay(ov.dir); err != nil {
		return nil, err
	}
	ents, _ := os.ReadDir(filepath.Join(d.dataDir, "branches"))
	for _, e := range ents {
		st, ok := d.readState(e.Name())
		if ok && st.Lower != "" {
			ov.mu.refs[st.Lower]++
			continue
		}
		if err := unmountIfMounted(d.pgdata(e.Name())); err != nil {
			return nil, err
		}
	}
	tpls, err := os.ReadDir(ov.dir)
	if err != nil {
		return nil, err
	}
	for _, e := range tpls {
		p := filepath.Join(ov.dir, e.Name())
		if ov.mu.refs[strings.TrimSuffix(p, ".manifest")] == 0 {
			if err := os.RemoveAll(p); err != nil {
				return nil, err
			}
		}
	}
	return ov, nil
}

// overlaySource says which image a branch's first start reads, when that
// image is its parent's (no image of its own, no point in time to replay
// to): then its data directory can be an overlay over a template of it.
func overlaySource(tl pagestore.Timeline) (pagestore.TimelineID, pagestore.LSN, bool) {
	if tl.Parent == 0 || len(tl.Images) > 0 || tl.Target != 0 || !tl.TargetTime.IsZero() || tl.ParentLSN == 0 {
		return 0, 0, false
	}
	return tl.Parent, tl.ParentLSN, true
}

// template returns the template of timeline src's image at lsn, holding a
// reference to it; one materialization serves every concurrent caller.
func (d *PostgresDriver) template(ctx context.Context, src pagestore.TimelineID, lsn pagestore.LSN) (string, error) {
	ov := d.ov
	dir := filepath.Join(ov.dir, fmt.Sprintf("%d-%016x-%s", src, uint64(lsn), ov.boot))
	ov.hold(dir)
	if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); err == nil {
		return dir, nil
	}
	_, err, _ := ov.builds.Do(dir, func() (any, error) {
		if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); err == nil {
			return nil, nil
		}
		tmp := dir + ".new"
		if err := os.RemoveAll(tmp); err != nil {
			return nil, err
		}
		mo := pagestore.MaterializeOptions{Owner: d.owner(), Manifest: dir + ".manifest"}
		if d.spares != nil {
			mo.Files = d.spares
			defer d.spares.use()()
		}
		ms, err := d.store.Materialize(ctx, src, lsn, tmp, mo)
		if err != nil {
			_ = os.RemoveAll(tmp)
			return nil, err
		}
		if err := os.Rename(tmp, dir); err != nil {
			return nil, err
		}
		d.log.Info("template materialized", zap.Uint64("timeline", uint64(src)), zap.Stringer("lsn", lsn),
			zap.Int("files", ms.Files), zap.Int64("bytes", ms.Bytes), zap.Duration("took", ms.Duration))
		return nil, nil
	})
	if err != nil {
		ov.release(dir)
		return "", fmt.Errorf("template of timeline %d at %s: %w", src, lsn, err)
	}
	return dir, nil
}

func (ov *overlays) hold(dir string) {
	ov.mu.Lock()
	ov.mu.refs[dir]++
	ov.mu.Unlock()
}

// release drops a reference; the last one removes the template. It is
// renamed away under the lock (so a new reference builds a fresh one) and
// deleted outside it.
func (ov *overlays) release(dir string) {
	ov.mu.Lock()
	ov.mu.refs[dir]--
	last := ov.mu.refs[dir] <= 0
	var trash string
	if last {
		delete(ov.mu.refs, dir)
		trash = fmt.Sprintf("%s.trash-%d", dir, time.Now().UnixNano())
		if err := os.Rename(dir, trash); err != nil {
			trash = ""
		}
		_ = os.Remove(dir + ".manifest")
	}
	ov.mu.Unlock()
	if trash != "" {
		_ = os.RemoveAll(trash)
	}
}

// mountBranch makes branch's data directory an overlay over lower, with
// the branch's manifest copied from the template's.
func (d *PostgresDriver) mountBranch(branch, lower string, tl pagestore.TimelineID) error {
	bdir, pgdata := d.branchDir(branch), d.pgdata(branch)
	upper, work := filepath.Join(bdir, "upper"), filepath.Join(bdir, "work")
	for _, p := range []string{upper, work} {
		if err := os.RemoveAll(p); err != nil {
			return err
		}
	}
	// The merged root takes the upper root's owner and mode: PostgreSQL
	// wants its data directory its own, 0700.
	if err := d.mkdirOwned(upper, 0o700); err != nil {
		return err
	}
	if err := os.Mkdir(work, 0o700); err != nil {
		return err
	}
	if err := d.mkdirOwned(pgdata, 0o700); err != nil {
		return err
	}
	if err := pagestore.CopyManifest(lower+".manifest", d.manifestPath(branch), tl); err != nil {
		d.log.Warn("no manifest for an overlay data directory: its first store compares with the store", zap.Error(err))
		_ = os.Remove(d.manifestPath(branch))
	}
	return mountOverlay(lower, upper, work, pgdata)
}

// remount mounts a stopped overlay branch again (after neonproxy closed
// or the host rebooted). With its template gone it stays unmounted, and
// the start rebuilds it.
func (d *PostgresDriver) remount(branch string, st localState) error {
	pgdata := d.pgdata(branch)
	if isMountpoint(pgdata) {
		return nil
	}
	if _, err := os.Stat(filepath.Join(st.Lower, "PG_VERSION")); err != nil {
		return nil
	}
	bdir := d.branchDir(branch)
	if err := os.MkdirAll(pgdata, 0o700); err != nil {
		return err
	}
	// The work directory must be empty; what a crash left there is
	// overlayfs's scratch, not data.
	work := filepath.Join(bdir, "work")
	if err := os.RemoveAll(work); err != nil {
		return err
	}
	if err := os.Mkdir(work, 0o700); err != nil {
		return err
	}
	return mountOverlay(st.Lower, filepath.Join(bdir, "upper"), work, pgdata)
}

// dropLocal removes branch's local data directory, unmounting its
// overlay first and releasing its template. The state goes first: after a
// crash midway the remains are rebuilt, not trusted, and newOverlays
// unmounts an overlay left without a state.
func (d *PostgresDriver) dropLocal(branch string) error {
	st, ok := d.readState(branch)
	if err := os.Remove(d.statePath(branch)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := d.removeData(branch); err != nil {
		return err
	}
	if ok && st.Lower != "" && d.ov != nil {
		d.ov.release(st.Lower)
	}
	return nil
}

// removeData removes branch's data directory (unmounting an overlay
// first), its overlay's upper and work directories, and its manifest:
// everything but the state and the log.
func (d *PostgresDriver) removeData(branch string) error {
	pgdata := d.pgdata(branch)
	if err := unmountIfMounted(pgdata); err != nil {
		return err
	}
	bdir := d.branchDir(branch)
	for _, p := range []string{d.manifestPath(branch), pgdata, filepath.Join(bdir, "upper"), filepath.Join(bdir, "work")} {
		if err := os.RemoveAll(p); err != nil {
			return err
		}
	}
	return nil
}

// removeBranchDir removes all of branch's local directory (data, state,
// log), unmounting and releasing an overlay first.
func (d *PostgresDriver) removeBranchDir(branch string) error {
	if err := d.dropLocal(branch); err != nil {
		return err
	}
	return os.RemoveAll(d.branchDir(branch))
}

// materialize builds branch's data directory for a start: an overlay over
// the template of its parent's image, mounted at pgdata, when the branch
// reads just that image; else a plain materialization into tmp. It
// returns the template ("": plain).
func (d *PostgresDriver) materialize(ctx context.Context, branch string, tl pagestore.Timeline, tmp string, ms *pagestore.MaterializeStats) (string, error) {
	if d.ov != nil {
		if src, lsn, ok := overlaySource(tl); ok {
			lower, err := d.template(ctx, src, lsn)
			if err == nil {
				if err = d.mountBranch(branch, lower, tl.ID); err == nil {
					return lower, nil
				}
				d.ov.release(lower)
			}
			if ctx.Err() != nil {
				return "", err
			}
			d.log.Warn("overlay data directory failed; materializing a plain one", zap.String("branch", branch), zap.Error(err))
			_ = d.removeData(branch)
		}
	}
	mo := pagestore.MaterializeOptions{Owner: d.owner(), Manifest: d.manifestPath(branch)}
	if d.spares != nil {
		mo.Files = d.spares
		defer d.spares.use()()
	}
	var err error
	if *ms, err = d.store.Materialize(ctx, tl.ID, 0, tmp, mo); err != nil {
		_ = os.RemoveAll(tmp)
		return "", err
	}
	return "", nil
}

// unmountAll unmounts the overlays of stopped branches when the driver
// closes: no mount outlives neonproxy (the next start mounts them again).
func (d *PostgresDriver) unmountAll() {
	ents, _ := os.ReadDir(filepath.Join(d.dataDir, "branches"))
	for _, e := range ents {
		pgdata := d.pgdata(e.Name())
		if postmasterAlive(pgdata) {
			continue // a compute still runs on it (adopted by the next neonproxy)
		}
		if err := unmountIfMounted(pgdata); err != nil && !errors.Is(err, fs.ErrNotExist) {
			d.log.Warn("unmount a data directory overlay", zap.String("branch", e.Name()), zap.Error(err))
		}
	}
}

// postmasterAlive reports whether the postmaster.pid in pgdata names a
// live process (a crashed compute leaves the file behind).
func postmasterAlive(pgdata string) bool {
	pid, ok := pidFilePID(filepath.Join(pgdata, "postmaster.pid"))
	if !ok {
		return false
	}
	_, alive := procStartTime(pid)
	return alive
}
