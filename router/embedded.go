package router

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"sync"
)

// embeddedFileVersion is written into the registry file so that a later
// release can migrate the format.
const embeddedFileVersion = 1

// ErrRegistryClosed is returned by an EmbeddedRegistry after Close.
var ErrRegistryClosed = errors.New("branch registry is closed")

// EmbeddedRegistry is the single-node Registry: every branch lives in one
// JSON file (normally <data_dir>/branches.json). Every change rewrites the
// whole file atomically (temporary file in the same directory, fsync,
// rename, fsync of the directory), so a crash leaves either the old or the
// new registry, never a torn one. Branch counts are small (hundreds), so
// rewriting the file is cheap.
//
// One process must own the file: two neonproxy processes sharing a data_dir
// would overwrite each other's changes.
type EmbeddedRegistry struct {
	path string

	// wmu orders changes: a change holds it while it writes the file, so
	// the file and the in-memory map change in the same order.
	wmu sync.Mutex
	// mu guards the map (replaced, never changed in place) and closed. It
	// is held only to read or swap them, never across the file's write
	// and fsync: lookups (every client connection makes one) must not
	// wait for the disk.
	mu       sync.Mutex
	branches map[string]Branch
	closed   bool
}

// current returns the map for a change (the caller holds wmu, so it stays
// current until the change swaps it).
func (r *EmbeddedRegistry) current() (map[string]Branch, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, ErrRegistryClosed
	}
	return r.branches, nil
}

// swap installs next after a change persisted it.
func (r *EmbeddedRegistry) swap(next map[string]Branch) {
	r.mu.Lock()
	r.branches = next
	r.mu.Unlock()
}

var _ Registry = (*EmbeddedRegistry)(nil)

// embeddedFile is the on-disk format.
type embeddedFile struct {
	Version  int      `json:"version"`
	Branches []Branch `json:"branches"`
}

// OpenEmbedded opens the registry stored at path, creating its directory
// (mode 0700) when missing. A missing file is an empty registry; the file is
// first written by the first Create.
func OpenEmbedded(path string) (*EmbeddedRegistry, error) {
	if path == "" {
		return nil, errors.New("open branch registry: empty path")
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open branch registry: %w", err)
	}
	r := &EmbeddedRegistry{path: path, branches: map[string]Branch{}}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("open branch registry: %w", err)
	default:
		var f embeddedFile
		if err := json.Unmarshal(b, &f); err != nil {
			return nil, fmt.Errorf("open branch registry %s: corrupt file (restore it from a backup or fix the JSON by hand): %w", path, err)
		}
		if f.Version > embeddedFileVersion {
			return nil, fmt.Errorf("open branch registry %s: file version %d is newer than this neonproxy understands (%d)", path, f.Version, embeddedFileVersion)
		}
		for _, br := range f.Branches {
			if err := ValidateName(br.Name); err != nil {
				return nil, fmt.Errorf("open branch registry %s: %w", path, err)
			}
			if _, dup := r.branches[br.Name]; dup {
				return nil, fmt.Errorf("open branch registry %s: branch %s listed twice", path, br.Name)
			}
			r.branches[br.Name] = br
		}
	}
	// Temporary files left by a crash during a write are garbage.
	if stale, err := filepath.Glob(filepath.Join(dir, "."+filepath.Base(path)+".tmp-*")); err == nil {
		for _, s := range stale {
			_ = os.Remove(s)
		}
	}
	return r, nil
}

// Path returns the registry file.
func (r *EmbeddedRegistry) Path() string { return r.path }

