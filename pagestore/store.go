package pagestore

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"go.uber.org/zap"
)

// Options configure a Store.
type Options struct {
	Dir         string      // pebble directory (created if missing)
	NoSync      bool        // tests only: no fsync of pebble writes
	Logger      *zap.Logger // nil: zap.NewNop()
	Parallelism int         // materialize/ingest workers; default max(2, GOMAXPROCS)
	CacheBytes  int64       // pebble block cache; default 64 MiB
	// Retention keeps, besides each head and child branch point, every
	// image stored within this long and the newest one before it, so that
	// a branch can start at any point of the window (0: no window).
	Retention time.Duration
}

// Store is the page store. It is safe for concurrent use.
type Store struct {
	db   *pebble.DB
	opts Options
	log  *zap.Logger
	wo   *pebble.WriteOptions // Sync unless NoSync

	closeOnce sync.Once
	// dropped counts timelines dropped since GC last compacted their
	// range deletions away.
	dropped atomic.Int64

	// metaMu serialises metadata writes; held across the synced write but
	// never together with mu.
	metaMu         sync.Mutex
	counterWritten TimelineID // guarded by metaMu

	mu struct {
		sync.Mutex
		cond      *sync.Cond
		timelines map[TimelineID]*Timeline
		nextID    TimelineID
		ingesting map[TimelineID]LSN
		gcing     map[TimelineID]bool
	}
}

// pebbleLogger must satisfy pebble's logger interface.
var _ pebble.Logger = (*zap.SugaredLogger)(nil)

// Open opens (creating if needed) the store in o.Dir.
func Open(o Options) (*Store, error) {
	if o.Dir == "" {
		return nil, errors.New("pagestore: Options.Dir is required")
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Parallelism <= 0 {
		o.Parallelism = max(2, runtime.GOMAXPROCS(0))
	}
	if o.CacheBytes <= 0 {
		o.CacheBytes = 64 << 20
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("pagestore: create %s: %w", o.Dir, err)
	}
	cache := pebble.NewCache(o.CacheBytes)
	defer cache.Unref()
	db, err := pebble.Open(o.Dir, &pebble.Options{
		Cache:  cache,
		Logger: o.Logger.Named("pebble").Sugar(),
	})
	if err != nil {
		return nil, fmt.Errorf("pagestore: open pebble %s: %w", o.Dir, err)
	}
	s := &Store{db: db, opts: o, log: o.Logger, wo: pebble.Sync}
	if o.NoSync {
		s.wo = pebble.NoSync
	}
	s.mu.cond = sync.NewCond(&s.mu.Mutex)
	s.mu.timelines = make(map[TimelineID]*Timeline)
	s.mu.ingesting = make(map[TimelineID]LSN)
	s.mu.gcing = make(map[TimelineID]bool)
	if err := s.load(); err != nil {
		_ = db.Close()
		return nil, err
	}
	return s, nil
}

func (s *Store) load() error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{kindMeta}, UpperBound: []byte{kindMeta + 1}})
	if err != nil {
		return fmt.Errorf("pagestore: load timelines: %w", err)
	}
	defer it.Close()
	maxID := TimelineID(0)
	for it.First(); it.Valid(); it.Next() {
		var tl Timeline
		if err := json.Unmarshal(it.Value(), &tl); err != nil {
			return fmt.Errorf("pagestore: decode timeline metadata %x: %w", it.Key(), err)
		}
		s.mu.timelines[tl.ID] = &tl
		maxID = max(maxID, tl.ID)
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("pagestore: load timelines: %w", err)
	}
	next := maxID + 1
	v, closer, err := s.db.Get([]byte{kindCounter})
	switch {
	case err == nil:
		if len(v) == 8 {
			next = max(next, TimelineID(binary.BigEndian.Uint64(v)))
		}
		_ = closer.Close()
	case !errors.Is(err, pebble.ErrNotFound):
		return fmt.Errorf("pagestore: load timeline counter: %w", err)
	}
	s.mu.nextID = next
	return nil
}

// Close closes the store. Further calls return nil.
func (s *Store) Close() error {
	var err error
	s.closeOnce.Do(func() {
		if e := s.db.Close(); e != nil {
			err = fmt.Errorf("pagestore: close: %w", e)
		}
	})
	return err
}

