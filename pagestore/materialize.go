package pagestore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/cockroachdb/pebble/v2"
	"go.uber.org/zap"
)

// FileSource hands out new, empty regular files. Creating an inode can be
// the slowest part of a materialization (measured on this project's
// ext4 VM: ~0.5 ms per create, serialised, against ~25 µs per rename, for
// the ~1,000 files of a small cluster), so a caller can keep a pool of
// files made ahead of time and have them renamed into place.
type FileSource interface {
	// Create makes path an empty file open for writing; it fails if path
	// exists.
	Create(path string) (*os.File, error)
}

// MaterializeOptions tune Materialize.
type MaterializeOptions struct {
	Owner    Owner      // who the files belong to
	Manifest string     // where to write the manifest ("": none); outside dst
	Files    FileSource // nil: every file is created with O_EXCL
}

type createFiles struct{}

func (createFiles) Create(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
}

// Materialize writes the data directory of timeline id as of at (0:
// Head()) into dst, which must not exist or be empty.
func (s *Store) Materialize(ctx context.Context, id TimelineID, at LSN, dst string, o MaterializeOptions) (MaterializeStats, error) {
	st, err := materializeInto(ctx, id, dst, o, func(sink matSink) (LSN, error) {
		return s.produce(ctx, id, at, sink)
	})
	if err != nil {
		return st, fmt.Errorf("materialize timeline %d into %s: %w", id, dst, err)
	}
	s.log.Info("materialized", zap.Uint64("timeline", uint64(id)), zap.String("dst", dst),
		zap.Int("files", st.Files), zap.Int("pages", st.Pages), zap.Int64("bytes", st.Bytes),
		zap.Duration("duration", st.Duration), zap.Float64("mb_per_s", st.ThroughputMB))
	return st, nil
}

// Chown gives path to the owner (no-op for UID -1).
func (o Owner) Chown(path string) error {
	if o.UID == -1 {
		return nil
	}
	return os.Lchown(path, o.UID, o.GID)
}

// A materialization is a producer on the store's side (produce), which
// reads the versions a read point sees, and a sink on the compute's side
// (dirSink), which writes files. In one process they are joined by
// calls; the network pagestore puts its frame stream between them.

// matSink receives a data directory. dir and file come first, in path
// order, from one goroutine; fork is then called from several.
type matSink interface {
	dir(path string) error
	// file gets a non-relation file as its stored value (fileContent or
	// fileSparse).
	file(path string, v []byte) error
	fork(rel RelTag, size uint32) (forkSink, error)
}

// forkSink receives one fork's non-zero pages in block order.
type forkSink interface {
	// write gets consecutive pages from blk on, all in one segment; pages
	// is reused after the call returns.
	write(blk uint32, pages []byte) error
	close() error
}

// produce sends the data directory of timeline id at at (0: Head()) to
// sink and returns the LSN it is of.
func (s *Store) produce(ctx context.Context, id TimelineID, at LSN, sink matSink) (LSN, error) {
	lv, at, err := s.readPoint(id, at)
	if err != nil {
		return 0, err
	}
	if at == 0 {
		return 0, fmt.Errorf("nothing ingested: %w", ErrNotFound)
	}
	snap := s.db.NewSnapshot()
	defer snap.Close()
	sizes, err := forkSizes(ctx, snap, lv)
	if err != nil {
		return 0, err
	}
	fileVals, err := files(ctx, snap, lv)
	if err != nil {
		return 0, err
	}
	// Directories first, parents before children.
	paths := make([]string, 0, len(fileVals))
	for p := range fileVals {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		if fileVals[p][0] == fileDir {
			if err := sink.dir(p); err != nil {
				return 0, err
			}
		}
	}
	for i, p := range paths {
		if i%256 == 0 {
			if err := ctx.Err(); err != nil {
				return 0, err
			}
		}
		if v := fileVals[p]; v[0] == fileContent || v[0] == fileSparse {
			if err := sink.file(p, v); err != nil {
				return 0, fmt.Errorf("write %s: %w", p, err)
			}
		}
	}
	// Relation forks in parallel.
	_, err = forEachFork(ctx, s.opts.Parallelism, sortedRels(sizes),
		func() []byte { return make([]byte, 0, readChunk) },
		func(ctx context.Context, buf []byte, r RelTag) (struct{}, error) {
			return struct{}{}, produceFork(ctx, snap, lv, r, sizes[r], sink, buf)
		}, nil)
	return at, err
}

