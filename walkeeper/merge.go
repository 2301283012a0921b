package walkeeper

import (
	"fmt"
	"slices"
)

// PageSize is the PostgreSQL WAL page size (XLOG_BLCKSZ) the keeper stores by.
const PageSize = 8192

func pageOf(lsn LSN) LSN { return lsn &^ (PageSize - 1) }

// merger merges XLogData chunks, which arrive at arbitrary offsets and
// lengths, into full WAL pages. It keeps the last, partial page in memory
// across batches and collects the pages a batch touched.
//
// The bytes of the page holding end beyond end are always zero: the newest
// data defines the WAL history.
type merger struct {
	started bool
	end     LSN // end of the data merged so far

	// cur is the page holding end (nil if end is page-aligned or nothing
	// was merged yet); curLSN is its LSN.
	cur    []byte
	curLSN LSN

	dirty map[LSN][]byte // pages touched since the last take

	// load returns the stored page at lsn (nil if none); used only when a
	// chunk starts in the middle of a page that is not in memory.
	load func(lsn LSN) ([]byte, error)
}

// write merges data at start. A chunk must not leave a gap after the data
// merged before.
func (m *merger) write(start LSN, data []byte) error {
	if m.started && start > m.end {
		return fmt.Errorf("walkeeper: WAL gap: chunk at %s after end %s", fmtLSN(start), fmtLSN(m.end))
	}
	if len(data) == 0 {
		return nil
	}
	if m.dirty == nil {
		m.dirty = make(map[LSN][]byte)
	}
	m.started = true
	pos := start
	end := start + LSN(len(data))
	for len(data) > 0 {
		pg := pageOf(pos)
		buf, err := m.page(pg, pos-pg)
		if err != nil {
			return err
		}
		n := copy(buf[pos-pg:], data)
		data = data[n:]
		pos += LSN(n)
	}
	m.end = end
	m.cur = nil
	if off := end - pageOf(end); off > 0 {
		// Nothing after end is valid (it may be left over from a longer
		// history or a loaded page): keep the rest of the page zero.
		m.curLSN = pageOf(end)
		m.cur = m.dirty[m.curLSN]
		clear(m.cur[off:])
	}
	return nil
}

// page returns the in-memory buffer of page pg, marking it dirty. off is
// where the caller starts writing: a page not in memory is loaded from the
// store only if off > 0 (otherwise it starts zeroed); bytes of a loaded page
// at or beyond the old end are zeroed.
func (m *merger) page(pg, off LSN) ([]byte, error) {
	if buf, ok := m.dirty[pg]; ok {
		return buf, nil
	}
	if m.cur != nil && m.curLSN == pg {
		m.dirty[pg] = m.cur
		return m.cur, nil
	}
	buf := make([]byte, PageSize)
	if off > 0 && m.load != nil {
		old, err := m.load(pg)
		if err != nil {
			return nil, err
		}
		copy(buf, old)
	}
	m.dirty[pg] = buf
	return buf, nil
}

type dirtyPage struct {
	lsn  LSN
	data []byte
}

// take returns the pages touched since the last take, in LSN order, and
// forgets them (except the current partial page, which stays in memory).
// The returned buffers are only valid until the next write.
func (m *merger) take() []dirtyPage {
	out := make([]dirtyPage, 0, len(m.dirty))
	for lsn, buf := range m.dirty {
		out = append(out, dirtyPage{lsn, buf})
	}
	slices.SortFunc(out, func(a, b dirtyPage) int {
		switch {
		case a.lsn < b.lsn:
			return -1
		case a.lsn > b.lsn:
			return 1
		}
		return 0
	})
	clear(m.dirty)
	return out
}

func fmtLSN(lsn LSN) string { return fmt.Sprintf("%X/%X", lsn>>32, uint32(lsn)) }
