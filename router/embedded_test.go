package router

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func openTestRegistry(t *testing.T) (*EmbeddedRegistry, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "data", "branches.json")
	r, err := OpenEmbedded(path)
	if err != nil {
		t.Fatalf("OpenEmbedded: %v", err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r, path
}

func TestEmbeddedCreateGetDelete(t *testing.T) {
	ctx := context.Background()
	fixed := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		setup   []Branch
		create  Branch
		wantErr error
		check   func(t *testing.T, got Branch)
	}{
		{
			name:   "root branch gets created_at",
			create: Branch{Name: "main"},
			check: func(t *testing.T, got Branch) {
				if got.CreatedAt.IsZero() || time.Since(got.CreatedAt) > time.Minute {
					t.Errorf("CreatedAt = %v, want about now", got.CreatedAt)
				}
			},
		},
		{
			name:   "explicit created_at and parent kept",
			setup:  []Branch{{Name: "main"}},
			create: Branch{Name: "dev-1", Parent: "main", ParentLSN: "0/16B3748", CreatedAt: fixed},
			check: func(t *testing.T, got Branch) {
				want := Branch{Name: "dev-1", Parent: "main", ParentLSN: "0/16B3748", CreatedAt: fixed}
				if !got.CreatedAt.Equal(want.CreatedAt) || got.Name != want.Name || got.Parent != want.Parent || got.ParentLSN != want.ParentLSN {
					t.Errorf("got %+v, want %+v", got, want)
				}
			},
		},
		{name: "duplicate", setup: []Branch{{Name: "main"}}, create: Branch{Name: "main"}, wantErr: ErrBranchExists},
		{name: "upper case", create: Branch{Name: "Main"}, wantErr: ErrInvalidName},
		{name: "empty", create: Branch{Name: ""}, wantErr: ErrInvalidName},
		{name: "too long", create: Branch{Name: strings.Repeat("a", 64)}, wantErr: ErrInvalidName},
		{name: "63 is fine", create: Branch{Name: strings.Repeat("a", 63)}},
		{name: "pooler suffix", create: Branch{Name: "x-pooler"}, wantErr: ErrInvalidName},
		{name: "dot", create: Branch{Name: "a.b"}, wantErr: ErrInvalidName},
		{name: "bad parent name", create: Branch{Name: "a", Parent: "A_B"}, wantErr: ErrInvalidName},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := openTestRegistry(t)
			for _, b := range tc.setup {
				if err := r.Create(ctx, b); err != nil {
					t.Fatalf("setup Create(%s): %v", b.Name, err)
				}
			}
			err := r.Create(ctx, tc.create)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Create err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Create: %v", err)
			}
			got, err := r.Get(ctx, tc.create.Name)
			if err != nil {
				t.Fatalf("Get: %v", err)
			}
			if tc.check != nil {
				tc.check(t, got)
			}
			if err := r.Delete(ctx, tc.create.Name); err != nil {
				t.Fatalf("Delete: %v", err)
			}
			if _, err := r.Get(ctx, tc.create.Name); !errors.Is(err, ErrBranchNotFound) {
				t.Fatalf("Get after Delete err = %v, want ErrBranchNotFound", err)
			}
		})
	}
}

func TestEmbeddedErrorsNameTheBranch(t *testing.T) {
	ctx := context.Background()
	r, _ := openTestRegistry(t)
	if err := r.Create(ctx, Branch{Name: "main"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		err    error
		want   error
		branch string
	}{
		{"create dup", r.Create(ctx, Branch{Name: "main"}), ErrBranchExists, "main"},
		{"get missing", func() error { _, err := r.Get(ctx, "nope"); return err }(), ErrBranchNotFound, "nope"},
		{"delete missing", r.Delete(ctx, "nope"), ErrBranchNotFound, "nope"},
	} {
		if !errors.Is(tc.err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, tc.err, tc.want)
			continue
		}
		if !strings.Contains(tc.err.Error(), tc.branch) {
			t.Errorf("%s: error %q does not name the branch", tc.name, tc.err)
		}
	}
}

func TestEmbeddedListSorted(t *testing.T) {
	ctx := context.Background()
	r, _ := openTestRegistry(t)
	got, err := r.List(ctx)
	if err != nil || len(got) != 0 || got == nil {
		t.Fatalf("List on empty = %v, %v; want empty non-nil", got, err)
	}
	for _, n := range []string{"zeta", "main", "alpha"} {
		if err := r.Create(ctx, Branch{Name: n}); err != nil {
			t.Fatal(err)
		}
	}
	got, err = r.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, b := range got {
		names = append(names, b.Name)
	}
	if strings.Join(names, ",") != "alpha,main,zeta" {
		t.Fatalf("List names = %v", names)
	}
}