// DiskUsage is pebble's estimate of the disk space it uses.
func (s *Store) DiskUsage(ctx context.Context) (uint64, error) {
	return s.db.Metrics().DiskSpaceUsage(), ctx.Err()
}

func cloneTimeline(t *Timeline) Timeline {
	c := *t
	c.Images = slices.Clone(t.Images)
	return c
}

// waitGCLocked waits until GC is not processing id. s.mu must be held.
func (s *Store) waitGCLocked(id TimelineID) {
	for s.mu.gcing[id] {
		s.mu.cond.Wait()
	}
}

// CreateTimeline creates a timeline branching off parent at LSN at (see
// the package documentation); parent 0 creates an empty root. at 0 is the
// parent's newest image; otherwise the branch reads the parent's newest
// image at or before at (ErrInvalidLSN when there is none) and, when at is
// after it, records at as its Target (reached by replaying WAL).
func (s *Store) CreateTimeline(ctx context.Context, name string, parent TimelineID, at LSN) (Timeline, error) {
	return s.CreateTimelineWith(ctx, name, parent, CreateOptions{At: at})
}

// CreateTimelineWith is CreateTimeline with a choice of branch point: an
// LSN, or a time (the parent's newest image stored at or before it, and
// TargetTime for the WAL replay after it).
func (s *Store) CreateTimelineWith(ctx context.Context, name string, parent TimelineID, o CreateOptions) (Timeline, error) {
	at := o.At
	if err := ctx.Err(); err != nil {
		return Timeline{}, err
	}
	s.mu.Lock()
	tl := Timeline{Name: name, Parent: parent, CreatedAt: time.Now().UTC()}
	if parent != 0 {
		s.waitGCLocked(parent)
		p, ok := s.mu.timelines[parent]
		if !ok {
			s.mu.Unlock()
			return Timeline{}, fmt.Errorf("create timeline %q: parent %d: %w", name, parent, ErrNotFound)
		}
		// Until its first ingest a child reads what its parent read at the
		// branch point; the parent's newest image's size is exact for a
		// branch at the head (the only kind the API makes before issue 5).
		tl.LogicalSize = p.LogicalSize
		if !o.AtTime.IsZero() {
			img, ok := p.ImageAt(o.AtTime)
			if !ok {
				s.mu.Unlock()
				return Timeline{}, fmt.Errorf("create timeline %q: parent %d has no image stored at or before %s: %w", name, parent, o.AtTime.Format(time.RFC3339), ErrInvalidLSN)
			}
			tl.ParentLSN, tl.TargetTime = img, o.AtTime.UTC()
		} else if at == 0 {
			tl.ParentLSN = p.Head()
		} else {
			// A point after the newest image is reached by replaying
			// WAL (Target); whether that WAL exists is the caller's to know.
			found := false
			for i := len(p.Images) - 1; i >= 0; i-- {
				if p.Images[i] <= at {
					tl.ParentLSN, found = p.Images[i], true
					break
				}
			}
			if found && at > tl.ParentLSN {
				tl.Target = at
			}
			if !found {
				s.mu.Unlock()
				return Timeline{}, fmt.Errorf("create timeline %q: parent %d has no image at or before %s: %w", name, parent, at, ErrInvalidLSN)
			}
		}
	}
	tl.ID = s.mu.nextID
	s.mu.nextID++
	// Reserve the child's branch point against GC until it is visible.
	if parent != 0 {
		s.mu.gcing[parent] = true
	}
	next := s.mu.nextID
	s.mu.Unlock()
	s.metaMu.Lock()
	defer s.metaMu.Unlock()

	release := func() {
		if parent != 0 {
			s.mu.Lock()
			delete(s.mu.gcing, parent)
			s.mu.cond.Broadcast()
			s.mu.Unlock()
		}
	}
	b := s.db.NewBatch()
	defer b.Close()
	meta, err := json.Marshal(tl)
	if err != nil {
		release()
		return Timeline{}, fmt.Errorf("create timeline %q: %w", name, err)
	}
	_ = b.Set(metaKey(tl.ID), meta, nil)
	next = max(next, s.counterWritten)
	_ = b.Set([]byte{kindCounter}, binary.BigEndian.AppendUint64(nil, uint64(next)), nil)
	if err := b.Commit(s.wo); err != nil {
		release()
		return Timeline{}, fmt.Errorf("create timeline %q: %w", name, err)
	}
	s.counterWritten = next
	s.mu.Lock()
	c := tl
	s.mu.timelines[tl.ID] = &c
	if parent != 0 {
		delete(s.mu.gcing, parent)
		s.mu.cond.Broadcast()
	}
	s.mu.Unlock()
	s.log.Info("created timeline", zap.Uint64("id", uint64(tl.ID)), zap.String("name", name),
		zap.Uint64("parent", uint64(parent)), zap.Stringer("parent_lsn", tl.ParentLSN))
	return cloneTimeline(&tl), nil
}

