package pagestore

import (
	"bufio"
	"encoding/gob"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cespare/xxhash/v2"
)

// manifest describes exactly what a data directory held at (Timeline,
// LSN), so the next ingest can skip unchanged files and compare blocks by
// hash instead of reading the store.
type manifest struct {
	Version  int
	Timeline TimelineID
	LSN      LSN
	Files    map[string]manifestFile // every regular file, by slash path
	Forks    []manifestFork          // relation forks: a hash per block
}

type manifestFile struct {
	Size  int64
	MTime int64  // ns
	Hash  uint64 // xxhash64 of the content (non-relation files only)
}

type manifestFork struct {
	Rel    RelTag
	Hashes []uint64 // xxhash64 of each 8 KiB block
}

const manifestVersion = 1

var zeroPageHash = xxhash.Sum64(zeroPage)

func readManifest(path string) (*manifest, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var m manifest
	if err := gob.NewDecoder(bufio.NewReaderSize(f, 1<<20)).Decode(&m); err != nil {
		return nil, fmt.Errorf("decode manifest %s: %w", path, err)
	}
	if m.Version != manifestVersion {
		return nil, fmt.Errorf("manifest %s: version %d, want %d", path, m.Version, manifestVersion)
	}
	return &m, nil
}

// writeManifest writes m to path atomically (tmp + rename, fsync unless
// noSync).
func writeManifest(path string, m *manifest, noSync bool) error {
	m.Version = manifestVersion
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	w := bufio.NewWriterSize(f, 1<<20)
	if err := gob.NewEncoder(w).Encode(m); err != nil {
		f.Close()
		return fmt.Errorf("write manifest %s: %w", path, err)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("write manifest %s: %w", path, err)
	}
	if !noSync {
		if err := f.Sync(); err != nil {
			f.Close()
			return fmt.Errorf("write manifest %s: %w", path, err)
		}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write manifest %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write manifest %s: %w", path, err)
	}
	if !noSync {
		if d, err := os.Open(dir); err == nil {
			_ = d.Sync()
			d.Close()
		}
	}
	return nil
}

// CopyManifest writes to dst the manifest at src as one of timeline id.
// A data directory that is another timeline's image (a child's first
// start reads its parent's image at the branch point) then ingests
// against it as if it had been materialized for id. Not synced, like a
// materialization's own manifest.
func CopyManifest(src, dst string, id TimelineID) error {
	m, err := readManifest(src)
	if err != nil {
		return err
	}
	m.Timeline = id
	return writeManifest(dst, m, true)
}
