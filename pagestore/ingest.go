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
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
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

// ingestRun is the state of one ingest.
type ingestRun struct {
	s         *Store
	id        TimelineID
	lsn       LSN
	snap      *pebble.Snapshot
	lv        []level
	viewSizes map[RelTag]uint32
	mf        *manifest // comparison base, nil if none
	mfForks   map[RelTag][]uint64
}

type forkResult struct {
	size    uint32
	hashes  []uint64
	pages   int
	scanned int
	skipped int
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

// Ingest stores the cleanly shut-down data directory pgdata as a new
// image of timeline id at cp.LSN. manifestPath ("" = none) must be outside
// pgdata: when it describes (id, Head()) it is the comparison base, and it
// is rewritten for (id, cp.LSN) afterwards.
func (s *Store) Ingest(ctx context.Context, id TimelineID, pgdata string, cp Checkpoint, manifestPath string) (IngestStats, error) {
	start := time.Now()
	if cp.WALSegSize <= 0 || cp.WALSegSize&(cp.WALSegSize-1) != 0 || cp.WALSegSize < xlogBlockSize {
		return IngestStats{}, fmt.Errorf("ingest timeline %d: invalid WAL segment size %d", id, cp.WALSegSize)
	}
	if insideDir(pgdata, manifestPath) {
		return IngestStats{}, fmt.Errorf("ingest timeline %d: manifest %s is inside the data directory", id, manifestPath)
	}
	s.mu.Lock()
	s.waitGCLocked(id)
	t, ok := s.mu.timelines[id]
	if !ok {
		s.mu.Unlock()
		return IngestStats{}, fmt.Errorf("ingest timeline %d: %w", id, ErrNotFound)
	}
	if _, busy := s.mu.ingesting[id]; busy {
		s.mu.Unlock()
		return IngestStats{}, fmt.Errorf("ingest timeline %d: %w", id, ErrIngestActive)
	}
	head := t.Head()
	if cp.LSN == head {
		s.mu.Unlock()
		return IngestStats{}, nil
	}
	if cp.LSN < head {
		s.mu.Unlock()
		return IngestStats{}, fmt.Errorf("ingest timeline %d: checkpoint %s is before the head %s: %w", id, cp.LSN, head, ErrInvalidLSN)
	}
	s.mu.ingesting[id] = cp.LSN
	lv := s.levelsLocked(t, head)
	pending := t.Pending
	images := slices.Clone(t.Images)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.mu.ingesting, id)
		s.mu.cond.Broadcast()
		s.mu.Unlock()
	}()

	st, err := s.ingest(ctx, id, head, lv, pending, images, pgdata, cp, manifestPath)
	st.Duration = time.Since(start)
	if err != nil {
		return st, fmt.Errorf("ingest timeline %d at %s: %w", id, cp.LSN, err)
	}
	s.log.Info("ingested", zap.Uint64("timeline", uint64(id)), zap.Stringer("lsn", cp.LSN),
		zap.Int("pages_written", st.PagesWritten), zap.Int("files_written", st.FilesWritten),
		zap.Int64("bytes_written", st.BytesWritten), zap.Bool("used_manifest", st.UsedManifest),
		zap.Duration("duration", st.Duration))
	return st, nil
}

