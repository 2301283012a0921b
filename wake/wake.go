// Package wake owns the lifecycle of branch computes: one state machine per
// branch (stopped → starting → running → stopping → stopped), single-flight
// starts, a circuit breaker around starts, idle suspend, the max_running cap,
// and the PostgreSQL process driver behind the Driver interface.
//
// The driver keeps every branch in the pagestore: a start materializes the
// branch's data directory from the store unless an up-to-date local copy
// (a cache, under compute.cache_bytes) is there; a clean stop ingests what
// changed before the stop completes. A local directory that holds changes
// the store lacks (a running or crashed compute) is never evicted or
// replaced.
package wake

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"time"
)

// State is a compute's lifecycle state, as shown in the branch JSON.
type State string

// The lifecycle states.
const (
	StateStopped  State = "stopped"
	StateStarting State = "starting"
	StateRunning  State = "running"
	StateStopping State = "stopping"
)

// AllStates lists the states in lifecycle order (for metrics).
var AllStates = []State{StateStopped, StateStarting, StateRunning, StateStopping}

// Endpoint says how to reach a running compute: a unix socket
// <SocketDir>/.s.PGSQL.<Port>. Computes never listen on TCP.
type Endpoint struct {
	SocketDir string
	Port      int
	// Generation increases with every start of the branch's compute; it
	// lets callers tell a restarted compute from the one they knew.
	Generation uint64
}

// SocketPath is the unix socket file of the endpoint.
func (e Endpoint) SocketPath() string {
	return filepath.Join(e.SocketDir, ".s.PGSQL."+strconv.Itoa(e.Port))
}

// Process is one running PostgreSQL server (postmaster).
type Process interface {
	Endpoint() Endpoint
	// PID of the postmaster.
	PID() int
	// Stop performs a fast shutdown (SIGINT: a shutdown checkpoint) and
	// waits for the postmaster to exit or ctx to end; on ctx end it sends
	// SIGQUIT (immediate) and then SIGKILL.
	Stop(ctx context.Context) error
	// Done is closed when the postmaster has exited, for whatever reason.
	Done() <-chan struct{}
}

// Driver creates, starts and destroys the PostgreSQL data of branches. The
// Manager serialises calls per branch: a Driver never sees two concurrent
// calls for the same branch.
type Driver interface {
	// Exists reports whether branch has data.
	Exists(ctx context.Context, branch string) (bool, error)
	// Bootstrap creates the data of a root branch (initdb) whose superuser
	// "postgres" has the given password (stored as a SCRAM-SHA-256 verifier).
	Bootstrap(ctx context.Context, branch, password string) error
	// Clone creates branch as a child of parent at LSN at of the parent's
	// history (0: its latest durable state). It copies no data; the
	// child's first start reaches that point (*TargetError when the parent
	// cannot reach it).
	Clone(ctx context.Context, parent, branch string, at Point) error
	// Start launches the compute and returns once it accepts connections.
	Start(ctx context.Context, branch string, generation uint64) (Process, error)
	// Stopped is called after a requested stop, with clean set when the
	// fast shutdown completed and the data is kept (not a delete or a
	// reset): the driver stores the data then (ingest).
	Stopped(ctx context.Context, branch string, clean bool) error
	// Adopt returns a compute left running by an earlier neonproxy process
	// (found through postmaster.pid), or ok=false when there is none.
	Adopt(ctx context.Context, branch string, generation uint64) (p Process, ok bool, err error)
	// Destroy removes branch's data. The compute must be stopped.
	Destroy(ctx context.Context, branch string) error
	// Storage reports where branch's data is and how big it is.
	Storage(ctx context.Context, branch string) (Storage, error)
}

// Point is where in its parent's history a branch starts: an LSN, a time
// (its WAL is replayed up to the last commit at or before it), or, zero,
// the parent's latest durable state.
type Point struct {
	LSN  uint64
	Time time.Time
}

