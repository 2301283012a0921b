package wake

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/neonproxy/neonproxy/pagestore"
)

// localState is <branch dir>/state.json: what the local data directory
// holds relative to the store. It is written (and synced) before the
// directory changes meaning, so a crash at any point leaves a state that
// errs on the side of keeping the directory.
type localState struct {
	Timeline pagestore.TimelineID `json:"timeline"`
	// LSN is the store image the directory was materialized from or last
	// ingested as.
	LSN pagestore.LSN `json:"lsn"`
	// Unstored is set from the moment a compute starts on the directory
	// until its data is ingested after a clean stop: the directory then
	// holds changes the store does not have, so it is the branch's truth.
	Unstored bool      `json:"unstored"`
	UsedAt   time.Time `json:"used_at"` // last start or stop, for LRU eviction
	// BootID is the kernel's boot id when the state was written. Data
	// files are not fsynced when they are materialized (nor are the ones
	// PostgreSQL never rewrote), so after a reboot the directory is only
	// trusted where nothing better exists.
	BootID string `json:"boot_id,omitempty"`
	// Gen is the compute generation the WAL keepers know the running
	// compute by (see walkeeper.FollowRequest), for a later neonproxy that
	// adopts it.
	Gen uint64 `json:"gen,omitempty"`
	// Lower is the template the data directory is an overlay over
	// (compute.local_cow); "": a plain directory. Kept by every write of
	// the state until the directory is dropped.
	Lower string `json:"lower,omitempty"`
}

// Same reports whether two states are one write of the state file (each
// write has its own UsedAt).
func (s localState) Same(o localState) bool {
	return s.Timeline == o.Timeline && s.LSN == o.LSN && s.Unstored == o.Unstored && s.UsedAt.Equal(o.UsedAt) &&
		s.BootID == o.BootID && s.Gen == o.Gen && s.Lower == o.Lower
}

// bootID is this boot's id ("" where the kernel does not say).
func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// branchLocks serialises the driver's own work on one branch (start,
// store, destroy) against cache eviction, which runs for other branches.
type branchLocks struct {
	mu struct {
		sync.Mutex
		locks map[string]*sync.Mutex
	}
}

func (b *branchLocks) get(branch string) *sync.Mutex {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.mu.locks == nil {
		b.mu.locks = make(map[string]*sync.Mutex)
	}
	l, ok := b.mu.locks[branch]
	if !ok {
		l = new(sync.Mutex)
		b.mu.locks[branch] = l
	}
	return l
}

func (b *branchLocks) forget(branch string) {
	b.mu.Lock()
	delete(b.mu.locks, branch)
	b.mu.Unlock()
}

func (d *PostgresDriver) statePath(b string) string {
	return filepath.Join(d.branchDir(b), "state.json")
}
func (d *PostgresDriver) manifestPath(b string) string {
	return filepath.Join(d.branchDir(b), "manifest")
}

func (d *PostgresDriver) readState(branch string) (localState, bool) {
	var st localState
	b, err := os.ReadFile(d.statePath(branch))
	if err != nil {
		return st, false
	}
	if err := json.Unmarshal(b, &st); err != nil {
		d.log.Warn("unreadable local state; the local data directory will be rebuilt from the store unless a compute runs on it",
			zap.String("branch", branch), zap.Error(err))
		return localState{}, false
	}
	return st, true
}

// writeState replaces state.json atomically and durably.
func (d *PostgresDriver) writeState(branch string, st localState) error {
	st.BootID = bootID()
	if st.Lower == "" {
		// The directory is still the overlay it was: only dropping it
		// (which removes the state) ends that.
		if old, ok := d.readState(branch); ok {
			st.Lower = old.Lower
		}
	}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	p := d.statePath(branch)
	tmp := p + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write local state of %s: %w", branch, err)
	}
	_, err = f.Write(b)
	if err == nil && !d.o.NoSync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		return fmt.Errorf("write local state of %s: %w", branch, err)
	}
	return nil
}

