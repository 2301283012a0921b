package pagestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"go.uber.org/zap"
)

const (
	batchFlushBytes = 4 << 20
	readChunk       = 1 << 20
)

// batchWriter streams writes into unsynced pebble batches.
type batchWriter struct {
	db    *pebble.DB
	b     *pebble.Batch
	bytes int64
}

func (w *batchWriter) set(k, v []byte) error {
	if w.b == nil {
		w.b = w.db.NewBatch()
	}
	_ = w.b.Set(k, v, nil)
	w.bytes += int64(len(v))
	if w.b.Len() >= batchFlushBytes {
		return w.flush()
	}
	return nil
}

// testHookBatchCommitted, when set (tests only), runs after each ingest
// batch is committed: the crash test kills the process there.
var testHookBatchCommitted func()

func (w *batchWriter) flush() error {
	if w.b == nil {
		return nil
	}
	err := w.b.Commit(pebble.NoSync)
	_ = w.b.Close()
	w.b = nil
	if err == nil && testHookBatchCommitted != nil {
		testHookBatchCommitted()
	}
	return err
}

func (w *batchWriter) close() {
	if w.b != nil {
		_ = w.b.Close()
		w.b = nil
	}
}

func insideDir(dir, path string) bool {
	if path == "" {
		return false
	}
	d, err1 := filepath.Abs(dir)
	p, err2 := filepath.Abs(path)
	if err1 != nil || err2 != nil {
		return false
	}
	return p == d || strings.HasPrefix(p, d+string(filepath.Separator))
}

// An ingest is a scan on the compute's side (scanIngest), which reads the
// stopped data directory and, with a manifest, skips what did not change,
// and a transaction on the store's side (ingestTx), which writes what
// differs from the head as versions at the checkpoint LSN and commits
// them in one metadata write. In one process they are joined by calls;
// the network pagestore puts its frame stream between them.

// ingestSink receives a scanned data directory. dir, file, unchanged and
// wal are called from one goroutine; each scanning goroutine has its own
// worker.
type ingestSink interface {
	dir(path string) error
	// file gets a non-relation file's content.
	file(path string, content []byte) error
	// unchanged says the manifest proved a non-relation file unchanged.
	unchanged(path string, size int64) error
	// wal gets a synthesized pg_wal segment (a fileSparse value).
	wal(path string, v []byte) error
	worker() ingestWorker
}

// ingestWorker receives relation forks.
type ingestWorker interface {
	// forkSize gives a fork's size in blocks; unchanged: the manifest
	// proved all of it unchanged (no pages follow).
	forkSize(rel RelTag, size uint32, unchanged bool) error
	// pages gives consecutive blocks from blk on: with a manifest only
	// the changed ones, else all of them. pages is reused after the call.
	pages(rel RelTag, blk uint32, pages []byte) error
	done() error
}

// ingestSession is a begun ingest as the compute side drives it.
type ingestSession interface {
	ingestSink
	commit(ctx context.Context) (IngestStats, error)
	abort()
}

// Ingest stores the cleanly shut-down data directory pgdata as a new
// image of timeline id at cp.LSN. manifestPath ("" = none) must be outside
// pgdata: when it describes (id, Head()) it is the comparison base, and it
// is rewritten for (id, cp.LSN) afterwards.
func (s *Store) Ingest(ctx context.Context, id TimelineID, pgdata string, cp Checkpoint, manifestPath string) (IngestStats, error) {
	t, err := s.Timeline(ctx, id)
	if err != nil {
		return IngestStats{}, fmt.Errorf("ingest timeline %d: %w", id, err)
	}
	st, err := ingestFrom(ctx, ingestInput{id: id, head: t.Head(), pgdata: pgdata, cp: cp, manifest: manifestPath,
		workers: s.opts.Parallelism, noSync: s.opts.NoSync, log: s.log},
		func(base LSN) (ingestSession, error) { return s.beginIngest(ctx, id, cp, base) })
	if err != nil || st == (IngestStats{}) {
		return st, err
	}
	s.log.Info("ingested", zap.Uint64("timeline", uint64(id)), zap.Stringer("lsn", cp.LSN),
		zap.Int("pages_written", st.PagesWritten), zap.Int("files_written", st.FilesWritten),
		zap.Int64("bytes_written", st.BytesWritten), zap.Bool("used_manifest", st.UsedManifest),
		zap.Duration("duration", st.Duration))
	return st, nil
}

