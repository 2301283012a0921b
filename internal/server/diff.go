package server

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/neonproxy/neonproxy/internal/admin"
	"github.com/neonproxy/neonproxy/internal/metrics"
	"github.com/neonproxy/neonproxy/internal/schemadiff"
	"github.com/neonproxy/neonproxy/pagestore"
)

// Diff compares the stored images of two branches' timelines.
func (a computesAdapter) Diff(ctx context.Context, branch, against string) (admin.DiffJSON, error) {
	out := admin.DiffJSON{Branch: branch, Against: against, UnstoredChanges: []string{}, Relations: []admin.RelationDiffJSON{}}
	var ids [2]pagestore.TimelineID
	for i, name := range []string{branch, against} {
		st, err := a.s.Computes.Storage(ctx, name)
		if err != nil {
			return out, fmt.Errorf("diff: storage of branch %s: %w", name, err)
		}
		if st.Timeline == 0 {
			return out, fmt.Errorf("diff: branch %s has no timeline in the page store", name)
		}
		ids[i] = pagestore.TimelineID(st.Timeline)
		if st.Unstored {
			out.UnstoredChanges = append(out.UnstoredChanges, name)
		}
	}
	d, err := a.s.Store.Diff(ctx, ids[0], ids[1])
	if errors.Is(err, pagestore.ErrNoCommonAncestor) {
		return out, fmt.Errorf("%w: branches %s and %s share no history", admin.ErrInvalidTarget, branch, against)
	}
	if err != nil {
		return out, fmt.Errorf("diff %s against %s: %w", branch, against, err)
	}
	out.AncestorLSN, out.BranchLSN, out.AgainstLSN = d.AncestorLSN.String(), d.ALSN.String(), d.BLSN.String()
	if tl, err := a.s.Store.Timeline(ctx, d.Ancestor); err == nil {
		out.Ancestor = tl.Name
	}
	side := map[string]string{"a": "branch", "b": "against", "both": "both"}
	for _, r := range d.Relations {
		db := r.Database
		if db == "" {
			db = "oid " + strconv.FormatUint(uint64(r.DB), 10)
		}
		out.Relations = append(out.Relations, admin.RelationDiffJSON{
			Database: db, Name: r.Name, Kind: r.Kind, Of: r.Of, OID: r.OID, Relfilenode: r.Rel,
			PagesBranch: r.PagesA, PagesAgainst: r.PagesB, Created: side[r.Created], Dropped: side[r.Dropped],
		})
	}
	return out, nil
}

// SchemaDiff reads the schema of database on both branches' computes
// (waking them; their idle timers then run as for any client) and lists
// what branch changed relative to against.
func (a computesAdapter) SchemaDiff(ctx context.Context, branch, against, database string) ([]admin.SchemaChangeJSON, error) {
	var snaps [2]*schemadiff.Schema
	for i, name := range []string{branch, against} {
		s, err := a.snapshot(ctx, name, database)
		if err != nil {
			return nil, err
		}
		snaps[i] = s
	}
	var out []admin.SchemaChangeJSON
	for _, c := range schemadiff.Compare(snaps[1], snaps[0]) {
		out = append(out, admin.SchemaChangeJSON{Kind: c.Kind, Action: c.Action, Object: c.Object, Detail: c.Detail, Text: c.String()})
	}
	return out, nil
}

// snapshot reads database's schema on branch's compute, as its superuser
// over the compute's unix socket (which only neonproxy can reach).
func (a computesAdapter) snapshot(ctx context.Context, branch, database string) (*schemadiff.Schema, error) {
	lease, err := a.s.Computes.Acquire(ctx, branch)
	if err != nil {
		return nil, fmt.Errorf("wake %s: %w", branch, err)
	}
	defer lease.Release()
	ep := lease.Endpoint
	cfg, err := pgx.ParseConfig("sslmode=disable")
	if err != nil {
		return nil, err
	}
	cfg.Host, cfg.Port, cfg.User, cfg.Database = ep.SocketDir, uint16(ep.Port), "postgres", database
	cfg.RuntimeParams["application_name"] = "neonproxy schema diff"
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "3D000" {
			return nil, fmt.Errorf("%w: database %s does not exist on branch %s", admin.ErrNoDatabase, database, branch)
		}
		return nil, fmt.Errorf("connect to branch %s: %w", branch, err)
	}
	defer c.Close(context.WithoutCancel(ctx))
	s, err := schemadiff.Snapshot(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("branch %s: %w", branch, err)
	}
	return s, nil
}

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
