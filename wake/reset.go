package wake

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/neonproxy/neonproxy/pagestore"
)

// Resetter is implemented by drivers that can reset a branch to its
// parent's latest durable state (PostgresDriver).
type Resetter interface {
	// Reset gives branch a new timeline under the same name, a child of
	// parent's at its latest durable state, in O(1), and drops the old
	// timeline unless other branches still read from it. The compute must
	// be stopped.
	Reset(ctx context.Context, parent, branch string) error
}

// ErrNoReset is returned by Manager.Reset when the driver cannot reset.
var ErrNoReset = errors.New("wake: this compute driver cannot reset branches")

// Reset stops branch's compute (its clients are cut, as by a delete) and
// makes the branch read parent's latest durable state again. No start can
// begin while it runs: clients that arrive wait and get the reset branch.
func (m *Manager) Reset(ctx context.Context, parent, name string) error {
	r, ok := m.drv.(Resetter)
	if !ok {
		return ErrNoReset
	}
	if parent == name {
		return fmt.Errorf("wake: cannot reset branch %s to itself", name)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var b *branch
	for {
		if m.closed {
			return ErrClosed
		}
		b = m.getLocked(name)
		p := m.getLocked(parent)
		var wait <-chan struct{}
		if b.op != "" {
			wait = b.changed
		} else {
			wait = parentBusyLocked(p)
		}
		if wait == nil {
			break
		}
		if err := m.waitLocked(ctx, wait); err != nil {
			return err
		}
	}
	b.op = "reset" // Acquires now wait for the outcome
	m.broadcastLocked(b)
	defer func() {
		b.op = ""
		m.broadcastLocked(b)
	}()
	if err := m.stopForLocked(ctx, b, StopReset); err != nil {
		return err
	}
	m.disarmOffloadLocked(b)
	m.mu.Unlock()
	err := r.Reset(ctx, parent, name)
	m.mu.Lock()
	if err != nil {
		return fmt.Errorf("wake: reset %s to %s: %w", name, parent, err)
	}
	m.log.Info("branch reset to its parent's latest state", zap.String("branch", name), zap.String("parent", parent))
	return nil
}

// Reset implements Resetter.
func (d *PostgresDriver) Reset(ctx context.Context, parent, branch string) error {
	if err := validBranch(parent); err != nil {
		return err
	}
	if err := validBranch(branch); err != nil {
		return err
	}
	ptl, ok, err := d.timeline(ctx, parent)
	if err != nil {
		return err
	}
	if !ok || ptl.Head() == 0 {
		return fmt.Errorf("parent branch %s has no data", parent)
	}
	l := d.locks.get(branch)
	l.Lock()
	defer l.Unlock()
	old, ok, err := d.timeline(ctx, branch)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("branch %s has no data", branch)
	}
	tl, err := d.store.CreateTimelineWith(ctx, branch, ptl.ID, pagestore.CreateOptions{})
	if err != nil {
		return fmt.Errorf("new timeline: %w", err)
	}
	if d.keepers != nil {
		// The parent's durable WAL after its image, as for a new branch:
		// the reset branch sees every commit the parent acknowledged.
		if _, err := d.keepers.branch(ctx, uint64(ptl.ID), uint64(tl.ID), tl.ParentLSN, startsAtHead(ptl, tl)); err != nil {
			_ = d.store.DropTimeline(context.WithoutCancel(ctx), tl.ID)
			return fmt.Errorf("parent's WAL: %w", err)
		}
	}
	// From here the new timeline is the branch's (the newest of its
	// name). The local directory is the old one's: its changes are what
	// the reset throws away.
	if err := d.removeBranchDir(branch); err != nil {
		return fmt.Errorf("remove the local data directory: %w", err)
	}
	d.log.Info("branch has a new timeline", zap.String("branch", branch), zap.String("parent", parent),
		zap.Uint64("timeline", uint64(tl.ID)), zap.Uint64("old_timeline", uint64(old.ID)), zap.Stringer("parent_lsn", tl.ParentLSN))
	d.dropUnreferenced(context.WithoutCancel(ctx), old)
	return nil
}

// dropTimeline drops tl from the store and its WAL from the keepers.
func (d *PostgresDriver) dropTimeline(ctx context.Context, tl pagestore.Timeline) error {
	if d.keepers != nil {
		ns := uint64(tl.ID)
		if err := d.keepers.all(ctx, "drop the branch's WAL", func(ctx context.Context, m keeperMember) error { return m.svc.Drop(ctx, ns) }); err != nil {
			return err
		}
	}
	return d.store.DropTimeline(ctx, tl.ID)
}

// dropUnreferenced drops tl, a timeline no branch names any more (a reset
// branch's old one), once no child timeline reads from it; then its
// parent, when that is such a timeline too. What cannot go yet goes when
// its last child does (Destroy calls this for the parent).
func (d *PostgresDriver) dropUnreferenced(ctx context.Context, tl pagestore.Timeline) {
	for {
		cur, ok, err := d.timeline(ctx, tl.Name)
		if err != nil || (ok && cur.ID == tl.ID) {
			return // still a branch's timeline (or unknown): keep it
		}
		err = d.dropTimeline(ctx, tl)
		if errors.Is(err, pagestore.ErrHasChildren) {
			d.log.Info("keeping a reset branch's old timeline while branches created from it exist",
				zap.String("branch", tl.Name), zap.Uint64("timeline", uint64(tl.ID)))
			return
		}
		if err != nil {
			d.log.Warn("drop a reset branch's old timeline", zap.String("branch", tl.Name), zap.Uint64("timeline", uint64(tl.ID)), zap.Error(err))
			return
		}
		d.log.Info("dropped a reset branch's old timeline", zap.String("branch", tl.Name), zap.Uint64("timeline", uint64(tl.ID)))
		if tl.Parent == 0 {
			return
		}
		if tl, err = d.store.Timeline(ctx, tl.Parent); err != nil {
			return
		}
	}
}
