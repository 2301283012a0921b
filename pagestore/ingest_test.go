package pagestore

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

const testWALSeg = 64 << 10

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func writeFile(t testing.TB, dir, rel string, data []byte) {
	t.Helper()
	p := filepath.Join(dir, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// smallSegments makes relation segments 4 blocks long for the test.
func smallSegments(t *testing.T) {
	old := relSegBlocks
	relSegBlocks = 4
	t.Cleanup(func() { relSegBlocks = old })
}

// makeDataDir builds a fake PostgreSQL data directory and returns the
// checkpoint it "stopped" at.
func makeDataDir(t testing.TB, dir string) Checkpoint {
	r := rand.New(rand.NewPCG(1, 2))
	blocks := func(n int) []byte { return randBytes(r, n*BlockSize) }
	writeFile(t, dir, "PG_VERSION", []byte("15\n"))
	writeFile(t, dir, "postgresql.conf", []byte("fsync = off\n"))
	writeFile(t, dir, "global/pg_control", randBytes(r, 8192))
	writeFile(t, dir, "global/1262", blocks(2))
	writeFile(t, dir, "base/5/PG_VERSION", []byte("15\n"))
	writeFile(t, dir, "base/5/pg_filenode.map", randBytes(r, 512))
	rel := blocks(10)                                           // 3 segments of 4, 4, 2 blocks
	copy(rel[3*BlockSize:4*BlockSize], make([]byte, BlockSize)) // a zero page
	writeFile(t, dir, "base/5/16384", rel[:4*BlockSize])
	writeFile(t, dir, "base/5/16384.1", rel[4*BlockSize:8*BlockSize])
	writeFile(t, dir, "base/5/16384.2", rel[8*BlockSize:])
	writeFile(t, dir, "base/5/16384_fsm", blocks(3))
	writeFile(t, dir, "base/5/16384_vm", blocks(1))
	writeFile(t, dir, "base/5/16390", nil)                          // empty relation
	writeFile(t, dir, "base/5/16400", make([]byte, 4*BlockSize))    // all zero
	writeFile(t, dir, "base/5/t3_16500", blocks(1))                 // temp relation: skipped
	writeFile(t, dir, "base/5/pg_internal.init", []byte("cache"))   // skipped
	writeFile(t, dir, "base/pgsql_tmp/pgsql_tmp123.0", []byte("x")) // skipped
	writeFile(t, dir, "postmaster.pid", []byte("123\n"))
	writeFile(t, dir, "postmaster.opts", []byte("postgres\n"))
	writeFile(t, dir, "pg_stat_tmp/global.stat", []byte("stats"))
	writeFile(t, dir, "pg_subtrans/0000", make([]byte, 8192))
	writeFile(t, dir, "pg_xact/0000", randBytes(r, 8192))
	writeFile(t, dir, "pg_logical/replorigin_checkpoint", randBytes(r, 16))
	for _, d := range []string{"pg_tblspc", "pg_replslot", "pg_notify", "pg_wal/archive_status"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, dir, "pg_wal/00000002.history", []byte("1\t0/3000000\tno recovery target specified\n"))
	cp := Checkpoint{LSN: testWALSeg + 0x3010, TimeLineID: 1, WALSegSize: testWALSeg}
	writeFile(t, dir, "pg_wal/"+walFileName(1, 1, testWALSeg), randBytes(r, testWALSeg))
	writeFile(t, dir, "pg_wal/"+walFileName(1, 2, testWALSeg), randBytes(r, testWALSeg))
	return cp
}

// excludedPath says which paths of makeDataDir an image does not keep.
func excludedPath(p string) bool {
	switch {
	case strings.HasPrefix(p, "pg_wal/"),
		p == "base/5/t3_16500", p == "base/5/pg_internal.init",
		strings.HasPrefix(p, "base/pgsql_tmp"),
		p == "postmaster.pid", p == "postmaster.opts",
		p == "pg_stat_tmp/global.stat", p == "pg_subtrans/0000":
		return true
	}
	return false
}

// treeOf maps slash paths to contents ("<dir>" for directories).
func treeOf(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := make(map[string]string)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if rel == "." || excludedPath(rel) {
			return nil
		}
		if d.IsDir() {
			out[rel] = "<dir>"
			return nil
		}
		b, err := os.ReadFile(p)
		out[rel] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func compareTrees(t *testing.T, src, dst string) {
	t.Helper()
	a, b := treeOf(t, src), treeOf(t, dst)
	for p, v := range a {
		w, ok := b[p]
		if !ok {
			t.Errorf("materialized tree lacks %s", p)
		} else if v != w {
			t.Errorf("%s differs (len %d vs %d)", p, len(v), len(w))
		}
	}
	for p := range b {
		if _, ok := a[p]; !ok {
			t.Errorf("materialized tree has extra %s", p)
		}
	}
}

func mkTemp(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "pagestore-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func TestIngestMaterializeRoundTrip(t *testing.T) {
	bothServices(t, openTest, testIngestMaterializeRoundTrip)
}

func testIngestMaterializeRoundTrip(t *testing.T, s *Store, svc Service) {
	smallSegments(t)
	ctx := context.Background()
	work := mkTemp(t)
	src := filepath.Join(work, "src")
	cp := makeDataDir(t, src)
	tl := mustCreate(t, s, "main", 0, 0)

	if _, err := svc.Materialize(ctx, tl.ID, 0, filepath.Join(work, "none"), MaterializeOptions{Owner: Owner{UID: -1}}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("materialize of an empty timeline: %v", err)
	}
	st, err := svc.Ingest(ctx, tl.ID, src, cp, filepath.Join(work, "ingest.manifest"))
	if err != nil {
		t.Fatal(err)
	}
	if st.RelationForks != 6 || st.UsedManifest || st.PagesWritten != 10+3+1+2+4 {
		t.Fatalf("ingest stats: %+v", st)
	}
	if st, err := svc.Ingest(ctx, tl.ID, src, cp, ""); err != nil || st.PagesWritten != 0 {
		t.Fatalf("re-ingest at the head: %+v, %v", st, err)
	}
	if _, err := svc.Ingest(ctx, tl.ID, src, Checkpoint{LSN: cp.LSN - 1, TimeLineID: 1, WALSegSize: testWALSeg}, ""); !errors.Is(err, ErrInvalidLSN) {
		t.Fatalf("ingest before the head: %v", err)
	}
	got, err := s.Timeline(context.Background(), tl.ID)
	if err != nil || got.Head() != cp.LSN || got.StoredBytes != st.BytesWritten || got.LogicalSize != st.LogicalSize {
		t.Fatalf("timeline after ingest: %+v, %v (stats %+v)", got, err, st)
	}

	dst := filepath.Join(work, "dst")
	mst, err := svc.Materialize(ctx, tl.ID, 0, dst, MaterializeOptions{Owner: Owner{UID: -1}, Manifest: filepath.Join(work, "mat.manifest")})
	if err != nil {
		t.Fatal(err)
	}
	if mst.Pages != 10+3+1+2-1 { // the zero page of 16384 and all of 16400 are holes
		t.Errorf("materialize stats: %+v", mst)
	}
	compareTrees(t, src, dst)

	// Excluded directories are kept empty.
	for _, d := range []string{"pg_stat_tmp", "pg_subtrans", "pg_tblspc", "pg_wal/archive_status"} {
		if des, err := os.ReadDir(filepath.Join(dst, d)); err != nil || len(des) != 0 {
			t.Errorf("%s: %v, %d entries", d, err, len(des))
		}
	}
	// Permissions.
	for p, want := range map[string]os.FileMode{"": 0o700, "base/5": 0o700, "base/5/16384.1": 0o600, "PG_VERSION": 0o600} {
		info, err := os.Stat(filepath.Join(dst, p))
		if err != nil || info.Mode().Perm() != want {
			t.Errorf("%s: mode %v, %v; want %v", p, info.Mode().Perm(), err, want)
		}
	}
	// The all-zero relation is a hole.
	info, err := os.Stat(filepath.Join(dst, "base/5/16400"))
	if err != nil {
		t.Fatal(err)
	}
	if info.Size() != 4*BlockSize || info.Sys().(*syscall.Stat_t).Blocks*512 >= info.Size() {
		t.Errorf("16400: size %d, %d blocks: not sparse", info.Size(), info.Sys().(*syscall.Stat_t).Blocks)
	}
	// Synthesized WAL: history file, the checkpoint segment with its first
	// page, the checkpoint's page and the next one; not the next segment.
	walName := walFileName(1, 1, testWALSeg)
	want, _ := os.ReadFile(filepath.Join(src, "pg_wal", walName))
	gotWAL, err := os.ReadFile(filepath.Join(dst, "pg_wal", walName))
	if err != nil || len(gotWAL) != testWALSeg {
		t.Fatalf("WAL segment: %d bytes, %v", len(gotWAL), err)
	}
	for off := 0; off < testWALSeg; off += xlogBlockSize {
		page, wantPage := gotWAL[off:off+xlogBlockSize], want[off:off+xlogBlockSize]
		if off == 0 || off == 0x2000 || off == 0x4000 {
			if !bytes.Equal(page, wantPage) {
				t.Errorf("WAL page at %#x differs", off)
			}
		} else if !bytes.Equal(page, zeroPage) {
			t.Errorf("WAL page at %#x not zero", off)
		}
	}
	if _, err := os.Stat(filepath.Join(dst, "pg_wal", walFileName(1, 2, testWALSeg))); !os.IsNotExist(err) {
		t.Errorf("next WAL segment materialized: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "pg_wal/00000002.history")); err != nil || len(b) == 0 {
		t.Errorf("history file: %v", err)
	}

	// Not empty destination.
	if _, err := svc.Materialize(ctx, tl.ID, 0, dst, MaterializeOptions{Owner: Owner{UID: -1}}); err == nil {
		t.Error("materialize into a non-empty directory succeeded")
	}
	// Round trip of the materialized directory: nothing changes.
	cp2 := cp
	cp2.LSN += 0x100
	st2, err := svc.Ingest(ctx, tl.ID, dst, cp2, filepath.Join(work, "mat.manifest"))
	if err != nil {
		t.Fatal(err)
	}
	if !st2.UsedManifest || st2.PagesWritten != 0 || st2.FilesScanned != 0 {
		t.Errorf("re-ingest of the materialized directory: %+v", st2)
	}

	// A tablespace and a torn relation file are refused.
	if err := os.Symlink(work, filepath.Join(src, "pg_tblspc", "16999")); err != nil {
		t.Fatal(err)
	}
	cp3 := cp2
	cp3.LSN += 0x100
	if _, err := svc.Ingest(ctx, tl.ID, src, cp3, ""); err == nil || !strings.Contains(err.Error(), "tablespaces are not supported") {
		t.Errorf("tablespace: %v", err)
	}
	os.Remove(filepath.Join(src, "pg_tblspc", "16999"))
	writeFile(t, src, "base/5/16500", make([]byte, 100))
	if _, err := svc.Ingest(ctx, tl.ID, src, cp3, ""); err == nil || !strings.Contains(err.Error(), "not a multiple") {
		t.Errorf("torn relation file: %v", err)
	}
	os.Remove(filepath.Join(src, "base/5/16500"))
	// The failed ingests left nothing visible; a retry at the same LSN works.
	if _, err := svc.Ingest(ctx, tl.ID, src, cp3, ""); err != nil {
		t.Fatal(err)
	}
	dst2 := filepath.Join(work, "dst2")
	if _, err := svc.Materialize(ctx, tl.ID, 0, dst2, MaterializeOptions{Owner: Owner{UID: -1}}); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, src, dst2)
}

func TestIngestChangesOnly(t *testing.T) { bothServices(t, openTest, testIngestChangesOnly) }

func testIngestChangesOnly(t *testing.T, s *Store, svc Service) {
	smallSegments(t)
	ctx := context.Background()
	work := mkTemp(t)
	src := filepath.Join(work, "src")
	cp := makeDataDir(t, src)
	tl := mustCreate(t, s, "main", 0, 0)
	mf := filepath.Join(work, "manifest")
	if _, err := svc.Ingest(ctx, tl.ID, src, cp, mf); err != nil {
		t.Fatal(err)
	}
	modify := func(file string, blk int, b byte) []byte {
		p := filepath.Join(src, file)
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		page := pageOf(b)
		if _, err := f.WriteAt(page, int64(blk)*BlockSize); err != nil {
			t.Fatal(err)
		}
		return page
	}
	rel := RelTag{Spc: 1663, DB: 5, Rel: 16384}
	tests := []struct {
		name     string
		file     string
		blk      int // within the segment file
		abs      uint32
		manifest string
	}{
		{"with manifest", "base/5/16384.1", 1, 5, mf},
		{"zero page becomes data, with manifest", "base/5/16384", 3, 3, mf},
		{"without manifest", "base/5/16384.2", 0, 8, ""},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			page := modify(tc.file, tc.blk, byte(0xA0+i))
			c := cp
			c.LSN = cp.LSN + LSN(i+1)*0x100
			before, _ := s.Timeline(context.Background(), tl.ID)
			st, err := svc.Ingest(ctx, tl.ID, src, c, tc.manifest)
			if err != nil {
				t.Fatal(err)
			}
			if st.PagesWritten != 1 || st.UsedManifest != (tc.manifest != "") {
				t.Fatalf("stats: %+v", st)
			}
			if tc.manifest != "" && st.FilesSkipped == 0 {
				t.Fatalf("manifest skipped no file: %+v", st)
			}
			expectPage(t, s, tl.ID, 0, rel, tc.abs, page)
			old, err := s.ReadPage(ctx, tl.ID, before.Head(), rel, tc.abs)
			if err != nil || bytes.Equal(old, page) {
				t.Fatalf("page at the previous head: %v (same: %v)", err, bytes.Equal(old, page))
			}
		})
	}
}

// TestCopyManifestForChild: a child that reads its parent's image starts
// on a directory materialized for the parent (compute.local_cow's
// template). The parent's manifest, retargeted with CopyManifest, makes
// the child's first ingest skip what it did not change, and the child
// materializes back as the parent's image plus its change.
func TestCopyManifestForChild(t *testing.T) {
	smallSegments(t)
	s := openTest(t)
	ctx := context.Background()
	work := mkTemp(t)
	src := filepath.Join(work, "src")
	cp := makeDataDir(t, src)
	parent := mustCreate(t, s, "main", 0, 0)
	if _, err := s.Ingest(ctx, parent.ID, src, cp, ""); err != nil {
		t.Fatal(err)
	}
	child := mustCreate(t, s, "child", parent.ID, cp.LSN)
	tpl := filepath.Join(work, "tpl")
	if _, err := s.Materialize(ctx, parent.ID, cp.LSN, tpl, MaterializeOptions{Owner: Owner{UID: -1}, Manifest: tpl + ".manifest"}); err != nil {
		t.Fatal(err)
	}
	mf := filepath.Join(work, "child.manifest")
	if err := CopyManifest(tpl+".manifest", mf, child.ID); err != nil {
		t.Fatal(err)
	}
	if err := CopyManifest(filepath.Join(work, "missing"), mf+"2", child.ID); err == nil {
		t.Fatal("CopyManifest of a missing manifest succeeded")
	}
	// The child changes one non-relation file.
	if err := os.WriteFile(filepath.Join(tpl, "PG_VERSION"), []byte("15\nchild\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cp2 := cp
	cp2.LSN += 0x100
	st, err := s.Ingest(ctx, child.ID, tpl, cp2, mf)
	if err != nil {
		t.Fatal(err)
	}
	if !st.UsedManifest || st.PagesWritten != 0 || st.FilesScanned != 1 {
		t.Fatalf("child's first ingest over the retargeted manifest: %+v", st)
	}
	dst := filepath.Join(work, "dst")
	if _, err := s.Materialize(ctx, child.ID, 0, dst, MaterializeOptions{Owner: Owner{UID: -1}}); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, tpl, dst)
}
