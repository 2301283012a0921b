// Package pagestore is a copy-on-write store of stock PostgreSQL 15 data
// directories on pebble.
//
// A branch is a timeline: a parent timeline plus the parent LSN it was
// created at. A compute's data directory is materialized from the store
// before PostgreSQL starts and ingested back after a clean (fast) shutdown.
// Creating a timeline writes O(1) keys; an ingest stores only the relation
// blocks, fork sizes and files that differ from what the timeline read
// before.
//
// # Key layout
//
// All integers are big-endian. ^lsn is the bitwise NOT of the LSN, so
// within one key prefix newer versions sort first.
//
//	c                                     -> next timeline id (uint64); ids are never reused
//	m + tlid(8)                           -> timeline metadata (JSON of Timeline), written synced
//	s + tlid(8) + rel(13) + ^lsn(8)       -> fork size: uint32 block count; 0xFFFFFFFF = fork dropped
//	p + tlid(8) + rel(13) + blk(4) + ^lsn(8) -> page: 8192 bytes, or empty = all-zero page
//	f + tlid(8) + path + 0x00 + ^lsn(8)   -> non-relation file, first byte is the kind:
//	                                         'F' content follows; 'D' directory; 'X' deleted;
//	                                         'S' sparse file: uint64 size, then repeated
//	                                         (uint64 offset, uint32 len, bytes) chunks.
//
// rel(13) is spc(4) db(4) rel(4) fork(1), fork 0 main, 1 fsm, 2 vm, 3 init.
// Paths are slash-separated and relative to the data directory.
//
// # Reads
//
// Reading timeline T at LSN L visits the ancestry levels (T, L),
// (T.parent, T.ParentLSN), (grandparent, parent.ParentLSN) ..., each cutoff
// being the minimum of the chain so far. At each level one SeekGE to
// prefix+^cutoff finds the newest version <= cutoff; versions whose LSN is
// not one of that timeline's committed Images are skipped, which is how a
// crashed ingest stays invisible. The leaf-most level with a version wins.
// A page read first consults the fork size at the read point: a dropped
// fork or a block beyond the size is not found.
//
// Materialize and the store-comparison path of Ingest merge whole key
// ranges of all levels (one bounded iterator per level, k-way merge by key).
//
// # Durability
//
// Ingest writes versions at the checkpoint LSN in unsynced batches, then
// commits the timeline metadata (Images += LSN) in a final synced batch.
// Before writing, the timeline's Pending LSN is recorded (synced), so a
// later ingest or GC removes the leftovers of one that failed or crashed.
//
// # Locking
//
// Store.mu guards the in-memory timeline map and the ingest/GC markers and
// is never held across I/O. Store.metaMu serialises metadata writes (it is
// held across the synced metadata batch, but never while s.mu is held).
package pagestore
