package wake

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestLocalBytesCached: a stored directory is walked once per state; a
// new state or an unstored one is walked again.
func TestLocalBytesCached(t *testing.T) {
	d := &PostgresDriver{dataDir: t.TempDir()}
	pgdata := d.pgdata("b")
	if err := os.MkdirAll(pgdata, 0o700); err != nil {
		t.Fatal(err)
	}
	write := func(name string, n int) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(pgdata, name), make([]byte, n), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("a", 64<<10)
	stored := localState{Timeline: 2, LSN: 100, UsedAt: time.Now()}
	first := d.localBytes("b", stored, true)
	if first < 64<<10 {
		t.Fatalf("first walk %d bytes", first)
	}
	write("c", 64<<10) // not seen while the state is the same
	if got := d.localBytes("b", stored, true); got != first {
		t.Fatalf("same state: %d bytes, want the remembered %d", got, first)
	}
	later := stored
	later.UsedAt = stored.UsedAt.Add(time.Millisecond)
	if got := d.localBytes("b", later, true); got < first+64<<10 {
		t.Fatalf("new state: %d bytes, want a new walk (≥ %d)", got, first+64<<10)
	}
	write("e", 64<<10)
	unstored := later
	unstored.Unstored = true
	if got := d.localBytes("b", unstored, true); got < first+128<<10 {
		t.Fatalf("unstored: %d bytes, want a walk every time", got)
	}
	if got := d.localBytes("b", localState{}, false); got < first+128<<10 {
		t.Fatalf("no state: %d bytes, want a walk", got)
	}
	d.forgetSizes(map[string]bool{})
	if len(d.mu.sizes) != 0 {
		t.Fatalf("sizes kept after forgetSizes: %v", d.mu.sizes)
	}
}
