package pagestore

import (
	"context"
	"fmt"
	"sort"
	"sync/atomic"

	"golang.org/x/sync/errgroup"
)

// sortedRels returns the keys of m in key order, so work and manifests
// come out in the same order every time.
func sortedRels[V any](m map[RelTag]V) []RelTag {
	rels := make([]RelTag, 0, len(m))
	for r := range m {
		rels = append(rels, r)
	}
	sort.Slice(rels, func(i, j int) bool { return relLess(rels[i], rels[j]) })
	return rels
}

// relLess orders relations as their keys sort.
func relLess(a, b RelTag) bool {
	var ka, kb [relLen]byte
	return string(putRel(ka[:0], a)) < string(putRel(kb[:0], b))
}

// forEachFork runs do for every fork in rels on workers goroutines and
// returns the results in rels' order. Each worker has its own state from
// newState (buffers, a batch) and hands it to finish when the forks run
// out. The first error stops the rest.
func forEachFork[S, R any](ctx context.Context, workers int, rels []RelTag, newState func() S,
	do func(ctx context.Context, st S, rel RelTag) (R, error), finish func(st S) error) ([]R, error) {
	results := make([]R, len(rels))
	g, gctx := errgroup.WithContext(ctx)
	var next atomic.Int64
	for range max(1, workers) {
		g.Go(func() error {
			st := newState()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(rels) || gctx.Err() != nil {
					break
				}
				res, err := do(gctx, st, rels[i])
				if err != nil {
					return fmt.Errorf("relation %s: %w", rels[i], err)
				}
				results[i] = res
			}
			if finish == nil {
				return nil
			}
			return finish(st)
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return results, ctx.Err()
}
