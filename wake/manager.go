package wake

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker"
	"go.uber.org/zap"

	"github.com/neonproxy/neonproxy/internal/metrics"
)

// ErrClosed is returned by Manager methods after Close (or Detach).
var ErrClosed = errors.New("wake: compute manager is shut down")

// LogTailer is implemented by drivers that can show the end of a compute's
// server log; the Manager adds it to the log line of an unexpected exit.
type LogTailer interface {
	LogTail(branch string, lines int) string
}

// Stop reasons (label of neonproxy_compute_stops_total).
const (
	StopIdle     = "idle"
	StopEvicted  = "evicted"
	StopAdmin    = "admin"
	StopShutdown = "shutdown"
	StopDelete   = "delete"
	StopReset    = "reset"
	StopExited   = "exited"
)

// Options configure a Manager.
type Options struct {
	// SuspendTimeout stops a compute after it has had no client (lease) for
	// this long (default 300s): the suspended tier.
	SuspendTimeout time.Duration
	// IdleAfter freezes a compute (SIGSTOP of its processes) after it has
	// had no client for this long, before SuspendTimeout: the idle tier,
	// from which a client thaws it in microseconds. 0 (or not below
	// SuspendTimeout): no idle tier.
	IdleAfter time.Duration
	// OffloadAfter drops a suspended compute's local data directory after
	// it has been stopped this long (the pagestore has it): the zero tier.
	// 0: never (only compute.cache_bytes evicts).
	OffloadAfter time.Duration
	// Prewarm starts (or thaws) a compute shortly before a client is
	// predicted to arrive, when a branch's arrivals keep a regular interval
	// (see prewarm.go); SetPrewarm switches it per branch.
	Prewarm bool
	// DisconnectIdleSessions suspends a compute whose clients hold it for
	// their whole session but have all been quiet for SuspendTimeout,
	// telling them why (compute.suspend_with_sessions: disconnect);
	// otherwise such sessions keep it running.
	DisconnectIdleSessions bool
	// WakeTimeout bounds how long Acquire waits for a start (default 30s).
	WakeTimeout time.Duration
	// MaxRunning caps running computes; 0 means no cap.
	MaxRunning int
	// BreakerFailures consecutive start failures open a branch's breaker
	// (default 3).
	BreakerFailures int
	// BreakerOpen is how long an open breaker refuses starts (default 30s).
	BreakerOpen time.Duration
	// StopTimeout bounds a fast shutdown before it is escalated to an
	// immediate one (default 60s).
	StopTimeout time.Duration
	// StoreTimeout bounds storing a stopped compute's data (the driver's
	// Stopped: the pagestore ingest) before the stop completes (default
	// 10m). A store that fails or times out keeps the local data directory
	// as the branch's newest state; the next stop stores it.
	StoreTimeout time.Duration
	Logger       *zap.Logger
	Metrics      *metrics.Metrics // may be nil
	// UsagePath is the file the usage ledger (compute seconds and wakes
	// per branch, hourly) is kept in; "": in memory only.
	UsagePath string
	// BeforeStop, if set, is called (without locks held) just before a
	// compute is shut down, so its users can close their own connections
	// first instead of having PostgreSQL terminate them.
	BeforeStop func(branch string)
}

// Status describes a branch's compute.
type Status struct {
	State State
	// Tier is where the compute is as it goes unused, and TierSince when
	// it got there (zero when not seen by this process).
	Tier       Tier
	TierSince  time.Time
	Clients    int // leases held
	Generation uint64
	StartedAt  time.Time
	LastUsed   time.Time
	PID        int
	LastError  string
}

// Manager runs one lifecycle state machine per branch.
type Manager struct {
	drv      Driver
	o        Options
	log      *zap.Logger
	met      *metrics.Metrics
	baseCtx  context.Context // cancelled by Close/Detach: aborts starts
	cancel   context.CancelFunc
	detachCh chan struct{}

	mu       sync.Mutex
	branches map[string]*branch
	closed   bool
	detached bool
	// roomQ holds the starts waiting, in arrival order, for a running
	// slot under MaxRunning; roomCh is closed and replaced whenever a slot
	// may have come free (a state change, a compute's last lease gone).
	roomQ  []*roomTicket
	roomCh chan struct{}
	// suspendAfter is o.SuspendTimeout for readers that cannot take mu.
	suspendAfter atomic.Int64
	usage        *usageLedger
	// startEWMA is a moving average of how long starts take (under mu),
	// for telling a queued wake it cannot be served in time.
	startEWMA time.Duration
}

// roomTicket is one start's place in Manager.roomQ, told apart by its
// address (which a zero-size struct would not guarantee); branch is for
// debugging.
type roomTicket struct{ branch string }

// branch is the state machine of one branch's compute. All fields but cb
// and openedAt are guarded by Manager.mu.
type branch struct {
	name      string
	state     State
	proc      Process
	gen       uint64
	leases    int
	waiters   int    // Acquires waiting for the current start
	op        string // bootstrap, clone, delete or reset in progress (state stopped)
	startedAt time.Time
	lastUsed  time.Time
	lastErr   error
	changed   chan struct{} // closed and replaced on every change
	flight    *flight       // the current (or last) start
	stopDone  chan struct{} // closed when the current stop finishes
	idle      *time.Timer
	idleSeq   uint64
	frozen    bool // the idle tier: the running compute is frozen
	tierSince time.Time
	accruedAt time.Time // compute time is booked in the usage ledger up to here
	startKind WakeKind  // what the current (or last) start was: warm or cold
	offload   *time.Timer
	offSeq    uint64
	pw        prewarmState
	// leaseSet and sessionCheck: DisconnectIdleSessions only.
	leaseSet     map[*Lease]struct{}
	sessionCheck *time.Timer

	cb       *gobreaker.CircuitBreaker
	openedAt atomic.Int64 // unix nanos when the breaker last opened
}

