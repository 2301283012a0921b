package pagestore

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// A data directory walked for ingest.
type dataDir struct {
	forks   map[RelTag]*forkFiles
	entries []plainEntry // non-relation files and directories (pg_wal synthesized later)
}

type forkFiles struct {
	rel  RelTag
	segs []relSeg
}

type relSeg struct {
	seg   uint32
	path  string // slash path relative to pgdata
	abs   string
	size  int64
	mtime int64
}

type plainEntry struct {
	path  string
	abs   string
	dir   bool
	size  int64
	mtime int64
}

var (
	relFileRE  = regexp.MustCompile(`^([0-9]+)(_fsm|_vm|_init)?(?:\.([0-9]+))?$`)
	tempRelRE  = regexp.MustCompile(`^t[0-9]+_[0-9]+`)
	dbDirRE    = regexp.MustCompile(`^base/[0-9]+$`)
	walHistory = regexp.MustCompile(`^[0-9A-F]{8}\.history$`)
)

// Top-level directories whose contents are not kept (as pg_basebackup).
var excludeContents = map[string]bool{
	"pg_stat_tmp": true, "pg_replslot": true, "pg_dynshmem": true, "pg_notify": true,
	"pg_serial": true, "pg_snapshots": true, "pg_subtrans": true, "log": true,
}

// Top-level files that are not kept.
var excludeTopFiles = map[string]bool{
	"postmaster.pid": true, "postmaster.opts": true, "current_logfiles": true,
}

func parseRelFile(dir, name string) (RelTag, uint32, bool) {
	m := relFileRE.FindStringSubmatch(name)
	if m == nil {
		return RelTag{}, 0, false
	}
	relnode, err := strconv.ParseUint(m[1], 10, 32)
	if err != nil {
		return RelTag{}, 0, false
	}
	r := RelTag{Rel: uint32(relnode)}
	switch m[2] {
	case "_fsm":
		r.Fork = ForkFSM
	case "_vm":
		r.Fork = ForkVM
	case "_init":
		r.Fork = ForkInit
	}
	var seg uint64
	if m[3] != "" {
		if seg, err = strconv.ParseUint(m[3], 10, 32); err != nil {
			return RelTag{}, 0, false
		}
	}
	if dir == "global" {
		r.Spc = globalTablespace
	} else {
		db, err := strconv.ParseUint(strings.TrimPrefix(dir, "base/"), 10, 32)
		if err != nil {
			return RelTag{}, 0, false
		}
		r.Spc, r.DB = defaultTablespace, uint32(db)
	}
	return r, uint32(seg), true
}

// scanDataDir walks pgdata and classifies what an image keeps.
func scanDataDir(pgdata string) (*dataDir, error) {
	dd := &dataDir{forks: make(map[RelTag]*forkFiles)}
	err := filepath.WalkDir(pgdata, func(abs string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(pgdata, abs)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		rel = filepath.ToSlash(rel)
		name := d.Name()
		parent := ""
		if i := strings.LastIndexByte(rel, '/'); i >= 0 {
			parent = rel[:i]
		}
		top := parent == ""
		if parent == "pg_tblspc" || strings.HasPrefix(parent, "pg_tblspc/") {
			return fmt.Errorf("%s: tablespaces are not supported", rel)
		}
		if name == "pg_internal.init" || strings.HasPrefix(name, "pgsql_tmp") {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if top && excludeTopFiles[name] {
			return nil
		}
		if rel == "pg_wal" {
			return fs.SkipDir // synthesized by the ingest
		}
		if !d.IsDir() && !d.Type().IsRegular() {
			return nil // symlinks, sockets: not kept
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			dd.entries = append(dd.entries, plainEntry{path: rel, abs: abs, dir: true})
			if top && excludeContents[name] {
				return fs.SkipDir
			}
			return nil
		}
		if parent == "global" || dbDirRE.MatchString(parent) {
			if parent != "global" && tempRelRE.MatchString(name) {
				return nil
			}
			if r, seg, ok := parseRelFile(parent, name); ok {
				if info.Size()%BlockSize != 0 {
					return fmt.Errorf("relation file %s: size %d is not a multiple of %d", rel, info.Size(), BlockSize)
				}
				ff := dd.forks[r]
				if ff == nil {
					ff = &forkFiles{rel: r}
					dd.forks[r] = ff
				}
				ff.segs = append(ff.segs, relSeg{seg: seg, path: rel, abs: abs, size: info.Size(), mtime: info.ModTime().UnixNano()})
				return nil
			}
		}
		dd.entries = append(dd.entries, plainEntry{path: rel, abs: abs, size: info.Size(), mtime: info.ModTime().UnixNano()})
		return nil
	})
	if err != nil {
		return nil, err
	}
	// pg_wal: the directories and the timeline history files.
	dd.entries = append(dd.entries,
		plainEntry{path: "pg_wal", dir: true},
		plainEntry{path: "pg_wal/archive_status", dir: true})
	walDir := filepath.Join(pgdata, "pg_wal")
	des, err := os.ReadDir(walDir)
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	for _, de := range des {
		if !de.Type().IsRegular() || !walHistory.MatchString(de.Name()) {
			continue
		}
		info, err := de.Info()
		if err != nil {
			return nil, err
		}
		dd.entries = append(dd.entries, plainEntry{path: "pg_wal/" + de.Name(), abs: filepath.Join(walDir, de.Name()),
			size: info.Size(), mtime: info.ModTime().UnixNano()})
	}
	return dd, nil
}

// walFileName is PostgreSQL's XLogFileName.
func walFileName(tli uint32, segno uint64, segSize uint64) string {
	per := uint64(0x100000000) / segSize
	return fmt.Sprintf("%08X%08X%08X", tli, segno/per, segno%per)
}

// xlogBlockSize is XLOG_BLCKSZ.
const xlogBlockSize = 8192