// timeline returns branch's timeline: the newest live one of that name.
func (d *PostgresDriver) timeline(ctx context.Context, branch string) (pagestore.Timeline, bool, error) {
	var best pagestore.Timeline
	found := false
	tls, err := d.store.Timelines(ctx)
	if err != nil {
		return best, false, fmt.Errorf("timeline of %s: %w", branch, err)
	}
	for _, t := range tls {
		if t.Name == branch && (!found || t.ID > best.ID) {
			best, found = t, true
		}
	}
	return best, found, nil
}

// dropOrphan drops a timeline named branch that no branch owns any more
// (left by a creation that crashed before the branch was registered).
func (d *PostgresDriver) dropOrphan(ctx context.Context, branch string) error {
	for {
		t, ok, err := d.timeline(ctx, branch)
		if err != nil || !ok {
			return err
		}
		d.log.Warn("dropping a leftover pagestore timeline of an earlier, unfinished branch creation",
			zap.String("branch", branch), zap.Uint64("timeline", uint64(t.ID)))
		if err := d.store.DropTimeline(ctx, t.ID); err != nil {
			return fmt.Errorf("drop leftover timeline %d of %s: %w", t.ID, branch, err)
		}
	}
}

// controlData reads the shutdown checkpoint of a stopped data directory
// with pg_controldata.
func (d *PostgresDriver) controlData(ctx context.Context, pgdata string) (pagestore.Checkpoint, error) {
	var cp pagestore.Checkpoint
	out, err := d.run(ctx, filepath.Dir(pgdata), "pg_controldata", "-D", pgdata)
	if err != nil {
		return cp, fmt.Errorf("pg_controldata: %w\n%s", err, tailLines(out, 5))
	}
	return pagestore.ParseControlData(string(out))
}

// ingest stores the cleanly stopped data directory of branch as a new
// image of its timeline and records that the directory equals it.
func (d *PostgresDriver) ingest(ctx context.Context, branch string, tl pagestore.TimelineID) error {
	pgdata := d.pgdata(branch)
	cp, err := d.controlData(ctx, pgdata)
	if err != nil {
		return err
	}
	st, err := d.store.Ingest(ctx, tl, pgdata, cp, d.manifestPath(branch))
	if err != nil {
		return err
	}
	d.log.Info("branch data stored", zap.String("branch", branch), zap.Uint64("timeline", uint64(tl)),
		zap.Stringer("lsn", cp.LSN), zap.Int("pages_written", st.PagesWritten), zap.Int("files_written", st.FilesWritten),
		zap.Int("files_scanned", st.FilesScanned), zap.Int("files_unchanged", st.FilesSkipped),
		zap.Int64("bytes_written", st.BytesWritten), zap.Bool("manifest", st.UsedManifest), zap.Duration("took", st.Duration))
	return d.writeState(branch, localState{Timeline: tl, LSN: cp.LSN, UsedAt: time.Now().UTC()})
}