type flight struct {
	done chan struct{}
	err  error // set before done is closed
	// forClients: clients asked for the start (not a pre-warm), so it is
	// abandoned (cancel) when the last of them stops waiting.
	forClients bool
	cancel     context.CancelCauseFunc
}

// ErrStartAbandoned ends a start every client waiting for it gave up on
// (their wake_timeout passed while it queued and ran): its slot under
// compute.max_running goes to the next queued start instead. It does not
// count against the branch's breaker.
var ErrStartAbandoned = errors.New("wake: start abandoned: every client waiting for it gave up")

// NewManager returns a Manager for drv's computes.
func NewManager(drv Driver, o Options) *Manager {
	if o.SuspendTimeout <= 0 {
		o.SuspendTimeout = 300 * time.Second
	}
	if o.WakeTimeout <= 0 {
		o.WakeTimeout = 30 * time.Second
	}
	if o.BreakerFailures <= 0 {
		o.BreakerFailures = 3
	}
	if o.BreakerOpen <= 0 {
		o.BreakerOpen = 30 * time.Second
	}
	if o.StoreTimeout <= 0 {
		o.StoreTimeout = 10 * time.Minute
	}
	if o.StopTimeout <= 0 {
		o.StopTimeout = 60 * time.Second
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Manager{
		drv:      drv,
		o:        o,
		log:      o.Logger,
		met:      o.Metrics,
		baseCtx:  ctx,
		cancel:   cancel,
		detachCh: make(chan struct{}),
		branches: make(map[string]*branch),
		roomCh:   make(chan struct{}),
	}
	m.suspendAfter.Store(int64(o.SuspendTimeout))
	m.usage = newUsageLedger(o.UsagePath, m.log)
	if o.UsagePath != "" {
		go m.runUsageSaver(time.Minute, ctx.Done())
	}
	return m
}

// Timeouts are the Options a running Manager takes new values of
// (SIGHUP): zero values get NewManager's defaults. Timers already armed
// keep their deadlines; the next ones use the new values.
type Timeouts struct {
	SuspendTimeout, IdleAfter, OffloadAfter, WakeTimeout time.Duration
	MaxRunning                                           int
}

// SetTimeouts applies t.
func (m *Manager) SetTimeouts(t Timeouts) {
	if t.SuspendTimeout <= 0 {
		t.SuspendTimeout = 300 * time.Second
	}
	if t.WakeTimeout <= 0 {
		t.WakeTimeout = 30 * time.Second
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.o.SuspendTimeout, m.o.IdleAfter, m.o.OffloadAfter = t.SuspendTimeout, t.IdleAfter, t.OffloadAfter
	m.o.WakeTimeout, m.o.MaxRunning = t.WakeTimeout, t.MaxRunning
	m.suspendAfter.Store(int64(t.SuspendTimeout))
	m.roomChangedLocked() // a higher max_running frees slots for queued wakes
}

// Lease is a client's hold on a running compute: while a branch has leases
// its compute is not suspended for idleness or evicted.
type Lease struct {
	Endpoint Endpoint
	Kind     WakeKind
	// Waited is how long Acquire took.
	Waited time.Duration

	m    *Manager
	b    *branch
	gen  uint64
	once sync.Once
	act  leaseActivity
}

// Release gives the lease back; it is idempotent. When the branch's last
// lease is released, its idle timer starts.
func (l *Lease) Release() {
	if l == nil || l.m == nil {
		return
	}
	l.once.Do(func() { l.m.release(l) })
}

func (m *Manager) release(l *Lease) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b := l.b
	if m.branches[b.name] != b || b.gen != l.gen || b.state != StateRunning {
		return // that compute is gone; its leases were dropped with it
	}
	if b.leases > 0 {
		b.leases--
	}
	m.untrackLeaseLocked(b, l)
	b.lastUsed = time.Now()
	if b.leases == 0 && !m.closed {
		m.armLocked(b)
		if len(m.roomQ) > 0 {
			m.roomChangedLocked() // b can now be evicted for a queued start
		}
	}
}

// getLocked returns branch name's state machine, creating it (stopped).
func (m *Manager) getLocked(name string) *branch {
	if b, ok := m.branches[name]; ok {
		return b
	}
	b := &branch{name: name, state: StateStopped, changed: make(chan struct{})}
	b.cb = gobreaker.NewCircuitBreaker(gobreaker.Settings{
		Name:        name,
		MaxRequests: 1,
		Timeout:     m.o.BreakerOpen,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			return c.ConsecutiveFailures >= uint32(m.o.BreakerFailures)
		},
		// Another node running the branch, or Consul out of reach, is not
		// this compute failing.
		IsSuccessful: func(err error) bool {
			return err == nil || errors.Is(err, ErrOwnedElsewhere) || errors.Is(err, ErrNoLock) || errors.Is(err, ErrStartAbandoned)
		},
		OnStateChange: func(_ string, from, to gobreaker.State) {
			if to == gobreaker.StateOpen {
				b.openedAt.Store(time.Now().UnixNano())
			}
			// May run under m.mu (from State()): log without blocking.
			go m.log.Info("compute start breaker", zap.String("branch", name), zap.String("from", from.String()), zap.String("to", to.String()))
		},
	})
	m.branches[name] = b
	if m.met != nil {
		m.met.Computes.WithLabelValues(string(StateStopped)).Inc()
	}
	return b
}

