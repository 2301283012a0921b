package server

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/neonproxy/neonproxy/internal/admin"
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
