package wake

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/neonproxy/neonproxy/pagestore"
	"github.com/neonproxy/neonproxy/walkeeper"
)

// TargetError is a branch point outside what the parent's images and the
// WAL keeper can reach. The admin API answers it with 400.
type TargetError struct {
	Target, From, To pagestore.LSN
	// For a branch at a time: the time asked for and the valid range.
	Time, FromTime, ToTime time.Time
}

func (e *TargetError) Error() string {
	if !e.Time.IsZero() {
		if e.FromTime.IsZero() {
			return fmt.Sprintf("time %s is outside the parent's reachable history: it has no stored image to start from", e.Time.Format(time.RFC3339))
		}
		return fmt.Sprintf("time %s is outside the parent's reachable history: valid times are %s to %s",
			e.Time.Format(time.RFC3339), e.FromTime.Format(time.RFC3339), e.ToTime.Format(time.RFC3339))
	}
	return fmt.Sprintf("LSN %s is outside the parent's reachable history: valid LSNs are %s to %s", e.Target, e.From, e.To)
}

// pointInTimeAt checks that a branch of ptl at time at is reachable: an
// image of ptl stored at or before it, with the keepers' WAL after it
// (which starts at start).
func pointInTimeAt(ptl pagestore.Timeline, at time.Time, start pagestore.LSN) error {
	now := time.Now()
	terr := &TargetError{Time: at, ToTime: now}
	// The oldest image a replay can start from.
	for _, img := range ptl.Images {
		if img == ptl.Head() || (start != 0 && img&^(8192-1) >= start) {
			terr.FromTime = ptl.ImageTimes[img]
			break
		}
	}
	if terr.FromTime.IsZero() || at.Before(terr.FromTime) || at.After(now) {
		return terr
	}
	return nil
}

// pointInTime checks that a branch of ptl at `at` is reachable: an image at
// or before it, and the keepers' WAL (start to flush) from that image up
// to it.
func pointInTime(ptl pagestore.Timeline, at, start, flush pagestore.LSN) error {
	durable := max(ptl.Head(), flush)
	var walFrom pagestore.LSN // oldest image the keepers have WAL from
	for _, img := range ptl.Images {
		if start != 0 && img&^(8192-1) >= start {
			walFrom = img
			break
		}
	}
	from := ptl.ParentLSN // a child reads its parent's image until it has its own
	if len(ptl.Images) > 0 {
		from = ptl.Images[0]
	}
	terr := &TargetError{Target: at, From: from, To: durable}
	if walFrom != 0 {
		terr.From = min(from, walFrom)
	}
	switch {
	case at < from || at > durable:
		return terr
	case slicesContains(ptl.Images, at) || at == ptl.Head():
		return nil // an image itself: no WAL needed
	case walFrom == 0 || at < walFrom:
		terr.From = max(from, walFrom)
		if walFrom == 0 {
			terr.From, terr.To = ptl.Head(), ptl.Head()
		}
		return terr
	}
	return nil
}

func slicesContains(s []pagestore.LSN, v pagestore.LSN) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// recoverToTarget brings a freshly materialized directory of a branch
// created at a point in its parent's history to that point: the parent's
// WAL after the image is put in pg_wal, PostgreSQL's archive recovery
// replays it to the target and promotes (a new PostgreSQL timeline), then
// it shuts down and the result is stored as the branch's first image. The
// caller holds the branch's lock; pgdata is in place.
func (d *PostgresDriver) recoverToTarget(ctx context.Context, branch string, tl pagestore.Timeline) error {
	if d.keepers == nil {
		return errors.New("point-in-time branch without a WAL keeper")
	}
	pgdata := d.pgdata(branch)
	cp, err := d.controlData(ctx, pgdata)
	if err != nil {
		return err
	}
	ns := uint64(tl.ID)
	v, err := d.keepers.readSource(ctx, ns, cp.LSN)
	if err != nil {
		return err
	}
	if v.info.Flush <= uint64(cp.LSN) {
		return nil // no WAL after the image: the image is the branch point
	}
	if _, err := walkeeper.WriteSegments(ctx, v.src, ns, uint64(cp.LSN), cp.TimeLineID, cp.WALSegSize, filepath.Join(pgdata, "pg_wal"),
		d.owner().UID, d.owner().GID); err != nil {
		return fmt.Errorf("write the parent's WAL: %w", err)
	}
	sock := d.SocketDir(branch)
	if err := d.mkdirOwned(sock, 0o700); err != nil {
		return err
	}
	t0 := time.Now()
	target := []string{"-c", "recovery_target_lsn=" + tl.Target.String(), "-c", "recovery_target_inclusive=off"}
	what := tl.Target.String()
	if !tl.TargetTime.IsZero() {
		what = tl.TargetTime.Format(time.RFC3339Nano)
		target = []string{"-c", "recovery_target_time=" + tl.TargetTime.UTC().Format("2006-01-02 15:04:05.999999-07"),
			"-c", "recovery_target_inclusive=on"}
	}
	err = d.recoveryRun(ctx, branch, sock, target)
	if errors.Is(err, errTargetNotReached) && !tl.TargetTime.IsZero() {
		// Nothing was committed between the end of the WAL and that time:
		// the branch is the parent's state at the end of its WAL.
		d.log.Info("no commit after the end of the parent's WAL before the target time: recovering to the end",
			zap.String("branch", branch), zap.String("target", what))
		err = d.recoveryRun(ctx, branch, sock, nil)
	}
	if err != nil {
		return fmt.Errorf("recover to %s: %w", what, err)
	}
	// The branch's own history starts here: store it, and forget the
	// parent's WAL it was rebuilt from.
	if err := d.ingest(ctx, branch, tl.ID); err != nil {
		return err
	}
	if err := d.keepers.all(ctx, "drop the parent's WAL copy", func(ctx context.Context, m keeperMember) error { return m.svc.Drop(ctx, ns) }); err != nil {
		return err
	}
	d.log.Info("branch recovered to its point in time", zap.String("branch", branch),
		zap.Stringer("image", tl.ParentLSN), zap.String("target", what), zap.Duration("took", time.Since(t0)))
	return nil
}