// removeLocked forgets b (after Delete).
func (m *Manager) removeLocked(b *branch) {
	if m.branches[b.name] != b {
		return
	}
	m.disarmLocked(b)
	m.disarmOffloadLocked(b)
	b.pw.disabled = true
	m.schedulePrewarmLocked(b) // stops its timer
	if m.met != nil {
		m.met.Computes.WithLabelValues(string(b.state)).Dec()
	}
	delete(m.branches, b.name)
	m.broadcastLocked(b)
}

func (m *Manager) broadcastLocked(b *branch) {
	close(b.changed)
	b.changed = make(chan struct{})
}

func (m *Manager) setStateLocked(b *branch, s State) {
	m.accrueLocked(b, time.Now())
	if m.met != nil && m.branches[b.name] == b && b.state != s {
		m.met.Computes.WithLabelValues(string(b.state)).Dec()
		m.met.Computes.WithLabelValues(string(s)).Inc()
	}
	b.state = s
	m.broadcastLocked(b)
	m.roomChangedLocked()
}

// roomChangedLocked wakes the starts queued for a running slot to look
// again.
func (m *Manager) roomChangedLocked() {
	close(m.roomCh)
	m.roomCh = make(chan struct{})
}

// waitLocked releases mu until ch is closed or ctx ends.
func (m *Manager) waitLocked(ctx context.Context, ch <-chan struct{}) error {
	m.mu.Unlock()
	defer m.mu.Lock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// armLocked (re)starts b's idle timers: the freeze after IdleAfter, when
// there is an idle tier, then the suspend after SuspendTimeout.
func (m *Manager) armLocked(b *branch) {
	m.disarmLocked(b)
	seq := b.idleSeq
	// A compute warmed for a predicted client waits for it first.
	hold := max(time.Until(b.pw.holdUntil), 0)
	if m.idleTierLocked(b) && !b.frozen {
		b.idle = time.AfterFunc(hold+m.o.IdleAfter, func() { m.freezeFire(b, seq) })
		return
	}
	left := m.o.SuspendTimeout
	if !b.lastUsed.IsZero() {
		left -= time.Since(b.lastUsed) // frozen already: the rest of it
	}
	b.idle = time.AfterFunc(hold+max(left, 0), func() { m.idleFire(b, seq) })
}

// idleTierLocked says whether b's compute can be frozen.
func (m *Manager) idleTierLocked(b *branch) bool {
	_, ok := b.proc.(Freezer)
	return ok && m.o.IdleAfter > 0 && m.o.IdleAfter < m.o.SuspendTimeout
}

// freezeFire moves an unused running compute to the idle tier.
func (m *Manager) freezeFire(b *branch, seq uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || m.branches[b.name] != b || seq != b.idleSeq || b.state != StateRunning || b.leases > 0 || b.frozen {
		return
	}
	if err := b.proc.(Freezer).Freeze(); err != nil {
		m.log.Warn("freeze idle compute", zap.String("branch", b.name), zap.Error(err))
		return
	}
	m.accrueLocked(b, time.Now())
	b.frozen, b.tierSince = true, time.Now()
	m.steppedDownLocked(b)
	m.log.Info("compute idle: frozen", zap.String("branch", b.name), zap.Duration("unused", time.Since(b.lastUsed)))
	m.armLocked(b) // now the suspend
}

// thawLocked brings a frozen compute back to running.
func (m *Manager) thawLocked(b *branch) error {
	if !b.frozen {
		return nil
	}
	m.accrueLocked(b, time.Now())
	b.frozen, b.tierSince = false, time.Now()
	if err := b.proc.(Freezer).Thaw(); err != nil {
		return fmt.Errorf("wake: thaw %s: %w", b.name, err)
	}
	return nil
}

// armOffloadLocked starts the timer that takes a stopped b to zero.
func (m *Manager) armOffloadLocked(b *branch) {
	m.disarmOffloadLocked(b)
	off, ok := m.drv.(Offloader)
	if !ok || m.o.OffloadAfter <= 0 {
		return
	}
	seq, after := b.offSeq, m.o.OffloadAfter
	b.offload = time.AfterFunc(after, func() {
		m.mu.Lock()
		if m.closed || m.branches[b.name] != b || seq != b.offSeq || b.state != StateStopped || b.op != "" {
			m.mu.Unlock()
			return
		}
		m.mu.Unlock()
		ctx, cancel := context.WithTimeout(m.baseCtx, time.Minute)
		done, err := off.Offload(ctx, b.name)
		cancel()
		switch {
		case err != nil:
			m.log.Warn("offload suspended compute", zap.String("branch", b.name), zap.Error(err))
		case done:
			m.mu.Lock()
			if b.state == StateStopped {
				b.tierSince = time.Now()
			}
			m.mu.Unlock()
			m.log.Info("compute at zero: local data directory dropped", zap.String("branch", b.name),
				zap.Duration("suspended", after))
		}
	})
}

func (m *Manager) disarmOffloadLocked(b *branch) {
	b.offSeq++
	if b.offload != nil {
		b.offload.Stop()
		b.offload = nil
	}
}

func (m *Manager) disarmLocked(b *branch) {
	b.idleSeq++
	if b.idle != nil {
		b.idle.Stop()
		b.idle = nil
	}
}

func (m *Manager) idleFire(b *branch, seq uint64) {
	m.mu.Lock()
	if m.closed || m.branches[b.name] != b || seq != b.idleSeq || b.state != StateRunning || b.leases > 0 {
		m.mu.Unlock()
		return // an Acquire (or something else) got there first
	}
	idle := time.Since(b.lastUsed)
	m.beginStopLocked(b, StopIdle)
	m.mu.Unlock()
	m.log.Info("suspending idle compute", zap.String("branch", b.name), zap.Duration("idle", idle))
}

// Acquire makes sure branch's compute runs and returns a lease on it. It
// waits at most WakeTimeout (and ctx) for a start. Start failures and an
// open breaker are returned as *StartError.
func (m *Manager) Acquire(ctx context.Context, name string) (*Lease, error) {
	t0 := time.Now()
	// The wait's context only when there is a wait: transaction-pooled
	// clients take a lease per transaction, nearly always on a running
	// compute.
	var wctx context.Context
	cancel := context.CancelFunc(func() {})
	defer func() { cancel() }()
	waitCtx := func() context.Context {
		if wctx == nil {
			wctx, cancel = context.WithTimeout(ctx, m.o.WakeTimeout)
		}
		return wctx
	}
	kind := WakeRunning
	var ticket *roomTicket // our place in the queue for a running slot
	m.mu.Lock()
	defer m.mu.Unlock()
	defer func() {
		if ticket != nil {
			m.dropTicketLocked(ticket)
		}
	}()
	if !m.closed {
		// An arrival: the first client after a gap, or the first one a
		// pre-warm waited for.
		if b := m.getLocked(name); b.leases == 0 && (b.lastUsed.IsZero() || t0.Sub(b.lastUsed) >= arrivalGap || !b.pw.warmedAt.IsZero()) {
			m.noteArrivalLocked(b, t0)
		}
	}
	for {
		if m.closed {
			return nil, ErrClosed
		}
		b := m.getLocked(name)
		if ticket != nil && (b.state != StateStopped || b.op != "") {
			m.dropTicketLocked(ticket) // another client's start got there
			ticket = nil
		}
		var wait <-chan struct{}
		switch b.state {
		case StateRunning:
			if b.frozen {
				if err := m.thawLocked(b); err != nil {
					return nil, &StartError{Branch: name, Err: err}
				}
				if kind == WakeRunning {
					kind = WakeHot
				}
				m.usage.addWake(name, time.Now(), WakeHot)
			}
			b.leases++
			b.lastUsed = time.Now()
			m.disarmLocked(b)
			l := &Lease{Endpoint: b.proc.Endpoint(), Kind: kind, Waited: time.Since(t0), m: m, b: b, gen: b.gen}
			m.trackLeaseLocked(b, l)
			return l, nil
		case StateStarting:
			f := b.flight
			// Counted so that the compute, once up, is not evicted
			// before its waiters get the lock to take their leases.
			b.waiters++
			err := m.waitLocked(waitCtx(), f.done)
			b.waiters--
			if err != nil {
				if f.forClients && b.flight == f && b.state == StateStarting && b.waiters == 0 && b.leases == 0 {
					f.cancel(ErrStartAbandoned)
				}
				return nil, m.waitErr(ctx, name, err)
			}
			if f.err != nil {
				return nil, f.err
			}
			kind = b.startKind
			continue
		case StateStopping:
			wait = b.stopDone
		case StateStopped:
			if b.op != "" {
				wait = b.changed
				break
			}
			if err := m.breakerOpenLocked(b); err != nil {
				return nil, err
			}
			room, ok := m.makeRoomLocked(b, ticket)
			if !ok {
				// Every slot is busy: queue (FIFO) until one frees, an
				// idle compute can be evicted, or wake_timeout.
				if ticket == nil {
					if err := m.hopelessLocked(name, waitCtx()); err != nil {
						return nil, err
					}
					ticket = &roomTicket{branch: name}
					m.roomQ = append(m.roomQ, ticket)
					if m.met != nil {
						m.met.ComputeWakeQueued.Inc()
					}
				}
				if err := m.waitLocked(waitCtx(), m.roomCh); err != nil {
					if ctx.Err() != nil {
						return nil, ctx.Err()
					}
					return nil, &StartError{Branch: name, RetryAfter: time.Second, Err: fmt.Errorf(
						"%w: all %d slots stayed busy for wake_timeout (%s)", ErrMaxRunning, m.o.MaxRunning, m.o.WakeTimeout)}
				}
				continue
			}
			if ticket != nil {
				m.dropTicketLocked(ticket)
				ticket = nil
			}
			m.startLocked(b, room, true)
			continue
		}
		if err := m.waitLocked(waitCtx(), wait); err != nil {
			return nil, m.waitErr(ctx, name, err)
		}
	}
}

// hopelessLocked refuses a wake at once, rather than after wake_timeout,
// when the starts queued ahead of it for a running slot would take longer
// than the time it has left even at the recent start rate: under overload
// a FIFO queue whose clients all wait out their timeout serves almost
// none of them, while a short queue serves its clients within theirs.
// Clients that hold computes can make the wait longer still; that is
// found out by waiting, as before.
func (m *Manager) hopelessLocked(name string, wctx context.Context) error {
	if m.startEWMA <= 0 || m.o.MaxRunning <= 0 {
		return nil
	}
	deadline, ok := wctx.Deadline()
	if !ok {
		return nil
	}
	rounds := len(m.roomQ)/m.o.MaxRunning + 1 // this start's turn among the queued ones
	wait := time.Duration(rounds) * m.startEWMA
	if wait <= time.Until(deadline) {
		return nil
	}
	if m.met != nil {
		m.met.ComputeWakesRefused.Inc()
	}
	return &StartError{Branch: name, RetryAfter: wait.Round(time.Second), Err: fmt.Errorf(
		"%w: %d wakes are queued ahead for %d slots and starts take about %s, so this one would not start within wake_timeout (%s)",
		ErrMaxRunning, len(m.roomQ), m.o.MaxRunning, m.startEWMA.Round(100*time.Millisecond), m.o.WakeTimeout)}
}

// waitErr turns the end of an Acquire wait into the caller's error: its own
// context's, or a StartError for wake_timeout.
func (m *Manager) waitErr(ctx context.Context, name string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return &StartError{Branch: name, Err: fmt.Errorf("%w (%s): %w", ErrWakeTimeout, m.o.WakeTimeout, err)}
}

// breakerOpenLocked returns a StartError when b's breaker refuses starts.
func (m *Manager) breakerOpenLocked(b *branch) error {
	if b.cb.State() != gobreaker.StateOpen {
		return nil
	}
	left := time.Until(time.Unix(0, b.openedAt.Load()).Add(m.o.BreakerOpen))
	if left < 0 {
		left = 0
	}
	cause := b.lastErr
	if cause == nil {
		cause = gobreaker.ErrOpenState
	}
	return &StartError{Branch: b.name, BreakerOpen: true, RetryAfter: left, Err: cause}
}

// makeRoomLocked enforces MaxRunning before b starts. ok is false when b
// must queue: every slot is busy, or the free ones (and idle computes to
// evict) go to the starts queued ahead of it (ticket is b's place, nil when
// not queued). When it evicts the least recently used idle compute, room is
// closed once that compute is gone.
func (m *Manager) makeRoomLocked(b *branch, ticket *roomTicket) (room <-chan struct{}, ok bool) {
	if m.o.MaxRunning <= 0 {
		return nil, true
	}
	ahead := len(m.roomQ) // starts queued before b
	for i, t := range m.roomQ {
		if t == ticket {
			ahead = i
			break
		}
	}
	n := 0
	var victim *branch
	for _, o := range m.branches {
		if o.state != StateRunning && o.state != StateStarting {
			continue
		}
		n++
		if o != b && o.state == StateRunning && o.leases == 0 && o.waiters == 0 &&
			(victim == nil || o.lastUsed.Before(victim.lastUsed)) {
			victim = o
		}
	}
	if n+ahead < m.o.MaxRunning {
		return nil, true
	}
	if victim == nil || ahead > 0 {
		return nil, false
	}
	go m.log.Info("evicting idle compute", zap.String("branch", victim.name), zap.String("for", b.name))
	return m.beginStopLocked(victim, StopEvicted), true
}

// dropTicketLocked takes t out of the queue for a running slot; the starts
// behind it move up, so they look again.
func (m *Manager) dropTicketLocked(t *roomTicket) {
	for i, q := range m.roomQ {
		if q == t {
			m.roomQ = append(m.roomQ[:i], m.roomQ[i+1:]...)
			m.roomChangedLocked()
			return
		}
	}
}

// startLocked moves b to starting and starts its compute in the background
// (after waitFor, if set, is closed).
func (m *Manager) startLocked(b *branch, waitFor <-chan struct{}, forClients bool) {
	m.disarmOffloadLocked(b)
	b.gen++
	ctx, cancel := context.WithCancelCause(m.baseCtx)
	f := &flight{done: make(chan struct{}), forClients: forClients, cancel: cancel}
	b.flight = f
	m.setStateLocked(b, StateStarting)
	go m.runStart(ctx, b, f, b.gen, waitFor, m.o.WakeTimeout)
}

func (m *Manager) runStart(ctx context.Context, b *branch, f *flight, gen uint64, waitFor <-chan struct{}, timeout time.Duration) {
	defer f.cancel(nil)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t0 := time.Now()
	var err error
	if waitFor != nil {
		select {
		case <-waitFor:
		case <-ctx.Done():
			err = fmt.Errorf("waiting for an evicted compute to stop: %w", ctx.Err())
		}
	}
	var proc Process
	if err == nil {
		// No Exists check first: in distributed mode a branch this node
		// has no data of runs on another node, which Start reports (and
		// the driver says "no data" itself otherwise).
		_, err = b.cb.Execute(func() (any, error) {
			p, err := m.drv.Start(ctx, b.name, gen)
			proc = p
			if err != nil && errors.Is(context.Cause(ctx), ErrStartAbandoned) {
				err = fmt.Errorf("%w (%v)", ErrStartAbandoned, err)
			}
			return nil, err
		})
	} else if errors.Is(context.Cause(ctx), ErrStartAbandoned) {
		err = fmt.Errorf("%w (%v)", ErrStartAbandoned, err)
	}
	took := time.Since(t0)

	var logf func()
	defer func() {
		if logf != nil {
			logf()
		}
	}()
	m.mu.Lock()
	defer m.mu.Unlock()
	defer close(f.done)
	if err != nil {
		se := &StartError{Branch: b.name, Err: err}
		if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
			if e := m.breakerOpenLocked(b); e != nil {
				se = e.(*StartError)
			} else {
				se.BreakerOpen = true
			}
		} else if !errors.Is(err, ErrStartAbandoned) {
			b.lastErr = err
		}
		f.err = se
		result := "error"
		logf = func() {
			m.log.Error(LogStartFailed, zap.String("branch", b.name), zap.Uint64("generation", gen),
				zap.Duration("took", took), zap.Error(err))
		}
		if errors.Is(err, ErrStartAbandoned) {
			result = "abandoned"
			logf = func() {
				m.log.Info("compute start abandoned: every client waiting for it gave up", zap.String("branch", b.name),
					zap.Uint64("generation", gen), zap.Duration("took", took))
			}
		}
		if m.met != nil {
			m.met.ComputeStarts.WithLabelValues(result).Inc()
		}
		m.setStateLocked(b, StateStopped)
		return
	}
	if m.met != nil {
		m.met.ComputeStarts.WithLabelValues("ok").Inc()
	}
	if m.detached || m.branches[b.name] != b {
		f.err = ErrClosed
		return // forgotten (Detach): leave it running, as a crash would
	}
	now := time.Now()
	b.proc, b.startedAt, b.lastUsed, b.lastErr, b.leases = proc, now, now, nil, 0
	b.frozen, b.tierSince, b.startKind, b.pw.startDur = false, now, WakeWarm, took
	if m.startEWMA == 0 {
		m.startEWMA = took
	} else {
		m.startEWMA = (4*m.startEWMA + took) / 5
	}
	if mp, ok := proc.(Materializer); ok && mp.Materialized() {
		b.startKind = WakeCold
	}
	m.usage.addWake(b.name, now, b.startKind)
	m.setStateLocked(b, StateRunning)
	go m.watch(b, proc)
	logf = func() {
		m.log.Info("compute started", zap.String("branch", b.name), zap.Uint64("generation", gen),
			zap.Int("pid", proc.PID()), zap.Duration("took", took))
	}
	if m.closed {
		f.err = ErrClosed
		m.beginStopLocked(b, StopShutdown)
		return
	}
	m.armLocked(b) // waiters take their leases (and disarm it) right away
}