// produceFork sends one fork's non-zero pages in runs of up to cap(buf)
// bytes that never cross a segment.
func produceFork(ctx context.Context, snap *pebble.Snapshot, lv []level, rel RelTag, size uint32, sink matSink, buf []byte) (err error) {
	fs, err := sink.fork(rel, size)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := fs.close(); err == nil {
			err = cerr
		}
	}()
	if size == 0 {
		return nil
	}
	var runStart uint32 // first block of buf
	buf = buf[:0]
	flush := func() error {
		if len(buf) == 0 {
			return nil
		}
		err := fs.write(runStart, buf)
		buf = buf[:0]
		return err
	}
	pm, err := newPageMerger(snap, lv, rel)
	if err != nil {
		return err
	}
	defer pm.close()
	for n := 0; pm.next(); n++ {
		if n%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		blk := pm.blk()
		if blk >= size {
			break
		}
		if len(pm.val) == 0 {
			continue // hole
		}
		if len(pm.val) != BlockSize {
			return fmt.Errorf("block %d: stored page has %d bytes", blk, len(pm.val))
		}
		end := runStart + uint32(len(buf)/BlockSize)
		if len(buf) > 0 && (blk != end || blk%relSegBlocks == 0 || len(buf)+BlockSize > cap(buf)) {
			if err := flush(); err != nil {
				return err
			}
		}
		if len(buf) == 0 {
			runStart = blk
		}
		buf = append(buf, pm.val...)
	}
	if err := pm.err(); err != nil {
		return err
	}
	return flush()
}

// materializeInto prepares dst, has produce fill it through a dirSink and
// writes the manifest.
func materializeInto(ctx context.Context, id TimelineID, dst string, o MaterializeOptions, produce func(matSink) (LSN, error)) (MaterializeStats, error) {
	start := time.Now()
	var st MaterializeStats
	if o.Files == nil {
		o.Files = createFiles{}
	}
	if insideDir(dst, o.Manifest) {
		return st, fmt.Errorf("manifest %s is inside the data directory", o.Manifest)
	}
	if des, err := os.ReadDir(dst); err == nil {
		if len(des) > 0 {
			return st, fmt.Errorf("destination is not empty")
		}
		if err := os.Chmod(dst, 0o700); err != nil {
			return st, err
		}
	} else if errors.Is(err, os.ErrNotExist) {
		if err := os.Mkdir(dst, 0o700); err != nil {
			return st, err
		}
	} else {
		return st, err
	}
	if err := o.Owner.Chown(dst); err != nil {
		return st, err
	}
	ds := &dirSink{dst: dst, owner: o.Owner, files: o.Files}
	ds.mu.mf = &manifest{Files: make(map[string]manifestFile)}
	at, err := produce(ds)
	if err != nil {
		return st, err
	}
	if err := ctx.Err(); err != nil {
		return st, err
	}
	ds.mu.Lock()
	defer ds.mu.Unlock()
	st = ds.mu.st
	mf := ds.mu.mf
	mf.Timeline, mf.LSN = id, at
	sort.Slice(mf.Forks, func(i, j int) bool { return relLess(mf.Forks[i].Rel, mf.Forks[j].Rel) })
	if o.Manifest != "" {
		// Not fsynced, like the files it describes: after a crash of the
		// machine the caller rebuilds the directory, and a manifest that
		// does not decode or match is ignored.
		if err := writeManifest(o.Manifest, mf, true); err != nil {
			return st, err
		}
	}
	st.Duration = time.Since(start)
	if secs := st.Duration.Seconds(); secs > 0 {
		st.ThroughputMB = float64(st.Bytes) / 1e6 / secs
	}
	return st, nil
}

// dirSink writes a materialized data directory and records its manifest.
type dirSink struct {
	dst   string
	owner Owner
	files FileSource
	mu    struct {
		sync.Mutex
		mf *manifest
		st MaterializeStats
	}
}

var _ matSink = (*dirSink)(nil)

func (d *dirSink) full(p string) (string, error) {
	if !validRelPath(p) {
		return "", fmt.Errorf("invalid path %q in a materialization", p)
	}
	return filepath.Join(d.dst, filepath.FromSlash(p)), nil
}

func (d *dirSink) dir(p string) error {
	full, err := d.full(p)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(full, 0o700); err != nil {
		return err
	}
	return d.owner.Chown(full)
}