// Get returns the branch called name, or an error wrapping ErrBranchNotFound.
func (r *EmbeddedRegistry) Get(ctx context.Context, name string) (Branch, error) {
	if err := ctx.Err(); err != nil {
		return Branch{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return Branch{}, ErrRegistryClosed
	}
	b, ok := r.branches[name]
	if !ok {
		return Branch{}, fmt.Errorf("get branch %s: %w", name, ErrBranchNotFound)
	}
	return b, nil
}

// List returns all branches ordered by name.
func (r *EmbeddedRegistry) List(ctx context.Context) ([]Branch, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, ErrRegistryClosed
	}
	out := make([]Branch, 0, len(r.branches))
	for _, b := range r.branches {
		out = append(out, b)
	}
	r.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Create adds b and persists the registry before returning. It validates
// the name (ErrInvalidName), sets CreatedAt to now when zero, and fails with
// an error wrapping ErrBranchExists when the name is taken.
func (r *EmbeddedRegistry) Create(ctx context.Context, b Branch) error {
	if err := prepareCreate(&b); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	r.wmu.Lock()
	defer r.wmu.Unlock()
	cur, err := r.current()
	if err != nil {
		return err
	}
	if _, ok := cur[b.Name]; ok {
		return fmt.Errorf("create branch %s: %w", b.Name, ErrBranchExists)
	}
	next := maps.Clone(cur)
	next[b.Name] = b
	if err := r.persist(next); err != nil {
		return fmt.Errorf("create branch %s: %w", b.Name, err)
	}
	r.swap(next)
	return nil
}

// Delete removes the branch called name and persists the registry before
// returning; it fails with an error wrapping ErrBranchNotFound when the name
// is unknown.
func (r *EmbeddedRegistry) Delete(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r.wmu.Lock()
	defer r.wmu.Unlock()
	cur, err := r.current()
	if err != nil {
		return err
	}
	if _, ok := cur[name]; !ok {
		return fmt.Errorf("delete branch %s: %w", name, ErrBranchNotFound)
	}
	next := maps.Clone(cur)
	delete(next, name)
	if err := r.persist(next); err != nil {
		return fmt.Errorf("delete branch %s: %w", name, err)
	}
	r.swap(next)
	return nil
}

// Update applies change to the branch called name and persists the
// registry before returning.
func (r *EmbeddedRegistry) Update(ctx context.Context, name string, change func(*Branch) error) (Branch, error) {
	if err := ctx.Err(); err != nil {
		return Branch{}, err
	}
	r.wmu.Lock()
	defer r.wmu.Unlock()
	cur, err := r.current()
	if err != nil {
		return Branch{}, err
	}
	b, ok := cur[name]
	if !ok {
		return Branch{}, fmt.Errorf("update branch %s: %w", name, ErrBranchNotFound)
	}
	next, err := applyUpdate(b, change)
	if err != nil {
		return Branch{}, err
	}
	all := maps.Clone(cur)
	all[name] = next
	if err := r.persist(all); err != nil {
		return Branch{}, fmt.Errorf("update branch %s: %w", name, err)
	}
	r.swap(all)
	return next, nil
}

// Close releases the registry; later calls fail with ErrRegistryClosed.
// Every change is already durable, so Close has nothing to flush.
func (r *EmbeddedRegistry) Close() error {
	r.wmu.Lock() // a change in flight finishes first
	defer r.wmu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	return nil
}

// persist writes branches to r.path atomically. Caller holds r.wmu.
func (r *EmbeddedRegistry) persist(branches map[string]Branch) error {
	f := embeddedFile{Version: embeddedFileVersion, Branches: make([]Branch, 0, len(branches))}
	for _, b := range branches {
		f.Branches = append(f.Branches, b)
	}
	sort.Slice(f.Branches, func(i, j int) bool { return f.Branches[i].Name < f.Branches[j].Name })
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')
	return embeddedWriteAtomic(r.path, data, 0o600)
}

// embeddedWriteAtomic replaces path with data: write a temporary file in the
// same directory, fsync it, rename it over path, fsync the directory.
func embeddedWriteAtomic(path string, data []byte, perm os.FileMode) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if err = tmp.Chmod(perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err = tmp.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("write %s: fsync: %w", path, err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("write %s: open directory for fsync: %w", path, err)
	}
	defer d.Close()
	if err = d.Sync(); err != nil {
		return fmt.Errorf("write %s: fsync directory: %w", path, err)
	}
	return nil
}
