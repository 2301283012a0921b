package walkeeper

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

func openTest(t *testing.T, dir string) *Keeper {
	t.Helper()
	k, err := Open(Options{Dir: dir, NoSync: true, Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// feed stores WAL [start, end) of ns through the stream commit path, in
// chunks of size chunk, committing every batch bytes.
func feed(t *testing.T, k *Keeper, ns uint64, start, end LSN, chunk, batch int) {
	t.Helper()
	oldFlush, err := k.flushLSN(ns)
	if err != nil {
		t.Fatal(err)
	}
	s := &Stream{k: k, ns: ns, log: k.log, start: pageOf(start), oldFlush: oldFlush, first: true}
	s.m.load = func(lsn LSN) ([]byte, error) { return k.readPage(ns, lsn) }
	pending := 0
	for pos := start; pos < end; {
		n := min(LSN(chunk), end-pos)
		if err := s.m.write(pos, pattern(pos, int(n))); err != nil {
			t.Fatal(err)
		}
		pos += n
		pending += int(n)
		if pending >= batch || pos == end {
			if err := s.commit(); err != nil {
				t.Fatal(err)
			}
			pending = 0
		}
	}
	if s.FlushLSN() != end {
		t.Fatalf("stream flush %x, want %x", s.FlushLSN(), end)
	}
}

func TestWriteSegmentsAcrossBoundary(t *testing.T) {
	k := openTest(t, t.TempDir())
	defer k.Close()
	const seg = 64 << 10
	const ns = 7
	start := LSN(3*seg - 2*PageSize) // two pages before a segment boundary
	end := LSN(5*seg + 3*PageSize + 1234)
	feed(t, k, ns, start, end, 3000, 20000)
	if got := k.FlushLSN(ns); got != end {
		t.Fatalf("FlushLSN %x, want %x", got, end)
	}
	if got := k.StartLSN(ns); got != start {
		t.Fatalf("StartLSN %x, want %x", got, start)
	}

	dir := t.TempDir()
	// An existing segment is written in place: keep its first bytes.
	existing := filepath.Join(dir, SegmentName(1, 2, seg))
	old := bytes.Repeat([]byte{0xAA}, seg)
	if err := os.WriteFile(existing, old, 0o600); err != nil {
		t.Fatal(err)
	}
	from := start + PageSize + 100 // rounded down to its page
	got, err := WriteSegments(context.Background(), k, ns, from, 1, seg, dir, -1, -1)
	if err != nil {
		t.Fatal(err)
	}
	if got != end {
		t.Fatalf("WriteSegments end %x, want %x", got, end)
	}
	for segno := uint64(2); segno <= 5; segno++ {
		name := SegmentName(1, segno, seg)
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if len(b) != seg {
			t.Fatalf("%s has %d bytes", name, len(b))
		}
		fi, _ := os.Stat(filepath.Join(dir, name))
		if segno != 2 && fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s mode %v", name, fi.Mode())
		}
		for i := range b {
			pos := LSN(segno)*seg + LSN(i)
			var want byte
			switch {
			case pos < pageOf(from):
				want = 0 // not written: the old content (segment 2) or sparse
				if segno == 2 {
					want = 0xAA
				}
			case pos < end:
				want = pattern(pos, 1)[0]
			default:
				want = 0 // the rest of the last page is zero; the rest sparse
			}
			if b[i] != want {
				t.Fatalf("%s byte %d (LSN %x) = %x, want %x", name, i, pos, b[i], want)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(dir, SegmentName(1, 6, seg))); !os.IsNotExist(err) {
		t.Fatalf("segment 6 written: %v", err)
	}
	if SegmentName(1, 0x1234, 16<<20) != "000000010000001200000034" {
		t.Fatalf("segment name %s", SegmentName(1, 0x1234, 16<<20))
	}

	// A missing segment created for `from` gets its first page too.
	dir2 := t.TempDir()
	if _, err := WriteSegments(context.Background(), k, ns, 4*seg+5*PageSize, 1, seg, dir2, -1, -1); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(dir2, SegmentName(1, 4, seg)))
	if !bytes.Equal(b[:PageSize], pattern(4*seg, PageSize)) {
		t.Fatal("first page of the created segment not written")
	}
	if !bytes.Equal(b[PageSize:5*PageSize], make([]byte, 4*PageSize)) {
		t.Fatal("pages before from written")
	}

	// No WAL at from.
	if _, err := WriteSegments(context.Background(), k, ns, start-1, 1, seg, t.TempDir(), -1, -1); err == nil {
		t.Fatal("WriteSegments before the stored WAL succeeded")
	}
	if _, err := WriteSegments(context.Background(), k, ns, end+1, 1, seg, t.TempDir(), -1, -1); err == nil {
		t.Fatal("WriteSegments after the stored WAL succeeded")
	}
	if _, err := WriteSegments(context.Background(), k, 99, 0, 1, seg, t.TempDir(), -1, -1); err == nil {
		t.Fatal("WriteSegments of an empty namespace succeeded")
	}
}

func TestTrimDropReopen(t *testing.T) {
	dir := t.TempDir()
	k := openTest(t, dir)
	start, end := LSN(0x2000000), LSN(0x2000000+10*PageSize+77)
	feed(t, k, 1, start, end, 5000, 1<<20)
	feed(t, k, 2, start, end, 5000, 1<<20)

	if err := k.Trim(context.Background(), 1, start+3*PageSize+5); err != nil {
		t.Fatal(err)
	}
	if got := k.StartLSN(1); got != start+3*PageSize {
		t.Fatalf("StartLSN after trim %x", got)
	}
	if got := k.FlushLSN(1); got != end {
		t.Fatalf("FlushLSN after trim %x", got)
	}
	// Trimming beyond the flush keeps the last page.
	if err := k.Trim(context.Background(), 1, end+100*PageSize); err != nil {
		t.Fatal(err)
	}
	if got := k.StartLSN(1); got != pageOf(end) {
		t.Fatalf("StartLSN after trim past flush %x", got)
	}
	if err := k.Drop(context.Background(), 2); err != nil {
		t.Fatal(err)
	}
	if k.FlushLSN(2) != 0 || k.StartLSN(2) != 0 {
		t.Fatalf("ns 2 after drop: %x %x", k.StartLSN(2), k.FlushLSN(2))
	}
	if err := k.Close(); err != nil {
		t.Fatal(err)
	}

	k = openTest(t, dir)
	defer k.Close()
	if got := k.FlushLSN(1); got != end {
		t.Fatalf("FlushLSN after reopen %x, want %x", got, end)
	}
	if got := k.StartLSN(1); got != pageOf(end) {
		t.Fatalf("StartLSN after reopen %x", got)
	}
	if k.FlushLSN(2) != 0 {
		t.Fatal("dropped ns is back")
	}
}

func TestOverwriteAndGap(t *testing.T) {
	k := openTest(t, t.TempDir())
	defer k.Close()
	base := LSN(0x5000000)
	feed(t, k, 1, base, base+20*PageSize+10, 4096, 1<<20)
	// A compute that recovered continues from an earlier LSN: its (shorter)
	// WAL replaces the rest.
	feed(t, k, 1, base+5*PageSize, base+7*PageSize+3, 4096, 1<<20)
	if got := k.FlushLSN(1); got != base+7*PageSize+3 {
		t.Fatalf("flush %x", got)
	}
	if p, _ := k.readPage(1, base+8*PageSize); p != nil {
		t.Fatal("stale page beyond the new end kept")
	}
	if got := k.StartLSN(1); got != base {
		t.Fatalf("start %x", got)
	}
	// A stream after a gap drops the older WAL.
	feed(t, k, 1, base+100*PageSize, base+101*PageSize, 4096, 1<<20)
	if got := k.StartLSN(1); got != base+100*PageSize {
		t.Fatalf("start after gap %x", got)
	}
}