// Storage describes a branch's data.
type Storage struct {
	Timeline  uint64 // pagestore timeline
	ParentLSN string // LSN of the parent's image the branch was created at ("" for a root)
	// LogicalBytes is what the branch reads (its newest image).
	LogicalBytes int64
	// UniqueBytes is what only this branch holds in the store: what
	// deleting it frees.
	UniqueBytes int64
	// LocalBytes is the disk its local data directory (a cache) uses; 0
	// when it has none.
	LocalBytes int64
	// Unstored is set when the local directory holds changes the store
	// does not have yet (the compute runs, or crashed).
	Unstored bool
	// WALKeeper is "streaming" while the running compute streams to the WAL
	// keeper, "disconnected" while it does not (its commits then wait),
	// "" when the compute is not running or there is no keeper.
	WALKeeper string
	// WALKeeperLagBytes is the WAL the compute wrote that a quorum of
	// keepers has not made durable yet.
	WALKeeperLagBytes int64
	// WALKeepers is each keeper's stream while the compute runs.
	WALKeepers []KeeperStatus
}

// KeeperStatus is one WAL keeper's stream from a running compute.
type KeeperStatus struct {
	Name     string // wk1, wk2, … (as in synchronous_standby_names)
	State    string // "streaming" or "disconnected"
	LagBytes int64  // WAL the compute wrote that this keeper has not made durable
}

// WakeKind says how far down its tiers the compute was when a client
// needed it: what it had to wait for.
type WakeKind string

// Wake kinds, used as the metric label and in the connection log line.
const (
	WakeRunning WakeKind = "running" // it was running: no wait
	WakeHot     WakeKind = "hot"     // it was idle (frozen): thawed
	WakeWarm    WakeKind = "warm"    // it was suspended: PostgreSQL started on its local directory
	WakeCold    WakeKind = "cold"    // it was at zero: its data directory was materialized first
)

// Tier is where a compute is in its lifecycle as it goes unused: running
// → idle (frozen) → suspended (stopped, local directory kept) → zero
// (local directory dropped; the pagestore has it).
type Tier string

// Tiers.
const (
	TierRunning   Tier = "running"
	TierIdle      Tier = "idle"
	TierSuspended Tier = "suspended"
	TierZero      Tier = "zero"
)

// Freezer is a Process that can be frozen (no CPU, all state kept) and
// thawed, for the idle tier.
type Freezer interface {
	Freeze() error
	Thaw() error
}

// Materializer is a Process that says whether its start had to
// materialize the data directory from the pagestore (a cold start).
type Materializer interface {
	Materialized() bool
}

// Offloader is a Driver that can drop a stopped branch's local data
// directory (the zero tier) and say whether it has one.
type Offloader interface {
	// Offload drops branch's local data directory if the pagestore has
	// all of it; it reports whether it did.
	Offload(ctx context.Context, branch string) (bool, error)
	// HasLocal reports whether branch has a local data directory.
	HasLocal(branch string) bool
}

// StartError is returned by Manager.Acquire when the compute could not be
// started or its breaker is open. The proxy maps it to SQLSTATE 57P03.
// ErrMaxRunning is in the StartError of a wake that waited wake_timeout
// for a running slot under compute.max_running and got none.
var ErrMaxRunning = errors.New("the maximum number of running computes is reached")

// ErrWakeTimeout is in the StartError of a wake that waited wake_timeout
// for a compute still starting (or stopping).
var ErrWakeTimeout = errors.New("compute not ready within wake_timeout")

type StartError struct {
	Branch string
	// RetryAfter is how long until a retry can succeed (breaker open time
	// left), or 0 when an immediate retry may work.
	RetryAfter time.Duration
	// BreakerOpen is set when no start was attempted because the breaker
	// was open.
	BreakerOpen bool
	Err         error
}

func (e *StartError) Error() string {
	if e.BreakerOpen {
		return fmt.Sprintf("compute for branch %s is not starting after repeated failures (retry in %s): %v", e.Branch, e.RetryAfter.Round(time.Second), e.Err)
	}
	return fmt.Sprintf("start compute for branch %s: %v", e.Branch, e.Err)
}

func (e *StartError) Unwrap() error { return e.Err }

// Wrappers of a Process (ownership, tests) forward the optional
// interfaces through these.

func freezeOf(p Process) error {
	if f, ok := p.(Freezer); ok {
		return f.Freeze()
	}
	return fmt.Errorf("wake: this compute cannot be frozen")
}

func thawOf(p Process) error {
	if f, ok := p.(Freezer); ok {
		return f.Thaw()
	}
	return nil
}

func materializedOf(p Process) bool {
	m, ok := p.(Materializer)
	return ok && m.Materialized()
}