// Timeline returns timeline id's metadata.
func (s *Store) Timeline(ctx context.Context, id TimelineID) (Timeline, error) {
	if err := ctx.Err(); err != nil {
		return Timeline{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.mu.timelines[id]
	if !ok {
		return Timeline{}, fmt.Errorf("timeline %d: %w", id, ErrNotFound)
	}
	return cloneTimeline(t), nil
}

// Timelines returns all timelines sorted by ID.
func (s *Store) Timelines(ctx context.Context) ([]Timeline, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	out := make([]Timeline, 0, len(s.mu.timelines))
	for _, t := range s.mu.timelines {
		out = append(out, cloneTimeline(t))
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b Timeline) int { return cmpID(a.ID, b.ID) })
	return out, nil
}

func cmpID(a, b TimelineID) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Children returns the timelines whose parent is id, sorted.
func (s *Store) Children(id TimelineID) []TimelineID {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.childrenLocked(id)
}

func (s *Store) childrenLocked(id TimelineID) []TimelineID {
	var out []TimelineID
	for _, t := range s.mu.timelines {
		if t.Parent == id && id != 0 {
			out = append(out, t.ID)
		}
	}
	slices.Sort(out)
	return out
}

// DropTimeline deletes timeline id and all its versions.
func (s *Store) DropTimeline(ctx context.Context, id TimelineID) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	s.waitGCLocked(id)
	if _, ok := s.mu.timelines[id]; !ok {
		s.mu.Unlock()
		return fmt.Errorf("drop timeline %d: %w", id, ErrNotFound)
	}
	if len(s.childrenLocked(id)) > 0 {
		s.mu.Unlock()
		return fmt.Errorf("drop timeline %d: %w", id, ErrHasChildren)
	}
	if _, ok := s.mu.ingesting[id]; ok {
		s.mu.Unlock()
		return fmt.Errorf("drop timeline %d: %w", id, ErrIngestActive)
	}
	// Hide it first so no new reader or ingest starts on it.
	t := s.mu.timelines[id]
	delete(s.mu.timelines, id)
	s.mu.Unlock()

	b := s.db.NewBatch()
	defer b.Close()
	for _, k := range []byte{kindSize, kindPage, kindFile} {
		p := tlPrefix(k, id)
		_ = b.DeleteRange(p, successor(p), nil)
	}
	_ = b.Delete(metaKey(id), nil)
	if err := b.Commit(s.wo); err != nil {
		s.mu.Lock()
		s.mu.timelines[id] = t
		s.mu.Unlock()
		return fmt.Errorf("drop timeline %d: %w", id, err)
	}
	s.dropped.Add(1)
	s.log.Info("dropped timeline", zap.Uint64("id", uint64(id)))
	return nil
}

// updateMeta applies fn to a copy of timeline id's metadata, writes it
// (synced unless NoSync) together with the batch's other contents, and
// installs it. b may be nil.
func (s *Store) updateMeta(id TimelineID, b *pebble.Batch, fn func(t *Timeline)) (Timeline, error) {
	s.metaMu.Lock()
	defer s.metaMu.Unlock()
	s.mu.Lock()
	cur, ok := s.mu.timelines[id]
	if !ok {
		s.mu.Unlock()
		return Timeline{}, fmt.Errorf("timeline %d: %w", id, ErrNotFound)
	}
	t := cloneTimeline(cur)
	s.mu.Unlock()
	fn(&t)
	meta, err := json.Marshal(t)
	if err != nil {
		return Timeline{}, err
	}
	if b == nil {
		b = s.db.NewBatch()
		defer b.Close()
	}
	_ = b.Set(metaKey(id), meta, nil)
	if err := b.Commit(s.wo); err != nil {
		return Timeline{}, err
	}
	s.mu.Lock()
	c := t
	s.mu.timelines[id] = &c
	s.mu.Unlock()
	return cloneTimeline(&t), nil
}
