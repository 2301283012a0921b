package walkeeper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// SegmentName is the pg_wal file name of segment segno on timeline tli for
// segments of segSize bytes.
func SegmentName(tli uint32, segno uint64, segSize int) string {
	perID := uint64(0x100000000) / uint64(segSize)
	return fmt.Sprintf("%08X%08X%08X", tli, segno/perID, segno%perID)
}

// WriteSegments writes k's stored WAL of ns from `from` (rounded down to
// its page) to its flush LSN into WAL segment files in pgwal (PostgreSQL's
// pg_wal directory), named for timeline tli and segment size segSize. An
// existing segment file is written into in place; a missing one is created
// as a full segSize file (sparse beyond what is written), mode 0600, chowned
// to uid/gid unless uid is -1. When a missing segment is created, its first
// page (which PostgreSQL validates whenever it opens a segment) is written
// too if the keeper has it. The last, partial page is written whole (zero
// beyond the flush LSN). All written files and pgwal are fsynced. It returns
// the end LSN written (the flush LSN). ErrNoWAL if k has no WAL at `from`.
func WriteSegments(ctx context.Context, k Service, ns uint64, from LSN, tli uint32, segSize int, pgwal string, uid, gid int) (LSN, error) {
	if segSize < PageSize || segSize&(segSize-1) != 0 || segSize > 1<<30 {
		return 0, fmt.Errorf("walkeeper: invalid WAL segment size %d", segSize)
	}
	wal, err := k.Export(ctx, ns, from, 0)
	if err != nil {
		return 0, err
	}
	defer wal.Body.Close()
	if from == wal.Flush && from == wal.Start {
		return wal.Flush, nil // nothing to write
	}

	w := &segWriter{dir: pgwal, tli: tli, segSize: segSize, uid: uid, gid: gid, files: map[uint64]*os.File{}}
	defer w.closeAll()
	w.created = func(segno uint64) error {
		segStart := segno * uint64(segSize)
		if segStart >= wal.Start {
			return nil
		}
		head, err := k.Export(ctx, ns, segStart, segStart+PageSize)
		if errors.Is(err, ErrNoWAL) {
			return nil // PostgreSQL ends recovery before this segment
		} else if err != nil {
			return err
		}
		defer head.Body.Close()
		page := make([]byte, PageSize)
		if _, err := io.ReadFull(head.Body, page); err != nil {
			return fmt.Errorf("walkeeper: read the first page of segment %s: %w", SegmentName(tli, segno, segSize), err)
		}
		return w.writePage(segStart, page)
	}
	page := make([]byte, PageSize)
	for lsn := wal.Start; lsn < wal.Flush; lsn += PageSize {
		if _, err := io.ReadFull(wal.Body, page); err != nil {
			return 0, fmt.Errorf("walkeeper: read WAL page %s of %d: %w", fmtLSN(lsn), ns, err)
		}
		if err := w.writePage(lsn, page); err != nil {
			return 0, err
		}
	}
	if err := w.syncAll(); err != nil {
		return 0, err
	}
	return wal.Flush, nil
}

// segWriter writes WAL pages into segment files.
type segWriter struct {
	dir      string
	tli      uint32
	segSize  int
	uid, gid int
	files    map[uint64]*os.File
	created  func(segno uint64) error // called after a missing segment was created
}

func (w *segWriter) file(segno uint64) (*os.File, error) {
	if f := w.files[segno]; f != nil {
		return f, nil
	}
	path := filepath.Join(w.dir, SegmentName(w.tli, segno, w.segSize))
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err == nil {
		w.files[segno] = f
		return f, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("walkeeper: open segment: %w", err)
	}
	f, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("walkeeper: create segment: %w", err)
	}
	w.files[segno] = f
	if err := f.Truncate(int64(w.segSize)); err != nil {
		return nil, fmt.Errorf("walkeeper: size segment %s: %w", path, err)
	}
	if w.uid != -1 {
		if err := f.Chown(w.uid, w.gid); err != nil {
			return nil, fmt.Errorf("walkeeper: chown segment %s: %w", path, err)
		}
	}
	if w.created != nil {
		if err := w.created(segno); err != nil {
			return nil, err
		}
	}
	return f, nil
}

func (w *segWriter) writePage(lsn LSN, page []byte) error {
	segno := lsn / uint64(w.segSize)
	f, err := w.file(segno)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(page, int64(lsn%uint64(w.segSize))); err != nil {
		return fmt.Errorf("walkeeper: write WAL page %s: %w", fmtLSN(lsn), err)
	}
	return nil
}

func (w *segWriter) syncAll() error {
	for _, f := range w.files {
		if err := f.Sync(); err != nil {
			return fmt.Errorf("walkeeper: fsync %s: %w", f.Name(), err)
		}
	}
	d, err := os.Open(w.dir)
	if err != nil {
		return fmt.Errorf("walkeeper: open %s: %w", w.dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("walkeeper: fsync %s: %w", w.dir, err)
	}
	return nil
}

func (w *segWriter) closeAll() {
	for _, f := range w.files {
		_ = f.Close()
	}
}
