package pagestore

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
)

// ErrNoCommonAncestor is a Diff of timelines that share no history (they
// descend from different roots), or of a timeline with itself.
var ErrNoCommonAncestor = errors.New("pagestore: the timelines share no history to compare")

// DiffResult is what two timelines changed since the newest state they
// share: "what did this experiment touch".
type DiffResult struct {
	// Ancestor is the timeline where the two histories meet; its history
	// up to AncestorLSN is what both sides read before they diverged.
	Ancestor    TimelineID `json:"ancestor"`
	AncestorLSN LSN        `json:"ancestor_lsn"`
	A           TimelineID `json:"a"`
	B           TimelineID `json:"b"`
	// ALSN and BLSN are the heads compared (each side's Head()).
	ALSN LSN `json:"a_lsn"`
	BLSN LSN `json:"b_lsn"`
	// Relations changed on either side, sorted by database OID, then
	// name, then relfilenode. Never nil.
	Relations []RelDiff `json:"relations"`
}

// RelDiff is one relation (its main fork) that changed on either side.
type RelDiff struct {
	Spc      uint32 `json:"spc"` // tablespace OID: 1663 pg_default, 1664 pg_global (shared catalogs, DB 0)
	DB       uint32 `json:"db"`  // database OID
	Database string `json:"database,omitempty"`
	Rel      uint32 `json:"rel"` // relfilenode
	// OID is the pg_class OID (0: unknown); below 16384 it is initdb's,
	// a system catalog or its TOAST table or index.
	OID uint32 `json:"oid,omitempty"`
	// Name is schema-qualified ("public.t", "pg_toast.pg_toast_16390");
	// "" when no catalog names the relfilenode.
	Name string `json:"name,omitempty"`
	// Kind is from relkind: "table", "index", "toast", "sequence",
	// "materialized view", "view", "composite type", "foreign table",
	// "partitioned table", "partitioned index".
	Kind string `json:"kind,omitempty"`
	// Of is, for an index, the relation it indexes and, for a TOAST
	// table, the table it belongs to (a TOAST index's is its TOAST table).
	Of string `json:"of,omitempty"`
	// PagesA and PagesB count the distinct main-fork blocks with at least
	// one stored version on that side.
	PagesA int `json:"pages_a"`
	PagesB int `json:"pages_b"`
	// Created and Dropped are "a", "b", "both" or "": the relfilenode did
	// not exist at the ancestor state and was created on that side, or
	// does not exist at that side's head. A relation created and dropped
	// within one side says both.
	Created string `json:"created,omitempty"`
	Dropped string `json:"dropped,omitempty"`
}

