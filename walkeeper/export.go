package walkeeper

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"go.uber.org/zap"
)

// Info reports what the keeper holds for ns.
func (k *Keeper) Info(ctx context.Context, ns uint64) (Info, error) {
	snap := k.db.NewSnapshot()
	defer snap.Close()
	var in Info
	var err error
	if in.Flush, err = readFlush(snap, ns); err != nil {
		return in, err
	}
	if in.Start, err = firstPage(snap, ns); err != nil {
		return in, err
	}
	in.Covered = k.Covered(ns)
	g, err := readGen(snap, ns)
	if err != nil {
		return in, err
	}
	in.Gen, in.GenStart, in.DataGen = g.gen, g.start, g.dataGen(in.Flush)
	k.mu.Lock()
	in.Streaming = k.mu.streams[ns] != nil
	k.mu.Unlock()
	return in, nil
}

func firstPage(r pebble.Reader, ns uint64) (LSN, error) {
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: pageKey(ns, 0), UpperBound: pageKeyEnd(ns)})
	if err != nil {
		return 0, fmt.Errorf("walkeeper: iterate %d: %w", ns, err)
	}
	defer it.Close()
	if !it.First() {
		return 0, it.Error()
	}
	return pageKeyLSN(it.Key()), nil
}

// Export reads ns's WAL from the page holding `from` up to `to` (0: the
// flush LSN) from a consistent snapshot. The returned body must be closed.
func (k *Keeper) Export(ctx context.Context, ns uint64, from, to LSN) (*WAL, error) {
	snap := k.db.NewSnapshot()
	flush, err := readFlush(snap, ns)
	if err == nil && (to == 0 || to > flush) {
		to = flush
	}
	var start LSN
	if err == nil {
		start, err = firstPage(snap, ns)
	}
	if err != nil {
		snap.Close()
		return nil, err
	}
	first := pageOf(from)
	if flush == 0 || first < start || from > flush {
		snap.Close()
		return nil, fmt.Errorf("%w: %d has %s to %s, asked from %s", ErrNoWAL, ns, fmtLSN(start), fmtLSN(flush), fmtLSN(from))
	}
	it, err := snap.NewIter(&pebble.IterOptions{LowerBound: pageKey(ns, first), UpperBound: pageKey(ns, max(to, first+1))})
	if err != nil {
		snap.Close()
		return nil, fmt.Errorf("walkeeper: export %d: %w", ns, err)
	}
	w := &WAL{Start: first, Flush: to}
	w.Body = &pageReader{ctx: ctx, ns: ns, it: it, snap: snap, want: first, end: to}
	return w, nil
}

// pageReader streams stored pages as contiguous bytes, zero beyond end.
type pageReader struct {
	ctx     context.Context
	ns      uint64
	it      *pebble.Iterator
	snap    *pebble.Snapshot
	want    LSN // next page to read
	end     LSN
	started bool
	buf     []byte // rest of the current page
	err     error

	closeOnce sync.Once // an HTTP transport closes a body it sent, callers may too
	closeErr  error
}

func (r *pageReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if r.want >= r.end {
			r.err = io.EOF
			return 0, io.EOF
		}
		if err := r.ctx.Err(); err != nil {
			r.err = err
			return 0, err
		}
		var ok bool
		if !r.started {
			r.started, ok = true, r.it.First()
		} else {
			ok = r.it.Next()
		}
		if !ok || pageKeyLSN(r.it.Key()) != r.want {
			r.err = fmt.Errorf("walkeeper: WAL of %d is missing page %s", r.ns, fmtLSN(r.want))
			if err := r.it.Error(); err != nil {
				r.err = err
			}
			return 0, r.err
		}
		v, err := r.it.ValueAndErr()
		if err != nil {
			r.err = err
			return 0, err
		}
		page := make([]byte, PageSize)
		copy(page, v)
		if r.end-r.want < PageSize {
			clear(page[r.end-r.want:]) // nothing beyond the end
		}
		r.buf = page
		r.want += PageSize
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

func (r *pageReader) Close() error {
	r.closeOnce.Do(func() {
		r.closeErr = r.it.Close()
		if e := r.snap.Close(); r.closeErr == nil {
			r.closeErr = e
		}
	})
	return r.closeErr
}

// Import replaces ns's WAL with w's pages (an active stream of ns is the
// caller's to stop first). The pages go in unsynced
// batches; the flush position last, in a synced batch, so a crash in
// between leaves ns without WAL rather than with a part of it.
func (k *Keeper) Import(ctx context.Context, ns uint64, w *WAL) error {
	defer w.Body.Close()
	if w.Start != pageOf(w.Start) || w.Flush < w.Start {
		return fmt.Errorf("walkeeper: import %d: bad range %s to %s", ns, fmtLSN(w.Start), fmtLSN(w.Flush))
	}
	// The WAL only: the namespace's generation and covered position stay.
	clearWAL := k.db.NewBatch()
	defer clearWAL.Close()
	if err := clearWAL.DeleteRange(pageKey(ns, 0), pageKeyEnd(ns), nil); err != nil {
		return fmt.Errorf("walkeeper: import %d: %w", ns, err)
	}
	if err := clearWAL.Delete(flushKey(ns), nil); err != nil {
		return fmt.Errorf("walkeeper: import %d: %w", ns, err)
	}
	if err := clearWAL.Commit(k.wo); err != nil {
		return fmt.Errorf("walkeeper: import %d: %w", ns, err)
	}
	if w.Flush == w.Start {
		return nil
	}
	b := k.db.NewBatch()
	defer func() { b.Close() }()
	page := make([]byte, PageSize)
	for lsn := w.Start; lsn < w.Flush; lsn += PageSize {
		if _, err := io.ReadFull(w.Body, page); err != nil {
			// Without a flush position the pages of earlier batches are
			// invisible; remove them too.
			_ = k.db.DeleteRange(pageKey(ns, 0), pageKeyEnd(ns), pebble.NoSync)
			return fmt.Errorf("walkeeper: import %d: page %s: %w", ns, fmtLSN(lsn), err)
		}
		if err := b.Set(pageKey(ns, lsn), page, nil); err != nil {
			return err
		}
		if b.Len() >= copyBatchBytes {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("walkeeper: import %d: %w", ns, err)
			}
			if err := b.Commit(pebble.NoSync); err != nil {
				return fmt.Errorf("walkeeper: import %d: %w", ns, err)
			}
			b.Close()
			b = k.db.NewBatch()
		}
	}
	if err := b.Set(flushKey(ns), binary.BigEndian.AppendUint64(nil, w.Flush), nil); err != nil {
		return err
	}
	if err := b.Commit(k.wo); err != nil {
		return fmt.Errorf("walkeeper: import %d: %w", ns, err)
	}
	return nil
}