func (d *dirSink) file(p string, v []byte) error {
	full, err := d.full(p)
	if err != nil {
		return err
	}
	if len(v) == 0 || (v[0] != fileContent && v[0] != fileSparse) {
		return fmt.Errorf("file %s: not a file value", p)
	}
	if err := writeFileValue(d.files, full, v); err != nil {
		return err
	}
	if err := d.owner.Chown(full); err != nil {
		return err
	}
	info, err := os.Stat(full)
	if err != nil {
		return err
	}
	var h uint64
	if v[0] == fileContent {
		h = xxhash.Sum64(v[1:])
	}
	d.mu.Lock()
	d.mu.mf.Files[p] = manifestFile{Size: info.Size(), MTime: info.ModTime().UnixNano(), Hash: h}
	d.mu.st.Files++
	d.mu.st.Bytes += info.Size()
	d.mu.Unlock()
	return nil
}

// fork creates the fork's segment files, empty; pages are written into
// them and each is truncated to its exact size at close.
func (d *dirSink) fork(rel RelTag, size uint32) (forkSink, error) {
	if size >= droppedSize {
		return nil, fmt.Errorf("fork %s: %d blocks: too large", rel, size)
	}
	fw := &forkWriter{d: d, rel: rel, size: size, hashes: make([]uint64, size)}
	for i := range fw.hashes {
		fw.hashes[i] = zeroPageHash
	}
	nseg := max(1, (uint64(size)+uint64(relSegBlocks)-1)/uint64(relSegBlocks))
	fw.segs = make([]*os.File, nseg)
	if err := os.MkdirAll(filepath.Join(d.dst, filepath.Dir(filepath.FromSlash(rel.path(0)))), 0o700); err != nil {
		return nil, err
	}
	for i := range fw.segs {
		full := filepath.Join(d.dst, filepath.FromSlash(rel.path(uint32(i))))
		f, err := d.files.Create(full)
		if err != nil {
			fw.closeFiles()
			return nil, err
		}
		fw.segs[i] = f
		if err := d.owner.Chown(full); err != nil {
			fw.closeFiles()
			return nil, err
		}
	}
	return fw, nil
}

// forkWriter is one fork being written: used by one goroutine.
type forkWriter struct {
	d      *dirSink
	rel    RelTag
	size   uint32
	segs   []*os.File
	hashes []uint64
	pages  int
}

func (f *forkWriter) write(blk uint32, pages []byte) error {
	n := uint32(len(pages) / BlockSize)
	if len(pages)%BlockSize != 0 || n == 0 || blk+n > f.size || blk/relSegBlocks != (blk+n-1)/relSegBlocks {
		return fmt.Errorf("fork %s: bad page run at block %d (%d bytes, fork of %d blocks)", f.rel, blk, len(pages), f.size)
	}
	for i := range n {
		f.hashes[blk+i] = xxhash.Sum64(pages[i*BlockSize : (i+1)*BlockSize])
	}
	f.pages += int(n)
	_, err := f.segs[blk/relSegBlocks].WriteAt(pages, int64(blk%relSegBlocks)*BlockSize)
	return err
}

func (f *forkWriter) closeFiles() {
	for _, s := range f.segs {
		if s != nil {
			s.Close()
		}
	}
}

func (f *forkWriter) close() error {
	defer f.closeFiles()
	files := make(map[string]manifestFile, len(f.segs))
	for i, s := range f.segs {
		blocks := min(uint64(f.size)-min(uint64(f.size), uint64(i)*uint64(relSegBlocks)), uint64(relSegBlocks))
		if err := s.Truncate(int64(blocks) * BlockSize); err != nil {
			return err
		}
		info, err := s.Stat()
		if err != nil {
			return err
		}
		err = s.Close()
		f.segs[i] = nil
		if err != nil {
			return err
		}
		files[f.rel.path(uint32(i))] = manifestFile{Size: info.Size(), MTime: info.ModTime().UnixNano()}
	}
	d := f.d
	d.mu.Lock()
	defer d.mu.Unlock()
	d.mu.st.Pages += f.pages
	d.mu.st.Files += len(files)
	d.mu.st.Bytes += int64(f.size) * BlockSize
	d.mu.mf.Forks = append(d.mu.mf.Forks, manifestFork{Rel: f.rel, Hashes: f.hashes})
	for p, mf := range files {
		d.mu.mf.Files[p] = mf
	}
	return nil
}

// writeFileValue creates a non-relation file ('F' or 'S' value).
func writeFileValue(files FileSource, full string, v []byte) error {
	f, err := files.Create(full)
	if err != nil {
		return err
	}
	if v[0] == fileContent {
		if _, err := f.Write(v[1:]); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
	size, chunks, err := decodeSparse(v)
	if err != nil {
		f.Close()
		return err
	}
	for _, c := range chunks {
		if _, err := f.WriteAt(c.data, int64(c.off)); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Truncate(int64(size)); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

var _ io.WriterAt = (*os.File)(nil)
