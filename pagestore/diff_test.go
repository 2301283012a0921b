package pagestore

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// drel is a main fork of database 5 for the synthetic diffs.
func drel(n uint32) RelTag { return RelTag{Spc: defaultTablespace, DB: 5, Rel: n} }

// relWant is what a synthetic diff must say about one relfilenode.
type relWant struct {
	a, b             int
	created, dropped string
}

func (w relWant) String() string {
	return fmt.Sprintf("pages a=%d b=%d created=%q dropped=%q", w.a, w.b, w.created, w.dropped)
}

// checkDiff compares a diff's relations (by relfilenode) with want.
func checkDiff(t *testing.T, res DiffResult, want map[uint32]relWant) {
	t.Helper()
	got := make(map[uint32]relWant)
	for _, r := range res.Relations {
		if _, dup := got[r.Rel]; dup {
			t.Errorf("relfilenode %d listed twice", r.Rel)
		}
		got[r.Rel] = relWant{r.PagesA, r.PagesB, r.Created, r.Dropped}
	}
	for n, w := range want {
		if g, ok := got[n]; !ok {
			t.Errorf("rel %d: missing, want %s", n, w)
		} else if g != w {
			t.Errorf("rel %d: got %s, want %s", n, g, w)
		}
	}
	for n, g := range got {
		if _, ok := want[n]; !ok {
			t.Errorf("rel %d: unexpected: %s", n, g)
		}
	}
}

func checkHeader(t *testing.T, res DiffResult, anc TimelineID, ancLSN LSN, a, b TimelineID, alsn, blsn LSN) {
	t.Helper()
	got := [6]uint64{uint64(res.Ancestor), uint64(res.AncestorLSN), uint64(res.A), uint64(res.B), uint64(res.ALSN), uint64(res.BLSN)}
	want := [6]uint64{uint64(anc), uint64(ancLSN), uint64(a), uint64(b), uint64(alsn), uint64(blsn)}
	if got != want {
		t.Errorf("diff %d/%d: ancestor, ancestor LSN, a, b, a LSN, b LSN = %v, want %v", a, b, got, want)
	}
}

// swapped is want seen from the other side.
func swapped(want map[uint32]relWant) map[uint32]relWant {
	flip := func(s string) string {
		switch s {
		case "a":
			return "b"
		case "b":
			return "a"
		}
		return s
	}
	out := make(map[uint32]relWant, len(want))
	for n, w := range want {
		out[n] = relWant{w.b, w.a, flip(w.created), flip(w.dropped)}
	}
	return out
}

func mustDiff(t *testing.T, svc Service, a, b TimelineID) DiffResult {
	t.Helper()
	res, err := svc.Diff(context.Background(), a, b)
	if err != nil {
		t.Fatalf("Diff(%d, %d): %v", a, b, err)
	}
	return res
}