// prepare makes the local data directory of branch ready for a start:
// kept when it is current or holds unstored changes, else materialized
// from the store. It reports whether it materialized.
func (d *PostgresDriver) prepare(ctx context.Context, branch string) (bool, error) {
	tl, ok, err := d.timeline(ctx, branch)
	if err != nil {
		return false, fmt.Errorf("wake: %w", err)
	}
	if !ok || tl.Head() == 0 {
		return false, fmt.Errorf("wake: branch %s has no data", branch)
	}
	pgdata := d.pgdata(branch)
	st, hasState := d.readState(branch)
	if hasState && st.Lower != "" && d.ov != nil {
		// An overlay unmounted when neonproxy closed (or by a reboot):
		// mount it again. With its template gone it cannot be trusted.
		if err := d.remount(branch, st); err != nil {
			return false, fmt.Errorf("wake: %s: %w", branch, err)
		}
	}
	_, verErr := os.Stat(filepath.Join(pgdata, "PG_VERSION"))
	// After a reboot the files may not all have reached the disk: rebuild
	// from the store (and the keeper's WAL for unstored changes), unless
	// the directory is the only copy of its changes (no keeper).
	rebooted := hasState && st.BootID != "" && st.BootID != bootID()
	trusted := !rebooted || (st.Unstored && d.keepers == nil)
	if trusted && verErr == nil && hasState && st.Unstored && st.Timeline == tl.ID {
		// Unstored changes are the branch's truth only while no other
		// compute ran it since: on a cluster another node may have taken
		// the branch over after this one died, and stored images or
		// streamed WAL of its own.
		stale, why, err := d.staleLocal(ctx, st, tl)
		if err != nil {
			return false, fmt.Errorf("wake: %s: %w", branch, err)
		}
		if stale {
			d.log.Info("rebuilding the local data directory: the branch ran elsewhere since it was written",
				zap.String("branch", branch), zap.String("why", why))
			trusted = false
		}
	}
	if verErr == nil && hasState && trusted && st.Timeline == tl.ID && (st.Unstored || st.LSN == tl.Head()) {
		return false, nil
	}
	if rebooted && verErr == nil {
		d.log.Info("rebuilding the local data directory after a reboot (its files were not all fsynced)",
			zap.String("branch", branch), zap.Bool("unstored_changes", st.Unstored))
	}
	if verErr == nil && hasState && st.Unstored && st.Timeline != tl.ID {
		// Unstored changes of another timeline of the same name: not
		// thrown away silently, they may be the only copy of commits.
		return false, fmt.Errorf("wake: branch %s: local data directory %s holds unstored changes of timeline %d, not of the branch's timeline %d; move it away to start from the store",
			branch, pgdata, st.Timeline, tl.ID)
	}
	// No state (an eviction that crashed removes the state first), or a
	// stored but older image: rebuild from the store.
	t0 := time.Now()
	// The whole branches directory may have been cleared (it is a cache).
	if err := os.MkdirAll(filepath.Dir(d.branchDir(branch)), 0o711); err != nil {
		return false, fmt.Errorf("wake: materialize %s: %w", branch, err)
	}
	if err := d.mkdirOwned(d.branchDir(branch), 0o700); err != nil {
		return false, fmt.Errorf("wake: materialize %s: %w", branch, err)
	}
	if hasState && st.Lower != "" {
		// An overlay being rebuilt: unmount it and release its template
		// first (its state goes with it, so no later write keeps Lower).
		if err := d.dropLocal(branch); err != nil {
			return false, fmt.Errorf("wake: materialize %s: %w", branch, err)
		}
	}
	tmp := pgdata + ".new"
	if err := d.removeData(branch); err != nil {
		return false, fmt.Errorf("wake: materialize %s: %w", branch, err)
	}
	if err := os.RemoveAll(tmp); err != nil {
		return false, fmt.Errorf("wake: materialize %s: %w", branch, err)
	}
	pointInTime := (tl.Target != 0 || !tl.TargetTime.IsZero()) && len(tl.Images) == 0
	var ms pagestore.MaterializeStats
	lower, err := d.materialize(ctx, branch, tl, tmp, &ms)
	if err != nil {
		return false, fmt.Errorf("wake: materialize %s: %w", branch, err)
	}
	// undo removes what was made when a later step fails.
	undo := func() {
		if lower != "" {
			_ = d.removeData(branch)
			d.ov.release(lower)
		}
		_ = os.RemoveAll(tmp)
	}
	dst := tmp
	if lower != "" {
		dst = pgdata
	}
	replay := false
	if !pointInTime {
		replay, err = d.replayFromKeeper(ctx, branch, tl, dst)
	}
	if err != nil {
		undo()
		return false, fmt.Errorf("wake: materialize %s: %w", branch, err)
	}
	if lower == "" {
		if err := os.Rename(tmp, pgdata); err != nil {
			return false, fmt.Errorf("wake: materialize %s: %w", branch, err)
		}
	}
	if pointInTime {
		// A branch at a point in its parent's history: its first start
		// replays the parent's WAL to that point and stores the result.
		if err := d.recoverToTarget(ctx, branch, tl); err != nil {
			_ = os.RemoveAll(pgdata)
			return false, fmt.Errorf("wake: branch %s at its point in time: %w", branch, err)
		}
		if _, ok := d.readState(branch); ok {
			return true, nil // recovered and stored as the branch's first image
		}
		// No WAL after the image: the image itself is the point.
	}
	// Replayed WAL makes the directory newer than the store's image.
	if err := d.writeState(branch, localState{Timeline: tl.ID, LSN: tl.Head(), Unstored: replay, UsedAt: time.Now().UTC(), Lower: lower}); err != nil {
		undo()
		return false, err
	}
	spareLeft := -1
	if d.spares != nil {
		spareLeft = d.spares.count()
	}
	d.log.Info(LogMaterialized, zap.String("branch", branch), zap.Uint64("timeline", uint64(tl.ID)),
		zap.Stringer("lsn", tl.Head()), zap.String("overlay_over", lower), zap.Int("files", ms.Files), zap.Int("pages", ms.Pages),
		zap.Int64("bytes", ms.Bytes), zap.Float64("mb_per_s", ms.ThroughputMB), zap.Int("spare_files_left", spareLeft),
		zap.Duration("took", time.Since(t0)))
	return true, nil
}

