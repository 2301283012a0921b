package pagestore

import "context"

// Service is the page store as a compute node uses it: the Store in this
// process, or a Client of a standalone `neonproxy pagestore` over the
// network. Both run the compute-side half of Materialize and Ingest on
// the caller's files.
type Service interface {
	CreateTimelineWith(ctx context.Context, name string, parent TimelineID, o CreateOptions) (Timeline, error)
	Timeline(ctx context.Context, id TimelineID) (Timeline, error)
	// Timelines returns all timelines sorted by ID.
	Timelines(ctx context.Context) ([]Timeline, error)
	DropTimeline(ctx context.Context, id TimelineID) error
	Materialize(ctx context.Context, id TimelineID, at LSN, dst string, o MaterializeOptions) (MaterializeStats, error)
	Ingest(ctx context.Context, id TimelineID, pgdata string, cp Checkpoint, manifestPath string) (IngestStats, error)
	// OldestRetained is the oldest image GC keeps for the retention
	// window (0: none); WAL before it serves no branch.
	OldestRetained(ctx context.Context, id TimelineID) (LSN, error)
	GC(ctx context.Context) (GCStats, error)
	// Diff lists the relations either timeline changed since the newest
	// state they share (see Store.Diff).
	Diff(ctx context.Context, a, b TimelineID) (DiffResult, error)
	// DiskUsage is the disk space the store uses.
	DiskUsage(ctx context.Context) (uint64, error)
	Close() error
}

var _ Service = (*Store)(nil)
