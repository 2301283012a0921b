package pagestore

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// crashChildEnv makes the test binary the process TestIngestCrash kills.
const crashChildEnv = "PAGESTORE_CRASH_CHILD"

type crashPlan struct {
	Timeline TimelineID
	CP       Checkpoint
}

// TestIngestCrash kills a process in the middle of an ingest (SIGKILL
// after its first batch reached pebble) and checks that the branch still
// starts with its previous image, and that the ingest then succeeds.
func TestIngestCrash(t *testing.T) {
	if work := os.Getenv(crashChildEnv); work != "" {
		crashChild(t, work)
		return
	}
	pg := newPGEnv(t)
	ctx := context.Background()
	work := mkTemp(t)
	if err := os.Chmod(work, 0o711); err != nil {
		t.Fatal(err)
	}
	storeDir, data, mf := filepath.Join(work, "store"), filepath.Join(work, "data"), filepath.Join(work, "manifest")
	pg.mkdir(data)
	pg.run("initdb", "-N", "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "-D", data)
	stop := pg.start(data)
	pg.psql("CREATE TABLE t (id int, v text); INSERT INTO t SELECT g, 'first' FROM generate_series(1, 1000) g")
	stop()
	s, err := Open(Options{Dir: storeDir})
	if err != nil {
		t.Fatal(err)
	}
	tl := mustCreate(t, s, "main", 0, 0)
	cp1 := pg.checkpoint(data)
	if _, err := s.Ingest(ctx, tl.ID, data, cp1, mf); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Enough new pages for several batches (4 MiB each).
	stop = pg.start(data)
	pg.psql("INSERT INTO t SELECT g, repeat('second', 20) FROM generate_series(1, 100000) g")
	stop()
	plan, err := json.Marshal(crashPlan{Timeline: tl.ID, CP: pg.checkpoint(data)})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(work, "plan.json"), plan, 0o600); err != nil {
		t.Fatal(err)
	}
	child := exec.Command(os.Args[0], "-test.run=^TestIngestCrash$", "-test.count=1")
	child.Env = append(os.Environ(), crashChildEnv+"="+work)
	out, err := child.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("the child was not killed mid-ingest: %v\n%s", err, out)
	}

	s, err = Open(Options{Dir: storeDir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.Timeline(context.Background(), tl.ID)
	if err != nil || got.Head() != cp1.LSN || got.Pending == 0 {
		t.Fatalf("after the crash: %+v, %v; want head %s and a pending ingest", got, err, cp1.LSN)
	}
	count := func(dir string) string {
		t.Helper()
		if _, err := s.Materialize(ctx, tl.ID, 0, dir, MaterializeOptions{Owner: Owner{UID: pg.uid, GID: pg.gid}}); err != nil {
			t.Fatal(err)
		}
		stop := pg.start(dir)
		defer stop()
		return pg.psql("SELECT count(*) || ' ' || count(*) FILTER (WHERE v = 'first') FROM t")
	}
	if n := count(filepath.Join(work, "after-crash")); n != "1000 1000" {
		t.Fatalf("after the crash the branch reads %q rows, want the previous image's 1000", n)
	}

	// The data directory is still there: the retried ingest stores it.
	var p crashPlan
	if err := json.Unmarshal(plan, &p); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Ingest(ctx, tl.ID, data, p.CP, mf); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Timeline(context.Background(), tl.ID); got.Head() != p.CP.LSN || got.Pending != 0 {
		t.Fatalf("after the retry: %+v", got)
	}
	if n := count(filepath.Join(work, "after-retry")); n != "101000 1000" {
		t.Fatalf("after the retry the branch reads %q rows", n)
	}
}

// crashChild ingests the planned image and is killed by the hook after
// the first batch commits.
func crashChild(t *testing.T, work string) {
	b, err := os.ReadFile(filepath.Join(work, "plan.json"))
	if err != nil {
		t.Fatal(err)
	}
	var p crashPlan
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatal(err)
	}
	s, err := Open(Options{Dir: filepath.Join(work, "store")})
	if err != nil {
		t.Fatal(err)
	}
	testHookBatchCommitted = func() {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
	_, err = s.Ingest(context.Background(), p.Timeline, filepath.Join(work, "data"), p.CP, filepath.Join(work, "manifest"))
	t.Fatalf("the ingest returned (%v) instead of being killed mid-way", err)
}
