package pagestore

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"
)

func TestKeyEncoding(t *testing.T) {
	rel := RelTag{Spc: 1663, DB: 5, Rel: 16384, Fork: ForkVM}
	tests := []struct {
		name string
		key  []byte
		want decoded
	}{
		{"size", sizeKey(7, rel, 0x1_0000_0028), decoded{kind: kindSize, tl: 7, rel: rel, lsn: 0x1_0000_0028}},
		{"page", pageKey(1<<40, rel, 131073, 42), decoded{kind: kindPage, tl: 1 << 40, rel: rel, blk: 131073, lsn: 42}},
		{"file", fileKey(3, "global/pg_control", 99), decoded{kind: kindFile, tl: 3, path: "global/pg_control", lsn: 99}},
		{"file max lsn", fileKey(3, "a", ^LSN(0)), decoded{kind: kindFile, tl: 3, path: "a", lsn: ^LSN(0)}},
		{"meta", metaKey(9), decoded{kind: kindMeta, tl: 9}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeKey(tc.key)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("decode: got %+v, want %+v", got, tc.want)
			}
		})
	}

	// Ordering: within one key, newer LSNs first; timelines do not interleave.
	order := []struct {
		name string
		a, b []byte // a must sort before b
	}{
		{"newer page version first", pageKey(1, rel, 3, 200), pageKey(1, rel, 3, 100)},
		{"block order", pageKey(1, rel, 3, 1), pageKey(1, rel, 4, 1000)},
		{"block beyond 2^24", pageKey(1, rel, 1<<24, 1), pageKey(1, rel, 1<<24+1, 1)},
		{"timeline 1 before 2", pageKey(1, RelTag{Spc: 0xFFFFFFFF, DB: 0xFFFFFFFF, Rel: 0xFFFFFFFF, Fork: 3}, 0xFFFFFFFF, 0), pageKey(2, RelTag{}, 0, ^LSN(0))},
		{"timeline 255 before 256", sizeKey(255, rel, 1), sizeKey(256, rel, 1)},
		{"newer size first", sizeKey(1, rel, 0x2_0000_0000), sizeKey(1, rel, 0x1_FFFF_FFFF)},
		{"newer file first", fileKey(1, "base/5/PG_VERSION", 10), fileKey(1, "base/5/PG_VERSION", 9)},
		{"file versions before longer path", fileKey(1, "base", 0), fileKey(1, "base/5", ^LSN(0))},
		{"file timelines", fileKey(1, "\xff\xff", 0), fileKey(2, "", ^LSN(0))},
	}
	for _, tc := range order {
		t.Run(tc.name, func(t *testing.T) {
			if bytes.Compare(tc.a, tc.b) >= 0 {
				t.Fatalf("%x does not sort before %x", tc.a, tc.b)
			}
		})
	}
	for _, p := range []string{"", "pg_wal/000000010000000000000001"} {
		if !bytes.HasPrefix(fileKey(4, p, 5), filePrefix(4, p)) {
			t.Fatal("file key lacks its prefix")
		}
	}
	// Sparse values round trip.
	v := encodeSparse(1<<20, []sparseChunk{{0, []byte("abc")}, {8192, []byte("de")}})
	size, chunks, err := decodeSparse(v)
	if err != nil || size != 1<<20 || len(chunks) != 2 || string(chunks[1].data) != "de" || chunks[1].off != 8192 {
		t.Fatalf("sparse round trip: %d %+v %v", size, chunks, err)
	}
	if got := walFileName(1, 0x2A, 16<<20); got != "00000001000000000000002A" {
		t.Fatalf("walFileName: %s", got)
	}
	if got := walFileName(3, 0x1005, 16<<20); got != "000000030000001000000005" {
		t.Fatalf("walFileName: %s", got)
	}
}

