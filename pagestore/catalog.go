package pagestore

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
	"strconv"
)

// Reading PostgreSQL 15's system catalogs straight from a stored image, so
// that Diff can name the relfilenodes it finds without starting a compute.
//
// Only what naming needs is parsed: pg_filenode.map (the relation mapper's
// files), heap pages of pg_class, pg_namespace, pg_index and pg_database
// (fixed-width leading columns only), and pg_xact (commit status) to tell
// live catalog tuples from dead ones. Everything read is treated as
// untrusted: every offset is bounds-checked, a malformed page or tuple is
// skipped, and nothing is allocated in proportion to a length field.
// Multi-byte integers are little-endian, as PostgreSQL writes them on the
// platforms this project runs on (amd64, arm64).

// Catalog OIDs (pg_class.h, pg_database.h, pg_namespace.h, pg_index.h).
const (
	pgClassOID     = 1259 // mapped, per database
	pgDatabaseOID  = 1262 // mapped, shared
	pgNamespaceOID = 2615
	pgIndexOID     = 2610
	// firstNormalOID is FirstNormalObjectId: OIDs below it are initdb's.
	firstNormalOID = 16384
)

// Page layout (storage/bufpage.h, storage/itemid.h).
const (
	pageHeaderSize    = 24 // SizeOfPageHeaderData
	itemIDSize        = 4  // sizeof(ItemIdData)
	pageLayoutVersion = 4  // PG_PAGE_LAYOUT_VERSION
	lpNormal          = 1  // LP_NORMAL
	// maxLinePointers bounds the line pointers a page can hold (what
	// pd_lower can claim), and so the tuples one page yields.
	maxLinePointers = (BlockSize - pageHeaderSize) / itemIDSize
)

// Heap tuple header (access/htup_details.h).
const (
	heapTupleHeaderSize = 23 // offsetof(HeapTupleHeaderData, t_bits)
	heapNattsMask       = 0x07FF

	heapHasNull       = 0x0001
	heapXmaxKeyShr    = 0x0010
	heapXmaxExclLock  = 0x0040
	heapXmaxLockOnly  = 0x0080
	heapXminCommitted = 0x0100
	heapXminInvalid   = 0x0200
	heapXmaxCommitted = 0x0400
	heapXmaxInvalid   = 0x0800
	heapXmaxIsMulti   = 0x1000
	heapLockMask      = heapXmaxExclLock | heapXmaxKeyShr // HEAP_LOCK_MASK

	bootstrapXID = 1 // BootstrapTransactionId
	frozenXID    = 2 // FrozenTransactionId
	firstNormXID = 3 // FirstNormalTransactionId
)

// maxCatalogBlocks bounds the blocks read of one catalog: 512 MiB of
// pg_class is some two million relations, beyond any cluster this serves,
// and a corrupt fork size can then make a diff neither read nor keep
// (memory is a few rows per page read) without end. Rows past it are not
// named.
const maxCatalogBlocks = 1 << 16

// heapTuple is one tuple of a heap page; data aliases the page.
type heapTuple struct {
	xmin, xmax uint32
	infomask   uint16
	natts      int
	nulls      []byte // the null bitmap; nil: no nulls
	data       []byte // the user data, from t_hoff on
}

// errBadPage is a heap page whose header is not PostgreSQL's.
var errBadPage = errors.New("not a PostgreSQL heap page")

// forEachHeapTuple calls fn with every normal (LP_NORMAL) tuple of a heap
// page whose header and null bitmap lie inside the page; other line
// pointers are skipped. A new (all-zero) page has no tuples. It fails
// only when the page header itself is invalid.
func forEachHeapTuple(page []byte, fn func(heapTuple)) error {
	if len(page) < pageHeaderSize {
		return errBadPage
	}
	lower := int(binary.LittleEndian.Uint16(page[12:]))
	upper := int(binary.LittleEndian.Uint16(page[14:]))
	special := int(binary.LittleEndian.Uint16(page[16:]))
	if upper == 0 {
		return nil // PageIsNew: never initialised
	}
	// PageHeaderIsValid, with the buffer's length for BLCKSZ.
	if binary.LittleEndian.Uint16(page[18:])&0xFF != pageLayoutVersion ||
		lower < pageHeaderSize || lower > upper || upper > special || special > len(page) {
		return errBadPage
	}
	n := min((lower-pageHeaderSize)/itemIDSize, maxLinePointers)
	for i := range n {
		lp := binary.LittleEndian.Uint32(page[pageHeaderSize+i*itemIDSize:])
		if (lp>>15)&3 != lpNormal {
			continue
		}
		off, ln := int(lp&0x7FFF), int(lp>>17)
		if ln < heapTupleHeaderSize || off > len(page) || ln > len(page)-off {
			continue
		}
		if t, ok := parseHeapTuple(page[off : off+ln]); ok {
			fn(t)
		}
	}
	return nil
}