// watch notices a postmaster that exits while it should be running.
func (m *Manager) watch(b *branch, proc Process) {
	select {
	case <-proc.Done():
	case <-m.detachCh:
		return
	}
	var tail string
	if lt, ok := m.drv.(LogTailer); ok {
		tail = lt.LogTail(b.name, 15)
	}
	m.mu.Lock()
	if m.branches[b.name] != b || b.proc != proc || b.state != StateRunning {
		m.mu.Unlock()
		return // a stop we asked for
	}
	// Not a clean stop: nothing is stored. The local data directory stays
	// the branch's newest state and PostgreSQL recovers it at the next
	// start (the driver marked it unstored when it started the compute).
	defer m.log.Error("compute exited unexpectedly", zap.String("branch", b.name), zap.Int("pid", proc.PID()),
		zap.Uint64("generation", b.gen), zap.String("log_tail", tail))
	defer m.mu.Unlock()
	m.disarmLocked(b)
	b.proc = nil
	m.dropLeasesLocked(b)
	b.lastErr = fmt.Errorf("postmaster %d exited unexpectedly", proc.PID())
	if m.met != nil {
		m.met.ComputeStopsTotal.WithLabelValues(StopExited).Inc()
	}
	m.setStateLocked(b, StateStopped)
}

// beginStopLocked moves a running b to stopping and shuts its compute down
// in the background; the returned channel is closed when it is stopped.
func (m *Manager) beginStopLocked(b *branch, reason string) <-chan struct{} {
	m.disarmLocked(b)
	if err := m.thawLocked(b); err != nil { // a frozen postmaster would not act on the shutdown
		m.log.Warn("thaw before stop", zap.String("branch", b.name), zap.Error(err))
	}
	m.steppedDownLocked(b)
	proc := b.proc
	done := make(chan struct{})
	b.stopDone = done
	m.dropLeasesLocked(b)
	m.setStateLocked(b, StateStopping)
	go func() {
		t0 := time.Now()
		if m.o.BeforeStop != nil {
			m.o.BeforeStop(b.name)
		}
		ctx, cancel := context.WithTimeout(context.Background(), m.o.StopTimeout)
		err := proc.Stop(ctx)
		cancel()
		if err != nil {
			m.log.Warn("compute stop", zap.String("branch", b.name), zap.Error(err))
		}
		tStop := time.Since(t0)
		// Still stopping: a start waits until the data is stored, so it
		// starts from the newest state wherever it runs.
		ctx, cancel = context.WithTimeout(context.Background(), m.o.StoreTimeout)
		// A branch being deleted or reset throws its data away: storing
		// it first would only delay the client waiting for the delete.
		store := err == nil && reason != StopDelete && reason != StopReset
		if serr := m.drv.Stopped(ctx, b.name, store); serr != nil {
			m.log.Error("store stopped compute's data; the local data directory stays the branch's newest state",
				zap.String("branch", b.name), zap.Error(serr))
		}
		cancel()
		m.mu.Lock()
		b.proc, b.tierSince = nil, time.Now()
		if m.met != nil {
			m.met.ComputeStopsTotal.WithLabelValues(reason).Inc()
		}
		m.setStateLocked(b, StateStopped)
		if (reason == StopIdle || reason == StopAdmin) && !m.closed {
			m.armOffloadLocked(b)
		}
		close(done)
		m.mu.Unlock()
		m.log.Info("compute stopped", zap.String("branch", b.name), zap.String("reason", reason),
			zap.Int("pid", proc.PID()), zap.Duration("shutdown", tStop), zap.Duration("took", time.Since(t0)))
	}()
	return done
}

