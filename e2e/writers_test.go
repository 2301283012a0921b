package e2e

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// ackWriters are clients that insert consecutive ids into the table acked
// (id bigint primary key) as fast as they can, one autocommit INSERT at a
// time, until their context ends or their connection breaks. An id counts
// as acknowledged once its INSERT returned success. Ids are shared across
// rounds of writers (run).
type ackWriters struct {
	mu      sync.Mutex
	acked   map[int64]bool
	next    int64
	longest time.Duration // the longest INSERT since the last resetLongest
	times   []time.Time   // acknowledgements of runRetrying writers
	wg      sync.WaitGroup
}

func newAckWriters() *ackWriters { return &ackWriters{acked: map[int64]bool{}} }

// run starts n writers on url.
func (w *ackWriters) run(ctx context.Context, url string, n int) {
	for range n {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			c, err := pgx.Connect(ctx, url)
			if err != nil {
				return
			}
			defer c.Close(context.Background())
			for ctx.Err() == nil {
				w.mu.Lock()
				w.next++
				id := w.next
				w.mu.Unlock()
				t0 := time.Now()
				if _, err := c.Exec(ctx, "INSERT INTO acked VALUES ($1)", id); err != nil {
					return
				}
				d := time.Since(t0)
				w.mu.Lock()
				w.acked[id] = true
				w.longest = max(w.longest, d)
				w.mu.Unlock()
			}
		}()
	}
}

// wait waits for the writers to end.
func (w *ackWriters) wait() { w.wg.Wait() }

func (w *ackWriters) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

func (w *ackWriters) resetLongest() {
	w.mu.Lock()
	w.longest = 0
	w.mu.Unlock()
}

func (w *ackWriters) longestCommit() time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.longest
}

// check reads the table through url and returns how many rows it has and
// the acknowledged ids missing from it (sorted).
func (w *ackWriters) check(t *testing.T, ctx context.Context, url string) (rows int, missing []int64) {
	t.Helper()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect to check the acknowledged rows: %v", err)
	}
	defer c.Close(ctx)
	rows0, err := c.Query(ctx, "SELECT id FROM acked")
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows0, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	got := make(map[int64]bool, len(ids))
	for _, id := range ids {
		got[id] = true
	}
	w.mu.Lock()
	for id := range w.acked {
		if !got[id] {
			missing = append(missing, id)
		}
	}
	w.mu.Unlock()
	sort.Slice(missing, func(i, j int) bool { return missing[i] < missing[j] })
	return len(got), missing
}

// crashMain "crashes" neonproxy (Abandon: nothing stopped or stored), kills
// main's compute with SIGKILL, and, once it is gone, deletes its local data
// directory; then calls between (writers stop, keepers die…) before the
// caller restarts. The server is not restarted here.
func (e *env) crashMain(ctx context.Context, between func()) {
	e.t.Helper()
	pid := e.srv.Computes.Status("main").PID
	if err := e.srv.Abandon(ctx); err != nil {
		e.t.Fatal(err)
	}
	e.srv = nil
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil {
		e.t.Fatal(err)
	}
	between()
	waitFor(e.t, "the killed compute to be gone", func() bool { return len(postgresProcesses(e.dir)) == 0 })
	if err := os.RemoveAll(filepath.Join(e.cfg.DataDir, "computes", "branches", "main")); err != nil {
		e.t.Fatal(err)
	}
}

// runRetrying starts n writers on url that reconnect whenever their
// connection breaks (every 20 ms while connecting fails), until ctx ends.
// Each acknowledgement's time is kept (ackTimes).
func (w *ackWriters) runRetrying(ctx context.Context, url string, n int) {
	for range n {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for ctx.Err() == nil {
				c, err := pgx.Connect(ctx, url)
				if err != nil {
					select {
					case <-ctx.Done():
					case <-time.After(20 * time.Millisecond):
					}
					continue
				}
				for ctx.Err() == nil {
					w.mu.Lock()
					w.next++
					id := w.next
					w.mu.Unlock()
					if _, err := c.Exec(ctx, "INSERT INTO acked VALUES ($1)", id); err != nil {
						break
					}
					w.mu.Lock()
					w.acked[id] = true
					w.times = append(w.times, time.Now())
					w.mu.Unlock()
				}
				c.Close(context.Background())
			}
		}()
	}
}

// longestGap returns the longest time without an acknowledgement after
// from: an outage's last acknowledgement before and first after.
func (w *ackWriters) longestGap(from time.Time) (before, after time.Time) {
	w.mu.Lock()
	times := slices.Clone(w.times)
	w.mu.Unlock()
	slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
	for i := 1; i < len(times); i++ {
		if times[i].After(from) && times[i].Sub(times[i-1]) > after.Sub(before) {
			before, after = times[i-1], times[i]
		}
	}
	return before, after
}
