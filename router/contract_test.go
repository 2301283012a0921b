package router

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// registryContract runs what every Registry must do; open returns an empty
// registry.
func registryContract(t *testing.T, open func(t *testing.T) Registry) {
	t.Run("create get delete", func(t *testing.T) { contractCreateGetDelete(t, open) })
	t.Run("errors name the branch", func(t *testing.T) { contractErrorsNameTheBranch(t, open) })
	t.Run("list sorted", func(t *testing.T) { contractListSorted(t, open) })
	t.Run("concurrent create of one name", func(t *testing.T) { raceCreate(t, open(t)) })
}

func contractCreateGetDelete(t *testing.T, open func(t *testing.T) Registry) {
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
			r := open(t)
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

func contractErrorsNameTheBranch(t *testing.T, open func(t *testing.T) Registry) {
	ctx := context.Background()
	r := open(t)
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

func contractListSorted(t *testing.T, open func(t *testing.T) Registry) {
	ctx := context.Background()
	r := open(t)
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

// raceCreate: 32 concurrent creates of one name, spread over the
// registries (clients of one store): exactly one succeeds, the others get
// ErrBranchExists.
func raceCreate(t *testing.T, rs ...Registry) {
	t.Helper()
	ctx := context.Background()
	const n = 32
	var wins, exists atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			err := rs[i%len(rs)].Create(ctx, Branch{Name: "race"})
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
}
