package walkeeper

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// WAL record layout (PostgreSQL 15, access/xlogrecord.h and
// access/xlog_internal.h).
const (
	xlogPageMagic     = 0xD110 // XLOG_PAGE_MAGIC of PostgreSQL 15
	xlpLongHeader     = 0x0002 // XLP_LONG_HEADER in xlp_info
	shortPageHeader   = 24     // MAXALIGN(SizeOfXLogShortPHD)
	longPageHeader    = 40     // MAXALIGN(SizeOfXLogLongPHD)
	recordHeaderSize  = 24     // SizeOfXLogRecord
	recordCRCOffset   = 20     // offsetof(XLogRecord, xl_crc)
	maxRecordSize     = 1 << 30
	recordAlign       = 8 // MAXALIGN
	pageHeaderMinSize = 20
)

// errBadPage: a page that is not the WAL page it should be (stale or
// zeroed): the end of the valid WAL.
var errBadPage = errors.New("not a valid WAL page")

// ValidEnd reads the WAL pages of w (as Export returns them) and follows
// the records from `from`, which must be the start of a record (a
// checkpoint location), checking each record's CRC32C and back-link the way
// PostgreSQL's recovery does. It returns the end of the last complete,
// valid record: what a replay of this WAL reaches. A keeper whose copy has
// a corrupt record, or pages of an older history, has a ValidEnd before
// its flush LSN.
func ValidEnd(w *WAL, from LSN) (LSN, error) {
	if from < w.Start || from >= w.Flush {
		return from, nil
	}
	v := recordScanner{next: from, validEnd: from}
	page := make([]byte, PageSize)
	for lsn := w.Start; lsn < w.Flush; lsn += PageSize {
		if _, err := io.ReadFull(w.Body, page); err != nil {
			return v.validEnd, fmt.Errorf("walkeeper: read WAL page %s: %w", fmtLSN(lsn), err)
		}
		if lsn+PageSize <= pageOf(from) {
			continue
		}
		if !v.page(lsn, page, w.Flush) {
			break
		}
	}
	return v.validEnd, nil
}

// recordScanner follows records across pages.
type recordScanner struct {
	next     LSN    // where the next record starts (while rec is empty)
	recStart LSN    // start of the record being assembled
	rec      []byte // the record's bytes so far (page headers removed)
	total    int    // its xl_tot_len once known (0: header not complete)
	prev     LSN    // start of the last valid record (0: not known yet)
	validEnd LSN
}

// page consumes one page; false: the valid WAL ended.
func (v *recordScanner) page(lsn LSN, page []byte, flush LSN) bool {
	hdr, err := pageHeaderLen(lsn, page)
	if err != nil {
		return false
	}
	end := min(lsn+PageSize, flush)
	pos := lsn + LSN(hdr)
	if len(v.rec) == 0 && v.next > pos {
		pos = v.next
	}
	for pos < end {
		if len(v.rec) == 0 {
			if pos < v.next {
				pos = v.next
				continue
			}
			v.recStart = pos
		}
		// Take the header first, then the rest of the record.
		want := recordHeaderSize
		if v.total > 0 {
			want = v.total
		}
		n := min(int(end-pos), want-len(v.rec))
		v.rec = append(v.rec, page[pos-lsn:pos-lsn+LSN(n)]...)
		pos += LSN(n)
		if len(v.rec) < want {
			continue // the record goes on: more pages, or the flush LSN cuts it
		}
		if v.total == 0 {
			total := int(binary.LittleEndian.Uint32(v.rec))
			if total < recordHeaderSize || total > maxRecordSize {
				return false // zeroes past the end of the WAL, or garbage
			}
			v.total = total
			if total > recordHeaderSize {
				continue
			}
		}
		if !v.check() {
			return false
		}
		v.prev, v.validEnd = v.recStart, pos
		v.next = (pos + recordAlign - 1) &^ (recordAlign - 1)
		v.rec, v.total = v.rec[:0], 0
		pos = max(pos, v.next)
	}
	return true
}

// check validates the assembled record's back-link and CRC32C.
func (v *recordScanner) check() bool {
	r := v.rec
	if prev := binary.LittleEndian.Uint64(r[8:]); v.prev != 0 && prev != v.prev {
		return false // a record of another history
	}
	crc := crc32.Update(crc32.Checksum(r[recordHeaderSize:], castagnoli), castagnoli, r[:recordCRCOffset])
	return crc == binary.LittleEndian.Uint32(r[recordCRCOffset:])
}

// pageHeaderLen validates a page's header and returns its length.
func pageHeaderLen(lsn LSN, page []byte) (int, error) {
	if len(page) < pageHeaderMinSize {
		return 0, errBadPage
	}
	if binary.LittleEndian.Uint16(page) != xlogPageMagic || binary.LittleEndian.Uint64(page[8:]) != lsn {
		return 0, errBadPage
	}
	if binary.LittleEndian.Uint16(page[2:])&xlpLongHeader != 0 {
		return longPageHeader, nil
	}
	return shortPageHeader, nil
}