// ingestInput is what the compute side of an ingest works from.
type ingestInput struct {
	id       TimelineID
	head     LSN // the timeline's head as the caller last saw it
	pgdata   string
	cp       Checkpoint
	manifest string
	workers  int
	noSync   bool
	log      *zap.Logger
}

// validCheckpoint checks the checkpoint's WAL geometry.
func validCheckpoint(cp Checkpoint) error {
	if cp.WALSegSize <= 0 || cp.WALSegSize&(cp.WALSegSize-1) != 0 || cp.WALSegSize < xlogBlockSize {
		return fmt.Errorf("invalid WAL segment size %d", cp.WALSegSize)
	}
	return nil
}

// ingestFrom runs the compute side of an ingest against the session begin
// opens (base: the LSN the manifest describes, 0 without one) and
// rewrites the manifest after the commit.
func ingestFrom(ctx context.Context, in ingestInput, begin func(base LSN) (ingestSession, error)) (IngestStats, error) {
	start := time.Now()
	fail := func(err error) (IngestStats, error) {
		return IngestStats{}, fmt.Errorf("ingest timeline %d at %s: %w", in.id, in.cp.LSN, err)
	}
	if err := validCheckpoint(in.cp); err != nil {
		return fail(err)
	}
	if insideDir(in.pgdata, in.manifest) {
		return fail(fmt.Errorf("manifest %s is inside the data directory", in.manifest))
	}
	if in.cp.LSN == in.head {
		return IngestStats{}, nil
	}
	if in.cp.LSN < in.head {
		return fail(fmt.Errorf("checkpoint %s is before the head %s: %w", in.cp.LSN, in.head, ErrInvalidLSN))
	}
	var mf *manifest
	if in.manifest != "" {
		switch m, err := readManifest(in.manifest); {
		case err == nil && m.Timeline == in.id && m.LSN == in.head && in.head != 0:
			mf = m
		case err == nil:
			in.log.Info("manifest does not match the timeline head; comparing with the store",
				zap.String("manifest", in.manifest), zap.Uint64("manifest_timeline", uint64(m.Timeline)),
				zap.Stringer("manifest_lsn", m.LSN), zap.Stringer("head", in.head))
		case !errors.Is(err, os.ErrNotExist):
			in.log.Warn("ignoring unreadable manifest", zap.String("manifest", in.manifest), zap.Error(err))
		}
	}
	var base LSN
	if mf != nil {
		base = in.head
	}
	sess, err := begin(base)
	if err != nil {
		return fail(err)
	}
	newMf, scanned, err := scanIngest(ctx, in.pgdata, in.cp, mf, in.workers, sess)
	if err != nil {
		sess.abort()
		return fail(err)
	}
	st, err := sess.commit(ctx)
	if err != nil {
		return fail(err)
	}
	st.FilesScanned, st.FilesSkipped, st.UsedManifest = scanned.scanned, scanned.skipped, mf != nil
	st.Duration = time.Since(start)
	if in.manifest != "" {
		newMf.Timeline, newMf.LSN = in.id, in.cp.LSN
		if err := writeManifest(in.manifest, newMf, in.noSync); err != nil {
			in.log.Warn("ingest committed but the manifest could not be written", zap.Error(err))
			_ = os.Remove(in.manifest)
		}
	}
	return st, nil
}

// ingestTx is an ingest on the store's side: the view at the head it
// compares with, and what it has written so far.
type ingestTx struct {
	s         *Store
	id        TimelineID
	cp        Checkpoint
	begun     time.Time
	exact     bool // pages come from a manifest comparison: all changed
	snap      *pebble.Snapshot
	lv        []level
	viewSizes map[RelTag]uint32
	viewFiles map[string][]byte
	bw        *batchWriter // dir, file, wal and tombstones (one goroutine)
	mu        struct {
		sync.Mutex
		present map[string]bool
		forks   map[RelTag]bool
		st      IngestStats
	}
	released bool
}

