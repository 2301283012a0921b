package router

import (
	"context"
	"errors"
	"slices"
	"strconv"
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
	t.Run("update", func(t *testing.T) { contractUpdate(t, open(t)) })
}

// contractUpdate: settings change and stay changed, identity cannot,
// invalid settings are refused, and concurrent updates are all kept.
func contractUpdate(t *testing.T, reg Registry) {
	ctx := context.Background()
	if err := reg.Create(ctx, Branch{Name: "main"}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		change  func(*Branch) error
		wantErr error
	}{
		{"allow list", func(b *Branch) error { b.AllowedIPs = []string{"10.0.0.0/8", "203.0.113.7"}; return nil }, nil},
		{"limit", func(b *Branch) error { b.MaxClientConn = 5; return nil }, nil},
		{"bad CIDR", func(b *Branch) error { b.AllowedIPs = []string{"10.0.0.0/33"}; return nil }, ErrInvalidSetting},
		{"not an address", func(b *Branch) error { b.AllowedIPs = []string{"example.com"}; return nil }, ErrInvalidSetting},
		{"negative limit", func(b *Branch) error { b.MaxClientConn = -1; return nil }, ErrInvalidSetting},
		{"rename", func(b *Branch) error { b.Name = "other"; return nil }, ErrInvalidSetting},
		{"new parent", func(b *Branch) error { b.Parent = "x"; return nil }, ErrInvalidSetting},
		{"change refuses", func(b *Branch) error { return errBoom }, errBoom},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before, _ := reg.Get(ctx, "main")
			got, err := reg.Update(ctx, "main", tc.change)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			after, gerr := reg.Get(ctx, "main")
			if gerr != nil {
				t.Fatal(gerr)
			}
			if err != nil {
				if !sameSettings(after, before) {
					t.Fatalf("failed update changed the branch: %+v -> %+v", before, after)
				}
				if !strings.Contains(err.Error(), "main") {
					t.Errorf("error does not name the branch: %v", err)
				}
				return
			}
			if !sameSettings(after, got) {
				t.Fatalf("Get after Update = %+v, Update returned %+v", after, got)
			}
		})
	}
	if b, _ := reg.Get(ctx, "main"); len(b.AllowedIPs) != 2 || b.MaxClientConn != 5 {
		t.Fatalf("settings lost: %+v", b)
	}
	if _, err := reg.Update(ctx, "nope", func(*Branch) error { return nil }); !errors.Is(err, ErrBranchNotFound) {
		t.Fatalf("update of unknown branch: %v", err)
	}

	// Concurrent read-modify-writes: none is lost.
	const n = 8
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := reg.Update(ctx, "main", func(b *Branch) error {
				b.AllowedIPs = append(b.AllowedIPs, netAddr(i))
				return nil
			}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	b, _ := reg.Get(ctx, "main")
	if len(b.AllowedIPs) != 2+n {
		t.Fatalf("after %d concurrent appends: %d entries %v", n, len(b.AllowedIPs), b.AllowedIPs)
	}
}

var errBoom = errors.New("boom")

func netAddr(i int) string { return "192.0.2." + strconv.Itoa(i+1) }

func sameSettings(a, b Branch) bool {
	return a.Name == b.Name && slices.Equal(a.AllowedIPs, b.AllowedIPs) && a.MaxClientConn == b.MaxClientConn
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