// A child against its parent: the parent's side is what it did after the
// branch point, forks other than main and uncommitted versions do not
// count, and creations and drops say on which side.
func TestDiffChildParent(t *testing.T) {
	s := openTest(t)
	root := mustCreate(t, s, "main", 0, 0)
	writeImage(t, s, root.ID, 100, true, func(w *imageWriter) {
		w.size(drel(1), 3)
		for blk := range uint32(3) {
			w.page(drel(1), blk, pageOf(1))
		}
		w.size(drel(2), 1)
		w.page(drel(2), 0, pageOf(2))
		w.size(drel(9), 1)
		w.page(drel(9), 0, pageOf(9))
	})
	child := mustCreate(t, s, "child", root.ID, 0)
	writeImage(t, s, root.ID, 200, true, func(w *imageWriter) {
		w.page(drel(2), 0, pageOf(22))
		w.size(drel(3), 1)
		w.page(drel(3), 0, pageOf(3))
		fsm := drel(1)
		fsm.Fork = ForkFSM
		w.size(fsm, 1)
		w.page(fsm, 0, pageOf(0xF))
	})
	writeImage(t, s, child.ID, 150, true, func(w *imageWriter) {
		w.size(drel(1), 6)
		w.page(drel(1), 1, pageOf(11))
		w.page(drel(1), 5, pageOf(15))
		vm := drel(1)
		vm.Fork = ForkVM
		w.size(vm, 1)
		w.page(vm, 0, pageOf(0xE))
		w.drop(drel(9))
		w.size(drel(4), 1)
		w.page(drel(4), 0, pageOf(4))
	})
	writeImage(t, s, child.ID, 160, true, func(w *imageWriter) {
		w.page(drel(1), 1, pageOf(111)) // the same block again: counted once
		w.drop(drel(4))                 // created and dropped on the child
	})
	// Crashed ingests on both sides, inside the compared ranges.
	writeImage(t, s, child.ID, 170, false, func(w *imageWriter) {
		w.page(drel(1), 2, pageOf(12))
		w.size(drel(5), 1)
		w.page(drel(5), 0, pageOf(5))
	})
	writeImage(t, s, root.ID, 180, false, func(w *imageWriter) {
		w.page(drel(1), 0, pageOf(10))
		w.page(drel(9), 0, pageOf(99))
	})

	want := map[uint32]relWant{
		1: {a: 2},
		2: {b: 1},
		3: {b: 1, created: "b"},
		4: {a: 1, created: "a", dropped: "a"},
		9: {dropped: "a"},
	}
	res := mustDiff(t, s, child.ID, root.ID)
	checkHeader(t, res, root.ID, 100, child.ID, root.ID, 160, 200)
	checkDiff(t, res, want)
	res = mustDiff(t, s, root.ID, child.ID)
	checkHeader(t, res, root.ID, 100, root.ID, child.ID, 200, 160)
	checkDiff(t, res, swapped(want))

	// A child without an image of its own has changed nothing.
	empty := mustCreate(t, s, "empty", root.ID, 100)
	res = mustDiff(t, s, empty.ID, root.ID)
	checkHeader(t, res, root.ID, 100, empty.ID, root.ID, 100, 200)
	checkDiff(t, res, map[uint32]relWant{2: {b: 1}, 3: {b: 1, created: "b"}})
	if res.Relations[0].Name != "" || res.Relations[0].Kind != "" {
		t.Errorf("a store without catalogs named a relation: %+v", res.Relations[0])
	}
}

// Siblings branched at different points: the ancestor's history between
// the two points is the later sibling's; after both, nobody's.
func TestDiffSiblings(t *testing.T) {
	s := openTest(t)
	root := mustCreate(t, s, "main", 0, 0)
	writeImage(t, s, root.ID, 100, true, func(w *imageWriter) {
		w.size(drel(1), 4)
		for blk := range uint32(4) {
			w.page(drel(1), blk, pageOf(1))
		}
	})
	writeImage(t, s, root.ID, 200, true, func(w *imageWriter) {
		w.page(drel(1), 1, pageOf(21))
		w.size(drel(2), 1)
		w.page(drel(2), 0, pageOf(2))
	})
	c1 := mustCreate(t, s, "c1", root.ID, 100)
	c2 := mustCreate(t, s, "c2", root.ID, 200)
	writeImage(t, s, root.ID, 300, true, func(w *imageWriter) {
		w.page(drel(1), 2, pageOf(32))
		w.size(drel(6), 1)
		w.page(drel(6), 0, pageOf(6))
	})
	writeImage(t, s, c1.ID, 250, true, func(w *imageWriter) { w.page(drel(1), 3, pageOf(13)) })
	writeImage(t, s, c2.ID, 260, true, func(w *imageWriter) {
		w.page(drel(1), 3, pageOf(23))
		w.page(drel(1), 0, pageOf(20))
	})
	want := map[uint32]relWant{
		1: {a: 1, b: 3}, // c2: blocks 0 and 3, and block 1 from the root before it branched
		2: {b: 1, created: "b"},
	}
	res := mustDiff(t, s, c1.ID, c2.ID)
	checkHeader(t, res, root.ID, 100, c1.ID, c2.ID, 250, 260)
	checkDiff(t, res, want)
	res = mustDiff(t, s, c2.ID, c1.ID)
	checkHeader(t, res, root.ID, 100, c2.ID, c1.ID, 260, 250)
	checkDiff(t, res, swapped(want))
}

