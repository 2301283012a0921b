package pagestore

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// reader is what reads need from pebble (a DB or a Snapshot).
type reader interface {
	NewIter(o *pebble.IterOptions) (*pebble.Iterator, error)
}

var (
	_ reader = (*pebble.DB)(nil)
	_ reader = (*pebble.Snapshot)(nil)
)

var zeroPage = make([]byte, BlockSize)

// level is one timeline of a read point's ancestry.
type level struct {
	tl        TimelineID
	cutoff    LSN
	committed map[LSN]struct{}
}

func (l *level) isCommitted(x LSN) bool { _, ok := l.committed[x]; return ok }

// readPoint resolves (id, at) to its ancestry levels; at 0 means Head().
// It returns the resolved LSN.
func (s *Store) readPoint(id TimelineID, at LSN) ([]level, LSN, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.mu.timelines[id]
	if !ok {
		return nil, 0, fmt.Errorf("timeline %d: %w", id, ErrNotFound)
	}
	if at == 0 {
		at = t.Head()
	}
	return s.levelsLocked(t, at), at, nil
}

func (s *Store) levelsLocked(t *Timeline, at LSN) []level {
	var lv []level
	cutoff := at
	for t != nil {
		c := make(map[LSN]struct{}, len(t.Images))
		for _, x := range t.Images {
			c[x] = struct{}{}
		}
		lv = append(lv, level{tl: t.ID, cutoff: cutoff, committed: c})
		if t.Parent == 0 {
			break
		}
		cutoff = min(cutoff, t.ParentLSN)
		t = s.mu.timelines[t.Parent]
	}
	return lv
}

// getVersion finds the leaf-most committed version <= cutoff of the key
// group prefixFn(tl) across the levels.
func getVersion(r reader, lv []level, prefixFn func(TimelineID) []byte) ([]byte, bool, error) {
	for i := range lv {
		l := &lv[i]
		p := prefixFn(l.tl)
		it, err := r.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: successor(p)})
		if err != nil {
			return nil, false, err
		}
		for ok := it.SeekGE(appendLSN(bytes.Clone(p), l.cutoff)); ok; ok = it.Next() {
			if l.isCommitted(keyLSN(it.Key())) {
				v := bytes.Clone(it.Value())
				return v, true, it.Close()
			}
		}
		if err := it.Close(); err != nil {
			return nil, false, err
		}
	}
	return nil, false, nil
}

func decodeSize(v []byte) (uint32, error) {
	if len(v) != 4 {
		return 0, fmt.Errorf("pagestore: bad fork size value %x", v)
	}
	return binary.BigEndian.Uint32(v), nil
}

func encodeSize(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }

func forkSize(r reader, lv []level, rel RelTag) (uint32, bool, error) {
	v, ok, err := getVersion(r, lv, func(tl TimelineID) []byte { return sizePrefix(tl, rel) })
	if err != nil || !ok {
		return 0, false, err
	}
	n, err := decodeSize(v)
	if err != nil || n == droppedSize {
		return 0, false, err
	}
	return n, true, nil
}

// ReadPage returns block blk of rel as timeline id reads it at at (0: Head()).
func (s *Store) ReadPage(ctx context.Context, id TimelineID, at LSN, rel RelTag, blk uint32) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	lv, at, err := s.readPoint(id, at)
	if err != nil {
		return nil, err
	}
	snap := s.db.NewSnapshot()
	defer snap.Close()
	n, ok, err := forkSize(snap, lv, rel)
	if err != nil {
		return nil, fmt.Errorf("read page %s blk %d of timeline %d at %s: %w", rel, blk, id, at, err)
	}
	if !ok || blk >= n {
		return nil, fmt.Errorf("read page %s blk %d of timeline %d at %s: %w", rel, blk, id, at, ErrNotFound)
	}
	v, ok, err := getVersion(snap, lv, func(tl TimelineID) []byte { return pagePrefix(tl, rel, blk) })
	if err != nil {
		return nil, fmt.Errorf("read page %s blk %d of timeline %d at %s: %w", rel, blk, id, at, err)
	}
	if !ok || len(v) == 0 {
		return make([]byte, BlockSize), nil
	}
	return v, nil
}

// RelSize returns the block count of rel as timeline id reads it at at.
func (s *Store) RelSize(ctx context.Context, id TimelineID, at LSN, rel RelTag) (uint32, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	lv, at, err := s.readPoint(id, at)
	if err != nil {
		return 0, err
	}
	n, ok, err := forkSize(s.db, lv, rel)
	if err != nil {
		return 0, fmt.Errorf("relation size %s of timeline %d at %s: %w", rel, id, at, err)
	}
	if !ok {
		return 0, fmt.Errorf("relation size %s of timeline %d at %s: %w", rel, id, at, ErrNotFound)
	}
	return n, nil
}

// ReadFile returns the content of the non-relation file path (slash
// separated, relative to the data directory). Directories return an
// empty slice.
func (s *Store) ReadFile(ctx context.Context, id TimelineID, at LSN, path string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	lv, at, err := s.readPoint(id, at)
	if err != nil {
		return nil, err
	}
	v, ok, err := getVersion(s.db, lv, func(tl TimelineID) []byte { return filePrefix(tl, path) })
	if err != nil {
		return nil, fmt.Errorf("read file %s of timeline %d at %s: %w", path, id, at, err)
	}
	if !ok || len(v) == 0 || v[0] == fileDeleted {
		return nil, fmt.Errorf("read file %s of timeline %d at %s: %w", path, id, at, ErrNotFound)
	}
	switch v[0] {
	case fileContent:
		return v[1:], nil
	case fileDir:
		return []byte{}, nil
	case fileSparse:
		size, chunks, err := decodeSparse(v)
		if err != nil {
			return nil, fmt.Errorf("read file %s of timeline %d at %s: %w", path, id, at, err)
		}
		out := make([]byte, size)
		for _, c := range chunks {
			copy(out[c.off:], c.data)
		}
		return out, nil
	}
	return nil, fmt.Errorf("read file %s of timeline %d at %s: unknown kind %q", path, id, at, v[0])
}