// Recover adopts computes left running by an earlier neonproxy process.
// Adopted computes run with no clients, so their idle timer starts.
func (m *Manager) Recover(ctx context.Context, branches []string) {
	for _, name := range branches {
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return
		}
		b := m.getLocked(name)
		if b.state != StateStopped || b.op != "" {
			m.mu.Unlock()
			continue
		}
		b.gen++
		gen := b.gen
		f := &flight{done: make(chan struct{})}
		b.flight = f
		m.setStateLocked(b, StateStarting)
		m.mu.Unlock()

		proc, ok, err := m.drv.Adopt(ctx, name, gen)

		m.mu.Lock()
		adopted := false
		switch {
		case m.detached || m.branches[name] != b:
		case ok && err == nil:
			now := time.Now()
			b.proc, b.startedAt, b.lastUsed, b.leases = proc, now, now, 0
			m.setStateLocked(b, StateRunning)
			go m.watch(b, proc)
			adopted = true
			if m.closed {
				m.beginStopLocked(b, StopShutdown)
			} else {
				m.armLocked(b)
			}
		default:
			m.setStateLocked(b, StateStopped)
		}
		close(f.done)
		m.mu.Unlock()
		if err != nil {
			m.log.Warn("adopt compute", zap.String("branch", name), zap.Error(err))
		} else if adopted {
			m.log.Info("compute adopted", zap.String("branch", name), zap.Int("pid", proc.PID()), zap.Uint64("generation", gen))
		}
	}
}

