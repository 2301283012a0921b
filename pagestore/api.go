package pagestore

import (
	"errors"
	"fmt"
	"time"
)

// LSN is a PostgreSQL WAL position.
type LSN uint64

// String formats the LSN as PostgreSQL does ("16/B374D848").
func (l LSN) String() string { return fmt.Sprintf("%X/%X", uint64(l)>>32, uint32(l)) }

// ParseLSN parses PostgreSQL's "X/Y" form.
func ParseLSN(s string) (LSN, error) {
	var hi, lo uint32
	if _, err := fmt.Sscanf(s, "%X/%X", &hi, &lo); err != nil {
		return 0, fmt.Errorf("invalid LSN %q: want X/Y in hexadecimal", s)
	}
	return LSN(uint64(hi)<<32 | uint64(lo)), nil
}

// TimelineID names a timeline; ids are never reused.
type TimelineID uint64

// Timeline is a branch's history in the store: its own page versions on
// top of its parent's as of ParentLSN.
type Timeline struct {
	ID        TimelineID `json:"id"`
	Name      string     `json:"name"` // the branch it was created for (informational)
	Parent    TimelineID `json:"parent,omitempty"`
	ParentLSN LSN        `json:"parent_lsn,omitempty"`
	CreatedAt time.Time  `json:"created_at"`
	// Images are the LSNs of the committed ingests, ascending. Versions
	// whose LSN is not here (an ingest that crashed) are never read.
	Images []LSN `json:"images,omitempty"`
	// LogicalSize is the bytes the head reads (relation forks at their
	// size plus non-relation files, without the synthesized pg_wal).
	LogicalSize int64 `json:"logical_size"`
	// StoredBytes is the bytes of values under this timeline's own keys:
	// what dropping it frees.
	StoredBytes int64 `json:"stored_bytes"`
	// Pending is the LSN of an ingest that started and has not committed
	// (0: none). Its leftover versions are removed before the next ingest
	// or by GC.
	Pending LSN `json:"pending,omitempty"`
	// Target is the LSN a branch created at a point in its parent's
	// history starts at when that point is after ParentLSN (the parent's
	// newest image at or before it): its first start replays the parent's
	// WAL from ParentLSN to Target. 0 once the branch has an image of its
	// own, or when it starts at ParentLSN itself.
	Target LSN `json:"target,omitempty"`
	// TargetTime is, for a branch created at a time, that time: its first
	// start replays the parent's WAL from ParentLSN up to it.
	TargetTime time.Time `json:"target_time,omitzero"`
	// ImageTimes says when each image was stored (after its compute's
	// shutdown checkpoint): every commit in an image is older.
	ImageTimes map[LSN]time.Time `json:"image_times,omitempty"`
}

// ImageAt returns the newest image stored at or before t (ok false: none).
func (t Timeline) ImageAt(at time.Time) (LSN, bool) {
	for i := len(t.Images) - 1; i >= 0; i-- {
		if it, ok := t.ImageTimes[t.Images[i]]; ok && !it.After(at) {
			return t.Images[i], true
		}
	}
	return 0, false
}

// Head is the LSN a start of the timeline reads: its newest image, or
// ParentLSN while it has none of its own (0 for an empty root).
func (t Timeline) Head() LSN {
	if n := len(t.Images); n > 0 {
		return t.Images[n-1]
	}
	return t.ParentLSN
}

// Errors callers tell apart with errors.Is.
var (
	ErrNotFound     = errors.New("pagestore: not found")
	ErrHasChildren  = errors.New("pagestore: timeline has child timelines")
	ErrInvalidLSN   = errors.New("pagestore: invalid LSN")
	ErrNotShutDown  = errors.New("pagestore: data directory was not shut down cleanly")
	ErrIngestActive = errors.New("pagestore: an ingest of this timeline is in progress")
)

// Checkpoint is what the caller read from the stopped data directory's
// control file (pg_controldata): the shutdown checkpoint an image is
// taken at.
type Checkpoint struct {
	LSN        LSN    // "Latest checkpoint location"
	TimeLineID uint32 // "Latest checkpoint's TimeLineID" (PostgreSQL's, not ours)
	WALSegSize int    // "Bytes per WAL segment"
}

// CreateOptions tune CreateTimelineWith.
type CreateOptions struct {
	// At is the LSN of the parent's history to branch at (0: its newest
	// image); see CreateTimeline.
	At LSN
	// AtTime, when set, branches at a time instead: the parent's newest
	// image stored at or before it, with TargetTime set.
	AtTime time.Time
}

// Owner is who materialized files belong to; UID -1 leaves them to the
// calling process.
type Owner struct{ UID, GID int }

// IngestStats says what an ingest wrote.
type IngestStats struct {
	FilesScanned  int   // files read (unchanged files skipped by the manifest are not)
	FilesSkipped  int   // files the manifest proved unchanged
	PagesWritten  int   // relation blocks stored
	FilesWritten  int   // non-relation files (and directories, tombstones) stored
	BytesWritten  int64 // value bytes stored
	UsedManifest  bool  // the manifest matched and served as the comparison base
	Duration      time.Duration
	LogicalSize   int64
	RelationForks int
}

// MaterializeStats says what a materialization wrote.
type MaterializeStats struct {
	Files        int
	Pages        int   // non-zero blocks written
	Bytes        int64 // logical bytes of the data directory (sparse holes included)
	Duration     time.Duration
	ThroughputMB float64 // logical MB/s
}

// GCStats says what a GC pass removed.
type GCStats struct {
	VersionsDeleted int
	BytesFreed      int64
	Duration        time.Duration
}