// Generations (fencing).

// generation is what a keeper records of the compute generations of a
// namespace.
type generation struct {
	gen   uint64 // the newest that streamed in (fences older ones)
	start LSN    // where its history began
	// prev is the generation of the WAL the keeper held when it adopted
	// gen: until its flush reaches start, all it has is that WAL.
	prev uint64
}

// dataGen is the generation of the newest WAL the keeper holds: gen once
// its WAL reaches gen's start, else prev.
func (g generation) dataGen(flush LSN) uint64 {
	if flush >= g.start {
		return g.gen
	}
	return g.prev
}

func readGen(r pebble.Reader, ns uint64) (generation, error) {
	v, closer, err := r.Get(genKey(ns))
	if errors.Is(err, pebble.ErrNotFound) {
		return generation{}, nil
	}
	if err != nil {
		return generation{}, fmt.Errorf("walkeeper: read generation of %d: %w", ns, err)
	}
	defer closer.Close()
	switch len(v) {
	case 16: // written before prev was kept: taken as caught up
		g := binary.BigEndian.Uint64(v)
		return generation{gen: g, start: binary.BigEndian.Uint64(v[8:]), prev: g}, nil
	case 24:
		return generation{gen: binary.BigEndian.Uint64(v), start: binary.BigEndian.Uint64(v[8:]), prev: binary.BigEndian.Uint64(v[16:])}, nil
	}
	return generation{}, fmt.Errorf("walkeeper: generation of %d: bad value length %d", ns, len(v))
}

// fence applies a stream request's generation to ns (the caller holds ns's
// stream registration, so nothing else writes ns). A newer generation cuts
// the stored WAL back to its start.
func (k *Keeper) fence(ns uint64, gen uint64, genStart LSN) error {
	if gen == 0 {
		return nil
	}
	cur, err := readGen(k.db, ns)
	if err != nil {
		return err
	}
	have := cur.gen
	switch {
	case gen < have:
		return fmt.Errorf("%w: namespace %d is at generation %d, the request is for %d", ErrFenced, ns, have, gen)
	case gen == have:
		return nil
	}
	flush, err := k.flushLSN(ns)
	if err != nil {
		return err
	}
	b := k.db.NewBatch()
	defer b.Close()
	v := binary.BigEndian.AppendUint64(nil, gen)
	v = binary.BigEndian.AppendUint64(v, genStart)
	// A keeper that lags adopts the new generation at once (so a stale
	// compute is fenced off) but holds none of its WAL until it has caught
	// up to its start: for a recovery it is a keeper of what it holds.
	v = binary.BigEndian.AppendUint64(v, cur.dataGen(flush))
	if flush < genStart {
		k.log.Info("walkeeper: adopting a new compute generation before holding its start; catching up",
			zap.Uint64("ns", ns), zap.Uint64("gen", gen), zap.Uint64("data_gen", cur.dataGen(flush)),
			zap.String("flush", fmtLSN(flush)), zap.String("gen_start", fmtLSN(genStart)))
	}
	if err := b.Set(genKey(ns), v, nil); err != nil {
		return err
	}
	if flush > genStart {
		// What this keeper has beyond the new generation's start was
		// never acknowledged (the compute recovered without it).
		k.log.Warn("walkeeper: a new compute generation starts before the stored end; cutting the WAL back")
		if err := b.DeleteRange(pageKey(ns, pageOf(genStart)+PageSize), pageKeyEnd(ns), nil); err != nil {
			return err
		}
		if off := genStart - pageOf(genStart); off > 0 {
			page, err := k.readPage(ns, pageOf(genStart))
			if err != nil {
				return err
			}
			if page != nil {
				clear(page[off:])
				if err := b.Set(pageKey(ns, pageOf(genStart)), page, nil); err != nil {
					return err
				}
			}
		} else if err := b.Delete(pageKey(ns, genStart), nil); err != nil {
			return err
		}
		if err := b.Set(flushKey(ns), binary.BigEndian.AppendUint64(nil, genStart), nil); err != nil {
			return err
		}
	}
	if err := b.Commit(k.wo); err != nil {
		return fmt.Errorf("walkeeper: set generation %d of %d: %w", gen, ns, err)
	}
	return nil
}