// staleLocal says whether a local directory with unstored changes (st) is
// behind the branch: the store has an image it did not come from, or the
// keepers have WAL of a later compute generation than its own.
func (d *PostgresDriver) staleLocal(ctx context.Context, st localState, tl pagestore.Timeline) (bool, string, error) {
	if d.keepers == nil {
		return false, "", nil // the directory is the only copy of its changes
	}
	if tl.Head() != st.LSN {
		return true, fmt.Sprintf("the store's image is %s, the directory's %s", tl.Head(), st.LSN), nil
	}
	if st.Gen == 0 {
		return false, "", nil
	}
	v, err := d.keepers.durable(ctx, uint64(st.Timeline))
	if err != nil {
		return false, "", err
	}
	if v.gen > st.Gen {
		return true, fmt.Sprintf("the keepers have WAL of compute generation %d, the directory is of %d", v.gen, st.Gen), nil
	}
	return false, "", nil
}

// Stopped stores the data of a compute that shut down cleanly. After an
// unclean stop it stores nothing: the local directory stays marked
// unstored, and PostgreSQL recovers it at the next start.
func (d *PostgresDriver) Stopped(ctx context.Context, branch string, clean bool) error {
	if err := validBranch(branch); err != nil {
		return err
	}
	d.streams.take(branch).stop()
	if !clean {
		return nil
	}
	l := d.locks.get(branch)
	l.Lock()
	tl, ok, err := d.timeline(ctx, branch)
	if err == nil && !ok {
		err = fmt.Errorf("wake: branch %s has no timeline", branch)
	}
	if err == nil {
		err = d.ingest(ctx, branch, tl.ID)
	}
	if err == nil && d.keepers != nil {
		// The new image holds all the WAL the compute wrote (a fast
		// shutdown waits for the keepers to confirm it); the WAL stays
		// for point-in-time branching, but WAL before the oldest image the
		// retention window keeps can serve no branch any more.
		ns := uint64(tl.ID)
		covered := uint64(tl.Head())
		if ntl, err := d.store.Timeline(ctx, tl.ID); err == nil {
			covered = uint64(ntl.Head())
		}
		var oldest pagestore.LSN
		if oldest, err = d.store.OldestRetained(ctx, tl.ID); err == nil {
			err = d.keepers.all(ctx, "record the stored image", func(ctx context.Context, m keeperMember) error {
				// The image holds all this keeper has, up to the shutdown
				// checkpoint's end.
				in, err := m.svc.Info(ctx, ns)
				if err != nil {
					return err
				}
				if err := m.svc.SetCovered(ctx, ns, max(covered, in.Flush)); err != nil || oldest == 0 {
					return err
				}
				return m.svc.Trim(ctx, ns, uint64(oldest))
			})
		}
	}
	l.Unlock()
	if err != nil {
		return fmt.Errorf("wake: store branch %s: %w", branch, err)
	}
	d.evictSoon()
	return nil
}

