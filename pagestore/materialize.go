package pagestore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
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
	start := time.Now()
	if o.Files == nil {
		o.Files = createFiles{}
	}
	st, err := s.materialize(ctx, id, at, dst, o.Owner, o.Manifest, o.Files)
	st.Duration = time.Since(start)
	if secs := st.Duration.Seconds(); secs > 0 {
		st.ThroughputMB = float64(st.Bytes) / 1e6 / secs
	}
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

func (s *Store) materialize(ctx context.Context, id TimelineID, at LSN, dst string, owner Owner, manifestPath string, src FileSource) (MaterializeStats, error) {
	var st MaterializeStats
	if insideDir(dst, manifestPath) {
		return st, fmt.Errorf("manifest %s is inside the data directory", manifestPath)
	}
	lv, at, err := s.readPoint(id, at)
	if err != nil {
		return st, err
	}
	if at == 0 {
		return st, fmt.Errorf("nothing ingested: %w", ErrNotFound)
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
	if err := owner.Chown(dst); err != nil {
		return st, err
	}

	snap := s.db.NewSnapshot()
	defer snap.Close()
	sizes, err := forkSizes(ctx, snap, lv)
	if err != nil {
		return st, err
	}
	fileVals, err := files(ctx, snap, lv)
	if err != nil {
		return st, err
	}
	mf := &manifest{Timeline: id, LSN: at, Files: make(map[string]manifestFile)}

	// Directories first, parents before children.
	paths := make([]string, 0, len(fileVals))
	for p := range fileVals {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		if v := fileVals[p]; v[0] == fileDir {
			full := filepath.Join(dst, filepath.FromSlash(p))
			if err := os.MkdirAll(full, 0o700); err != nil {
				return st, err
			}
			if err := owner.Chown(full); err != nil {
				return st, err
			}
		}
	}
	for i, p := range paths {
		if i%256 == 0 {
			if err := ctx.Err(); err != nil {
				return st, err
			}
		}
		v := fileVals[p]
		if v[0] != fileContent && v[0] != fileSparse {
			continue
		}
		full := filepath.Join(dst, filepath.FromSlash(p))
		if err := writeFileValue(src, full, v); err != nil {
			return st, fmt.Errorf("write %s: %w", p, err)
		}
		if err := owner.Chown(full); err != nil {
			return st, err
		}
		info, err := os.Stat(full)
		if err != nil {
			return st, err
		}
		var h uint64
		if v[0] == fileContent {
			h = xxhash.Sum64(v[1:])
		}
		mf.Files[p] = manifestFile{Size: info.Size(), MTime: info.ModTime().UnixNano(), Hash: h}
		st.Files++
		st.Bytes += info.Size()
	}

	// Relation forks in parallel.
	rels := sortedRels(sizes)
	results, err := forEachFork(ctx, s.opts.Parallelism, rels,
		func() []byte { return make([]byte, 0, readChunk) },
		func(ctx context.Context, buf []byte, r RelTag) (matFork, error) {
			return materializeFork(ctx, snap, lv, r, sizes[r], dst, owner, src, buf)
		}, nil)
	if err != nil {
		return st, err
	}
	for i, r := range rels {
		res := results[i]
		st.Pages += res.pages
		st.Files += len(res.files)
		st.Bytes += int64(sizes[r]) * BlockSize
		mf.Forks = append(mf.Forks, manifestFork{Rel: r, Hashes: res.hashes})
		for p, f := range res.files {
			mf.Files[p] = f
		}
	}
	if manifestPath != "" {
		// Not fsynced, like the files it describes: after a crash of the
		// machine the caller rebuilds the directory, and a manifest that
		// does not decode or match is ignored.
		if err := writeManifest(manifestPath, mf, true); err != nil {
			return st, err
		}
	}
	return st, nil
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

type matFork struct {
	pages  int
	hashes []uint64
	files  map[string]manifestFile
}

// materializeFork writes the segment files of one fork: non-zero pages in
// large sequential writes, zero pages as holes, each segment truncated to
// its exact size.
func materializeFork(ctx context.Context, snap *pebble.Snapshot, lv []level, rel RelTag, size uint32, dst string, owner Owner, files FileSource, buf []byte) (matFork, error) {
	res := matFork{hashes: make([]uint64, size), files: make(map[string]manifestFile)}
	for i := range res.hashes {
		res.hashes[i] = zeroPageHash
	}
	nseg := max(1, (uint64(size)+uint64(relSegBlocks)-1)/uint64(relSegBlocks))
	segs := make([]*os.File, nseg)
	defer func() {
		for _, f := range segs {
			if f != nil {
				f.Close()
			}
		}
	}()
	if err := os.MkdirAll(filepath.Join(dst, filepath.Dir(filepath.FromSlash(rel.path(0)))), 0o700); err != nil {
		return res, err
	}
	for i := range segs {
		full := filepath.Join(dst, filepath.FromSlash(rel.path(uint32(i))))
		f, err := files.Create(full)
		if err != nil {
			return res, err
		}
		segs[i] = f
		if err := owner.Chown(full); err != nil {
			return res, err
		}
	}
	var runStart uint32 // first block of buf
	buf = buf[:0]
	flush := func() error {
		if len(buf) == 0 {
			return nil
		}
		seg := runStart / relSegBlocks
		off := int64(runStart%relSegBlocks) * BlockSize
		_, err := segs[seg].WriteAt(buf, off)
		buf = buf[:0]
		return err
	}
	if size > 0 {
		pm, err := newPageMerger(snap, lv, rel)
		if err != nil {
			return res, err
		}
		defer pm.close()
		for n := 0; pm.next(); n++ {
			if n%1024 == 0 {
				if err := ctx.Err(); err != nil {
					return res, err
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
				return res, fmt.Errorf("block %d: stored page has %d bytes", blk, len(pm.val))
			}
			res.hashes[blk] = xxhash.Sum64(pm.val)
			res.pages++
			end := runStart + uint32(len(buf)/BlockSize)
			if len(buf) > 0 && (blk != end || blk%relSegBlocks == 0 || len(buf)+BlockSize > cap(buf)) {
				if err := flush(); err != nil {
					return res, err
				}
			}
			if len(buf) == 0 {
				runStart = blk
			}
			buf = append(buf, pm.val...)
		}
		if err := pm.err(); err != nil {
			return res, err
		}
		if err := flush(); err != nil {
			return res, err
		}
	}
	for i, f := range segs {
		blocks := min(uint64(size)-min(uint64(size), uint64(i)*uint64(relSegBlocks)), uint64(relSegBlocks))
		if err := f.Truncate(int64(blocks) * BlockSize); err != nil {
			return res, err
		}
		if err := f.Close(); err != nil {
			segs[i] = nil
			return res, err
		}
		segs[i] = nil
		p := rel.path(uint32(i))
		info, err := os.Stat(filepath.Join(dst, filepath.FromSlash(p)))
		if err != nil {
			return res, err
		}
		res.files[p] = manifestFile{Size: info.Size(), MTime: info.ModTime().UnixNano()}
	}
	return res, nil
}

var _ io.WriterAt = (*os.File)(nil)