// Bootstrap creates branch's data (initdb) unless it exists.
func (m *Manager) Bootstrap(ctx context.Context, name, password string) error {
	m.mu.Lock()
	for {
		if m.closed {
			m.mu.Unlock()
			return ErrClosed
		}
		b := m.getLocked(name)
		if b.state != StateStopped {
			m.mu.Unlock()
			return nil // it runs, so it exists
		}
		if b.op == "" {
			b.op = "bootstrap"
			m.mu.Unlock()
			exists, err := m.drv.Exists(ctx, name)
			if err == nil && !exists {
				err = m.drv.Bootstrap(ctx, name, password)
			}
			m.mu.Lock()
			b.op = ""
			m.broadcastLocked(b)
			m.mu.Unlock()
			return err
		}
		if err := m.waitLocked(ctx, b.changed); err != nil {
			m.mu.Unlock()
			return err
		}
	}
}

// Clone creates branch as a child of parent (the driver makes it in O(1)
// from the parent's newest stored image). A parent that is stopping is
// waited for, so the child gets what the parent had at its stop.
func (m *Manager) Clone(ctx context.Context, parent, name string, at Point) error {
	if parent == name {
		return fmt.Errorf("wake: cannot create branch %s from itself", name)
	}
	m.mu.Lock()
	var p, c *branch
	for {
		if m.closed {
			m.mu.Unlock()
			return ErrClosed
		}
		p, c = m.getLocked(parent), m.getLocked(name)
		var wait <-chan struct{}
		switch {
		case c.state != StateStopped:
			m.mu.Unlock()
			return fmt.Errorf("wake: branch %s already exists (its compute is %s)", name, c.state)
		case c.op != "":
			wait = c.changed
		default:
			wait = parentBusyLocked(p)
		}
		if wait == nil {
			break
		}
		if err := m.waitLocked(ctx, wait); err != nil {
			m.mu.Unlock()
			return err
		}
	}
	c.op = "clone"
	m.mu.Unlock()

	err := m.drv.Clone(ctx, parent, name, at)

	m.mu.Lock()
	c.op = ""
	m.broadcastLocked(c)
	m.mu.Unlock()
	if err != nil {
		return err
	}
	m.log.Info("branch created", zap.String("parent", parent), zap.String("branch", name))
	return nil
}

