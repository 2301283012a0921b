package wake

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"
)

// Owners decides which node may run a branch's compute when several
// neonproxy nodes share a cluster (router.ConsulOwners: a Consul session
// lock per branch). At most one node owns a branch at a time.
type Owners interface {
	// Own makes this node the branch's owner, or fails (naming the owner)
	// when another node is.
	Own(ctx context.Context, branch string) (Ownership, error)
}

// ErrOwnedElsewhere: another node runs the branch's compute. Owners.Own
// wraps it (with the owner's address); it does not count as a failed
// start for the branch's breaker.
var ErrOwnedElsewhere = errors.New("the branch runs on another node")

// OwnedElsewhereError names the node that runs the branch (its address,
// where clients can be relayed); it is ErrOwnedElsewhere.
type OwnedElsewhereError struct {
	Owner string
	Err   error
}

func (e *OwnedElsewhereError) Error() string {
	return fmt.Sprintf("%v: %s (%v)", ErrOwnedElsewhere, e.Owner, e.Err)
}
func (e *OwnedElsewhereError) Unwrap() error        { return e.Err }
func (e *OwnedElsewhereError) Is(target error) bool { return target == ErrOwnedElsewhere }

// ErrNoLock: this node could not learn whether it may run the branch
// (the lock service cannot be reached). Not a failed start for the
// breaker either.
var ErrNoLock = errors.New("cannot take the branch's cluster lock")

// Ownership is a held branch.
type Ownership interface {
	// Lost is closed when the ownership ended without Release (the node's
	// session expired): another node may start the branch now.
	Lost() <-chan struct{}
	Release() error
}

// OwnedDriver wraps d so that a compute runs only while this node owns its
// branch: Start and Adopt take the ownership first and fail when another
// node has it; a compute whose ownership is lost is killed at once (as if
// it crashed: its commits are safe in the WAL keepers, and the keepers'
// generation fencing shuts out its WAL); the ownership is given up when the
// compute has stopped and its data is stored, or when it exits on its own.
func OwnedDriver(d Driver, o Owners, log *zap.Logger) Driver {
	if log == nil {
		log = zap.NewNop()
	}
	od := &ownedDriver{Driver: d, owners: o, log: log}
	od.mu.held = map[string]*ownedProcess{}
	if lt, ok := d.(LogTailer); ok {
		return &ownedTailer{ownedDriver: od, tail: lt}
	}
	return od
}

type ownedDriver struct {
	Driver
	owners Owners
	log    *zap.Logger
	mu     struct {
		sync.Mutex
		held map[string]*ownedProcess
	}
}

// ownedTailer keeps the wrapped driver's LogTailer.
type ownedTailer struct {
	*ownedDriver
	tail LogTailer
}

func (t *ownedTailer) LogTail(branch string, n int) string { return t.tail.LogTail(branch, n) }

// ownedProcess is a compute and its branch's ownership.
type ownedProcess struct {
	Process
	own      Ownership
	stopping atomic.Bool // a stop was asked for: Stopped releases
	released sync.Once
}

var (
	_ Freezer      = (*ownedProcess)(nil)
	_ Materializer = (*ownedProcess)(nil)
	_ Offloader    = (*ownedDriver)(nil)
)

func (p *ownedProcess) Freeze() error      { return freezeOf(p.Process) }
func (p *ownedProcess) Thaw() error        { return thawOf(p.Process) }
func (p *ownedProcess) Materialized() bool { return materializedOf(p.Process) }

// Offload implements Offloader for the wrapped driver.
func (d *ownedDriver) Offload(ctx context.Context, branch string) (bool, error) {
	if o, ok := d.Driver.(Offloader); ok {
		return o.Offload(ctx, branch)
	}
	return false, nil
}

// HasLocal implements Offloader for the wrapped driver.
func (d *ownedDriver) HasLocal(branch string) bool {
	if o, ok := d.Driver.(Offloader); ok {
		return o.HasLocal(branch)
	}
	return true
}

