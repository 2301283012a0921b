package pagestore

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestDropAndGC(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	a := RelTag{Spc: 1663, DB: 5, Rel: 100}
	b := RelTag{Spc: 1663, DB: 5, Rel: 200}
	root := mustCreate(t, s, "root", 0, 0)
	for i, lsn := range []LSN{10, 20, 30} {
		writeImage(t, s, root.ID, lsn, true, func(w *imageWriter) {
			if i == 0 {
				w.size(a, 2)
				w.size(b, 1)
				w.page(b, 0, pageOf(0xB0))
				w.page(a, 1, pageOf(0xA1))
			}
			w.page(a, 0, pageOf(byte(i+1)))
			w.file("f", string(rune('a'+i)))
		})
	}
	child := mustCreate(t, s, "child", root.ID, 20)
	writeImage(t, s, child.ID, 25, true, func(w *imageWriter) { w.page(a, 1, pageOf(0xC1)) })
	writeImage(t, s, root.ID, 40, false, func(w *imageWriter) { w.page(a, 0, pageOf(0xEE)) }) // crashed ingest

	if err := s.DropTimeline(ctx, root.ID); !errors.Is(err, ErrHasChildren) {
		t.Fatalf("drop with children: %v", err)
	}
	s.mu.Lock()
	s.mu.ingesting[child.ID] = 99
	s.mu.Unlock()
	if err := s.DropTimeline(ctx, child.ID); !errors.Is(err, ErrIngestActive) {
		t.Fatalf("drop during ingest: %v", err)
	}
	s.mu.Lock()
	delete(s.mu.ingesting, child.ID)
	s.mu.Unlock()

	type read struct {
		tl   TimelineID
		at   LSN
		rel  RelTag
		blk  uint32
		want []byte
	}
	heads := []read{
		{root.ID, 0, a, 0, pageOf(3)},
		{root.ID, 0, a, 1, pageOf(0xA1)},
		{root.ID, 0, b, 0, pageOf(0xB0)},
		{child.ID, 0, a, 0, pageOf(2)},
		{child.ID, 0, a, 1, pageOf(0xC1)},
		{child.ID, 0, b, 0, pageOf(0xB0)},
	}
	for _, r := range heads {
		expectPage(t, s, r.tl, r.at, r.rel, r.blk, r.want)
	}
	expectPage(t, s, root.ID, 10, a, 0, pageOf(1))
	before, _ := s.Timeline(context.Background(), root.ID)

	st, err := s.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Root: page a/0@10 and file f@10 are shadowed; page a/0@40 is uncommitted.
	if st.VersionsDeleted != 3 || st.BytesFreed != 2*BlockSize+2 {
		t.Fatalf("gc stats: %+v", st)
	}
	for _, r := range heads {
		expectPage(t, s, r.tl, r.at, r.rel, r.blk, r.want)
	}
	// Reading at 10 now sees nothing for a/0's shadowed version.
	expectPage(t, s, root.ID, 10, a, 0, make([]byte, BlockSize))
	after, _ := s.Timeline(context.Background(), root.ID)
	if after.StoredBytes != before.StoredBytes-(BlockSize+2) {
		t.Fatalf("stored bytes %d -> %d", before.StoredBytes, after.StoredBytes)
	}
	// Image 10 still holds the kept versions of a/1 and b/0.
	if !slices.Equal(after.Images, []LSN{10, 20, 30}) {
		t.Fatalf("images after gc: %v", after.Images)
	}
	if st, err := s.GC(ctx); err != nil || st.VersionsDeleted != 0 {
		t.Fatalf("second gc: %+v, %v", st, err)
	}

	// Without the child, its branch point is no longer a read point.
	if err := s.DropTimeline(ctx, child.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Timeline(context.Background(), child.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("dropped timeline: %v", err)
	}
	if _, err := s.ReadPage(ctx, child.ID, 0, a, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("read of a dropped timeline: %v", err)
	}
	st, err = s.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.VersionsDeleted != 2 { // a/0@20, f@20
		t.Fatalf("gc after drop: %+v", st)
	}
	after, _ = s.Timeline(context.Background(), root.ID)
	if !slices.Equal(after.Images, []LSN{10, 30}) {
		t.Fatalf("images after second gc: %v", after.Images)
	}
	for _, r := range heads[:3] {
		expectPage(t, s, r.tl, r.at, r.rel, r.blk, r.want)
	}
	if u, _ := s.DiskUsage(context.Background()); u == 0 {
		t.Fatal("disk usage 0")
	}
}

func TestRetained(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	tl := &Timeline{Images: []LSN{10, 20, 30, 40}, ImageTimes: map[LSN]time.Time{
		10: now.Add(-10 * 24 * time.Hour), 20: now.Add(-8 * 24 * time.Hour), 30: now.Add(-2 * 24 * time.Hour), 40: now.Add(-time.Hour),
	}}
	tests := []struct {
		name   string
		window time.Duration
		want   []LSN
	}{
		{"no window", 0, nil},
		{"7 days: two inside and the newest before", 7 * 24 * time.Hour, []LSN{40, 30, 20}},
		{"1 minute: only the newest before", time.Minute, []LSN{40}},
		{"30 days: all", 30 * 24 * time.Hour, []LSN{40, 30, 20, 10}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := retained(tl, tc.window, now); !slices.Equal(got, tc.want) {
				t.Fatalf("retained = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestGCCompactsDroppedTimelines: the disk a dropped timeline's versions
// took is given back by the next GC pass, not whenever pebble gets to the
// range deletions.
func TestGCCompactsDroppedTimelines(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	root := mustCreate(t, s, "root", 0, 0)
	writeImage(t, s, root.ID, 0x100, true, func(w *imageWriter) { w.page(RelTag{1663, 5, 1000, 0}, 0, pageOf(1)) })
	tables := func() int64 {
		if err := s.db.Flush(); err != nil {
			t.Fatal(err)
		}
		return s.db.Metrics().Total().TablesSize
	}
	base := tables()
	child := mustCreate(t, s, "child", root.ID, 0x100)
	rnd := rand.New(rand.NewPCG(1, 2))
	writeImage(t, s, child.ID, 0x200, true, func(w *imageWriter) {
		for blk := uint32(0); blk < 2000; blk++ { // 16 MB that does not compress
			p := make([]byte, BlockSize)
			for i := range p {
				p[i] = byte(rnd.Uint32())
			}
			w.page(RelTag{1663, 5, 2000, 0}, blk, p)
		}
	})
	full := tables()
	if err := s.DropTimeline(ctx, child.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GC(ctx); err != nil {
		t.Fatal(err)
	}
	// Live tables only: the WAL's few MB are pebble's own, whatever the
	// data, and obsolete files go in the background.
	after := s.db.Metrics().Total().TablesSize
	t.Logf("table bytes: %d before the child, %d with it, %d after its drop and a GC pass", base, full, after)
	if full-base < 10<<20 {
		t.Fatalf("the child's pages took only %d bytes", full-base)
	}
	if after-base > 1<<20 {
		t.Errorf("%d table bytes still used after the drop and a GC pass (the child took %d)", after-base, full-base)
	}
}