// Suspend stops branch's compute now (PostgreSQL's fast shutdown cuts its
// clients). It is not an error if it is already stopped.
func (m *Manager) Suspend(ctx context.Context, name string) error {
	return m.stop(ctx, name, StopAdmin)
}

func (m *Manager) stop(ctx context.Context, name, reason string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for {
		b, ok := m.branches[name]
		if !ok {
			return nil
		}
		var wait <-chan struct{}
		final := false // the stop we wait for is the one asked for
		switch b.state {
		case StateStopped:
			return nil
		case StateStarting:
			wait = b.flight.done
		case StateStopping:
			wait, final = b.stopDone, true
		case StateRunning:
			wait, final = m.beginStopLocked(b, reason), true
		}
		if err := m.waitLocked(ctx, wait); err != nil || final {
			return err // a start after our stop is a new life: leave it
		}
	}
}

// Delete stops branch's compute and destroys its data. No new start can
// begin once Delete has begun.
func (m *Manager) Delete(ctx context.Context, name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var b *branch
	for {
		if m.closed {
			return ErrClosed
		}
		b = m.getLocked(name)
		if b.op == "" {
			break
		}
		if err := m.waitLocked(ctx, b.changed); err != nil {
			return err
		}
	}
	b.op = "delete" // Acquires now wait for the outcome
	m.broadcastLocked(b)
	done := func(err error) error {
		b.op = ""
		if err == nil {
			m.removeLocked(b)
		} else {
			m.broadcastLocked(b)
		}
		return err
	}
	if err := m.stopForLocked(ctx, b, StopDelete); err != nil {
		return done(err)
	}
	m.mu.Unlock()
	err := m.drv.Destroy(ctx, name)
	m.mu.Lock()
	return done(err)
}

