package walkeeper

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
)

// dbInProduction is PostgreSQL's DB_IN_PRODUCTION DBState.
const dbInProduction = 6

// controlStateOffset is the offset of ControlFileData.state: after
// system_identifier (uint64), pg_control_version and catalog_version_no
// (uint32 each).
const controlStateOffset = 16

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// MarkCrashed sets the cluster state in pgdata's global/pg_control to "in
// production", so that PostgreSQL starting on it runs crash recovery from the
// latest checkpoint (replaying all WAL in pg_wal) instead of trusting a clean
// shutdown. The control file's CRC32C is recomputed; the file is rewritten
// in place and fsynced.
func MarkCrashed(pgdata string) error {
	path := filepath.Join(pgdata, "global", "pg_control")
	buf, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("walkeeper: read control file: %w", err)
	}
	n, err := controlCRCOffset(buf)
	if err != nil {
		return fmt.Errorf("walkeeper: %s: %w", path, err)
	}
	binary.LittleEndian.PutUint32(buf[controlStateOffset:], dbInProduction)
	binary.LittleEndian.PutUint32(buf[n:], crc32.Checksum(buf[:n], castagnoli))

	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("walkeeper: open control file: %w", err)
	}
	if _, err := f.WriteAt(buf, 0); err != nil {
		_ = f.Close()
		return fmt.Errorf("walkeeper: write control file: %w", err)
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return fmt.Errorf("walkeeper: fsync control file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("walkeeper: close control file: %w", err)
	}
	return nil
}

// controlCRCOffset finds the length of ControlFileData: the offset where the
// CRC32C of the bytes before it is stored (little-endian).
func controlCRCOffset(buf []byte) (int, error) {
	for n := 8; n+4 <= len(buf) && n <= 8188; n += 4 {
		if crc32.Checksum(buf[:n], castagnoli) == binary.LittleEndian.Uint32(buf[n:]) {
			return n, nil
		}
	}
	return 0, errors.New("no valid CRC32C found: not a PostgreSQL control file")
}

// controlCheckpointOffset is the offset of ControlFileData.checkPoint: after
// state (a 4-byte enum, padded to 8) and time (int64).
const controlCheckpointOffset = 32

// CheckpointLSN reads the latest checkpoint location from pgdata's
// global/pg_control (what pg_controldata calls "Latest checkpoint
// location") without running pg_controldata. Right after a start it is
// where the compute's own history begins: the shutdown checkpoint of a
// clean start, or the end-of-recovery checkpoint written at the end of
// crash recovery.
func CheckpointLSN(pgdata string) (LSN, error) {
	path := filepath.Join(pgdata, "global", "pg_control")
	buf, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("walkeeper: read control file: %w", err)
	}
	if _, err := controlCRCOffset(buf); err != nil {
		return 0, fmt.Errorf("walkeeper: %s: %w", path, err)
	}
	return binary.LittleEndian.Uint64(buf[controlCheckpointOffset:]), nil
}
