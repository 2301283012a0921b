package wake

import (
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"
)

func TestUsageLedger(t *testing.T) {
	path := filepath.Join(t.TempDir(), "usage.json")
	l := newUsageLedger(path, zap.NewNop())
	h := func(hh, mm int) time.Time { return time.Date(2026, 1, 2, hh, mm, 0, 0, time.UTC) }
	// 10:30–12:15 running: 30 min, 60 min and 15 min in three hours.
	l.addTime("a", h(10, 30), h(12, 15), false)
	l.addTime("a", h(12, 15), h(12, 45), true) // then idle
	l.addTime("b", h(11, 0), h(11, 10), false)
	l.addTime("b", h(11, 10), h(11, 10), false) // empty: nothing
	l.addWake("a", h(10, 30), WakeCold)
	l.addWake("a", h(12, 50), WakeHot)
	l.addWake("b", h(11, 0), WakeWarm)
	for _, tc := range []struct {
		name     string
		from, to time.Time
		want     map[string]Usage
	}{
		{"all", time.Time{}, time.Time{}, map[string]Usage{
			"a": {RunningSeconds: 105 * 60, IdleSeconds: 30 * 60, ColdWakes: 1, HotWakes: 1},
			"b": {RunningSeconds: 600, WarmWakes: 1},
		}},
		{"hour 11 only", h(11, 0), h(12, 0), map[string]Usage{
			"a": {RunningSeconds: 3600},
			"b": {RunningSeconds: 600, WarmWakes: 1},
		}},
		{"a window inside hour 12 counts the whole hour", h(12, 20), h(12, 25), map[string]Usage{
			"a": {RunningSeconds: 15 * 60, IdleSeconds: 30 * 60, HotWakes: 1},
			"b": {},
		}},
	} {
		got := l.sum("", tc.from, tc.to)
		for name, want := range tc.want {
			if got[name] != want {
				t.Errorf("%s: %s = %+v, want %+v", tc.name, name, got[name], want)
			}
		}
	}
	if got := l.sum("b", time.Time{}, time.Time{}); len(got) != 1 || got["b"].RunningSeconds != 600 {
		t.Errorf("sum of b only: %+v", got)
	}
	// Saved and read back; buckets past the retention are dropped.
	if err := l.save(h(13, 0)); err != nil {
		t.Fatal(err)
	}
	if got := newUsageLedger(path, zap.NewNop()).sum("", time.Time{}, time.Time{}); got["a"] != l.sum("a", time.Time{}, time.Time{})["a"] {
		t.Errorf("read back %+v", got)
	}
	if err := l.save(h(13, 0).Add(usageRetention + 24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	l.addWake("a", h(13, 0), WakeCold) // dirty again
	if err := l.save(h(13, 0).Add(usageRetention + 24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if got := newUsageLedger(path, zap.NewNop()).sum("", time.Time{}, time.Time{}); len(got) != 0 {
		t.Errorf("after the retention: %+v", got)
	}
}

// TestUsageAddsUp: a real compute's time is booked by tier (running,
// idle), its wakes by kind, and the tiers add up to the time it was up.
func TestUsageAddsUp(t *testing.T) {
	e := newEnv(t, Options{IdleAfter: 300 * time.Millisecond, SuspendTimeout: time.Hour}, "u")
	ctx := ctxT(t)
	t0 := time.Now()
	l, err := e.m.Acquire(ctx, "u")
	if err != nil {
		t.Fatal(err)
	}
	held := time.Now()
	for time.Since(held) < 500*time.Millisecond {
		time.Sleep(50 * time.Millisecond) // a client holding its compute
	}
	l.Release()
	waitFor(t, time.Minute, "the idle tier", func() bool { return e.m.Status("u").Tier == TierIdle })
	waitFor(t, time.Minute, "idle time to be booked", func() bool { return e.m.Usage("u", time.Time{}, time.Time{})["u"].IdleSeconds >= 0.2 })
	// A hot wake (thaw), then the stop.
	l, err = e.m.Acquire(ctx, "u")
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
	if err := e.m.Suspend(ctx, "u"); err != nil {
		t.Fatal(err)
	}
	up := time.Since(t0).Seconds()
	u := e.m.Usage("", time.Time{}, time.Time{})["u"]
	t.Logf("usage %+v over %.2f s", u, up)
	if u.RunningSeconds < 0.5 || u.IdleSeconds < 0.2 || u.ComputeSeconds() > up {
		t.Errorf("running %.2f s (held 0.5 s), idle %.2f s, total %.2f s: want running ≥ 0.5, idle ≥ 0.2, total ≤ %.2f",
			u.RunningSeconds, u.IdleSeconds, u.ComputeSeconds(), up)
	}
	if u.ColdWakes+u.WarmWakes != 1 || u.HotWakes != 1 || u.Wakes() != 2 {
		t.Errorf("wakes %+v: want one start and one thaw", u)
	}
	// Stopped: no more time is booked.
	time.Sleep(200 * time.Millisecond)
	if again := e.m.Usage("u", time.Time{}, time.Time{})["u"]; again != u {
		t.Errorf("a stopped compute kept booking time: %+v, then %+v", u, again)
	}
}

// TestFreezeStopsEveryProcess: the idle tier stops the whole compute, not
// only the postmaster (PostgreSQL gives each child a session of its own, so
// its process group is the postmaster alone), and a thaw resumes all of it:
// a connection opened before the freeze answers after the thaw.
func TestFreezeStopsEveryProcess(t *testing.T) {
	e := newEnv(t, Options{IdleAfter: 300 * time.Millisecond, SuspendTimeout: time.Hour}, "f")
	ctx := ctxT(t)
	l, err := e.m.Acquire(ctx, "f")
	if err != nil {
		t.Fatal(err)
	}
	c := connect(t, l.Endpoint) // a backend of its own
	query(t, c, "SELECT 1")
	l.Release()
	pid := e.m.Status("f").PID
	pgdata := e.drv.pgdata("f")
	// The compute's processes found by working directory: another way
	// than Freeze's (the postmaster's children).
	states := func() map[int]string {
		out := map[int]string{}
		for _, p := range leftovers(pid, resolvedPath(t, pgdata)) {
			if f := procStatFields(p); len(f) > 0 {
				out[p] = f[0]
			}
		}
		return out
	}
	if n := len(states()); n < 5 {
		t.Fatalf("%d processes in the data directory: want the postmaster, its workers and a backend", n)
	}
	waitFor(t, time.Minute, "the idle tier", func() bool { return e.m.Status("f").Tier == TierIdle })
	waitFor(t, 10*time.Second, "every process stopped", func() bool {
		for _, st := range states() {
			if st != "T" {
				return false
			}
		}
		return true
	})
	l, err = e.m.Acquire(ctx, "f") // a hot wake: the thaw
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	for p, st := range states() {
		if st == "T" {
			t.Errorf("process %d still stopped after the thaw", p)
		}
	}
	if got := query(t, c, "SELECT 2"); len(got) != 1 || got[0] != "2" {
		t.Errorf("the backend opened before the freeze answered %v", got)
	}
}

func resolvedPath(t *testing.T, p string) string {
	t.Helper()
	r, err := filepath.EvalSymlinks(p)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