var _ ingestSession = (*ingestTx)(nil)

// beginIngest starts an ingest of timeline id at cp.LSN compared with its
// head, or with a manifest of base (which must be the head).
func (s *Store) beginIngest(ctx context.Context, id TimelineID, cp Checkpoint, base LSN) (*ingestTx, error) {
	if err := validCheckpoint(cp); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.waitGCLocked(id)
	t, ok := s.mu.timelines[id]
	if !ok {
		s.mu.Unlock()
		return nil, ErrNotFound
	}
	if _, busy := s.mu.ingesting[id]; busy {
		s.mu.Unlock()
		return nil, ErrIngestActive
	}
	head := t.Head()
	if cp.LSN <= head {
		s.mu.Unlock()
		return nil, fmt.Errorf("checkpoint %s is not after the head %s: %w", cp.LSN, head, ErrInvalidLSN)
	}
	if base != 0 && base != head {
		s.mu.Unlock()
		return nil, fmt.Errorf("the manifest describes %s but the head is %s: %w", base, head, ErrInvalidLSN)
	}
	s.mu.ingesting[id] = cp.LSN
	lv := s.levelsLocked(t, head)
	pending := t.Pending
	images := slices.Clone(t.Images)
	s.mu.Unlock()

	tx := &ingestTx{s: s, id: id, cp: cp, begun: time.Now(), exact: base != 0, lv: lv, bw: &batchWriter{db: s.db}}
	tx.mu.present = make(map[string]bool)
	tx.mu.forks = make(map[RelTag]bool)
	err := func() error {
		if pending != 0 {
			// A previous ingest did not commit: remove its versions so they
			// cannot become visible under this image's LSN.
			if _, err := s.collect(ctx, id, nil, images, true, false); err != nil {
				return fmt.Errorf("remove leftovers of the ingest at %s: %w", pending, err)
			}
		}
		if _, err := s.updateMeta(id, nil, func(t *Timeline) { t.Pending = cp.LSN }); err != nil {
			return err
		}
		tx.snap = s.db.NewSnapshot()
		var err error
		if tx.viewSizes, err = forkSizes(ctx, tx.snap, lv); err != nil {
			return fmt.Errorf("read fork sizes at %s: %w", head, err)
		}
		if tx.viewFiles, err = files(ctx, tx.snap, lv); err != nil {
			return fmt.Errorf("read files at %s: %w", head, err)
		}
		return nil
	}()
	if err != nil {
		tx.abort()
		return nil, err
	}
	return tx, nil
}

// abort releases the timeline; what was written stays pending and is
// removed before the next ingest or by GC.
func (tx *ingestTx) abort() {
	if tx.released {
		return
	}
	tx.released = true
	tx.bw.close()
	if tx.snap != nil {
		tx.snap.Close()
	}
	s := tx.s
	s.mu.Lock()
	delete(s.mu.ingesting, tx.id)
	s.mu.cond.Broadcast()
	s.mu.Unlock()
}

// put stores a non-relation file value unless the head has it already.
func (tx *ingestTx) put(path string, v []byte) error {
	if !validRelPath(path) {
		return fmt.Errorf("invalid path %q", path)
	}
	tx.mu.Lock()
	tx.mu.present[path] = true
	tx.mu.Unlock()
	if old, ok := tx.viewFiles[path]; ok && bytes.Equal(old, v) {
		return nil
	}
	tx.mu.Lock()
	tx.mu.st.FilesWritten++
	tx.mu.Unlock()
	return tx.bw.set(fileKey(tx.id, path, tx.cp.LSN), v)
}

func (tx *ingestTx) dir(path string) error { return tx.put(path, []byte{fileDir}) }

