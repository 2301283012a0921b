package router

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
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
	raceCreate(t, r)
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

// TestEmbeddedContract runs the Registry contract on the embedded registry.
func TestEmbeddedContract(t *testing.T) {
	registryContract(t, func(t *testing.T) Registry {
		r, _ := openTestRegistry(t)
		return r
	})
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
