package pagestore

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"go.uber.org/zap"
)

type collectResult struct {
	deleted int
	freed   int64
	// freedCommitted is the part of freed that StoredBytes counted
	// (uncommitted versions never were).
	freedCommitted int64
	kept           map[LSN]bool // LSNs of the committed versions kept
}

// collect deletes versions of timeline id: with uncommitted, every version
// whose LSN is not in images; with shadowed, every committed version that
// is not the newest committed version <= some read point.
func (s *Store) collect(ctx context.Context, id TimelineID, readPoints []LSN, images []LSN, uncommitted, shadowed bool) (collectResult, error) {
	res := collectResult{kept: make(map[LSN]bool)}
	committed := make(map[LSN]bool, len(images))
	for _, x := range images {
		committed[x] = true
	}
	rps := slices.Clone(readPoints)
	slices.Sort(rps)
	slices.Reverse(rps)
	rps = slices.Compact(rps)

	bw := &batchWriter{db: s.db}
	defer bw.close()
	del := func(k []byte, vlen int) error {
		if bw.b == nil {
			bw.b = s.db.NewBatch()
		}
		_ = bw.b.Delete(k, nil)
		res.deleted++
		res.freed += int64(vlen)
		if bw.b.Len() >= batchFlushBytes {
			return bw.flush()
		}
		return nil
	}
	for _, kind := range []byte{kindSize, kindPage, kindFile} {
		p := tlPrefix(kind, id)
		it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: successor(p)})
		if err != nil {
			return res, err
		}
		var group []byte
		claim := 0
		n := 0
		for it.First(); it.Valid(); it.Next() {
			if n++; n%4096 == 0 {
				if err := ctx.Err(); err != nil {
					it.Close()
					return res, err
				}
			}
			k := it.Key()
			g := k[:len(k)-8]
			if !bytes.Equal(g, group) {
				group = append(group[:0], g...)
				claim = 0
			}
			x := keyLSN(k)
			if !committed[x] {
				if uncommitted {
					if err := del(k, len(it.Value())); err != nil {
						it.Close()
						return res, err
					}
				}
				continue
			}
			if !shadowed {
				res.kept[x] = true
				continue
			}
			claimed := false
			for claim < len(rps) && rps[claim] >= x {
				claimed = true
				claim++
			}
			if claimed {
				res.kept[x] = true
				continue
			}
			res.freedCommitted += int64(len(it.Value()))
			if err := del(k, len(it.Value())); err != nil {
				it.Close()
				return res, err
			}
		}
		if err := it.Error(); err != nil {
			it.Close()
			return res, err
		}
		if err := it.Close(); err != nil {
			return res, err
		}
	}
	if err := bw.flush(); err != nil {
		return res, err
	}
	// The caller's metadata update is synced and covers these batches.
	return res, nil
}

// GC removes the versions no read point needs: per timeline the read
// points are its Head() and the ParentLSN of each child. Uncommitted
// versions are removed unless the timeline has an ingest in progress.
func (s *Store) GC(ctx context.Context) (GCStats, error) {
	start := time.Now()
	var st GCStats
	tls, err := s.Timelines(ctx)
	if err != nil {
		return st, err
	}
	for _, t := range tls {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		n, freed, err := s.gcTimeline(ctx, t.ID)
		st.VersionsDeleted += n
		st.BytesFreed += freed
		if err != nil {
			st.Duration = time.Since(start)
			return st, fmt.Errorf("gc timeline %d: %w", t.ID, err)
		}
	}
	// A dropped timeline's versions go with range deletions, which free
	// no disk until a compaction rewrites the files holding them; pebble
	// gets to that late, so a store whose branches came and went would
	// not shrink back.
	if n := s.dropped.Swap(0); n > 0 {
		if err := s.db.Compact(ctx, []byte{kindFile}, []byte{kindSize + 1}, false); err != nil {
			s.dropped.Add(n)
			st.Duration = time.Since(start)
			return st, fmt.Errorf("compact after %d dropped timelines: %w", n, err)
		}
	}
	st.Duration = time.Since(start)
	s.log.Info("gc done", zap.Int("versions_deleted", st.VersionsDeleted),
		zap.Int64("bytes_freed", st.BytesFreed), zap.Duration("duration", st.Duration))
	return st, nil
}

func (s *Store) gcTimeline(ctx context.Context, id TimelineID) (int, int64, error) {
	s.mu.Lock()
	s.waitGCLocked(id)
	t, ok := s.mu.timelines[id]
	if !ok {
		s.mu.Unlock()
		return 0, 0, nil
	}
	s.mu.gcing[id] = true
	_, ingesting := s.mu.ingesting[id]
	head := t.Head()
	images := slices.Clone(t.Images)
	rps := []LSN{head}
	for _, c := range s.childrenLocked(id) {
		rps = append(rps, s.mu.timelines[c].ParentLSN)
	}
	rps = append(rps, retained(t, s.opts.Retention, time.Now())...)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.mu.gcing, id)
		s.mu.cond.Broadcast()
		s.mu.Unlock()
	}()

	res, err := s.collect(ctx, id, rps, images, !ingesting, true)
	if err != nil {
		return res.deleted, res.freed, err
	}
	need := res.kept
	for _, r := range rps {
		for i := len(images) - 1; i >= 0; i-- {
			if images[i] <= r {
				need[images[i]] = true
				break
			}
		}
	}
	if len(images) > 0 {
		need[images[len(images)-1]] = true
	}
	trim := !ingesting && len(need) < len(images)
	if res.deleted == 0 && !trim && (ingesting || t.Pending == 0) {
		return 0, 0, nil
	}
	_, err = s.updateMeta(id, nil, func(t *Timeline) {
		t.StoredBytes = max(0, t.StoredBytes-res.freedCommitted)
		if !ingesting {
			t.Images = slices.DeleteFunc(t.Images, func(x LSN) bool { return !need[x] })
			for l := range t.ImageTimes {
				if !need[l] {
					delete(t.ImageTimes, l)
				}
			}
			t.Pending = 0
		}
	})
	return res.deleted, res.freed, err
}

// retained are the images of t a retention window keeps as read points:
// those stored within it, and the newest one stored before it (a branch
// at the window's start replays WAL from there).
func retained(t *Timeline, window time.Duration, now time.Time) []LSN {
	if window <= 0 {
		return nil
	}
	cutoff := now.Add(-window)
	var keep []LSN
	for i := len(t.Images) - 1; i >= 0; i-- {
		img := t.Images[i]
		keep = append(keep, img)
		if at, ok := t.ImageTimes[img]; ok && at.Before(cutoff) {
			break
		}
	}
	return keep
}

// OldestRetained is the oldest image of timeline id that GC keeps for the
// retention window (0: none recorded); WAL before it is not needed for
// point-in-time branching.
func (s *Store) OldestRetained(ctx context.Context, id TimelineID) (LSN, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.mu.timelines[id]
	if !ok {
		return 0, fmt.Errorf("timeline %d: %w", id, ErrNotFound)
	}
	if len(t.Images) == 0 {
		return 0, ctx.Err()
	}
	keep := retained(t, s.opts.Retention, time.Now())
	if len(keep) == 0 {
		return t.Head(), ctx.Err()
	}
	return keep[len(keep)-1], ctx.Err()
}

// RunGC runs a GC pass on s every interval until ctx ends (0: never).
func RunGC(ctx context.Context, s Service, every time.Duration, log *zap.Logger) {
	if every <= 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := s.GC(ctx); err != nil && ctx.Err() == nil {
				log.Warn("pagestore gc", zap.String("trigger", "interval"), zap.Error(err))
			}
		}
	}
}