// TestReadAtLSN covers reads across root -> child -> grandchild.
func TestReadAtLSN(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	a := RelTag{Spc: 1663, DB: 5, Rel: 100}
	b := RelTag{Spc: 1663, DB: 5, Rel: 200}
	c := RelTag{Spc: 1663, DB: 5, Rel: 300}

	root := mustCreate(t, s, "root", 0, 0)
	writeImage(t, s, root.ID, 10, true, func(w *imageWriter) {
		w.size(a, 2)
		w.page(a, 0, pageOf(1))
		w.page(a, 1, pageOf(2))
		w.size(b, 1)
		w.page(b, 0, pageOf(3))
		w.size(c, 4)
		for i := uint32(0); i < 4; i++ {
			w.page(c, i, pageOf(byte(0x10+i)))
		}
		w.file("PG_VERSION", "15\n")
		w.file("postgresql.conf", "a=1\n")
	})
	writeImage(t, s, root.ID, 20, true, func(w *imageWriter) {
		w.page(a, 0, pageOf(4))
		w.file("postgresql.conf", "a=2\n")
	})
	writeImage(t, s, root.ID, 30, true, func(w *imageWriter) {
		w.page(a, 1, pageOf(5))
	})

	if _, err := s.CreateTimeline(ctx, "bad", root.ID, 5); !errors.Is(err, ErrInvalidLSN) {
		t.Fatalf("branch before first image: %v", err)
	}
	// After the head: the branch reads the head image and records the
	// point as the target its WAL replay reaches.
	if tl, err := s.CreateTimeline(ctx, "later", root.ID, 31); err != nil || tl.ParentLSN != 30 || tl.Target != 31 {
		t.Fatalf("branch after head: %+v, %v", tl, err)
	} else if err := s.DropTimeline(ctx, tl.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateTimeline(ctx, "bad", 999, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown parent: %v", err)
	}
	child := mustCreate(t, s, "child", root.ID, 25) // rounded down to 20
	if child.ParentLSN != 20 || child.Head() != 20 {
		t.Fatalf("child branch point %s, head %s", child.ParentLSN, child.Head())
	}
	writeImage(t, s, child.ID, 40, true, func(w *imageWriter) {
		w.drop(b)           // relation dropped in the middle level
		w.size(c, 1)        // truncated
		w.del("PG_VERSION") // file deleted
		w.page(a, 1, pageOf(6))
	})
	writeImage(t, s, child.ID, 50, true, func(w *imageWriter) {
		w.size(c, 3) // re-extended: blocks 1, 2 are new
		w.page(c, 1, nil)
		w.page(c, 2, pageOf(0x22))
	})
	grand := mustCreate(t, s, "grandchild", child.ID, 0)
	if grand.ParentLSN != 50 {
		t.Fatalf("grandchild branch point %s", grand.ParentLSN)
	}
	writeImage(t, s, grand.ID, 60, true, func(w *imageWriter) {
		w.page(a, 0, pageOf(7))
	})
	// A crashed ingest: versions at 70 that are not committed.
	writeImage(t, s, grand.ID, 70, false, func(w *imageWriter) {
		w.page(a, 0, pageOf(8))
		w.drop(a)
		w.del("postgresql.conf")
	})
	writeImage(t, s, root.ID, 35, false, func(w *imageWriter) {
		w.page(a, 1, pageOf(9))
	})

	zero := make([]byte, BlockSize)
	pages := []struct {
		name string
		tl   TimelineID
		at   LSN
		rel  RelTag
		blk  uint32
		want []byte // nil: ErrNotFound
	}{
		{"root at 10", root.ID, 10, a, 0, pageOf(1)},
		{"root at 15", root.ID, 15, a, 0, pageOf(1)},
		{"root at 20", root.ID, 20, a, 0, pageOf(4)},
		{"root head blk1", root.ID, 0, a, 1, pageOf(5)},
		{"root head ignores uncommitted", root.ID, 40, a, 1, pageOf(5)},
		{"root before first image", root.ID, 5, a, 0, nil},
		{"root beyond size", root.ID, 0, a, 2, nil},
		{"child inherits at branch", child.ID, 20, a, 1, pageOf(2)},
		{"child does not see parent's later image", child.ID, 0, a, 0, pageOf(4)},
		{"child own", child.ID, 40, a, 1, pageOf(6)},
		{"child dropped rel", child.ID, 40, b, 0, nil},
		{"child before drop", child.ID, 20, b, 0, pageOf(3)},
		{"child truncated", child.ID, 40, c, 1, nil},
		{"child truncated keeps blk0", child.ID, 40, c, 0, pageOf(0x10)},
		{"child re-extended zero page", child.ID, 50, c, 1, zero},
		{"child re-extended", child.ID, 50, c, 2, pageOf(0x22)},
		{"child re-extended beyond", child.ID, 50, c, 3, nil},
		{"grand at branch", grand.ID, 50, a, 0, pageOf(4)},
		{"grand own", grand.ID, 0, a, 0, pageOf(7)},
		{"grand inherits child", grand.ID, 0, a, 1, pageOf(6)},
		{"grand dropped rel", grand.ID, 0, b, 0, nil},
		{"grand re-extended", grand.ID, 0, c, 2, pageOf(0x22)},
		{"grand crashed ingest invisible", grand.ID, 70, a, 0, pageOf(7)},
		{"parent read at 30 from root", root.ID, 30, c, 3, pageOf(0x13)},
	}
	for _, tc := range pages {
		t.Run(tc.name, func(t *testing.T) { expectPage(t, s, tc.tl, tc.at, tc.rel, tc.blk, tc.want) })
	}

	sizes := []struct {
		tl   TimelineID
		at   LSN
		rel  RelTag
		want uint32
		ok   bool
	}{
		{root.ID, 0, c, 4, true},
		{child.ID, 40, c, 1, true},
		{child.ID, 50, c, 3, true},
		{child.ID, 40, b, 0, false},
		{grand.ID, 70, a, 2, true}, // the uncommitted drop is invisible
	}
	for _, tc := range sizes {
		got, err := s.RelSize(ctx, tc.tl, tc.at, tc.rel)
		if tc.ok && (err != nil || got != tc.want) {
			t.Errorf("RelSize(%d, %s, %s) = %d, %v; want %d", tc.tl, tc.at, tc.rel, got, err, tc.want)
		}
		if !tc.ok && !errors.Is(err, ErrNotFound) {
			t.Errorf("RelSize(%d, %s, %s) = %d, %v; want ErrNotFound", tc.tl, tc.at, tc.rel, got, err)
		}
	}

	filesTests := []struct {
		tl   TimelineID
		at   LSN
		path string
		want string // "" = not found
	}{
		{root.ID, 10, "postgresql.conf", "a=1\n"},
		{root.ID, 0, "postgresql.conf", "a=2\n"},
		{root.ID, 0, "PG_VERSION", "15\n"},
		{child.ID, 20, "PG_VERSION", "15\n"},
		{child.ID, 40, "PG_VERSION", ""},
		{grand.ID, 0, "PG_VERSION", ""},
		{grand.ID, 70, "postgresql.conf", "a=2\n"},
		{grand.ID, 0, "nonexistent", ""},
	}
	for _, tc := range filesTests {
		got, err := s.ReadFile(ctx, tc.tl, tc.at, tc.path)
		if tc.want == "" {
			if !errors.Is(err, ErrNotFound) {
				t.Errorf("ReadFile(%d, %s, %s) = %q, %v; want ErrNotFound", tc.tl, tc.at, tc.path, got, err)
			}
		} else if err != nil || string(got) != tc.want {
			t.Errorf("ReadFile(%d, %s, %s) = %q, %v; want %q", tc.tl, tc.at, tc.path, got, err, tc.want)
		}
	}

	// Merged views agree with the point reads.
	lv, _, err := s.readPoint(grand.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	fs, err := forkSizes(ctx, s.db, lv)
	if err != nil {
		t.Fatal(err)
	}
	if len(fs) != 2 || fs[a] != 2 || fs[c] != 3 {
		t.Fatalf("forkSizes: %v", fs)
	}
	fv, err := files(ctx, s.db, lv)
	if err != nil {
		t.Fatal(err)
	}
	if len(fv) != 1 || string(fv["postgresql.conf"]) != "\x46a=2\n" {
		t.Fatalf("files: %q", fv)
	}

	// Metadata survives a reopen; ids are not reused.
	dir := s.opts.Dir
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	s = s2
	got, _ := s.Timelines(context.Background())
	if len(got) != 3 || got[2].ID != grand.ID || !slices.Equal(got[1].Images, []LSN{40, 50}) {
		t.Fatalf("timelines after reopen: %+v", got)
	}
	if kids := s.Children(root.ID); !slices.Equal(kids, []TimelineID{child.ID}) {
		t.Fatalf("children: %v", kids)
	}
	expectPage(t, s, grand.ID, 0, a, 0, pageOf(7))
	if err := s.DropTimeline(ctx, grand.ID); err != nil {
		t.Fatal(err)
	}
	n := mustCreate(t, s, "new", child.ID, 0)
	if n.ID <= grand.ID {
		t.Fatalf("timeline id %d reused (dropped %d)", n.ID, grand.ID)
	}
}
