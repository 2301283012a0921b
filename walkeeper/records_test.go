package walkeeper

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"io"
	"testing"
)

// walPages builds n pages starting at start, each with a valid short
// header, holding records (total length each) from the first page's data
// on, chained by xl_prev, with valid CRCs.
func walPages(start LSN, n int, sizes []int) ([]byte, LSN, []LSN) {
	buf := make([]byte, n*PageSize)
	for i := range n {
		p := buf[i*PageSize:]
		binary.LittleEndian.PutUint16(p, xlogPageMagic)
		binary.LittleEndian.PutUint64(p[8:], start+LSN(i*PageSize))
	}
	// Record bytes in LSN order, skipping page headers.
	pos := start + shortPageHeader
	first := pos
	var prev LSN
	var ends []LSN
	for _, size := range sizes {
		rec := make([]byte, size)
		binary.LittleEndian.PutUint32(rec, uint32(size))
		binary.LittleEndian.PutUint64(rec[8:], prev)
		for j := recordHeaderSize; j < size; j++ {
			rec[j] = byte(j)
		}
		crc := crc32.Update(crc32.Checksum(rec[recordHeaderSize:], castagnoli), castagnoli, rec[:recordCRCOffset])
		binary.LittleEndian.PutUint32(rec[recordCRCOffset:], crc)
		if pos%PageSize == 0 {
			pos += shortPageHeader // a record starting a page starts after its header
		}
		prev = pos
		for len(rec) > 0 {
			if pos%PageSize == 0 {
				pos += shortPageHeader
			}
			room := PageSize - pos%PageSize
			k := copy(buf[pos-start:pos-start+min(room, LSN(len(rec)))], rec)
			rec = rec[k:]
			pos += LSN(k)
		}
		ends = append(ends, pos)
		pos = (pos + recordAlign - 1) &^ (recordAlign - 1)
	}
	return buf, first, ends
}

func walOf(start LSN, buf []byte, flush LSN) *WAL {
	return &WAL{Start: start, Flush: flush, Body: io.NopCloser(bytes.NewReader(buf))}
}

// TestValidEnd: records spanning pages (and headers split across a page
// end) check out to the last one; a flipped byte, a broken back-link or a
// stale page header end the valid WAL before them; a flush in the middle
// of a record ends it at the record before.
func TestValidEnd(t *testing.T) {
	const start = LSN(0x3000000)
	sizes := []int{100, 8000, 24, 20000, 333, 8150, 40, 5000}
	buf, first, ends := walPages(start, 6, sizes)
	end := ends[len(ends)-1]
	flush := start + LSN(len(buf))
	if got, err := ValidEnd(walOf(start, buf, flush), first); err != nil || got != end {
		t.Fatalf("ValidEnd = %s, %v; want %s", fmtLSN(got), err, fmtLSN(end))
	}
	second := (first + 100 + 7) &^ 7
	for _, tc := range []struct {
		name   string
		damage func(b []byte)
		flush  LSN
		want   LSN
	}{
		{"flipped byte in the second record", func(b []byte) { b[second-start+500] ^= 1 }, flush, first + 100},
		{"broken back-link of the second record", func(b []byte) { b[second-start+8] ^= 1 }, flush, first + 100},
		// Page 2 holds a part of the fourth record.
		{"stale page address", func(b []byte) { binary.LittleEndian.PutUint64(b[2*PageSize+8:], 0) }, flush, ends[2]},
		{"flush inside the second record", func([]byte) {}, second + 50, first + 100},
		{"flush at the end", func([]byte) {}, end, end},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := bytes.Clone(buf)
			tc.damage(b)
			if got, _ := ValidEnd(walOf(start, b, tc.flush), first); got != tc.want {
				t.Fatalf("ValidEnd = %s, want %s", fmtLSN(got), fmtLSN(tc.want))
			}
		})
	}
}

// FuzzValidEnd: WAL built from record sizes (up to six pages), then a byte
// flipped, a page header overwritten and the flush cut: no panic, the
// valid end lies between the start and the flush, and undamaged WAL checks
// out to its last complete record.
func FuzzValidEnd(f *testing.F) {
	f.Add([]byte{1, 125, 0, 255, 5}, uint16(0), byte(0), uint16(0), []byte{})
	f.Add([]byte{200, 3}, uint16(700), byte(0x40), uint16(100), []byte{0xD1, 0x10})
	f.Fuzz(func(t *testing.T, sizes []byte, at uint16, flip byte, cut uint16, header []byte) {
		const start = LSN(0x3000000)
		var recs []int
		total := 0
		for _, b := range sizes {
			n := recordHeaderSize + int(b)*64
			if total+n > 5*PageSize {
				break
			}
			recs = append(recs, n)
			total += n + 64
		}
		buf, first, ends := walPages(start, 6, recs)
		flush := start + LSN(len(buf)) - LSN(cut)%PageSize
		damaged := flip != 0 || len(header) > 0
		if flip != 0 {
			buf[int(at)%len(buf)] ^= flip
		}
		if len(header) > 0 {
			copy(buf[(int(at)/PageSize%6)*PageSize:], header[:min(len(header), 16)])
		}
		got, err := ValidEnd(walOf(start, buf, flush), first)
		if err != nil {
			t.Fatal(err)
		}
		if got < first || got > flush {
			t.Fatalf("ValidEnd %s outside [%s, %s]", fmtLSN(got), fmtLSN(first), fmtLSN(flush))
		}
		if !damaged {
			want := first
			for _, e := range ends {
				if e <= flush {
					want = e
				}
			}
			if got != want {
				t.Fatalf("undamaged WAL: ValidEnd %s, want %s", fmtLSN(got), fmtLSN(want))
			}
		}
	})
}