// Diff lists the relations whose pages changed on either side since the
// newest state a and b share, from the store's metadata and stored
// catalogs: no compute starts.
//
// Each side's path runs from the timeline up its ancestry to the common
// ancestor Ancestor. A side's changes are the committed versions (LSN in
// the timeline's Images; a crashed or running ingest's are not) of:
// the timeline itself up to its head; each intermediate timeline up to
// the point its child on the path branched at; and Ancestor after
// AncestorLSN up to the point the side branched from it (its head when
// the side is Ancestor itself, as when a child is compared with its
// parent). AncestorLSN is the earlier of the two sides' points on
// Ancestor. A branch made at a point after its parent's image (Target)
// shares only the image: the WAL it replayed counts as its own change.
//
// Only main forks are compared: vacuum rewrites free-space and
// visibility maps everywhere, and an init fork never changes. PagesX is
// the number of distinct blocks with a version in range, which includes
// blocks changed and changed back, blocks beyond a later truncation and
// blocks that only got hint bits (reading a table can change it). A
// fork whose size alone changed (a vacuum truncation) is listed with 0
// pages.
//
// Names come from the catalogs stored at each side's head, and, for a
// relation gone there, at the ancestor state (see catalog.go: a live
// pg_class row, by hint bits and pg_xact, wins over dead versions, which
// still name a relation created and dropped on one side). A relation no
// catalog names is listed with its numbers only. When both sides changed a
// relfilenode that their catalogs name differently (OIDs run on from the
// same counter, so two experiments that each create a table can get the
// same relfilenode), it is listed once per side.
//
// The cost is a pass over the version keys (not the values) of the
// timelines on both paths, as GC makes, plus the catalogs of the
// databases involved at up to three read points. It reads one pebble
// snapshot taken after resolving the metadata, as ReadPage does.
//
// ErrNotFound: a or b does not exist. ErrNoCommonAncestor: a == b, or
// their ancestries do not meet.
func (s *Store) Diff(ctx context.Context, a, b TimelineID) (DiffResult, error) {
	if err := ctx.Err(); err != nil {
		return DiffResult{}, err
	}
	p, err := s.diffPlan(a, b)
	if err != nil {
		return DiffResult{}, err
	}
	res := p.res
	fail := func(err error) (DiffResult, error) {
		return DiffResult{}, fmt.Errorf("diff timeline %d against %d: %w", a, b, err)
	}
	snap := s.db.NewSnapshot()
	defer snap.Close()

	changes := make(map[RelTag]*relChange)
	for side := range 2 {
		err := mergeRanges(ctx, snap, kindPage, p.segs[side], func(suffix []byte) {
			relChangeOf(changes, getRel(suffix)).pages[side]++
		})
		if err == nil {
			err = mergeRanges(ctx, snap, kindSize, p.segs[side], func(suffix []byte) {
				relChangeOf(changes, getRel(suffix)).sized[side] = true
			})
		}
		if err != nil {
			return fail(fmt.Errorf("scan side %s: %w", sideNames[side], err))
		}
	}

	// Views 0 and 1 are the heads of a and b, 2 the ancestor state.
	views := [3]*catalogView{newCatalogView(snap, p.heads[0]), newCatalogView(snap, p.heads[1]), newCatalogView(snap, p.anc)}
	lvs := [3][]level{p.heads[0], p.heads[1], p.anc}
	res.Relations = []RelDiff{}
	for _, rel := range sortedRels(changes) {
		if err := ctx.Err(); err != nil {
			return fail(err)
		}
		c := changes[rel]
		var exists [3]bool
		for i, lv := range lvs {
			_, ok, err := forkSize(snap, lv, rel)
			if err != nil {
				return fail(fmt.Errorf("size of %s: %w", rel, err))
			}
			exists[i] = ok
		}
		var touched, created, dropped [2]bool
		var info [2]relInfo
		var named [2]bool
		for side := range 2 {
			touched[side] = c.pages[side] > 0 || c.sized[side]
			if !touched[side] {
				continue
			}
			// Every version of a relation that did not exist at the
			// ancestor state is the side's own: the side created it.
			created[side] = !exists[2]
			dropped[side] = !exists[side]
			in, ok, err := resolveRel(ctx, rel, views[side], views[2])
			if err != nil {
				return fail(fmt.Errorf("name %s: %w", rel, err))
			}
			info[side], named[side] = in, ok
		}
		base := RelDiff{Spc: rel.Spc, DB: rel.DB, Rel: rel.Rel}
		if touched[0] && touched[1] && named[0] && named[1] &&
			(info[0].oid != info[1].oid || info[0].name != info[1].name) {
			// Two different relations under one relfilenode: one entry each.
			for side := range 2 {
				d := base
				fillRel(&d, info[side])
				if side == 0 {
					d.PagesA = c.pages[0]
				} else {
					d.PagesB = c.pages[1]
				}
				if created[side] {
					d.Created = sideNames[side]
				}
				if dropped[side] {
					d.Dropped = sideNames[side]
				}
				res.Relations = append(res.Relations, d)
			}
			continue
		}
		d := base
		switch {
		case named[0]:
			fillRel(&d, info[0])
		case named[1]:
			fillRel(&d, info[1])
		}
		if d.Database == "" && d.DB != 0 {
			for _, v := range []*catalogView{views[0], views[1], views[2]} {
				if d.Database, err = v.databaseName(ctx, d.DB); err != nil {
					return fail(fmt.Errorf("name database %d: %w", d.DB, err))
				}
				if d.Database != "" {
					break
				}
			}
		}
		d.PagesA, d.PagesB = c.pages[0], c.pages[1]
		d.Created = sideFlag(created[0], created[1])
		d.Dropped = sideFlag(dropped[0], dropped[1])
		res.Relations = append(res.Relations, d)
	}
	slices.SortStableFunc(res.Relations, func(x, y RelDiff) int {
		return cmp.Or(cmp.Compare(x.DB, y.DB), cmp.Compare(x.Name, y.Name), cmp.Compare(x.Rel, y.Rel), cmp.Compare(x.Spc, y.Spc))
	})
	return res, nil
}