// evictSoon runs the compute.cache_bytes check in the background: it
// walks every local data directory, far too slow for a stop that a waking
// client may be waiting for, and many stops at once (a storm under
// max_running) would each walk them all.
func (d *PostgresDriver) evictSoon() {
	if d.o.CacheBytes <= 0 {
		return
	}
	d.mu.Lock()
	if d.mu.evicting {
		d.mu.evictAgain = true
		d.mu.Unlock()
		return
	}
	d.mu.evicting = true
	d.mu.Unlock()
	d.evictWG.Add(1)
	go func() {
		defer d.evictWG.Done()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			d.evict(ctx)
			cancel()
			d.mu.Lock()
			again := d.mu.evictAgain
			d.mu.evicting, d.mu.evictAgain = again, false
			d.mu.Unlock()
			if !again {
				return
			}
		}
	}()
}

// Storage reports branch's timeline, sizes and local copy.
func (d *PostgresDriver) Storage(ctx context.Context, branch string) (Storage, error) {
	var s Storage
	if err := validBranch(branch); err != nil {
		return s, err
	}
	tl, ok, err := d.timeline(ctx, branch)
	if err != nil {
		return s, fmt.Errorf("wake: %w", err)
	}
	if !ok {
		return s, fmt.Errorf("wake: branch %s has no timeline", branch)
	}
	s.Timeline = uint64(tl.ID)
	if tl.Parent != 0 {
		at := tl.ParentLSN
		// Until its first stop a child starts at its point in time, or,
		// created from a running parent, where the parent's durable WAL
		// ended.
		switch {
		case tl.Target != 0:
			at = tl.Target
		case !tl.TargetTime.IsZero():
			// replayed up to a time: the LSN is known after the first start
		case d.keepers != nil && len(tl.Images) == 0:
			if v, err := d.keepers.durable(context.Background(), uint64(tl.ID)); err == nil {
				at = max(at, pagestore.LSN(v.info.Flush))
			}
		}
		s.ParentLSN = at.String()
	}
	s.LogicalBytes, s.UniqueBytes = tl.LogicalSize, tl.StoredBytes
	st, hasState := d.readState(branch)
	s.Unstored = hasState && st.Unstored
	s.LocalBytes = d.localBytes(branch, st, hasState)
	state, lag, each := d.keeperState(branch)
	s.WALKeeper, s.WALKeeperLagBytes, s.WALKeepers = state, int64(lag), each
	return s, nil
}

// diskUsage is the disk a directory tree occupies (allocated blocks, so
// sparse files count what they use).
func diskUsage(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, de fs.DirEntry, err error) error {
		if err != nil {
			return nil // gone meanwhile, or unreadable: count what we can
		}
		if fi, err := de.Info(); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			}
		}
		return nil
	})
	return n
}

// sizedState is a local directory's disk usage under a state.
type sizedState struct {
	st    localState
	bytes int64
}

// localBytes is the disk branch's local data directory uses. A stored
// directory (state not Unstored) is walked once per state; any other is
// walked every time.
func (d *PostgresDriver) localBytes(branch string, st localState, hasState bool) int64 {
	stored := hasState && !st.Unstored
	if stored {
		d.mu.Lock()
		c, ok := d.mu.sizes[branch]
		d.mu.Unlock()
		if ok && c.st.Same(st) {
			return c.bytes
		}
	}
	dir := d.pgdata(branch)
	if hasState && st.Lower != "" {
		// An overlay: what the branch wrote itself. The shared template
		// is not counted against compute.cache_bytes.
		dir = filepath.Join(d.branchDir(branch), "upper")
	}
	n := diskUsage(dir)
	if stored {
		d.mu.Lock()
		if d.mu.sizes == nil {
			d.mu.sizes = map[string]sizedState{}
		}
		d.mu.sizes[branch] = sizedState{st: st, bytes: n}
		d.mu.Unlock()
	}
	return n
}

