package pagestore

import (
	"errors"
	"strings"
	"testing"
)

func TestParseControlData(t *testing.T) {
	const good = `pg_control version number:            1300
Database cluster state:               shut down
Latest checkpoint location:           0/1527700
Latest checkpoint's REDO location:    0/1527700
Latest checkpoint's TimeLineID:       1
Bytes per WAL segment:                16777216
`
	tests := []struct {
		name, out string
		want      Checkpoint
		wantErr   string
		notShut   bool
	}{
		{name: "clean", out: good, want: Checkpoint{LSN: 0x1527700, TimeLineID: 1, WALSegSize: 16 << 20}},
		{name: "running", out: strings.Replace(good, "shut down", "in production", 1), notShut: true, wantErr: "in production"},
		{name: "crashed in recovery", out: strings.Replace(good, "shut down", "shut down in recovery", 1), notShut: true},
		{name: "empty", out: "", notShut: true},
		{name: "bad lsn", out: strings.Replace(good, "0/1527700\nLatest checkpoint's REDO", "zz\nLatest checkpoint's REDO", 1), wantErr: "latest checkpoint location"},
		{name: "bad timeline", out: strings.Replace(good, "TimeLineID:       1", "TimeLineID:       x", 1), wantErr: "TimeLineID"},
		{name: "bad segment size", out: strings.Replace(good, "16777216", "0", 1), wantErr: "WAL segment"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseControlData(tc.out)
			if tc.wantErr == "" && !tc.notShut {
				if err != nil || got != tc.want {
					t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
				}
				return
			}
			if err == nil || errors.Is(err, ErrNotShutDown) != tc.notShut || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v; want not-shut-down=%v containing %q", err, tc.notShut, tc.wantErr)
			}
		})
	}
}