var sideNames = [2]string{"a", "b"}

func sideFlag(a, b bool) string {
	switch {
	case a && b:
		return "both"
	case a:
		return "a"
	case b:
		return "b"
	}
	return ""
}

// relChange is what the two sides did to one main fork.
type relChange struct {
	pages [2]int  // distinct blocks with a version in range
	sized [2]bool // a size version (created, resized, dropped) in range
}

func relChangeOf(m map[RelTag]*relChange, rel RelTag) *relChange {
	c, ok := m[rel]
	if !ok {
		c = &relChange{}
		m[rel] = c
	}
	return c
}

func fillRel(d *RelDiff, in relInfo) {
	d.OID, d.Name, d.Kind, d.Of, d.Database = in.oid, in.name, in.kind, in.of, in.database
}

// resolveRel names rel from the side's head, else the ancestor state (a
// relation dropped on the side): the better-ranked pg_class row wins, the
// head's on a tie.
func resolveRel(ctx context.Context, rel RelTag, head, anc *catalogView) (relInfo, bool, error) {
	best, found := relInfo{}, false
	for _, v := range []*catalogView{head, anc} {
		in, ok, err := v.lookup(ctx, rel)
		if err != nil {
			return relInfo{}, false, err
		}
		if ok && (!found || in.rank > best.rank) {
			best, found = in, true
		}
	}
	return best, found, nil
}

// diffSeg is one timeline's share of a side: its committed versions with
// lo < LSN <= hi.
type diffSeg struct {
	tl        TimelineID
	lo, hi    LSN
	committed map[LSN]struct{}
}

// diffPlanned is a Diff resolved against the timeline metadata.
type diffPlanned struct {
	res   DiffResult
	segs  [2][]diffSeg
	heads [2][]level // the read points of a's and b's heads
	anc   []level    // the ancestor state
}

// pathStep is a timeline on a path towards the root and the newest LSN
// of it the path reads.
type pathStep struct {
	t   *Timeline
	cut LSN
}

// pathLocked is t's ancestry with the cutoffs a read of its head uses
// (as levelsLocked). s.mu must be held.
func (s *Store) pathLocked(t *Timeline) []pathStep {
	var p []pathStep
	cut := t.Head()
	// Bounded by the number of timelines: corrupt metadata with a cycle
	// cannot loop.
	for n := len(s.mu.timelines); t != nil && n >= 0; n-- {
		p = append(p, pathStep{t: t, cut: cut})
		if t.Parent == 0 {
			break
		}
		cut = min(cut, t.ParentLSN)
		t = s.mu.timelines[t.Parent]
	}
	return p
}

func committedSet(t *Timeline) map[LSN]struct{} {
	c := make(map[LSN]struct{}, len(t.Images))
	for _, x := range t.Images {
		c[x] = struct{}{}
	}
	return c
}

func (s *Store) diffPlan(a, b TimelineID) (diffPlanned, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var p diffPlanned
	ta, ok := s.mu.timelines[a]
	if !ok {
		return p, fmt.Errorf("diff timeline %d against %d: timeline %d: %w", a, b, a, ErrNotFound)
	}
	tb, ok := s.mu.timelines[b]
	if !ok {
		return p, fmt.Errorf("diff timeline %d against %d: timeline %d: %w", a, b, b, ErrNotFound)
	}
	if a == b {
		return p, fmt.Errorf("diff timeline %d against itself: %w", a, ErrNoCommonAncestor)
	}
	paths := [2][]pathStep{s.pathLocked(ta), s.pathLocked(tb)}
	onB := make(map[TimelineID]int, len(paths[1]))
	for j, st := range paths[1] {
		onB[st.t.ID] = j
	}
	meet := [2]int{-1, -1}
	for i, st := range paths[0] {
		if j, ok := onB[st.t.ID]; ok {
			meet = [2]int{i, j}
			break
		}
	}
	if meet[0] < 0 {
		return p, fmt.Errorf("diff timeline %d against %d: %w", a, b, ErrNoCommonAncestor)
	}
	anc := paths[0][meet[0]].t
	ancLSN := min(paths[0][meet[0]].cut, paths[1][meet[1]].cut)
	p.res = DiffResult{Ancestor: anc.ID, AncestorLSN: ancLSN, A: a, B: b, ALSN: ta.Head(), BLSN: tb.Head()}
	for side, path := range paths {
		for _, st := range path[:meet[side]] {
			// A timeline's own versions are all after its ParentLSN: from
			// 0 is the same as from there.
			p.segs[side] = append(p.segs[side], diffSeg{tl: st.t.ID, hi: st.cut, committed: committedSet(st.t)})
		}
		if cut := path[meet[side]].cut; cut > ancLSN {
			p.segs[side] = append(p.segs[side], diffSeg{tl: anc.ID, lo: ancLSN, hi: cut, committed: committedSet(anc)})
		}
	}
	p.heads = [2][]level{s.levelsLocked(ta, ta.Head()), s.levelsLocked(tb, tb.Head())}
	p.anc = s.levelsLocked(anc, ancLSN)
	return p, nil
}

