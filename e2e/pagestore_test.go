package e2e

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/neonproxy/neonproxy/internal/admin"
	"github.com/neonproxy/neonproxy/internal/config"
)

// TestBranchesOnThePagestore: copy-on-write isolation between a parent and
// its children, a grandchild, local directories thrown away while stopped,
// a restart of neonproxy, deletion with and without children, and GC
// keeping what live branches read.
func TestBranchesOnThePagestore(t *testing.T) {
	// No retention window: GC keeps only what heads and branch points read.
	e := newEnv(t, func(c *config.Config) { c.Walkeeper.Retention = 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	api := &admin.Client{BaseURL: e.srv.AdminAddr().String()}
	exec := func(branch, sql string) {
		t.Helper()
		c, err := pgx.Connect(ctx, e.url("postgres", testPassword, branch))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, sql); err != nil {
			t.Fatalf("%s on %s: %v", sql, branch, err)
		}
	}
	sum := func(branch string) int64 {
		t.Helper()
		return e.mustQueryInt(e.url("postgres", testPassword, branch), "SELECT coalesce(sum(v), 0) FROM t")
	}
	suspend := func(branches ...string) {
		t.Helper()
		for _, b := range branches {
			if _, err := api.Suspend(ctx, b); err != nil {
				t.Fatal(err)
			}
		}
	}
	create := func(name, parent string) admin.BranchJSON {
		t.Helper()
		b, err := api.CreateBranch(ctx, name, parent)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}

	// 1000 rows of v = 1 in main, stored by a clean stop.
	exec("main", "CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, 1 FROM generate_series(1, 1000) g")
	suspend("main")
	dev := create("dev", "main")
	if dev.ParentLSN == "" || dev.Timeline == 0 || dev.LocalBytes != 0 || dev.LogicalSizeBytes == 0 {
		t.Fatalf("new branch %+v", dev)
	}

	// Write in the child: the parent is unchanged. Write in the parent
	// after branching: the child is unchanged.
	exec("dev", "UPDATE t SET v = 10 WHERE id <= 100")
	exec("main", "UPDATE t SET v = 2 WHERE id > 900")
	if got := sum("dev"); got != 100*10+900 {
		t.Fatalf("dev sum %d", got)
	}
	if got := sum("main"); got != 900+100*2 {
		t.Fatalf("main sum %d", got)
	}

	// A grandchild reads dev's stored image.
	suspend("dev", "main")
	create("feature", "dev")
	exec("feature", "INSERT INTO t VALUES (1001, 5)")
	if got := sum("feature"); got != 1900+5 {
		t.Fatalf("feature sum %d", got)
	}
	suspend("feature")

	// Deleting a parent with children is refused; nothing changes.
	if err := api.DeleteBranch(ctx, "dev"); !isStatus(err, 409) {
		t.Fatalf("delete dev with a child: %v", err)
	}

	// Throw away every local directory and restart neonproxy: the store
	// alone has every branch's data.
	if err := e.srv.Close(ctx); err != nil {
		t.Fatal(err)
	}
	e.srv = nil
	if err := os.RemoveAll(filepath.Join(e.cfg.DataDir, "computes", "branches")); err != nil {
		t.Fatal(err)
	}
	e.start()
	api.BaseURL = e.srv.AdminAddr().String()
	for branch, want := range map[string]int64{"main": 1100, "dev": 1900, "feature": 1905} {
		if got := sum(branch); got != want {
			t.Fatalf("after losing local directories and a restart: %s sum %d, want %d", branch, got, want)
		}
	}
	suspend("main", "dev", "feature")

	// More images of main: GC removes what no branch reads any more, and
	// keeps what dev (branched from an older image) still reads.
	for i := 0; i < 3; i++ {
		exec("main", "UPDATE t SET v = v + 1")
		suspend("main")
	}
	before, err := api.GetBranch(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	res, err := api.GC(ctx)
	if err != nil || res.VersionsDeleted == 0 || res.BytesFreed <= 0 {
		t.Fatalf("gc: %+v, %v", res, err)
	}
	after, _ := api.GetBranch(ctx, "main")
	if after.UniqueBytes >= before.UniqueBytes {
		t.Fatalf("main unique bytes %d → %d after GC", before.UniqueBytes, after.UniqueBytes)
	}
	for _, b := range []string{"main", "dev", "feature"} {
		if err := os.RemoveAll(filepath.Join(e.cfg.DataDir, "computes", "branches", b)); err != nil {
			t.Fatal(err)
		}
	}
	for branch, want := range map[string]int64{"main": 1100 + 3*1000, "dev": 1900, "feature": 1905} {
		if got := sum(branch); got != want {
			t.Fatalf("after GC: %s sum %d, want %d", branch, got, want)
		}
	}

	// A cascading delete takes dev and its child.
	if err := api.DeleteBranchTree(ctx, "dev", true); err != nil {
		t.Fatalf("delete dev with cascade: %v", err)
	}
	bs, err := api.ListBranches(ctx)
	if err != nil || len(bs) != 1 || bs[0].Name != "main" {
		t.Fatalf("branches after deletes: %+v, %v", bs, err)
	}
}

func isStatus(err error, status int) bool {
	var ae *admin.APIError
	return errors.As(err, &ae) && ae.Status == status
}
