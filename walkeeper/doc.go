// Package walkeeper is a WAL keeper: it receives the WAL of running
// PostgreSQL computes over the physical replication protocol as a
// synchronous standby, stores it durably in pebble and only then reports the
// flush position back, so that a compute running with synchronous_commit=on
// and synchronous_standby_names='ANY 1 (<Name>)' acknowledges a COMMIT to its
// client only after the keeper has it on disk. After a compute's local data
// directory is lost, WriteSegments writes the stored WAL back as pg_wal
// segment files and MarkCrashed flips the control file to "in production", so
// PostgreSQL's crash recovery replays every acknowledged commit.
//
// The API is transport-agnostic: a namespace (ns) is a uint64 chosen by the
// caller (the branch's pagestore timeline id); LSNs are plain uint64.
// Service is what a compute node uses: *Keeper in the same process, or
// *Client for a standalone keeper (`neonproxy walkeeper`) serving Handler's
// HTTP API. Several keepers with a quorum are combined in wake/ through
// PostgreSQL's synchronous_standby_names = 'ANY k (...)'.
//
// # Generations (fencing)
//
// Each start of a compute streams with a generation above every earlier one
// and the LSN its own history starts at (FollowRequest.Gen, GenStart). The
// first stream of a newer generation cuts the namespace's stored WAL back to
// that start (what lies beyond was never acknowledged: the compute
// recovered without it), and streams of an older generation are refused
// (ErrFenced).
//
// # Storage layout (pebble)
//
//	'w' + ns (8 bytes, big-endian) + pageLSN (8 bytes, big-endian)  ->  WAL page
//	'f' + ns (8 bytes, big-endian)                                   ->  flush LSN (8 bytes, big-endian)
//	'c' + ns                                                         ->  covered LSN (SetCovered)
//	'g' + ns                                                         ->  generation, its start LSN (8 + 8 bytes)
//
// pageLSN is a multiple of PageSize (8192). Every stored page value is exactly
// PageSize bytes: the last, partial page is zero-padded beyond the flush LSN
// (bytes past the flush LSN are always zero, never stale data of an earlier
// stream). The WAL stored for ns is contiguous from StartLSN (the first page
// key) to the flush LSN; pages at or beyond the flush LSN's page that are left
// over from an earlier, longer stream are deleted when a new stream first
// writes. All pages a batch of received XLogData touches are written together
// with the new flush LSN in one pebble batch committed with pebble.Sync
// (pebble.NoSync when Options.NoSync); only after the commit returns is the
// standby status update (write = flush = apply = the new end) sent.
//
// A stream that starts beyond the end of the stored WAL (a gap) drops the
// older WAL of its namespace, so the stored WAL stays contiguous. A stream
// that starts at or before the flush LSN (a compute that recovered and
// continues from an earlier position) overwrites the pages it sends.
package walkeeper