func (s *Store) ingest(ctx context.Context, id TimelineID, head LSN, lv []level, pending LSN, images []LSN,
	pgdata string, cp Checkpoint, manifestPath string) (IngestStats, error) {
	begun := time.Now()
	var st IngestStats
	if pending != 0 {
		// A previous ingest did not commit: remove its versions so they
		// cannot become visible under this image's LSN.
		if _, err := s.collect(ctx, id, nil, images, true, false); err != nil {
			return st, fmt.Errorf("remove leftovers of the ingest at %s: %w", pending, err)
		}
	}
	if _, err := s.updateMeta(id, nil, func(t *Timeline) { t.Pending = cp.LSN }); err != nil {
		return st, err
	}

	dd, err := scanDataDir(pgdata)
	if err != nil {
		return st, err
	}
	snap := s.db.NewSnapshot()
	defer snap.Close()
	run := &ingestRun{s: s, id: id, lsn: cp.LSN, snap: snap, lv: lv}
	if run.viewSizes, err = forkSizes(ctx, snap, lv); err != nil {
		return st, fmt.Errorf("read fork sizes at %s: %w", head, err)
	}
	viewFiles, err := files(ctx, snap, lv)
	if err != nil {
		return st, fmt.Errorf("read files at %s: %w", head, err)
	}
	if manifestPath != "" {
		switch mf, err := readManifest(manifestPath); {
		case err == nil && mf.Timeline == id && mf.LSN == head && head != 0:
			run.mf = mf
			run.mfForks = make(map[RelTag][]uint64, len(mf.Forks))
			for _, f := range mf.Forks {
				run.mfForks[f.Rel] = f.Hashes
			}
			st.UsedManifest = true
		case err == nil:
			s.log.Info("manifest does not match the timeline head; comparing with the store",
				zap.String("manifest", manifestPath), zap.Uint64("manifest_timeline", uint64(mf.Timeline)),
				zap.Stringer("manifest_lsn", mf.LSN), zap.Stringer("head", head))
		case !errors.Is(err, os.ErrNotExist):
			s.log.Warn("ignoring unreadable manifest", zap.String("manifest", manifestPath), zap.Error(err))
		}
	}
	newMf := &manifest{Timeline: id, LSN: cp.LSN, Files: make(map[string]manifestFile)}

	// Relation forks, in parallel; each worker streams into its own batch.
	rels := sortedRels(dd.forks)
	var written atomic.Int64
	results, err := forEachFork(ctx, s.opts.Parallelism, rels,
		func() *forkWorker { return &forkWorker{bw: &batchWriter{db: s.db}, buf: make([]byte, readChunk)} },
		func(ctx context.Context, w *forkWorker, r RelTag) (forkResult, error) {
			return run.fork(ctx, dd.forks[r], w.bw, w.buf)
		},
		func(w *forkWorker) error {
			defer w.bw.close()
			err := w.bw.flush()
			written.Add(w.bw.bytes)
			return err
		})
	if err != nil {
		return st, err
	}
	st.BytesWritten = written.Load()
	st.RelationForks = len(rels)
	for i, r := range rels {
		res := results[i]
		st.PagesWritten += res.pages
		st.FilesScanned += res.scanned
		st.FilesSkipped += res.skipped
		st.LogicalSize += int64(res.size) * BlockSize
		newMf.Forks = append(newMf.Forks, manifestFork{Rel: r, Hashes: res.hashes})
		for _, sg := range dd.forks[r].segs {
			newMf.Files[sg.path] = manifestFile{Size: sg.size, MTime: sg.mtime}
		}
	}

	// Non-relation files, the synthesized WAL and the tombstones.
	bw := &batchWriter{db: s.db}
	defer bw.close()
	put := func(path string, v []byte) error {
		if old, ok := viewFiles[path]; ok && bytes.Equal(old, v) {
			return nil
		}
		st.FilesWritten++
		return bw.set(fileKey(id, path, cp.LSN), v)
	}
	present := make(map[string]bool, len(dd.entries))
	for i, e := range dd.entries {
		if i%256 == 0 {
			if err := ctx.Err(); err != nil {
				return st, err
			}
		}
		present[e.path] = true
		if e.dir {
			if err := put(e.path, []byte{fileDir}); err != nil {
				return st, err
			}
			continue
		}
		if run.mf != nil {
			if mf, ok := run.mf.Files[e.path]; ok && mf.Size == e.size && mf.MTime == e.mtime {
				if _, inView := viewFiles[e.path]; inView {
					st.FilesSkipped++
					newMf.Files[e.path] = mf
					st.LogicalSize += e.size
					continue
				}
			}
		}
		content, err := os.ReadFile(e.abs)
		if err != nil {
			return st, err
		}
		st.FilesScanned++
		st.LogicalSize += int64(len(content))
		newMf.Files[e.path] = manifestFile{Size: e.size, MTime: e.mtime, Hash: xxhash.Sum64(content)}
		v := make([]byte, 0, 1+len(content))
		v = append(append(v, fileContent), content...)
		if err := put(e.path, v); err != nil {
			return st, err
		}
	}
	wal, err := synthesizeWAL(pgdata, cp)
	if err != nil {
		return st, err
	}
	for _, w := range wal {
		// Not counted in LogicalSize: the segment is a few stored pages
		// PostgreSQL needs to start, not data the branch holds.
		present[w.path] = true
		if err := put(w.path, w.val); err != nil {
			return st, err
		}
	}
	for path := range viewFiles {
		if !present[path] {
			if err := put(path, []byte{fileDeleted}); err != nil {
				return st, err
			}
		}
	}
	for r := range run.viewSizes {
		if _, ok := dd.forks[r]; !ok {
			if err := bw.set(sizeKey(id, r, cp.LSN), encodeSize(droppedSize)); err != nil {
				return st, err
			}
		}
	}
	if err := bw.flush(); err != nil {
		return st, err
	}
	st.BytesWritten += bw.bytes

	// Commit: the synced metadata write makes the image visible (and
	// syncs the pebble WAL holding the earlier batches).
	if _, err := s.updateMeta(id, nil, func(t *Timeline) {
		t.Images = append(t.Images, cp.LSN)
		if t.ImageTimes == nil {
			t.ImageTimes = map[LSN]time.Time{}
		}
		t.ImageTimes[cp.LSN] = begun.UTC()
		t.LogicalSize = st.LogicalSize
		t.StoredBytes += st.BytesWritten
		t.Pending = 0
		t.Target, t.TargetTime = 0, time.Time{} // the image is past any replay target
	}); err != nil {
		return st, fmt.Errorf("commit: %w", err)
	}
	if manifestPath != "" {
		if err := writeManifest(manifestPath, newMf, s.opts.NoSync); err != nil {
			s.log.Warn("ingest committed but the manifest could not be written", zap.Error(err))
			_ = os.Remove(manifestPath)
		}
	}
	return st, nil
}