// parseHeapTuple takes a tuple's header apart; false when its header,
// null bitmap or t_hoff do not fit in it.
func parseHeapTuple(b []byte) (heapTuple, bool) {
	if len(b) < heapTupleHeaderSize {
		return heapTuple{}, false
	}
	t := heapTuple{
		xmin:     binary.LittleEndian.Uint32(b[0:]),
		xmax:     binary.LittleEndian.Uint32(b[4:]),
		infomask: binary.LittleEndian.Uint16(b[20:]),
		natts:    int(binary.LittleEndian.Uint16(b[18:]) & heapNattsMask),
	}
	hoff := int(b[22])
	if hoff < heapTupleHeaderSize || hoff > len(b) {
		return heapTuple{}, false
	}
	if t.infomask&heapHasNull != 0 {
		bm := (t.natts + 7) / 8
		if heapTupleHeaderSize+bm > hoff {
			return heapTuple{}, false
		}
		t.nulls = b[heapTupleHeaderSize : heapTupleHeaderSize+bm]
	}
	t.data = b[hoff:]
	return t, true
}

// fixed says whether the first natts attributes are present and not null
// and the data holds at least size bytes: the condition for reading the
// leading fixed-width columns at their static offsets.
func (t heapTuple) fixed(natts, size int) bool {
	if t.natts < natts || len(t.data) < size {
		return false
	}
	if t.nulls != nil {
		for i := range natts {
			if t.nulls[i>>3]&(1<<(i&7)) == 0 {
				return false
			}
		}
	}
	return true
}

func (t heapTuple) u32(off int) uint32 { return binary.LittleEndian.Uint32(t.data[off:]) }