func (tx *ingestTx) file(path string, content []byte) error {
	v := make([]byte, 0, 1+len(content))
	v = append(append(v, fileContent), content...)
	tx.mu.Lock()
	tx.mu.st.LogicalSize += int64(len(content))
	tx.mu.Unlock()
	return tx.put(path, v)
}

func (tx *ingestTx) unchanged(path string, size int64) error {
	if _, ok := tx.viewFiles[path]; !ok {
		return fmt.Errorf("file %s: the manifest says unchanged, but the head does not have it", path)
	}
	tx.mu.Lock()
	defer tx.mu.Unlock()
	tx.mu.present[path] = true
	tx.mu.st.LogicalSize += size
	return nil
}

// wal stores a synthesized pg_wal segment; not counted in LogicalSize:
// it is a few stored pages PostgreSQL needs to start, not data the branch
// holds.
func (tx *ingestTx) wal(path string, v []byte) error {
	if len(v) == 0 || v[0] != fileSparse {
		return fmt.Errorf("WAL file %s: not a sparse value", path)
	}
	return tx.put(path, v)
}

func (tx *ingestTx) worker() ingestWorker {
	return &txWorker{tx: tx, bw: &batchWriter{db: tx.s.db}}
}

// txWorker writes forks into its own batch.
type txWorker struct {
	tx      *ingestTx
	bw      *batchWriter
	written int // pages
}

func (w *txWorker) forkSize(rel RelTag, size uint32, unchanged bool) error {
	tx := w.tx
	if size >= droppedSize {
		return fmt.Errorf("fork %s has %d blocks: too large", rel, size)
	}
	viewSize, inView := tx.viewSizes[rel]
	if unchanged && (!inView || viewSize != size) {
		return fmt.Errorf("fork %s: the manifest says unchanged, but the head has it at %d blocks, not %d", rel, viewSize, size)
	}
	tx.mu.Lock()
	dup := tx.mu.forks[rel]
	tx.mu.forks[rel] = true
	tx.mu.st.RelationForks++
	tx.mu.st.LogicalSize += int64(size) * BlockSize
	tx.mu.Unlock()
	if dup {
		return fmt.Errorf("fork %s sent twice", rel)
	}
	if inView && viewSize == size {
		return nil
	}
	return w.bw.set(sizeKey(tx.id, rel, tx.cp.LSN), encodeSize(size))
}

func (w *txWorker) pages(rel RelTag, blk uint32, pages []byte) error {
	tx := w.tx
	if len(pages)%BlockSize != 0 || uint64(blk)+uint64(len(pages)/BlockSize) > uint64(droppedSize) {
		return fmt.Errorf("fork %s: bad page run at block %d (%d bytes)", rel, blk, len(pages))
	}
	viewSize, inView := tx.viewSizes[rel]
	for off := 0; off < len(pages); off, blk = off+BlockSize, blk+1 {
		page := pages[off : off+BlockSize]
		if !tx.exact && inView && blk < viewSize {
			old, ok, err := getVersion(tx.snap, tx.lv, func(tl TimelineID) []byte { return pagePrefix(tl, rel, blk) })
			if err != nil {
				return err
			}
			if !ok || len(old) == 0 {
				old = zeroPage
			}
			if bytes.Equal(page, old) {
				continue
			}
		}
		v := page
		if bytes.Equal(page, zeroPage) {
			v = nil
		}
		if err := w.bw.set(pageKey(tx.id, rel, blk, tx.cp.LSN), v); err != nil {
			return err
		}
		w.written++
	}
	return nil
}

func (w *txWorker) done() error {
	defer w.bw.close()
	err := w.bw.flush()
	tx := w.tx
	tx.mu.Lock()
	tx.mu.st.PagesWritten += w.written
	tx.mu.st.BytesWritten += w.bw.bytes
	tx.mu.Unlock()
	w.written, w.bw.bytes = 0, 0
	return err
}