// errTargetNotReached: the WAL ended before the recovery target.
var errTargetNotReached = errors.New("the WAL ends before the recovery target")

// recoveryRun runs PostgreSQL's archive recovery on the branch's directory
// (WAL already in pg_wal, recovery.signal in place) with the target
// settings, waits for the promotion and shuts it down cleanly. Each run
// leaves a fresh recovery.signal behind it for a retry.
func (d *PostgresDriver) recoveryRun(ctx context.Context, branch, sock string, target []string) error {
	pgdata := d.pgdata(branch)
	signal := filepath.Join(pgdata, "recovery.signal")
	if err := os.WriteFile(signal, nil, 0o600); err != nil {
		return err
	}
	if err := d.chown(signal); err != nil {
		return err
	}
	// Not the keeper settings: nothing streams from this short-lived run.
	args := append([]string{
		"-D", pgdata,
		"-c", "listen_addresses=",
		"-c", "unix_socket_directories=" + sock,
		"-c", "port=" + strconv.Itoa(Port),
		"-c", "shared_buffers=" + d.o.SharedBuffers,
		"-c", "recovery_target_action=promote",
		// The WAL is already in pg_wal; there is no archive.
		"-c", "restore_command=false",
	}, target...)
	cmd := d.command(context.Background(), d.branchDir(branch), "postgres", args...)
	logPath := d.logPath(branch)
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	var logStart int64
	if fi, err := logf.Stat(); err == nil {
		logStart = fi.Size()
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	err = cmd.Start()
	logf.Close()
	if err != nil {
		return fmt.Errorf("start recovery: %w", err)
	}
	exited := make(chan struct{})
	var exitErr error
	go func() { exitErr = cmd.Wait(); close(exited) }()
	stop := func() error {
		_ = cmd.Process.Signal(syscall.SIGINT) // fast shutdown: a shutdown checkpoint
		select {
		case <-exited:
			return exitErr
		case <-time.After(d.stopWait()):
			killGroup(cmd.Process.Pid, pgdata)
			<-exited
			return errors.New("recovery run did not shut down in time")
		}
	}
	if err := d.waitPromoted(ctx, sock, exited); err != nil {
		_ = stop()
		tail := fileTail(logPath, logStart, 10)
		if strings.Contains(tail, "recovery ended before configured recovery target was reached") {
			return errTargetNotReached
		}
		return fmt.Errorf("%w; last lines of %s:\n%s", err, logPath, tail)
	}
	return stop()
}

// waitPromoted polls the recovering server until it has left recovery.
func (d *PostgresDriver) waitPromoted(ctx context.Context, sock string, exited <-chan struct{}) error {
	conn := fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres connect_timeout=2", sock, Port)
	for {
		select {
		case <-exited:
			return errors.New("postgres exited during recovery")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		c, err := pgconn.Connect(ctx, conn)
		if err != nil {
			continue // not accepting connections yet
		}
		res, err := c.Exec(ctx, "SELECT pg_is_in_recovery()").ReadAll()
		c.Close(context.Background())
		if err == nil && len(res) == 1 && len(res[0].Rows) == 1 && string(res[0].Rows[0][0]) == "f" {
			return nil
		}
	}
}

// stopWait bounds the fast shutdown of a recovery run.
func (d *PostgresDriver) stopWait() time.Duration { return time.Minute }