// cursor walks one level's key range, yielding per key group the newest
// committed version <= the level's cutoff.
type cursor struct {
	it    *pebble.Iterator
	lv    *level
	group []byte // current group key without the kind+tl prefix and LSN
	val   []byte
	valid bool
	// done is the full key (without LSN) of the group just yielded, which
	// advance leaves first.
	done []byte
}

// nextsBeforeSeek is how many older versions of a group advance steps
// over with Next before it seeks past the group: most groups have one or
// two versions, and a seek costs a search of every file of every level
// (many small L0 files right after ingests), a Next almost nothing.

func newCursor(r reader, lv *level, lower, upper []byte) (*cursor, error) {
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return nil, err
	}
	c := &cursor{it: it, lv: lv}
	it.First()
	c.advance()
	return c, nil
}

const nextsBeforeSeek = 8

func (c *cursor) advance() {
	c.valid = false
	if len(c.done) > 0 {
		for n := 0; c.it.Next(); n++ {
			k := c.it.Key()
			if !bytes.Equal(k[:len(k)-8], c.done) {
				break // the next group
			}
			if n == nextsBeforeSeek {
				c.it.SeekGE(groupEnd(c.done))
				break
			}
		}
		c.done = c.done[:0]
	}
	for c.it.Valid() {
		k := c.it.Key()
		g := k[:len(k)-8]
		x := keyLSN(k)
		if x > c.lv.cutoff {
			c.it.SeekGE(appendLSN(bytes.Clone(g), c.lv.cutoff))
			continue
		}
		if !c.lv.isCommitted(x) {
			c.it.Next()
			continue
		}
		c.group = append(c.group[:0], g[9:]...)
		c.val = append(c.val[:0], c.it.Value()...)
		c.valid = true
		c.done = append(c.done[:0], g...)
		return
	}
}

func (c *cursor) close() error { return c.it.Close() }

// merger merges cursors of the levels of one read point (leaf first).
type merger struct {
	cs    []*cursor
	group []byte
	val   []byte
}

// newMerger opens a cursor per level over [kind+tl+lo, kind+tl+hi) (hi nil:
// to the end of the timeline's kind range).
func newMerger(r reader, lv []level, kind byte, lo, hi []byte) (*merger, error) {
	m := &merger{}
	for i := range lv {
		p := tlPrefix(kind, lv[i].tl)
		lower := append(bytes.Clone(p), lo...)
		var upper []byte
		if hi == nil {
			upper = successor(p)
		} else {
			upper = append(bytes.Clone(p), hi...)
		}
		c, err := newCursor(r, &lv[i], lower, upper)
		if err != nil {
			m.close()
			return nil, err
		}
		m.cs = append(m.cs, c)
	}
	return m, nil
}

// next moves to the next key group; false at the end. The group and val
// slices are valid until the following call.
func (m *merger) next() bool {
	var best *cursor
	for _, c := range m.cs {
		if c.valid && (best == nil || bytes.Compare(c.group, best.group) < 0) {
			best = c
		}
	}
	if best == nil {
		return false
	}
	m.group = append(m.group[:0], best.group...)
	m.val = append(m.val[:0], best.val...)
	for _, c := range m.cs {
		if c.valid && bytes.Equal(c.group, m.group) {
			c.advance()
		}
	}
	return true
}

func (m *merger) err() error {
	for _, c := range m.cs {
		if err := c.it.Error(); err != nil {
			return err
		}
	}
	return nil
}

func (m *merger) close() error {
	var first error
	for _, c := range m.cs {
		if err := c.close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// forkSizes returns the size of every fork present (not dropped) at the
// read point.
func forkSizes(ctx context.Context, r reader, lv []level) (map[RelTag]uint32, error) {
	m, err := newMerger(r, lv, kindSize, nil, nil)
	if err != nil {
		return nil, err
	}
	defer m.close()
	out := make(map[RelTag]uint32)
	for i := 0; m.next(); i++ {
		if i%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		n, err := decodeSize(m.val)
		if err != nil {
			return nil, err
		}
		if n != droppedSize {
			out[getRel(m.group)] = n
		}
	}
	return out, m.err()
}

// files returns every non-relation file present (not deleted) at the read
// point, path -> value.
func files(ctx context.Context, r reader, lv []level) (map[string][]byte, error) {
	m, err := newMerger(r, lv, kindFile, nil, nil)
	if err != nil {
		return nil, err
	}
	defer m.close()
	out := make(map[string][]byte)
	for i := 0; m.next(); i++ {
		if i%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		if len(m.val) == 0 || m.val[0] == fileDeleted {
			continue
		}
		out[string(m.group[:len(m.group)-1])] = bytes.Clone(m.val)
	}
	return out, m.err()
}

// pageMerger iterates the pages of one fork at a read point in block order.
type pageMerger struct{ *merger }

func newPageMerger(r reader, lv []level, rel RelTag) (pageMerger, error) {
	lo := putRel(nil, rel)
	m, err := newMerger(r, lv, kindPage, lo, successor(lo))
	return pageMerger{m}, err
}

// blk is the current block number (after next returned true).
func (p pageMerger) blk() uint32 { return binary.BigEndian.Uint32(p.group[relLen:]) }