// name reads a NameData (64 bytes, NUL-padded) at off.
func (t heapTuple) name(off int) string {
	b := t.data[off : off+64]
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// classRow is what naming needs of a pg_class row. Offsets are PG15's
// (checked against pg_attribute of a PostgreSQL 15 cluster): oid 0,
// relname 4, relnamespace 68, relfilenode 88, reltablespace 92,
// reltoastrelid 108, relisshared 113, relkind 115; attributes 1..17 are
// all NOT NULL.
type classRow struct {
	oid, nsp, filenode, spc, toast uint32
	name                           string
	kind                           byte
	shared                         bool
}

func decodeClass(t heapTuple) (classRow, bool) {
	if !t.fixed(17, 116) {
		return classRow{}, false
	}
	return classRow{
		oid:      t.u32(0),
		name:     t.name(4),
		nsp:      t.u32(68),
		filenode: t.u32(88),
		spc:      t.u32(92),
		toast:    t.u32(108),
		shared:   t.data[113] != 0,
		kind:     t.data[115],
	}, true
}

// nsRow is a pg_namespace row: oid 0, nspname 4.
type nsRow struct {
	oid  uint32
	name string
}

func decodeNamespace(t heapTuple) (nsRow, bool) {
	if !t.fixed(2, 68) {
		return nsRow{}, false
	}
	return nsRow{oid: t.u32(0), name: t.name(4)}, true
}

// indexRow is a pg_index row: indexrelid 0, indrelid 4.
type indexRow struct{ index, table uint32 }

func decodeIndex(t heapTuple) (indexRow, bool) {
	if !t.fixed(2, 8) {
		return indexRow{}, false
	}
	return indexRow{index: t.u32(0), table: t.u32(4)}, true
}

// dbRow is a pg_database row: oid 0, datname 4, dattablespace 92
// (PG15 added datlocprovider at 76, before it).
type dbRow struct {
	oid  uint32
	name string
	spc  uint32
}

func decodeDatabase(t heapTuple) (dbRow, bool) {
	if !t.fixed(11, 96) {
		return dbRow{}, false
	}
	return dbRow{oid: t.u32(0), name: t.name(4), spc: t.u32(92)}, true
}

// xidStatus is a transaction's state in pg_xact (access/clog.h), plus
// xidUnknown when it could not be read.
type xidStatus uint8

const (
	xidInProgress   xidStatus = 0
	xidCommitted    xidStatus = 1
	xidAborted      xidStatus = 2
	xidSubCommitted xidStatus = 3
	xidUnknown      xidStatus = 4
)

// pg_xact geometry: 2 bits per transaction, 32 pages per segment file.
const (
	clogXactsPerByte    = 4
	clogXactsPerPage    = BlockSize * clogXactsPerByte
	clogPagesPerSegment = 32 // SLRU_PAGES_PER_SEGMENT
	clogXactsPerSegment = clogXactsPerPage * clogPagesPerSegment
)

// clogPath is the pg_xact segment file holding xid.
func clogPath(xid uint32) string {
	return fmt.Sprintf("pg_xact/%04X", xid/clogXactsPerSegment)
}

// clogStatus reads xid's status from its segment file's content.
func clogStatus(seg []byte, xid uint32) xidStatus {
	i := xid % clogXactsPerSegment
	off := int(i / clogXactsPerByte)
	if off >= len(seg) {
		return xidUnknown
	}
	return xidStatus(seg[off]>>((i%clogXactsPerByte)*2)) & 3
}

// Tuple visibility as naming ranks it.
const (
	visDead    = 0
	visUnknown = 1
	visLive    = 2
)

// tupleRank orders the versions of one catalog row: live above unknown
// above dead, and within each a tuple whose xmax is invalid above one
// whose is set (what the spec of Diff asks for when pg_xact cannot
// decide). The image is a clean shutdown, so no transaction is running:
// an in-progress xid in pg_xact is one that never committed (a crash
// earlier on, or a prepared transaction), which hides an insert and
// leaves a delete undone. Multixact deleters and subtransactions are not
// followed (visUnknown).
func tupleRank(t heapTuple, status func(uint32) xidStatus) int {
	xmaxInvalid := t.infomask&heapXmaxInvalid != 0 || t.xmax == 0
	rank := func(vis int) int {
		r := vis * 2
		if xmaxInvalid {
			r++
		}
		return r
	}
	vis := visLive
	switch {
	case t.infomask&(heapXminCommitted|heapXminInvalid) == heapXminCommitted|heapXminInvalid: // frozen
	case t.infomask&heapXminCommitted != 0:
	case t.infomask&heapXminInvalid != 0:
		return rank(visDead)
	case t.xmin == bootstrapXID || t.xmin == frozenXID:
	case t.xmin < firstNormXID:
		return rank(visDead)
	default:
		switch status(t.xmin) {
		case xidCommitted:
		case xidAborted, xidInProgress:
			return rank(visDead)
		default:
			vis = visUnknown
		}
	}
	switch {
	case xmaxInvalid:
	case t.infomask&heapXmaxLockOnly != 0 || t.infomask&(heapXmaxIsMulti|heapLockMask) == heapXmaxExclLock:
		// HEAP_XMAX_IS_LOCKED_ONLY: a row lock, not a delete.
	case t.infomask&heapXmaxIsMulti != 0:
		vis = visUnknown
	case t.infomask&heapXmaxCommitted != 0:
		return rank(visDead)
	case t.xmax < firstNormXID:
		// Not a real deleter (FrozenTransactionId is never an xmax).
	default:
		switch status(t.xmax) {
		case xidCommitted:
			return rank(visDead)
		case xidAborted, xidInProgress:
		default:
			vis = visUnknown
		}
	}
	return rank(vis)
}

// Relation mapper file (utils/cache/relmapper.c): magic, count, 62
// (oid, filenode) pairs, CRC-32C of what precedes it, padding.
const (
	relMapMagic    = 0x592717
	relMapSize     = 512
	relMapMax      = 62
	relMapCRCStart = 8 + relMapMax*8
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// parseRelMap returns a pg_filenode.map's oid → relfilenode mappings.
func parseRelMap(b []byte) (map[uint32]uint32, error) {
	if len(b) != relMapSize {
		return nil, fmt.Errorf("relation map of %d bytes, want %d", len(b), relMapSize)
	}
	if binary.LittleEndian.Uint32(b) != relMapMagic {
		return nil, fmt.Errorf("relation map magic %#x, want %#x", binary.LittleEndian.Uint32(b), relMapMagic)
	}
	if got, want := crc32.Checksum(b[:relMapCRCStart], castagnoli), binary.LittleEndian.Uint32(b[relMapCRCStart:]); got != want {
		return nil, fmt.Errorf("relation map CRC %#x, stored %#x", got, want)
	}
	n := int32(binary.LittleEndian.Uint32(b[4:]))
	if n < 0 || n > relMapMax {
		return nil, fmt.Errorf("relation map with %d mappings", n)
	}
	m := make(map[uint32]uint32, n)
	for i := range int(n) {
		m[binary.LittleEndian.Uint32(b[8+i*8:])] = binary.LittleEndian.Uint32(b[12+i*8:])
	}
	return m, nil
}

// relKinds names pg_class.relkind values.
var relKinds = map[byte]string{
	'r': "table",
	'i': "index",
	'S': "sequence",
	't': "toast",
	'v': "view",
	'm': "materialized view",
	'c': "composite type",
	'f': "foreign table",
	'p': "partitioned table",
	'I': "partitioned index",
}

func relKindName(k byte) string {
	if s, ok := relKinds[k]; ok {
		return s
	}
	return "relkind " + strconv.Quote(string(k))
}

// relInfo is what a catalog says about a relfilenode.
type relInfo struct {
	oid      uint32
	name     string // schema-qualified when the schema is known
	kind     string
	of       string
	database string
	rank     int // tupleRank of the pg_class row it comes from
}

// ranked is a catalog row with the rank of the tuple it was read from.
type ranked[T any] struct {
	row  T
	rank int
}

// keepBest records row under k unless a better-ranked version is there.
// Among equals the first read stays: line-pointer order, deterministic.
func keepBest[K comparable, T any](m map[K]ranked[T], k K, row T, rank int) {
	if cur, ok := m[k]; !ok || rank > cur.rank {
		m[k] = ranked[T]{row, rank}
	}
}

// nodeKey is where a relation's files are: tablespace and relfilenode.
type nodeKey struct{ spc, node uint32 }

// dbCatalog is one database's catalogs at one read point.
type dbCatalog struct {
	byOID   map[uint32]ranked[classRow]
	byNode  map[nodeKey]ranked[classRow]
	nsp     map[uint32]ranked[nsRow]
	indexOf map[uint32]ranked[indexRow] // by indexrelid
	toastOf map[uint32]uint32           // toast table OID → its table's OID
}

// sharedCatalog is pg_database and the shared relation map.
type sharedCatalog struct {
	relmap map[uint32]uint32
	dbs    map[uint32]ranked[dbRow]
}

// catalogView reads the catalogs of one read point, loading each
// database's on first use.
type catalogView struct {
	r      reader
	lv     []level
	clog   map[string][]byte // pg_xact segment path → content (nil: missing)
	shared *sharedCatalog
	dbs    map[uint32]*dbCatalog
	err    error // the first pg_xact read error
}

func newCatalogView(r reader, lv []level) *catalogView {
	return &catalogView{r: r, lv: lv, clog: make(map[string][]byte), dbs: make(map[uint32]*dbCatalog)}
}

// readStoredFile is ReadFile on a reader and levels: ok false when the
// path is missing, deleted or a directory.
func readStoredFile(r reader, lv []level, path string) ([]byte, bool, error) {
	v, ok, err := getVersion(r, lv, func(tl TimelineID) []byte { return filePrefix(tl, path) })
	if err != nil || !ok || len(v) == 0 {
		return nil, false, err
	}
	switch v[0] {
	case fileContent:
		return v[1:], true, nil
	case fileSparse:
		size, chunks, err := decodeSparse(v)
		if err != nil || size > 1<<30 {
			return nil, false, nil // not a file naming can use
		}
		out := make([]byte, size)
		for _, c := range chunks {
			copy(out[c.off:], c.data)
		}
		return out, true, nil
	}
	return nil, false, nil
}

// status reads xid's commit status from the stored pg_xact. A read
// error makes it xidUnknown and is kept in v.err for scanHeap to return.
func (v *catalogView) status(xid uint32) xidStatus {
	p := clogPath(xid)
	seg, ok := v.clog[p]
	if !ok {
		b, found, err := readStoredFile(v.r, v.lv, p)
		if err != nil {
			if v.err == nil {
				v.err = fmt.Errorf("read %s: %w", p, err)
			}
			return xidUnknown
		}
		if !found {
			b = nil
		}
		v.clog[p] = b
		seg = b
	}
	return clogStatus(seg, xid)
}

// scanHeap calls fn with each tuple (and its rank) of the main fork of
// rel at the view's read point. A missing fork or garbage pages yield
// nothing; only read errors are returned.
func (v *catalogView) scanHeap(ctx context.Context, rel RelTag, fn func(t heapTuple, rank int)) error {
	n, ok, err := forkSize(v.r, v.lv, rel)
	if err != nil || !ok {
		return err
	}
	n = min(n, maxCatalogBlocks)
	pm, err := newPageMerger(v.r, v.lv, rel)
	if err != nil {
		return err
	}
	defer pm.close()
	for pm.next() {
		if err := ctx.Err(); err != nil {
			return err
		}
		if pm.blk() >= n {
			break
		}
		if len(pm.val) == 0 {
			continue // an all-zero page
		}
		_ = forEachHeapTuple(pm.val, func(t heapTuple) { fn(t, tupleRank(t, v.status)) })
		if v.err != nil {
			return v.err
		}
	}
	return pm.err()
}

// sharedCat loads pg_database through the shared relation map.
func (v *catalogView) sharedCat(ctx context.Context) (*sharedCatalog, error) {
	if v.shared != nil {
		return v.shared, nil
	}
	sc := &sharedCatalog{dbs: make(map[uint32]ranked[dbRow])}
	b, ok, err := readStoredFile(v.r, v.lv, "global/pg_filenode.map")
	if err != nil {
		return nil, fmt.Errorf("read global/pg_filenode.map: %w", err)
	}
	if ok {
		sc.relmap, _ = parseRelMap(b) // a bad map names nothing
	}
	if node, ok := sc.relmap[pgDatabaseOID]; ok {
		rel := RelTag{Spc: globalTablespace, Rel: node}
		err := v.scanHeap(ctx, rel, func(t heapTuple, rank int) {
			if row, ok := decodeDatabase(t); ok {
				keepBest(sc.dbs, row.oid, row, rank)
			}
		})
		if err != nil {
			return nil, fmt.Errorf("read pg_database (%s): %w", rel, err)
		}
	}
	v.shared = sc
	return sc, nil
}

// dbCat loads database db's pg_class, pg_namespace and pg_index.
func (v *catalogView) dbCat(ctx context.Context, db uint32) (*dbCatalog, error) {
	if c, ok := v.dbs[db]; ok {
		return c, nil
	}
	sc, err := v.sharedCat(ctx)
	if err != nil {
		return nil, err
	}
	c := &dbCatalog{
		byOID:   make(map[uint32]ranked[classRow]),
		byNode:  make(map[nodeKey]ranked[classRow]),
		nsp:     make(map[uint32]ranked[nsRow]),
		indexOf: make(map[uint32]ranked[indexRow]),
		toastOf: make(map[uint32]uint32),
	}
	v.dbs[db] = c
	// A database's mapped catalogs are in its default tablespace.
	dbSpc := uint32(defaultTablespace)
	if d, ok := sc.dbs[db]; ok && d.row.spc != 0 {
		dbSpc = d.row.spc
	}
	mapPath := "base/" + strconv.FormatUint(uint64(db), 10) + "/pg_filenode.map"
	b, ok, err := readStoredFile(v.r, v.lv, mapPath)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", mapPath, err)
	}
	if !ok {
		return c, nil
	}
	relmap, err := parseRelMap(b)
	if err != nil {
		return c, nil // names stay unknown
	}
	node, ok := relmap[pgClassOID]
	if !ok {
		return c, nil
	}
	rel := RelTag{Spc: dbSpc, DB: db, Rel: node}
	err = v.scanHeap(ctx, rel, func(t heapTuple, rank int) {
		row, ok := decodeClass(t)
		if !ok {
			return
		}
		// Where the files are: mapped relations say 0 and are in the map;
		// reltablespace 0 is the database's default.
		if row.filenode == 0 {
			m := relmap
			if row.shared {
				m = sc.relmap
			}
			row.filenode = m[row.oid]
		}
		switch {
		case row.shared:
			row.spc = globalTablespace
		case row.spc == 0:
			row.spc = dbSpc
		}
		keepBest(c.byOID, row.oid, row, rank)
		if row.filenode != 0 {
			keepBest(c.byNode, nodeKey{row.spc, row.filenode}, row, rank)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("read pg_class (%s): %w", rel, err)
	}
	// Ownership from the best version of each row only: an older
	// version may point at a toast table since replaced.
	for _, r := range c.byOID {
		if r.row.toast != 0 {
			if cur, dup := c.toastOf[r.row.toast]; !dup || r.row.oid < cur {
				c.toastOf[r.row.toast] = r.row.oid
			}
		}
	}
	catalog := func(oid uint32) (RelTag, bool) {
		r, ok := c.byOID[oid]
		if !ok || r.row.filenode == 0 {
			return RelTag{}, false
		}
		return RelTag{Spc: r.row.spc, DB: db, Rel: r.row.filenode}, true
	}
	if rel, ok := catalog(pgNamespaceOID); ok {
		if err := v.scanHeap(ctx, rel, func(t heapTuple, rank int) {
			if row, ok := decodeNamespace(t); ok {
				keepBest(c.nsp, row.oid, row, rank)
			}
		}); err != nil {
			return nil, fmt.Errorf("read pg_namespace (%s): %w", rel, err)
		}
	}
	if rel, ok := catalog(pgIndexOID); ok {
		if err := v.scanHeap(ctx, rel, func(t heapTuple, rank int) {
			if row, ok := decodeIndex(t); ok {
				keepBest(c.indexOf, row.index, row, rank)
			}
		}); err != nil {
			return nil, fmt.Errorf("read pg_index (%s): %w", rel, err)
		}
	}
	return c, nil
}

// qualified is a pg_class row's schema-qualified name (bare when the
// schema is unknown).
func (c *dbCatalog) qualified(row classRow) string {
	if ns, ok := c.nsp[row.nsp]; ok && ns.row.name != "" {
		return ns.row.name + "." + row.name
	}
	return row.name
}

func (c *dbCatalog) nameOf(oid uint32) string {
	if r, ok := c.byOID[oid]; ok {
		return c.qualified(r.row)
	}
	return ""
}

// info describes row: its kind and, for an index or TOAST table, what
// it belongs to.
func (c *dbCatalog) info(r ranked[classRow]) relInfo {
	in := relInfo{oid: r.row.oid, name: c.qualified(r.row), kind: relKindName(r.row.kind), rank: r.rank}
	switch r.row.kind {
	case 'i', 'I':
		if ix, ok := c.indexOf[r.row.oid]; ok {
			in.of = c.nameOf(ix.row.table)
		}
	case 't':
		if owner, ok := c.toastOf[r.row.oid]; ok {
			in.of = c.nameOf(owner)
		}
	}
	return in
}

// databaseName is database db's name at the view's read point.
func (v *catalogView) databaseName(ctx context.Context, db uint32) (string, error) {
	sc, err := v.sharedCat(ctx)
	if err != nil || db == 0 {
		return "", err
	}
	return sc.dbs[db].row.name, nil
}

// lookup names the relation whose main fork is rel. Shared relations
// (pg_global) are in every database's pg_class: the lowest-OID database
// that has a pg_class names them.
func (v *catalogView) lookup(ctx context.Context, rel RelTag) (relInfo, bool, error) {
	dbs := []uint32{rel.DB}
	if rel.Spc == globalTablespace {
		sc, err := v.sharedCat(ctx)
		if err != nil {
			return relInfo{}, false, err
		}
		dbs = dbs[:0]
		for oid := range sc.dbs {
			dbs = append(dbs, oid)
		}
		slices.SortFunc(dbs, cmp.Compare)
	}
	for _, db := range dbs {
		c, err := v.dbCat(ctx, db)
		if err != nil {
			return relInfo{}, false, err
		}
		if len(c.byOID) == 0 {
			continue // no readable pg_class: try the next database
		}
		r, ok := c.byNode[nodeKey{rel.Spc, rel.Rel}]
		if !ok {
			return relInfo{}, false, nil
		}
		in := c.info(r)
		if rel.DB != 0 {
			if in.database, err = v.databaseName(ctx, rel.DB); err != nil {
				return relInfo{}, false, err
			}
		}
		return in, true, nil
	}
	return relInfo{}, false, nil
}
