package pagestore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/cespare/xxhash/v2"
)

// scanCounts says how much of the directory a scan read.
type scanCounts struct{ scanned, skipped int }

// scanIngest is the compute side of an ingest: it walks the stopped data
// directory pgdata and sends sink what the store needs, which with a
// manifest (mf, describing the head) is only what changed. It returns the
// manifest of the directory as scanned (Timeline and LSN unset).
func scanIngest(ctx context.Context, pgdata string, cp Checkpoint, mf *manifest, workers int, sink ingestSink) (*manifest, scanCounts, error) {
	var cnt scanCounts
	dd, err := scanDataDir(pgdata)
	if err != nil {
		return nil, cnt, err
	}
	var mfForks map[RelTag][]uint64
	if mf != nil {
		mfForks = make(map[RelTag][]uint64, len(mf.Forks))
		for _, f := range mf.Forks {
			mfForks[f.Rel] = f.Hashes
		}
	}
	newMf := &manifest{Files: make(map[string]manifestFile)}

	// Relation forks, in parallel; each worker has its own sink worker.
	type scanWorker struct {
		w   ingestWorker
		buf []byte
	}
	rels := sortedRels(dd.forks)
	results, err := forEachFork(ctx, workers, rels,
		func() *scanWorker { return &scanWorker{w: sink.worker(), buf: make([]byte, readChunk)} },
		func(ctx context.Context, sw *scanWorker, r RelTag) (forkScan, error) {
			return scanFork(ctx, dd.forks[r], mf, mfForks[r], sw.w, sw.buf)
		},
		func(sw *scanWorker) error { return sw.w.done() })
	if err != nil {
		return nil, cnt, err
	}
	for i, r := range rels {
		res := results[i]
		cnt.scanned += res.scanned
		cnt.skipped += res.skipped
		newMf.Forks = append(newMf.Forks, manifestFork{Rel: r, Hashes: res.hashes})
		for _, sg := range dd.forks[r].segs {
			newMf.Files[sg.path] = manifestFile{Size: sg.size, MTime: sg.mtime}
		}
	}

	// Non-relation files and the synthesized WAL.
	for i, e := range dd.entries {
		if i%256 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, cnt, err
			}
		}
		if e.dir {
			if err := sink.dir(e.path); err != nil {
				return nil, cnt, err
			}
			continue
		}
		if mf != nil {
			if old, ok := mf.Files[e.path]; ok && old.Size == e.size && old.MTime == e.mtime {
				if err := sink.unchanged(e.path, e.size); err != nil {
					return nil, cnt, err
				}
				cnt.skipped++
				newMf.Files[e.path] = old
				continue
			}
		}
		content, err := os.ReadFile(e.abs)
		if err != nil {
			return nil, cnt, err
		}
		cnt.scanned++
		newMf.Files[e.path] = manifestFile{Size: e.size, MTime: e.mtime, Hash: xxhash.Sum64(content)}
		if err := sink.file(e.path, content); err != nil {
			return nil, cnt, err
		}
	}
	wal, err := synthesizeWAL(pgdata, cp)
	if err != nil {
		return nil, cnt, err
	}
	for _, w := range wal {
		if err := sink.wal(w.path, w.val); err != nil {
			return nil, cnt, err
		}
	}
	return newMf, cnt, nil
}

// forkScan is what scanning one fork found.
type forkScan struct {
	hashes           []uint64
	scanned, skipped int
}

// forkBlocks is a fork's size from its segment files, which must be
// contiguous; after a short one only empty (truncated-away) segments may
// follow. It sorts ff.segs.
func forkBlocks(ff *forkFiles) (uint32, error) {
	sort.Slice(ff.segs, func(i, j int) bool { return ff.segs[i].seg < ff.segs[j].seg })
	var size uint64
	short := false
	for i, sg := range ff.segs {
		blocks := uint64(sg.size / BlockSize)
		if blocks > uint64(relSegBlocks) {
			return 0, fmt.Errorf("segment %s has %d blocks, more than %d", sg.path, blocks, relSegBlocks)
		}
		if short || uint32(i) != sg.seg {
			if blocks == 0 {
				continue
			}
			return 0, fmt.Errorf("segment %s follows a missing or short segment", sg.path)
		}
		size = uint64(sg.seg)*uint64(relSegBlocks) + blocks
		if blocks < uint64(relSegBlocks) {
			short = true
		}
	}
	if size >= droppedSize {
		return 0, fmt.Errorf("fork has %d blocks: too large", size)
	}
	return uint32(size), nil
}

// scanFork sends one fork: unchanged when the manifest proves it, else
// its pages (only those whose hash differs from the manifest's, when
// there is one), in runs straight out of the read buffer.
func scanFork(ctx context.Context, ff *forkFiles, mf *manifest, mfHash []uint64, w ingestWorker, buf []byte) (forkScan, error) {
	var res forkScan
	rel := ff.rel
	size, err := forkBlocks(ff)
	if err != nil {
		return res, err
	}
	if mf != nil && mfHash != nil && uint64(len(mfHash)) == uint64(size) {
		same := true
		for _, sg := range ff.segs {
			f, ok := mf.Files[sg.path]
			if !ok || f.Size != sg.size || f.MTime != sg.mtime {
				same = false
				break
			}
		}
		if same {
			res.hashes = mfHash
			res.skipped = len(ff.segs)
			return res, w.forkSize(rel, size, true)
		}
	}
	if err := w.forkSize(rel, size, false); err != nil {
		return res, err
	}
	res.hashes = make([]uint64, size)
	for _, sg := range ff.segs {
		if sg.size == 0 {
			continue
		}
		res.scanned++
		if err := scanSegment(ctx, sg, mf != nil, mfHash, res.hashes, rel, w, buf); err != nil {
			return res, err
		}
	}
	return res, nil
}

// scanSegment reads one segment file chunk by chunk, hashes its blocks
// into hashes and sends the changed ones.
func scanSegment(ctx context.Context, sg relSeg, useMf bool, mfHash, hashes []uint64, rel RelTag, w ingestWorker, buf []byte) error {
	f, err := os.Open(sg.abs)
	if err != nil {
		return err
	}
	defer f.Close()
	base := sg.seg * relSegBlocks
	for off := int64(0); off < sg.size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(int64(len(buf)), sg.size-off)
		if _, err := f.ReadAt(buf[:n], off); err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read %s: %w", sg.path, err)
		}
		first := base + uint32(off/BlockSize)
		runFrom := -1 // start of the pending run of changed pages in buf
		send := func(end int64) error {
			if runFrom < 0 {
				return nil
			}
			err := w.pages(rel, first+uint32(int64(runFrom)/BlockSize), buf[runFrom:end])
			runFrom = -1
			return err
		}
		for p := int64(0); p < n; p += BlockSize {
			blk := first + uint32(p/BlockSize)
			h := xxhash.Sum64(buf[p : p+BlockSize])
			hashes[blk] = h
			if useMf && int(blk) < len(mfHash) && h == mfHash[blk] {
				if err := send(p); err != nil {
					return err
				}
				continue
			}
			if runFrom < 0 {
				runFrom = int(p)
			}
		}
		if err := send(n); err != nil {
			return err
		}
		off += n
	}
	return nil
}