// forgetSizes drops the remembered sizes of branches not in keep.
func (d *PostgresDriver) forgetSizes(keep map[string]bool) {
	d.mu.Lock()
	for b := range d.mu.sizes {
		if !keep[b] {
			delete(d.mu.sizes, b)
		}
	}
	d.mu.Unlock()
}

// evict removes the local data directories of the least recently used
// stopped branches while the local copies exceed compute.cache_bytes. A
// directory with unstored changes, a running compute, or a start or store
// in progress is never evicted.
func (d *PostgresDriver) evict(ctx context.Context) {
	if d.o.CacheBytes <= 0 {
		return
	}
	entries, err := os.ReadDir(filepath.Join(d.dataDir, "branches"))
	if err != nil {
		return
	}
	type cand struct {
		name  string
		used  time.Time
		bytes int64
	}
	var total int64
	var cands []cand
	seen := make(map[string]bool, len(entries))
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		name := e.Name()
		seen[name] = true
		st, ok := d.readState(name)
		bytes := d.localBytes(name, st, ok)
		total += bytes
		if bytes == 0 || !ok || st.Unstored {
			continue
		}
		cands = append(cands, cand{name, st.UsedAt, bytes})
	}
	d.forgetSizes(seen)
	if total <= d.o.CacheBytes {
		return
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].used.Before(cands[j].used) })
	for _, c := range cands {
		if total <= d.o.CacheBytes || ctx.Err() != nil {
			return
		}
		l := d.locks.get(c.name)
		if !l.TryLock() {
			continue // starting or storing right now
		}
		err := d.evictOne(c.name)
		l.Unlock()
		if err != nil {
			d.log.Warn("evict local data directory", zap.String("branch", c.name), zap.Error(err))
			continue
		}
		total -= c.bytes
		d.log.Info("evicted local data directory (compute.cache_bytes)", zap.String("branch", c.name),
			zap.Int64("bytes", c.bytes), zap.Int64("cache_bytes", total), zap.Int64("budget", d.o.CacheBytes))
	}
}

// evictOne drops branch's local copy if it is still stopped and stored.
// The caller holds the branch's lock.
func (d *PostgresDriver) evictOne(branch string) error {
	st, ok := d.readState(branch)
	if !ok || st.Unstored {
		return errors.New("no longer evictable")
	}
	if _, err := os.Stat(filepath.Join(d.pgdata(branch), "postmaster.pid")); err == nil {
		return errors.New("a postmaster runs on it")
	}
	if st.Lower != "" {
		return d.dropLocal(branch)
	}
	// State first: a crash mid-removal leaves no state, so the remains are
	// rebuilt from the store rather than trusted.
	if err := os.Remove(d.statePath(branch)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	for _, p := range []string{d.manifestPath(branch), d.pgdata(branch)} {
		if err := os.RemoveAll(p); err != nil {
			return err
		}
	}
	return nil
}

var _ Offloader = (*PostgresDriver)(nil)

// Offload drops branch's local data directory when the pagestore has all
// of it (stored, no unstored changes, no postmaster): the zero tier. The
// next start materializes it again.
func (d *PostgresDriver) Offload(ctx context.Context, branch string) (bool, error) {
	if err := validBranch(branch); err != nil {
		return false, err
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	l := d.locks.get(branch)
	if !l.TryLock() {
		return false, nil // starting or storing right now
	}
	defer l.Unlock()
	if !d.HasLocal(branch) {
		return false, nil
	}
	if st, ok := d.readState(branch); !ok || st.Unstored {
		return false, nil
	}
	if err := d.evictOne(branch); err != nil {
		return false, fmt.Errorf("wake: offload %s: %w", branch, err)
	}
	return true, nil
}

// HasLocal reports whether branch has a local data directory.
func (d *PostgresDriver) HasLocal(branch string) bool {
	if validBranch(branch) != nil {
		return false
	}
	_, err := os.Stat(d.pgdata(branch)) // gone only once an eviction completed
	return err == nil
}