func (p *ownedProcess) Stop(ctx context.Context) error {
	p.stopping.Store(true)
	return p.Process.Stop(ctx)
}

func (p *ownedProcess) release(log *zap.Logger, branch string) {
	p.released.Do(func() {
		if err := p.own.Release(); err != nil {
			log.Warn("give up branch ownership", zap.String("branch", branch), zap.Error(err))
		}
	})
}

func (d *ownedDriver) Start(ctx context.Context, branch string, generation uint64) (Process, error) {
	own, err := d.owners.Own(ctx, branch)
	if err != nil {
		if !errors.Is(err, ErrOwnedElsewhere) {
			err = fmt.Errorf("%w: %w", ErrNoLock, err)
		}
		return nil, fmt.Errorf("wake: start %s: %w", branch, err)
	}
	p, err := d.Driver.Start(ctx, branch, generation)
	if err != nil {
		_ = own.Release()
		return nil, err
	}
	return d.hold(branch, own, p), nil
}

func (d *ownedDriver) Adopt(ctx context.Context, branch string, generation uint64) (Process, bool, error) {
	own, err := d.owners.Own(ctx, branch)
	if err != nil {
		// Another node runs the branch: a compute left here must not.
		if p, ok, aerr := d.Driver.Adopt(ctx, branch, generation); aerr == nil && ok {
			d.kill(branch, p, "another node owns the branch")
		}
		return nil, false, fmt.Errorf("wake: adopt %s: %w", branch, err)
	}
	p, ok, err := d.Driver.Adopt(ctx, branch, generation)
	if err != nil || !ok {
		_ = own.Release()
		return nil, ok, err
	}
	return d.hold(branch, own, p), true, nil
}

// hold watches the ownership for as long as the compute runs.
func (d *ownedDriver) hold(branch string, own Ownership, p Process) Process {
	op := &ownedProcess{Process: p, own: own}
	d.mu.Lock()
	d.mu.held[branch] = op
	d.mu.Unlock()
	go func() {
		select {
		case <-own.Lost():
			d.kill(branch, p, "this node lost the branch's ownership")
			<-p.Done()
		case <-p.Done():
		}
		if !op.stopping.Load() {
			// Exited on its own (or killed above): nothing to store here.
			d.forget(branch, op)
			op.release(d.log, branch)
		}
	}()
	return op
}

// kill ends a compute at once (an expired context: immediate shutdown).
func (d *ownedDriver) kill(branch string, p Process, why string) {
	d.log.Error("stopping the compute at once", zap.String("branch", branch), zap.String("why", why))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = p.Stop(ctx)
}

func (d *ownedDriver) forget(branch string, op *ownedProcess) {
	d.mu.Lock()
	if d.mu.held[branch] == op {
		delete(d.mu.held, branch)
	}
	d.mu.Unlock()
}

// Stopped stores the data, then gives the branch up: the next owner starts
// from the stored state.
func (d *ownedDriver) Stopped(ctx context.Context, branch string, clean bool) error {
	err := d.Driver.Stopped(ctx, branch, clean)
	d.mu.Lock()
	op := d.mu.held[branch]
	delete(d.mu.held, branch)
	d.mu.Unlock()
	if op != nil {
		op.release(d.log, branch)
	}
	return err
}

// Reset implements Resetter for the wrapped driver, holding the branch's
// ownership meanwhile: a compute another node runs on the old timeline
// would otherwise go on writing to it. The compute runs on another node:
// the reset fails with ErrOwnedElsewhere (reset it through that node).
func (d *ownedDriver) Reset(ctx context.Context, parent, branch string) error {
	r, ok := d.Driver.(Resetter)
	if !ok {
		return ErrNoReset
	}
	own, err := d.owners.Own(ctx, branch)
	if err != nil {
		return fmt.Errorf("wake: reset %s: %w", branch, err)
	}
	defer func() { _ = own.Release() }()
	return r.Reset(ctx, parent, branch)
}

var _ Resetter = (*ownedDriver)(nil)
