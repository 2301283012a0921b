package server

import (
	"context"
	"fmt"
	"time"

	"github.com/neonproxy/neonproxy/internal/admin"
	"github.com/neonproxy/neonproxy/internal/metrics"
	"github.com/neonproxy/neonproxy/pagestore"
)

// Usage combines the compute manager's usage ledger with each live
// branch's storage, read from one list of the page store's timelines.
func (a computesAdapter) Usage(ctx context.Context, branch string, from, to time.Time) (map[string]admin.UsageJSON, error) {
	out := map[string]admin.UsageJSON{}
	for name, u := range a.s.Computes.Usage(branch, from, to) {
		out[name] = admin.UsageJSON{
			ComputeSeconds: u.ComputeSeconds(), RunningSeconds: u.RunningSeconds, IdleSeconds: u.IdleSeconds,
			Wakes: u.Wakes(), ColdWakes: u.ColdWakes, WarmWakes: u.WarmWakes, HotWakes: u.HotWakes,
		}
	}
	sizes, err := a.s.storageSizes(ctx)
	if err != nil {
		return out, err
	}
	for name, tl := range sizes {
		if branch != "" && name != branch {
			continue
		}
		u := out[name]
		u.UniqueBytes, u.LogicalSizeBytes = tl.StoredBytes, tl.LogicalSize
		out[name] = u
	}
	return out, nil
}

// storageSizes is each branch name's newest timeline (its current one).
func (s *Server) storageSizes(ctx context.Context) (map[string]pagestore.Timeline, error) {
	tls, err := s.Store.Timelines(ctx)
	if err != nil {
		return nil, fmt.Errorf("page store timelines: %w", err)
	}
	out := make(map[string]pagestore.Timeline, len(tls))
	for _, t := range tls {
		if cur, ok := out[t.Name]; !ok || t.ID > cur.ID {
			out[t.Name] = t
		}
	}
	return out, nil
}

// branchUsage is every branch's usage for the per-branch metrics: the
// compute ledger's totals, and the storage of live branches.
func (s *Server) branchUsage() []metrics.BranchUsage {
	if s.Computes == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	byName := map[string]*metrics.BranchUsage{}
	for name, u := range s.Computes.Usage("", time.Time{}, time.Time{}) {
		byName[name] = &metrics.BranchUsage{Branch: name, RunningSeconds: u.RunningSeconds, IdleSeconds: u.IdleSeconds,
			ColdWakes: u.ColdWakes, WarmWakes: u.WarmWakes, HotWakes: u.HotWakes}
	}
	if bs, err := s.Registry.List(ctx); err == nil {
		sizes, _ := s.storageSizes(ctx)
		for _, b := range bs {
			u := byName[b.Name]
			if u == nil {
				u = &metrics.BranchUsage{Branch: b.Name}
				byName[b.Name] = u
			}
			if tl, ok := sizes[b.Name]; ok {
				u.HasStorage, u.UniqueBytes, u.LogicalBytes = true, tl.StoredBytes, tl.LogicalSize
			}
		}
	}
	out := make([]metrics.BranchUsage, 0, len(byName))
	for _, u := range byName {
		out = append(out, *u)
	}
	return out
}