// rangeCursor walks one segment's keys of a kind, yielding the key
// groups (relation main fork, and block for pages) that have a committed
// version in range, in key order.
type rangeCursor struct {
	it    *pebble.Iterator
	seg   *diffSeg
	plen  int    // the kind+timeline prefix's length
	group []byte // the current group without prefix and LSN
	valid bool
	buf   []byte
}

func newRangeCursor(r reader, kind byte, seg *diffSeg) (*rangeCursor, error) {
	p := tlPrefix(kind, seg.tl)
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: successor(p)})
	if err != nil {
		return nil, err
	}
	c := &rangeCursor{it: it, seg: seg, plen: len(p)}
	it.First()
	c.advance()
	return c, nil
}

// skipGroup moves past every version of the group g (a key without its
// LSN): Next for the usual few versions, a seek past many.
func (c *rangeCursor) skipGroup(g []byte) {
	for n := 0; c.it.Next(); n++ {
		k := c.it.Key()
		if len(k) < 8 || !bytes.Equal(k[:len(k)-8], g) {
			return
		}
		if n == nextsBeforeSeek {
			c.it.SeekGE(groupEnd(g))
			return
		}
	}
}

// advance moves to the next group with a version in range, from the
// iterator's position on.
func (c *rangeCursor) advance() {
	c.valid = false
	for c.it.Valid() {
		k := c.it.Key()
		if len(k) < c.plen+relLen+8 {
			c.it.Next() // not a version key of this kind
			continue
		}
		if k[c.plen+relLen-1] != ForkMain {
			// The relation's other forks: on to the next relation.
			c.it.SeekGE(successor(k[:c.plen+relLen-1]))
			continue
		}
		c.buf = append(c.buf[:0], k[:len(k)-8]...)
		g := c.buf
		switch x := keyLSN(k); {
		case x > c.seg.hi:
			c.it.SeekGE(appendLSN(bytes.Clone(g), c.seg.hi))
		case x <= c.seg.lo:
			c.skipGroup(g) // the rest are older still
		case !isCommittedIn(c.seg.committed, x):
			c.it.Next()
		default:
			c.group = append(c.group[:0], g[c.plen:]...)
			c.valid = true
			c.skipGroup(g)
			return
		}
	}
}

func isCommittedIn(m map[LSN]struct{}, x LSN) bool { _, ok := m[x]; return ok }

// mergeRanges calls fn once for each group (rel(13) [+ blk(4)]) with a
// version in range on any of the segments, in key order: a block changed
// on two timelines of one side counts once.
func mergeRanges(ctx context.Context, r reader, kind byte, segs []diffSeg, fn func(suffix []byte)) (err error) {
	var cs []*rangeCursor
	defer func() {
		for _, c := range cs {
			if cerr := c.it.Close(); err == nil {
				err = cerr
			}
		}
	}()
	for i := range segs {
		c, err := newRangeCursor(r, kind, &segs[i])
		if err != nil {
			return err
		}
		cs = append(cs, c)
	}
	for n := 0; ; n++ {
		if n%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		var best *rangeCursor
		for _, c := range cs {
			if c.valid && (best == nil || bytes.Compare(c.group, best.group) < 0) {
				best = c
			}
		}
		if best == nil {
			break
		}
		g := bytes.Clone(best.group)
		fn(g)
		for _, c := range cs {
			if c.valid && bytes.Equal(c.group, g) {
				c.advance()
			}
		}
	}
	for _, c := range cs {
		if err := c.it.Error(); err != nil {
			return err
		}
	}
	return nil
}