// A grandchild against its uncle, its parent and its grandparent, through
// the Store and through a Client of it: the paths up to the ancestor
// count each intermediate timeline up to where its child branched.
func TestDiffGrandchildUncle(t *testing.T) {
	bothServices(t, openTest, func(t *testing.T, s *Store, svc Service) {
		ctx := context.Background()
		root := mustCreate(t, s, "main", 0, 0)
		writeImage(t, s, root.ID, 100, true, func(w *imageWriter) {
			w.size(drel(10), 4)
			for blk := range uint32(4) {
				w.page(drel(10), blk, pageOf(1))
			}
		})
		parent := mustCreate(t, s, "parent", root.ID, 0)
		writeImage(t, s, root.ID, 200, true, func(w *imageWriter) { w.page(drel(10), 3, pageOf(23)) })
		writeImage(t, s, parent.ID, 150, true, func(w *imageWriter) { w.page(drel(10), 0, pageOf(50)) })
		grand := mustCreate(t, s, "grandchild", parent.ID, 0)
		writeImage(t, s, parent.ID, 250, true, func(w *imageWriter) {
			w.page(drel(10), 2, pageOf(52))
			w.size(drel(11), 1)
			w.page(drel(11), 0, pageOf(11))
		})
		writeImage(t, s, grand.ID, 180, true, func(w *imageWriter) {
			w.page(drel(10), 0, pageOf(80))
			w.page(drel(10), 1, pageOf(81))
		})
		uncle := mustCreate(t, s, "uncle", root.ID, 0)
		writeImage(t, s, uncle.ID, 220, true, func(w *imageWriter) { w.page(drel(10), 3, pageOf(33)) })

		res := mustDiff(t, svc, grand.ID, uncle.ID)
		checkHeader(t, res, root.ID, 100, grand.ID, uncle.ID, 180, 220)
		checkDiff(t, res, map[uint32]relWant{10: {a: 2, b: 1}})

		res = mustDiff(t, svc, grand.ID, parent.ID)
		checkHeader(t, res, parent.ID, 150, grand.ID, parent.ID, 180, 250)
		checkDiff(t, res, map[uint32]relWant{10: {a: 2, b: 1}, 11: {b: 1, created: "b"}})

		res = mustDiff(t, svc, parent.ID, grand.ID)
		checkHeader(t, res, parent.ID, 150, parent.ID, grand.ID, 250, 180)
		checkDiff(t, res, map[uint32]relWant{10: {a: 1, b: 2}, 11: {a: 1, created: "a"}})

		res = mustDiff(t, svc, grand.ID, root.ID)
		checkHeader(t, res, root.ID, 100, grand.ID, root.ID, 180, 200)
		checkDiff(t, res, map[uint32]relWant{10: {a: 2, b: 1}})

		// The Store's and the Client's answers are the same.
		local, err := s.Diff(ctx, grand.ID, uncle.ID)
		if err != nil {
			t.Fatal(err)
		}
		if again := mustDiff(t, svc, grand.ID, uncle.ID); !reflect.DeepEqual(local, again) {
			t.Errorf("service answered %+v, store %+v", again, local)
		}
	})
}

