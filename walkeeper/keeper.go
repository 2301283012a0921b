package walkeeper

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"go.uber.org/zap"
)

// LSN is a PostgreSQL WAL position.
type LSN = uint64

// Options configure a Keeper.
type Options struct {
	Dir    string      // pebble directory (created if missing)
	NoSync bool        // tests only: no fsync (then the flush reported is just what was written)
	Name   string      // application_name the keeper streams as (default "wk1")
	Logger *zap.Logger // nil: nop
	// Password is what the keeper logs in with when a connection string
	// names none: walkeeper.token, which a node's front door checks for
	// ReplicationUser (keepers on other machines stream through it).
	Password string
}

// ReplicationUser is the role keepers log in as at a node's front door.
const ReplicationUser = "neonproxy_keeper"

// Keeper stores the WAL of PostgreSQL computes in pebble.
type Keeper struct {
	db   *pebble.DB
	opts Options
	wo   *pebble.WriteOptions
	log  *zap.Logger

	mu struct {
		sync.Mutex
		closed  bool
		streams map[uint64]*Stream // the active stream of each namespace
	}
}

// Open opens (creating if needed) the keeper's store in o.Dir.
func Open(o Options) (*Keeper, error) {
	if o.Dir == "" {
		return nil, errors.New("walkeeper: Options.Dir is required")
	}
	if o.Name == "" {
		o.Name = "wk1"
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("walkeeper: create %s: %w", o.Dir, err)
	}
	db, err := pebble.Open(o.Dir, &pebble.Options{
		Logger: o.Logger.Named("pebble").Sugar(),
	})
	if err != nil {
		return nil, fmt.Errorf("walkeeper: open pebble %s: %w", o.Dir, err)
	}
	k := &Keeper{db: db, opts: o, wo: pebble.Sync, log: o.Logger}
	if o.NoSync {
		k.wo = pebble.NoSync
	}
	k.mu.streams = make(map[uint64]*Stream)
	return k, nil
}

// Name is the application_name the keeper streams as; it must be listed in
// the computes' synchronous_standby_names.
func (k *Keeper) Name() string { return k.opts.Name }

// Close stops all streams and closes the store.
func (k *Keeper) Close() error {
	if k == nil {
		return nil
	}
	k.mu.Lock()
	if k.mu.closed {
		k.mu.Unlock()
		return nil
	}
	k.mu.closed = true
	streams := make([]*Stream, 0, len(k.mu.streams))
	for _, s := range k.mu.streams {
		streams = append(streams, s)
	}
	k.mu.Unlock()
	for _, s := range streams {
		s.Stop()
	}
	if err := k.db.Close(); err != nil {
		return fmt.Errorf("walkeeper: close pebble: %w", err)
	}
	return nil
}

// Keys.

func pageKey(ns uint64, lsn LSN) []byte {
	k := make([]byte, 17)
	k[0] = 'w'
	binary.BigEndian.PutUint64(k[1:], ns)
	binary.BigEndian.PutUint64(k[9:], lsn)
	return k
}

// pageKeyEnd is the exclusive upper bound of all page keys of ns.
func pageKeyEnd(ns uint64) []byte {
	k := make([]byte, 9)
	k[0] = 'w'
	if ns == math.MaxUint64 {
		k[0] = 'w' + 1
		return k[:1]
	}
	binary.BigEndian.PutUint64(k[1:], ns+1)
	return k
}

// nsKey is a per-namespace metadata key: a kind byte and the namespace.
func nsKey(kind byte, ns uint64) []byte {
	k := make([]byte, 9)
	k[0] = kind
	binary.BigEndian.PutUint64(k[1:], ns)
	return k
}

func flushKey(ns uint64) []byte   { return nsKey('f', ns) }
func coveredKey(ns uint64) []byte { return nsKey('c', ns) }
func genKey(ns uint64) []byte     { return nsKey('g', ns) }

func pageKeyLSN(key []byte) LSN { return binary.BigEndian.Uint64(key[9:]) }

// FlushLSN is the end of the contiguous WAL stored for ns (0 if none).
func (k *Keeper) FlushLSN(ns uint64) LSN {
	lsn, err := k.flushLSN(ns)
	if err != nil {
		k.log.Error("walkeeper: read flush LSN", zap.Uint64("ns", ns), zap.Error(err))
		return 0
	}
	return lsn
}

func (k *Keeper) flushLSN(ns uint64) (LSN, error) { return readFlush(k.db, ns) }

// StartLSN is the first LSN stored for ns (0 if none).
func (k *Keeper) StartLSN(ns uint64) LSN {
	lsn, err := k.startLSN(ns)
	if err != nil {
		k.log.Error("walkeeper: read start LSN", zap.Uint64("ns", ns), zap.Error(err))
		return 0
	}
	return lsn
}

func (k *Keeper) startLSN(ns uint64) (LSN, error) { return firstPage(k.db, ns) }

// Trim deletes the WAL of ns before `before` (page granularity: the page
// holding before is kept). The page holding the flush LSN is always kept.
func (k *Keeper) Trim(ctx context.Context, ns uint64, before LSN) error {
	flush, err := k.flushLSN(ns)
	if err != nil {
		return err
	}
	before = min(pageOf(before), pageOf(flush))
	if before == 0 {
		return nil
	}
	if err := k.db.DeleteRange(pageKey(ns, 0), pageKey(ns, before), k.wo); err != nil {
		return fmt.Errorf("walkeeper: trim %d before %s: %w", ns, fmtLSN(before), err)
	}
	return nil
}

// Drop deletes all WAL of ns; an active stream of ns is stopped first.
func (k *Keeper) Drop(ctx context.Context, ns uint64) error {
	k.mu.Lock()
	s := k.mu.streams[ns]
	k.mu.Unlock()
	if s != nil {
		s.Stop()
	}
	b := k.db.NewBatch()
	defer b.Close()
	if err := b.DeleteRange(pageKey(ns, 0), pageKeyEnd(ns), nil); err != nil {
		return fmt.Errorf("walkeeper: drop %d: %w", ns, err)
	}
	if err := b.Delete(flushKey(ns), nil); err != nil {
		return fmt.Errorf("walkeeper: drop %d: %w", ns, err)
	}
	if err := b.Delete(coveredKey(ns), nil); err != nil {
		return fmt.Errorf("walkeeper: drop %d: %w", ns, err)
	}
	if err := b.Delete(genKey(ns), nil); err != nil {
		return fmt.Errorf("walkeeper: drop %d: %w", ns, err)
	}
	if err := b.Commit(k.wo); err != nil {
		return fmt.Errorf("walkeeper: drop %d: %w", ns, err)
	}
	return nil
}

// readPage returns a copy of the stored page at lsn (nil if none).
func (k *Keeper) readPage(ns uint64, lsn LSN) ([]byte, error) {
	v, closer, err := k.db.Get(pageKey(ns, lsn))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("walkeeper: read page %s of %d: %w", fmtLSN(lsn), ns, err)
	}
	defer closer.Close()
	return append([]byte(nil), v...), nil
}
