package walkeeper

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"go.uber.org/zap"
)

// copyBatchBytes bounds one batch of a namespace copy.
const copyBatchBytes = 4 << 20

// Branch makes namespace to hold the WAL of namespace from starting at the
// page holding `at`, up to from's flush position at the time of the call,
// and returns that position: a new branch then starts from its parent's
// newest image plus the WAL that was durable when it was created. The copy
// is proportional to the WAL since the parent's image (a clean stop of
// the parent stores an image and drops its WAL), not to the data size.
// Any WAL already in `to` is replaced.
func (k *Keeper) Branch(from, to uint64, at LSN) (LSN, error) {
	if from == to {
		return 0, fmt.Errorf("walkeeper: branch %d from itself", from)
	}
	// A consistent view: pages and the flush that covers them.
	snap := k.db.NewSnapshot()
	defer snap.Close()
	flush, err := readFlush(snap, from)
	if err != nil {
		return 0, err
	}
	if err := k.Drop(to); err != nil {
		return 0, err
	}
	if flush == 0 || flush <= at {
		return 0, nil
	}
	if start, err := k.startLSN(from); err != nil {
		return 0, err
	} else if start > pageOf(at) {
		return 0, fmt.Errorf("walkeeper: branch %d → %d: WAL from %X/%X is needed but the keeper's starts at %X/%X",
			from, to, at>>32, uint32(at), start>>32, uint32(start))
	}
	it, err := snap.NewIter(&pebble.IterOptions{LowerBound: pageKey(from, pageOf(at)), UpperBound: pageKey(from, flush+1)})
	if err != nil {
		return 0, fmt.Errorf("walkeeper: branch %d → %d: %w", from, to, err)
	}
	defer it.Close()
	b := k.db.NewBatch()
	defer func() { b.Close() }()
	for ok := it.First(); ok; ok = it.Next() {
		if err := b.Set(pageKey(to, pageKeyLSN(it.Key())), it.Value(), nil); err != nil {
			return 0, err
		}
		if b.Len() >= copyBatchBytes {
			if err := b.Commit(pebble.NoSync); err != nil {
				return 0, fmt.Errorf("walkeeper: branch %d → %d: %w", from, to, err)
			}
			b.Close()
			b = k.db.NewBatch()
		}
	}
	if err := it.Error(); err != nil {
		return 0, fmt.Errorf("walkeeper: branch %d → %d: %w", from, to, err)
	}
	// The flush position last, in a synced batch: until then `to` has no
	// WAL a reader would use.
	if err := b.Set(flushKey(to), binary.BigEndian.AppendUint64(nil, flush), nil); err != nil {
		return 0, err
	}
	if err := b.Commit(k.wo); err != nil {
		return 0, fmt.Errorf("walkeeper: branch %d → %d: %w", from, to, err)
	}
	return flush, nil
}

// readFlush reads ns's flush position from a snapshot.
func readFlush(r pebble.Reader, ns uint64) (LSN, error) {
	v, closer, err := r.Get(flushKey(ns))
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("walkeeper: read flush LSN of %d: %w", ns, err)
	}
	defer closer.Close()
	if len(v) != 8 {
		return 0, fmt.Errorf("walkeeper: flush LSN of %d: bad value length %d", ns, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

func coveredKey(ns uint64) []byte {
	k := make([]byte, 9)
	k[0] = 'c'
	binary.BigEndian.PutUint64(k[1:], ns)
	return k
}

// SetCovered records that a stored image of the branch holds all of ns's
// WAL up to lsn: only WAL after it needs replaying. The WAL itself is kept
// (point-in-time branching reads it).
func (k *Keeper) SetCovered(ns uint64, lsn LSN) error {
	if err := k.db.Set(coveredKey(ns), binary.BigEndian.AppendUint64(nil, lsn), k.wo); err != nil {
		return fmt.Errorf("walkeeper: set covered LSN of %d: %w", ns, err)
	}
	return nil
}

// Covered is what SetCovered last recorded for ns (0: nothing).
func (k *Keeper) Covered(ns uint64) LSN {
	v, closer, err := k.db.Get(coveredKey(ns))
	if err != nil {
		if !errors.Is(err, pebble.ErrNotFound) {
			k.log.Error("walkeeper: read covered LSN", zap.Uint64("ns", ns), zap.Error(err))
		}
		return 0
	}
	defer closer.Close()
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}