// forkWorker is one ingest worker's state.
type forkWorker struct {
	bw  *batchWriter
	buf []byte
}

// fork stores the changed blocks and the size of one relation fork.
func (run *ingestRun) fork(ctx context.Context, ff *forkFiles, bw *batchWriter, buf []byte) (forkResult, error) {
	var res forkResult
	rel := ff.rel
	sort.Slice(ff.segs, func(i, j int) bool { return ff.segs[i].seg < ff.segs[j].seg })
	// The fork's size: segments must be contiguous; after a short one only
	// empty (truncated-away) segments may follow.
	var size uint64
	short := false
	for i, sg := range ff.segs {
		blocks := uint64(sg.size / BlockSize)
		if blocks > uint64(relSegBlocks) {
			return res, fmt.Errorf("segment %s has %d blocks, more than %d", sg.path, blocks, relSegBlocks)
		}
		if short || uint32(i) != sg.seg {
			if blocks == 0 {
				continue
			}
			return res, fmt.Errorf("segment %s follows a missing or short segment", sg.path)
		}
		size = uint64(sg.seg)*uint64(relSegBlocks) + blocks
		if blocks < uint64(relSegBlocks) {
			short = true
		}
	}
	if size >= droppedSize {
		return res, fmt.Errorf("fork has %d blocks: too large", size)
	}
	res.size = uint32(size)
	viewSize, inView := run.viewSizes[rel]
	writeSize := !inView || viewSize != res.size

	if run.mf != nil {
		if h, ok := run.mfForks[rel]; ok && uint64(len(h)) == size && inView && viewSize == res.size {
			same := true
			for _, sg := range ff.segs {
				f, ok := run.mf.Files[sg.path]
				if !ok || f.Size != sg.size || f.MTime != sg.mtime {
					same = false
					break
				}
			}
			if same {
				res.hashes = h
				res.skipped = len(ff.segs)
				return res, nil
			}
		}
	}

	res.hashes = make([]uint64, size)
	var (
		pm      pageMerger
		pmValid bool
		mfHash  []uint64
		useMf   = run.mf != nil
	)
	if useMf {
		mfHash = run.mfForks[rel]
	} else if inView && viewSize > 0 {
		var err error
		if pm, err = newPageMerger(run.snap, run.lv, rel); err != nil {
			return res, err
		}
		defer pm.close()
		pmValid = pm.next()
	}
	for _, sg := range ff.segs {
		if sg.size == 0 {
			continue
		}
		res.scanned++
		f, err := os.Open(sg.abs)
		if err != nil {
			return res, err
		}
		base := sg.seg * relSegBlocks
		for off := int64(0); off < sg.size; {
			if err := ctx.Err(); err != nil {
				f.Close()
				return res, err
			}
			n := min(int64(len(buf)), sg.size-off)
			if _, err := f.ReadAt(buf[:n], off); err != nil && !(errors.Is(err, io.EOF)) {
				f.Close()
				return res, fmt.Errorf("read %s: %w", sg.path, err)
			}
			for p := int64(0); p < n; p += BlockSize {
				blk := base + uint32((off+p)/BlockSize)
				page := buf[p : p+BlockSize]
				h := xxhash.Sum64(page)
				res.hashes[blk] = h
				changed := true
				if inView && blk < viewSize {
					if useMf {
						if int(blk) < len(mfHash) {
							changed = h != mfHash[blk]
						}
					} else {
						for pmValid && pm.blk() < blk {
							pmValid = pm.next()
						}
						old := zeroPage
						if pmValid && pm.blk() == blk && len(pm.val) != 0 {
							old = pm.val
						}
						changed = !bytes.Equal(page, old)
					}
				}
				if !changed {
					continue
				}
				v := page
				if h == zeroPageHash && bytes.Equal(page, zeroPage) {
					v = nil
				}
				if err := bw.set(pageKey(run.id, rel, blk, run.lsn), v); err != nil {
					f.Close()
					return res, err
				}
				res.pages++
			}
			off += n
		}
		f.Close()
	}
	if pm.merger != nil {
		if err := pm.err(); err != nil {
			return res, err
		}
	}
	if writeSize {
		if err := bw.set(sizeKey(run.id, rel, run.lsn), encodeSize(res.size)); err != nil {
			return res, err
		}
	}
	return res, nil
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