// parentBusyLocked is what a clone or reset from p waits for first: a
// bootstrap or delete of p, or its stop (its data being stored, which the
// child must see); nil when p is ready.
func parentBusyLocked(p *branch) <-chan struct{} {
	switch {
	case p.op == "bootstrap" || p.op == "delete":
		return p.changed
	case p.state == StateStopping:
		return p.stopDone
	}
	return nil
}

// stopForLocked stops b's compute for reason (a delete or reset; b.op is
// set, so no start can begin) and waits until it is stopped.
func (m *Manager) stopForLocked(ctx context.Context, b *branch, reason string) error {
	for b.state != StateStopped {
		var wait <-chan struct{}
		switch b.state {
		case StateStarting:
			wait = b.flight.done
		case StateStopping:
			wait = b.stopDone
		default:
			wait = m.beginStopLocked(b, reason)
		}
		if err := m.waitLocked(ctx, wait); err != nil {
			return err
		}
	}
	return nil
}

// Counts is how many branches' computes are in each state, read at one
// instant (the metric's gauges are read one at a time).
func (m *Manager) Counts() map[State]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[State]int{}
	for _, b := range m.branches {
		out[b.state]++
	}
	return out
}

// Status reports branch's compute.
func (m *Manager) Status(name string) Status {
	s := m.status(name)
	if s.Tier == TierSuspended {
		// Asked of the driver without m.mu: it looks at the disk.
		if off, ok := m.drv.(Offloader); ok && !off.HasLocal(name) {
			s.Tier = TierZero
		}
	}
	return s
}

func (m *Manager) status(name string) Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.branches[name]
	if !ok {
		return Status{State: StateStopped, Tier: TierSuspended}
	}
	s := Status{State: b.state, Clients: b.leases, Generation: b.gen, StartedAt: b.startedAt, LastUsed: b.lastUsed,
		Tier: TierSuspended, TierSince: b.tierSince}
	switch {
	case b.state == StateRunning && b.frozen:
		s.Tier = TierIdle
	case b.state == StateRunning || b.state == StateStarting:
		s.Tier = TierRunning
	}
	if b.proc != nil {
		s.PID = b.proc.PID()
	}
	if b.lastErr != nil {
		s.LastError = b.lastErr.Error()
	}
	return s
}

// Storage reports where branch's data is and how big it is.
func (m *Manager) Storage(ctx context.Context, name string) (Storage, error) {
	return m.drv.Storage(ctx, name)
}

// Close stops every compute (fast shutdown, in parallel) and refuses new
// Acquires. It returns when all are stopped or ctx ends.
func (m *Manager) Close(ctx context.Context) error {
	m.log.Info("stopping all computes")
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	m.cancel() // abort starts in progress
	for {
		var waits []<-chan struct{}
		for _, b := range m.branches {
			m.disarmLocked(b)
			m.disarmOffloadLocked(b)
			switch b.state {
			case StateRunning:
				waits = append(waits, m.beginStopLocked(b, StopShutdown))
			case StateStarting:
				waits = append(waits, b.flight.done)
			case StateStopping:
				waits = append(waits, b.stopDone)
			}
		}
		if len(waits) == 0 {
			return nil
		}
		for _, w := range waits {
			if err := m.waitLocked(ctx, w); err != nil {
				return err
			}
		}
	}
}

// Detach forgets every compute without stopping it and stops all timers,
// as a crash of neonproxy would (a test aid for Recover). The Manager is
// unusable afterwards.
func (m *Manager) Detach() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.detached {
		return
	}
	m.closed, m.detached = true, true
	close(m.detachCh)
	for _, b := range m.branches {
		m.disarmLocked(b)
		m.disarmOffloadLocked(b)
		if m.met != nil {
			m.met.Computes.WithLabelValues(string(b.state)).Dec()
		}
		m.broadcastLocked(b)
	}
	m.branches = make(map[string]*branch)
}
