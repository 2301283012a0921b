package wake

import (
	"fmt"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// compute.suspend_with_sessions: disconnect. Clients that hold a compute
// for their whole session (session mode, and transaction-pooled clients
// pinned to a server connection) keep it running by default. With
// DisconnectIdleSessions, a compute whose sessions have all sent nothing
// for SuspendTimeout is suspended anyway, and each of those clients is
// told why (its OnSuspend callback: the proxy sends 57P01 naming the
// suspend) before it is disconnected.

// leaseActivity is what a lease records for the idle-session check.
type leaseActivity struct {
	last      atomic.Int64 // unix nanos of the client's last message
	onSuspend atomic.Pointer[func(*Lease)]
}

// Touch records client activity on the lease (a no-op unless idle
// sessions can be disconnected).
func (l *Lease) Touch() {
	if l != nil && l.m != nil && l.m.o.DisconnectIdleSessions {
		l.act.last.Store(time.Now().UnixNano())
	}
}

// SuspendedError is what a client disconnected by such a suspend is told.
func (l *Lease) SuspendedError() string {
	// Not m.o under mu: OnSuspend callbacks call this under mu.
	after := time.Duration(l.m.suspendAfter.Load())
	return fmt.Sprintf("terminating connection: the compute of branch %q was suspended after %s without queries (compute.suspend_with_sessions: disconnect)",
		l.b.name, after)
}

// OnSuspend sets what to do to the lease's client when its compute is
// suspended under it (DisconnectIdleSessions): (*f)(l) is called under
// the manager's lock. f is kept, not copied: a transaction-pooled session
// passes the same field with every transaction's lease, so that setting
// the hook allocates nothing.
func (l *Lease) OnSuspend(f *func(*Lease)) { l.act.onSuspend.Store(f) }

// trackLeaseLocked adds a new lease to b's set, when sessions can be
// disconnected, and arms the check.
func (m *Manager) trackLeaseLocked(b *branch, l *Lease) {
	l.act.last.Store(time.Now().UnixNano())
	if !m.o.DisconnectIdleSessions {
		return
	}
	if b.leaseSet == nil {
		b.leaseSet = make(map[*Lease]struct{})
	}
	b.leaseSet[l] = struct{}{}
	if b.sessionCheck == nil {
		m.armSessionCheckLocked(b, m.o.SuspendTimeout)
	}
}

func (m *Manager) untrackLeaseLocked(b *branch, l *Lease) {
	delete(b.leaseSet, l)
}

func (m *Manager) armSessionCheckLocked(b *branch, after time.Duration) {
	gen := b.gen
	b.sessionCheck = time.AfterFunc(after, func() { m.sessionCheckFire(b, gen) })
}

// sessionCheckFire suspends b when every session on it has been quiet for
// SuspendTimeout, telling each client why.
func (m *Manager) sessionCheckFire(b *branch, gen uint64) {
	m.mu.Lock()
	b.sessionCheck = nil
	if m.closed || m.branches[b.name] != b || b.gen != gen || b.state != StateRunning || len(b.leaseSet) == 0 {
		m.mu.Unlock()
		return
	}
	var newest int64
	for l := range b.leaseSet {
		newest = max(newest, l.act.last.Load())
	}
	quiet := time.Since(time.Unix(0, newest))
	if quiet < m.o.SuspendTimeout {
		m.armSessionCheckLocked(b, m.o.SuspendTimeout-quiet)
		m.mu.Unlock()
		return
	}
	var tell []func()
	for l := range b.leaseSet {
		if f := l.act.onSuspend.Load(); f != nil {
			tell = append(tell, func() { (*f)(l) })
		}
	}
	n := len(b.leaseSet)
	// The clients are told first (the callbacks only mark their sessions
	// and close the server side: no waiting), so that what they read is
	// the reason, not PostgreSQL's own shutdown message.
	for _, f := range tell {
		f()
	}
	m.beginStopLocked(b, StopIdle)
	m.mu.Unlock()
	m.log.Info("suspending compute with idle sessions (compute.suspend_with_sessions: disconnect)",
		zap.String("branch", b.name), zap.Int("sessions", n), zap.Duration("quiet", quiet))
}

// dropLeasesLocked forgets b's leases when its compute goes away.
func (m *Manager) dropLeasesLocked(b *branch) {
	b.leases, b.leaseSet = 0, nil
	if b.sessionCheck != nil {
		b.sessionCheck.Stop()
		b.sessionCheck = nil
	}
}