func TestEmbeddedReopen(t *testing.T) {
	ctx := context.Background()
	created := time.Date(2024, 1, 2, 3, 4, 5, 6000, time.UTC)
	steps := []struct {
		name string
		do   func(r *EmbeddedRegistry) error
		want []string
	}{
		{"empty before first write", func(*EmbeddedRegistry) error { return nil }, nil},
		{"create main", func(r *EmbeddedRegistry) error { return r.Create(ctx, Branch{Name: "main", CreatedAt: created}) }, []string{"main"}},
		{"create child", func(r *EmbeddedRegistry) error {
			return r.Create(ctx, Branch{Name: "dev", Parent: "main", ParentLSN: "0/1", CreatedAt: created})
		}, []string{"dev", "main"}},
		{"delete main", func(r *EmbeddedRegistry) error { return r.Delete(ctx, "main") }, []string{"dev"}},
		{"delete dev", func(r *EmbeddedRegistry) error { return r.Delete(ctx, "dev") }, nil},
	}
	path := filepath.Join(t.TempDir(), "branches.json")
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			r, err := OpenEmbedded(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.do(r); err != nil {
				t.Fatal(err)
			}
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			r2, err := OpenEmbedded(path)
			if err != nil {
				t.Fatalf("reopen: %v", err)
			}
			defer r2.Close()
			got, err := r2.List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(st.want) {
				t.Fatalf("after reopen: %d branches %+v, want %v", len(got), got, st.want)
			}
			for i, b := range got {
				if b.Name != st.want[i] {
					t.Fatalf("after reopen: branch %d = %s, want %s", i, b.Name, st.want[i])
				}
				if !b.CreatedAt.Equal(created) {
					t.Errorf("CreatedAt %v not preserved (want %v)", b.CreatedAt, created)
				}
				if b.Name == "dev" && (b.Parent != "main" || b.ParentLSN != "0/1") {
					t.Errorf("dev = %+v: parent not preserved", b)
				}
			}
		})
	}
	// No temporary files left behind; the file is private.
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != "branches.json" {
			t.Errorf("leftover file %s", e.Name())
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600", fi.Mode().Perm())
	}
}

func TestEmbeddedOpenErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name    string
		path    string
		wantErr string
	}{
		{"empty path", "", "empty path"},
		{"corrupt", write("corrupt.json", "{not json"), "corrupt"},
		{"future version", write("future.json", `{"version":99,"branches":[]}`), "newer"},
		{"bad name", write("badname.json", `{"version":1,"branches":[{"name":"BAD"}]}`), "invalid branch name"},
		{"duplicate", write("dup.json", `{"version":1,"branches":[{"name":"a"},{"name":"a"}]}`), "listed twice"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := OpenEmbedded(tc.path)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestEmbeddedRemovesStaleTempFiles(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, ".branches.json.tmp-123")
	if err := os.WriteFile(stale, []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := OpenEmbedded(filepath.Join(dir, "branches.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("stale temp file still there: %v", err)
	}
}

func TestEmbeddedConcurrentCreateSameName(t *testing.T) {
	ctx := context.Background()
	r, path := openTestRegistry(t)
	const n = 32
	var wins, exists atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			err := r.Create(ctx, Branch{Name: "race"})
			switch {
			case err == nil:
				wins.Add(1)
			case errors.Is(err, ErrBranchExists):
				exists.Add(1)
			default:
				t.Errorf("Create: %v", err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if wins.Load() != 1 || exists.Load() != n-1 {
		t.Fatalf("wins=%d exists=%d, want 1 and %d", wins.Load(), exists.Load(), n-1)
	}
	r2, err := OpenEmbedded(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	got, err := r2.List(ctx)
	if err != nil || len(got) != 1 {
		t.Fatalf("after reopen: %+v, %v", got, err)
	}
}

func TestEmbeddedConcurrentDistinctNames(t *testing.T) {
	ctx := context.Background()
	r, path := openTestRegistry(t)
	const n = 20
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			name := "b-" + string(rune('a'+i))
			if err := r.Create(ctx, Branch{Name: name}); err != nil {
				t.Errorf("Create %s: %v", name, err)
			}
			if _, err := r.List(ctx); err != nil {
				t.Errorf("List: %v", err)
			}
		}(i)
	}
	wg.Wait()
	r2, err := OpenEmbedded(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	got, err := r2.List(ctx)
	if err != nil || len(got) != n {
		t.Fatalf("after reopen: %d branches, %v; want %d", len(got), err, n)
	}
}

func TestEmbeddedClosedAndCanceled(t *testing.T) {
	r, _ := openTestRegistry(t)
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	if err := r.Create(canceled, Branch{Name: "x"}); !errors.Is(err, context.Canceled) {
		t.Errorf("Create with canceled ctx: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := r.Create(ctx, Branch{Name: "x"}); !errors.Is(err, ErrRegistryClosed) {
		t.Errorf("Create after Close: %v", err)
	}
	if _, err := r.List(ctx); !errors.Is(err, ErrRegistryClosed) {
		t.Errorf("List after Close: %v", err)
	}
}
