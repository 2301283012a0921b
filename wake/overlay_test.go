package wake

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestOverlayFirstStart: children of a stopped parent start on overlays
// over one template of its image (compute.local_cow). Each sees the
// parent's rows and only its own changes; they write a fraction of the
// image; a stored child keeps its data across neonproxy closing (which
// unmounts) and an offload (which drops the overlay; it then materializes
// its own image); the template goes with the last branch using it.
func TestOverlayFirstStart(t *testing.T) {
	e := newKeeperEnv(t)
	if e.drv.ov == nil {
		t.Skip("overlayfs cannot be mounted here (needs root); compute.local_cow falls back to plain directories")
	}
	ctx := ctxT(t)
	e.on("main", "create table t(x int); insert into t select generate_series(1, 100)")
	if err := e.m.Suspend(ctx, "main"); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"c1", "c2"} {
		if err := e.m.Clone(ctx, "main", b, Point{}); err != nil {
			t.Fatal(err)
		}
	}
	e.on("c1", "insert into t values (-1)", "create table only_c1(y int)")
	if got := e.on("c2", "select count(*) || '/' || count(*) filter (where x < 0) from t"); got[0] != "100/0" {
		t.Fatalf("c2 sees %v, want 100 rows and none of c1's", got)
	}
	st1, _ := e.drv.readState("c1")
	st2, _ := e.drv.readState("c2")
	if st1.Lower == "" || st1.Lower != st2.Lower {
		t.Fatalf("children not on one template: %q, %q", st1.Lower, st2.Lower)
	}
	for _, b := range []string{"c1", "c2"} {
		if !isMountpoint(e.drv.pgdata(b)) {
			t.Fatalf("%s's data directory is not an overlay mount", b)
		}
	}
	if up, tpl := diskUsage(filepath.Join(e.drv.branchDir("c2"), "upper")), diskUsage(st2.Lower); up*2 > tpl {
		t.Fatalf("c2 wrote %d bytes of its own over a %d-byte template: not copy-on-write", up, tpl)
	}
	// The parent is untouched by its children.
	if got := e.on("main", "select count(*) from t"); got[0] != "100" {
		t.Fatalf("main sees %v rows, want 100", got)
	}
	if err := e.m.Suspend(ctx, "main"); err != nil {
		t.Fatal(err)
	}

	// c1 stored; the driver closes (unmounting) and a new one mounts it
	// again at the next start.
	if err := e.m.Suspend(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	e.drv.unmountAll()
	if isMountpoint(e.drv.pgdata("c1")) {
		t.Fatal("c1 still mounted after unmountAll")
	}
	if got := e.on("c1", "select (select count(*) from t) || '/' || (select count(*) from only_c1)"); got[0] != "101/0" {
		t.Fatalf("c1 after a remount sees %v, want 101 rows and its table", got)
	}
	// Offloaded, c1 drops its overlay and comes back from its own image.
	if err := e.m.Suspend(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	if ok, err := e.drv.Offload(ctx, "c1"); err != nil || !ok {
		t.Fatalf("offload c1: %v, %v", ok, err)
	}
	if got := e.on("c1", "select count(*) from t"); got[0] != "101" {
		t.Fatalf("c1 after an offload sees %v rows, want 101", got)
	}
	if st, _ := e.drv.readState("c1"); st.Lower != "" || isMountpoint(e.drv.pgdata("c1")) {
		t.Fatalf("c1 after an offload: state %+v, mounted %v; want a plain directory", st, isMountpoint(e.drv.pgdata("c1")))
	}
	if _, err := os.Stat(st2.Lower); err != nil {
		t.Fatalf("the template went while c2 uses it: %v", err)
	}
	// The last branch on the template goes, and the template with it.
	if err := e.m.Delete(context.Background(), "c2"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(st2.Lower); !os.IsNotExist(err) {
		t.Fatalf("template still there after its last branch went: %v", err)
	}
}

// TestOverlayAfterReboot: a child on an overlay crashes, and the host
// "reboots" (the state's boot id and the template names change). Its
// directory is not trusted, so its start rebuilds it on a new template
// (the old one was never fsynced) and replays its commits from the
// keeper; the old template goes.
func TestOverlayAfterReboot(t *testing.T) {
	e := newKeeperEnv(t)
	if e.drv.ov == nil {
		t.Skip("overlayfs cannot be mounted here (needs root)")
	}
	ctx := ctxT(t)
	e.on("main", "create table t(x int); insert into t select generate_series(1, 100)")
	if err := e.m.Suspend(ctx, "main"); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Clone(ctx, "main", "c", Point{}); err != nil {
		t.Fatal(err)
	}
	e.on("c", "insert into t values (-1)")
	old, _ := e.drv.readState("c")
	pid := e.m.Status("c").PID
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	e.waitState("c", StateStopped)
	// The reboot: mounts gone, another boot id.
	e.drv.unmountAll()
	st, _ := e.drv.readState("c")
	if !st.Unstored || st.Lower == "" {
		t.Fatalf("crashed child's state %+v: want unstored, on an overlay", st)
	}
	st.BootID = "before-the-reboot"
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.drv.statePath("c"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	e.drv.ov.boot = "rebooted"
	if got := e.on("c", "select count(*) from t"); got[0] != "101" {
		t.Fatalf("child after the reboot sees %v rows, want 101", got)
	}
	now, _ := e.drv.readState("c")
	if now.Lower == "" || now.Lower == old.Lower || !strings.HasSuffix(now.Lower, "-rebooted") {
		t.Fatalf("template after the reboot %q (before %q): want a new one", now.Lower, old.Lower)
	}
	if _, err := os.Stat(old.Lower); !os.IsNotExist(err) {
		t.Fatalf("the pre-reboot template is still there: %v", err)
	}
}