// Self-diffs, unrelated timelines and unknown ids are errors callers can
// tell apart, over the network too.
func TestDiffErrors(t *testing.T) {
	bothServices(t, openTest, func(t *testing.T, s *Store, svc Service) {
		ctx := context.Background()
		r1 := mustCreate(t, s, "one", 0, 0)
		r2 := mustCreate(t, s, "two", 0, 0)
		writeImage(t, s, r1.ID, 100, true, func(w *imageWriter) { w.size(drel(1), 0) })
		c := mustCreate(t, s, "child", r1.ID, 0)
		for _, tc := range []struct {
			a, b TimelineID
			want error
		}{
			{c.ID, c.ID, ErrNoCommonAncestor},
			{r1.ID, r2.ID, ErrNoCommonAncestor},
			{c.ID, r2.ID, ErrNoCommonAncestor},
			{c.ID, 999, ErrNotFound},
			{999, c.ID, ErrNotFound},
		} {
			if _, err := svc.Diff(ctx, tc.a, tc.b); !errors.Is(err, tc.want) {
				t.Errorf("Diff(%d, %d): %v, want %v", tc.a, tc.b, err, tc.want)
			}
		}
		if cl, ok := svc.(*Client); ok {
			req, err := http.NewRequest(http.MethodGet, cl.api.URL(tlPath(c.ID, "/diff"), url.Values{"against": {"x"}}), nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := cl.api.Do(req); err == nil || !strings.Contains(err.Error(), "400") {
				t.Errorf("against=x: %v, want a 400", err)
			}
		}
	})
}

// TestDiffPostgres diffs two timelines of a real PostgreSQL 15 cluster:
// the child updates keys of a (heap and primary key) and stores a large
// value in docs (heap, TOAST table and its index), the parent updates b
// after the branch. Autovacuum is off, so user relations change only by
// these statements; system catalogs may change too (hint bits, pg_class
// of a new TOAST chunk...), so the exact set is asserted on user
// relations (pg_class OID >= 16384) and every entry must be named.
func TestDiffPostgres(t *testing.T) {
	pg := newPGEnv(t)
	ctx := context.Background()
	work, err := os.MkdirTemp("", "pagestore-diff-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	if err := os.Chmod(work, 0o711); err != nil {
		t.Fatal(err)
	}
	s, err := Open(Options{Dir: filepath.Join(work, "store"), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	owner := Owner{UID: pg.uid, GID: pg.gid}

	// A value TOAST stores out of line and uncompressed (STORAGE EXTERNAL):
	// 32 kB of md5 hex.
	const big = "(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 1000) g)"
	data := filepath.Join(work, "data")
	pg.mkdir(data)
	pg.run("initdb", "-N", "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "-D", data)
	conf, err := os.OpenFile(filepath.Join(data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conf.WriteString("\nautovacuum = off\n"); err != nil {
		t.Fatal(err)
	}
	conf.Close()
	stop := pg.start(data)
	pg.psql(`CREATE TABLE a (id int PRIMARY KEY, v text);
		INSERT INTO a SELECT g, 'a' || g FROM generate_series(1, 1000) g;
		CREATE TABLE b (id int, v text);
		INSERT INTO b SELECT g, 'b' || g FROM generate_series(1, 1000) g;
		CREATE TABLE docs (id int, body text);
		ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
		INSERT INTO docs VALUES (1, ` + big + `)`)
	docsToast := pg.psql("SELECT reltoastrelid::regclass FROM pg_class WHERE relname = 'docs'")
	bToast := pg.psql("SELECT reltoastrelid::regclass FROM pg_class WHERE relname = 'b'")
	stop()
	root := mustCreate(t, s, "main", 0, 0)
	if _, err := s.Ingest(ctx, root.ID, data, pg.checkpoint(data), ""); err != nil {
		t.Fatal(err)
	}
	child := mustCreate(t, s, "experiment", root.ID, 0)

	// run materializes tl's head, runs sql on it and ingests the result.
	run := func(tl TimelineID, name, sql string) {
		t.Helper()
		dir := filepath.Join(work, name)
		if _, err := s.Materialize(ctx, tl, 0, dir, MaterializeOptions{Owner: owner}); err != nil {
			t.Fatal(err)
		}
		stop := pg.start(dir)
		pg.psql(sql)
		stop()
		if _, err := s.Ingest(ctx, tl, dir, pg.checkpoint(dir), ""); err != nil {
			t.Fatal(err)
		}
	}
	run(child.ID, "child", `UPDATE a SET id = id + 100000 WHERE id <= 10;
		INSERT INTO docs VALUES (2, `+big+`)`)
	run(root.ID, "parent", `UPDATE b SET v = 'changed' WHERE id <= 10`)

	child, _ = s.Timeline(ctx, child.ID)
	res := mustDiff(t, s, child.ID, root.ID)
	root, _ = s.Timeline(ctx, root.ID)
	checkHeader(t, res, root.ID, child.ParentLSN, child.ID, root.ID, child.Head(), root.Head())
	for _, r := range res.Relations {
		t.Logf("%-4s %-10s %-40s %-8s of %-25s a=%d b=%d created=%q dropped=%q", strconv.FormatUint(uint64(r.DB), 10),
			r.Database, r.Name, r.Kind, r.Of, r.PagesA, r.PagesB, r.Created, r.Dropped)
	}
	checkUserRels(t, res, map[string]userRel{
		"public.a":           {kind: "table", side: "a"},
		"public.a_pkey":      {kind: "index", of: "public.a", side: "a"},
		"public.docs":        {kind: "table", side: "a"},
		docsToast:            {kind: "toast", of: "public.docs", side: "a"},
		docsToast + "_index": {kind: "index", of: docsToast, side: "a"},
		"public.b":           {kind: "table", side: "b"},
	})

	// The Client over HTTP answers the same.
	if remote := mustDiff(t, serveTest(t, s), child.ID, root.ID); !reflect.DeepEqual(remote, res) {
		t.Errorf("the client's diff differs:\n%+v\n%+v", remote, res)
	}

	// A grandchild drops b (with its TOAST table and index) and creates a
	// table: the dropped ones are named from the ancestor's catalogs.
	grand := mustCreate(t, s, "grandchild", child.ID, 0)
	run(grand.ID, "grandchild", `DROP TABLE b; CREATE TABLE fresh (id int); INSERT INTO fresh VALUES (1)`)
	res = mustDiff(t, s, grand.ID, child.ID)
	for _, r := range res.Relations {
		t.Logf("%-10s %-40s %-8s of %-25s a=%d b=%d created=%q dropped=%q",
			r.Database, r.Name, r.Kind, r.Of, r.PagesA, r.PagesB, r.Created, r.Dropped)
	}
	checkUserRels(t, res, map[string]userRel{
		"public.b":        {kind: "table", side: "a", dropped: "a"},
		bToast:            {kind: "toast", of: "public.b", side: "a", dropped: "a"},
		bToast + "_index": {kind: "index", of: bToast, side: "a", dropped: "a"},
		"public.fresh":    {kind: "table", side: "a", created: "a"},
	})
}

// userRel is what TestDiffPostgres expects of a user relation.
type userRel struct {
	kind, of         string
	side             string // "a" or "b": the side with changed pages
	created, dropped string
}

func checkUserRels(t *testing.T, res DiffResult, want map[string]userRel) {
	t.Helper()
	seen := make(map[string]bool)
	for _, r := range res.Relations {
		if r.Name == "" || r.Kind == "" || (r.DB != 0 && r.Database != "postgres") {
			t.Errorf("relation not named: %+v", r)
		}
		if r.OID < firstNormalOID {
			continue
		}
		w, ok := want[r.Name]
		if !ok {
			t.Errorf("unexpected user relation %+v", r)
			continue
		}
		if seen[r.Name] {
			t.Errorf("%s listed twice", r.Name)
		}
		seen[r.Name] = true
		if r.Kind != w.kind || r.Of != w.of || r.Created != w.created || r.Dropped != w.dropped {
			t.Errorf("%s: kind %q of %q created %q dropped %q, want %q of %q created %q dropped %q",
				r.Name, r.Kind, r.Of, r.Created, r.Dropped, w.kind, w.of, w.created, w.dropped)
		}
		pages := map[string]int{"a": r.PagesA, "b": r.PagesB}
		other := map[string]string{"a": "b", "b": "a"}[w.side]
		// A drop writes a size tombstone and no pages.
		if (pages[w.side] == 0 && w.dropped == "") || pages[other] != 0 {
			t.Errorf("%s: pages a=%d b=%d, want changes on side %s only", r.Name, r.PagesA, r.PagesB, w.side)
		}
	}
	for name := range want {
		if !seen[name] {
			t.Errorf("%s: not in the diff", name)
		}
	}
	if !slices.IsSortedFunc(res.Relations, func(x, y RelDiff) int {
		if x.DB != y.DB {
			return int(x.DB) - int(y.DB)
		}
		return strings.Compare(x.Name, y.Name)
	}) {
		t.Errorf("relations not sorted by database and name")
	}
}
