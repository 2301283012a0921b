package walkeeper

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"go.uber.org/zap"
)

// copyBatchBytes bounds one unsynced batch of an Import.
const copyBatchBytes = 4 << 20

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

// SetCovered records that a stored image of the branch holds all of ns's
// WAL up to lsn: only WAL after it needs replaying. The WAL itself is kept
// (point-in-time branching reads it).
func (k *Keeper) SetCovered(ctx context.Context, ns uint64, lsn LSN) error {
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
