package wake

import (
	"testing"

	"github.com/neonproxy/neonproxy/pagestore"
)

// TestResetDropsOldTimeline: a reset gives the branch a new timeline; the
// old one stays while a branch created from it exists, and goes with the
// last such branch.
func TestResetDropsOldTimeline(t *testing.T) {
	e := newEnv(t, Options{}, "r")
	ctx := ctxT(t)
	if err := e.m.Clone(ctx, "r", "a", Point{}); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Clone(ctx, "a", "g", Point{}); err != nil {
		t.Fatal(err)
	}
	old, ok, err := e.drv.timeline(ctx, "a")
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if err := e.m.Reset(ctx, "r", "a"); err != nil {
		t.Fatal(err)
	}
	cur, _, _ := e.drv.timeline(ctx, "a")
	if cur.ID == old.ID {
		t.Fatal("no new timeline after the reset")
	}
	has := func(id pagestore.TimelineID) bool {
		tls, err := e.store.Timelines(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, tl := range tls {
			if tl.ID == id {
				return true
			}
		}
		return false
	}
	if !has(old.ID) {
		t.Fatal("the old timeline went while g still reads from it")
	}
	// The reset branch starts on its new timeline.
	l, err := e.m.Acquire(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
	if err := e.m.Delete(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	if has(old.ID) {
		t.Error("the old timeline is still there after its last child went")
	}
	if !has(cur.ID) {
		t.Error("the reset branch's timeline went")
	}
	if err := e.m.Reset(ctx, "a", "a"); err == nil {
		t.Error("reset of a branch to itself succeeded")
	}
}
