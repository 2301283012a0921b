package pagestore

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseControlData reads the shutdown checkpoint from the output of
// PostgreSQL 15's pg_controldata (run with LC_ALL=C or LANG=C.UTF-8, so the
// labels are English). It fails with ErrNotShutDown unless the cluster
// state is "shut down": only a cleanly stopped directory is an image.
func ParseControlData(out string) (Checkpoint, error) {
	var cp Checkpoint
	fields := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	if st := fields["Database cluster state"]; st != "shut down" {
		return cp, fmt.Errorf("%w (cluster state %q)", ErrNotShutDown, st)
	}
	var err error
	if cp.LSN, err = ParseLSN(fields["Latest checkpoint location"]); err != nil {
		return cp, fmt.Errorf("pg_controldata: latest checkpoint location: %w", err)
	}
	tli, err := strconv.ParseUint(fields["Latest checkpoint's TimeLineID"], 10, 32)
	if err != nil || tli == 0 {
		return cp, fmt.Errorf("pg_controldata: latest checkpoint's TimeLineID %q", fields["Latest checkpoint's TimeLineID"])
	}
	seg, err := strconv.Atoi(fields["Bytes per WAL segment"])
	if err != nil || seg <= 0 {
		return cp, fmt.Errorf("pg_controldata: bytes per WAL segment %q", fields["Bytes per WAL segment"])
	}
	cp.TimeLineID, cp.WALSegSize = uint32(tli), seg
	return cp, nil
}