// commit writes the tombstones of files and forks the directory no
// longer has and makes the image visible.
func (tx *ingestTx) commit(ctx context.Context) (IngestStats, error) {
	defer tx.abort()
	if err := ctx.Err(); err != nil {
		return IngestStats{}, err
	}
	tx.mu.Lock()
	present, forks := tx.mu.present, tx.mu.forks
	tx.mu.Unlock()
	var gone []string
	for path := range tx.viewFiles {
		if !present[path] {
			gone = append(gone, path)
		}
	}
	for _, path := range gone {
		if err := tx.put(path, []byte{fileDeleted}); err != nil {
			return IngestStats{}, err
		}
	}
	for r := range tx.viewSizes {
		if !forks[r] {
			if err := tx.bw.set(sizeKey(tx.id, r, tx.cp.LSN), encodeSize(droppedSize)); err != nil {
				return IngestStats{}, err
			}
		}
	}
	if err := tx.bw.flush(); err != nil {
		return IngestStats{}, err
	}
	tx.mu.Lock()
	tx.mu.st.BytesWritten += tx.bw.bytes
	st := tx.mu.st
	tx.mu.Unlock()
	// Commit: the synced metadata write makes the image visible (and
	// syncs the pebble WAL holding the earlier batches).
	if _, err := tx.s.updateMeta(tx.id, nil, func(t *Timeline) {
		t.Images = append(t.Images, tx.cp.LSN)
		if t.ImageTimes == nil {
			t.ImageTimes = map[LSN]time.Time{}
		}
		t.ImageTimes[tx.cp.LSN] = tx.begun.UTC()
		t.LogicalSize = st.LogicalSize
		t.StoredBytes += st.BytesWritten
		t.Pending = 0
		t.Target, t.TargetTime = 0, time.Time{} // the image is past any replay target
	}); err != nil {
		return st, fmt.Errorf("commit: %w", err)
	}
	return st, nil
}

type walEntry struct {
	path string
	val  []byte
}

// synthesizeWAL returns the pg_wal segment files PostgreSQL 15 reads to
// start at the shutdown checkpoint: the first page of the checkpoint's
// segment, the page holding the checkpoint record and the next page (in
// the next segment when the record's page is the last one).
func synthesizeWAL(pgdata string, cp Checkpoint) ([]walEntry, error) {
	segSize := uint64(cp.WALSegSize)
	lsn := uint64(cp.LSN)
	segno := lsn / segSize
	pageOff := (lsn % segSize) &^ (xlogBlockSize - 1)
	want := map[uint64][]uint64{segno: {0, pageOff}}
	if next := pageOff + xlogBlockSize; next >= segSize {
		want[segno+1] = []uint64{0}
	} else {
		want[segno] = append(want[segno], next)
	}
	segs := make([]uint64, 0, len(want))
	for sn := range want {
		segs = append(segs, sn)
	}
	slices.Sort(segs)
	var out []walEntry
	for _, sn := range segs {
		name := walFileName(cp.TimeLineID, sn, segSize)
		f, err := os.Open(filepath.Join(pgdata, "pg_wal", name))
		if err != nil {
			if sn != segno && errors.Is(err, os.ErrNotExist) {
				continue // the record did not need the next segment
			}
			return nil, fmt.Errorf("WAL segment of the checkpoint %s: %w", cp.LSN, err)
		}
		offs := want[sn]
		slices.Sort(offs)
		offs = slices.Compact(offs)
		var chunks []sparseChunk
		for _, o := range offs {
			page := make([]byte, xlogBlockSize)
			n, err := f.ReadAt(page, int64(o))
			if err != nil && !errors.Is(err, io.EOF) {
				f.Close()
				return nil, fmt.Errorf("read WAL %s at %d: %w", name, o, err)
			}
			if n < xlogBlockSize {
				f.Close()
				return nil, fmt.Errorf("read WAL %s at %d: short segment file", name, o)
			}
			if len(chunks) > 0 {
				if last := &chunks[len(chunks)-1]; last.off+uint64(len(last.data)) == o {
					last.data = append(last.data, page...)
					continue
				}
			}
			chunks = append(chunks, sparseChunk{off: o, data: page})
		}
		f.Close()
		out = append(out, walEntry{path: "pg_wal/" + name, val: encodeSparse(segSize, chunks)})
	}
	return out, nil
}
