package wake

import (
	"slices"
	"time"

	"go.uber.org/zap"
)

// Predictive pre-warm. A branch's arrivals (a client reaching a compute
// that had none for at least arrivalGap) are recorded; when the last
// prewarmArrivals of them came at a regular interval (each within
// prewarmJitter of their median; a cron job, a poller), the next arrival is
// predicted one interval after the last, and the compute is started (or
// thawed) shortly before it, so that client finds it running. Pre-warm
// never evicts a compute nor goes past MaxRunning, and never starts a
// compute whose breaker is open.
//
// Outcomes (neonproxy_prewarm_total): hit, the client found the compute
// warmed for it; miss, a predicted client arrived to a compute that was not
// warm (it came early, or warming was not allowed); wasted, a warmed
// compute stepped down again before anyone came.

const (
	arrivalGap       = time.Second // less than this after the last client: the same visit
	prewarmArrivals  = 4           // arrivals (3 intervals) that must agree
	prewarmJitter    = 0.15        // each interval within 15% of their median
	prewarmMinPeriod = 2 * time.Second
	prewarmMinLead   = time.Second // warm at least this long before the arrival
)

// prewarmState is one branch's arrival history and prediction (guarded by
// Manager.mu).
type prewarmState struct {
	disabled bool
	arrivals []time.Time
	period   time.Duration
	next     time.Time // predicted arrival (zero: none)
	planned  bool      // a pre-warm was planned for next: its arrival is a hit or a miss
	timer    *time.Timer
	seq      uint64
	warmedAt time.Time // when a pre-warm started or thawed the compute
	// holdUntil keeps a warmed compute up until the predicted client is
	// late by the tolerated jitter.
	holdUntil time.Time
	startDur  time.Duration // the last start's duration: the lead to give
}

// PrewarmInfo is what Manager.Prewarm reports of a branch.
type PrewarmInfo struct {
	Enabled bool
	Period  time.Duration // the regular interval found (0: none)
	Next    time.Time     // the predicted next arrival (zero: none)
}

// Prewarm reports branch's prediction.
func (m *Manager) Prewarm(name string) PrewarmInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.branches[name]
	if !ok {
		return PrewarmInfo{Enabled: m.o.Prewarm}
	}
	return PrewarmInfo{Enabled: m.o.Prewarm && !b.pw.disabled, Period: b.pw.period, Next: b.pw.next}
}

// SetPrewarm switches pre-warm for branch on or off (on this node, until
// it restarts; compute.prewarm is the default).
func (m *Manager) SetPrewarm(name string, enabled bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b := m.getLocked(name)
	b.pw.disabled = !enabled
	m.schedulePrewarmLocked(b)
}

// noteArrivalLocked records that a client reached b (called by Acquire
// when b had no client for at least arrivalGap) and settles the last
// prediction.
func (m *Manager) noteArrivalLocked(b *branch, now time.Time) {
	pw := &b.pw
	switch {
	case !pw.warmedAt.IsZero():
		m.prewarmResultLocked(b, "hit", now)
	case pw.planned && absDur(now.Sub(pw.next)) <= time.Duration(float64(pw.period)*prewarmJitter):
		m.countPrewarm("miss")
	}
	pw.arrivals = append(pw.arrivals, now)
	if len(pw.arrivals) > prewarmArrivals {
		pw.arrivals = slices.Delete(pw.arrivals, 0, len(pw.arrivals)-prewarmArrivals)
	}
	pw.period = regularPeriod(pw.arrivals)
	m.schedulePrewarmLocked(b)
}

// prewarmResultLocked counts the end of a pre-warm: hit or wasted.
func (m *Manager) prewarmResultLocked(b *branch, result string, now time.Time) {
	warm := now.Sub(b.pw.warmedAt)
	b.pw.warmedAt, b.pw.holdUntil = time.Time{}, time.Time{}
	m.countPrewarm(result)
	if m.met != nil {
		m.met.PrewarmSeconds.Add(warm.Seconds())
	}
	go m.log.Info("pre-warm "+result, zap.String("branch", b.name), zap.Duration("warm_for", warm))
}

// steppedDownLocked settles a pre-warm when b freezes or stops with nobody
// having come.
func (m *Manager) steppedDownLocked(b *branch) {
	if !b.pw.warmedAt.IsZero() {
		m.prewarmResultLocked(b, "wasted", time.Now())
	}
}

func (m *Manager) countPrewarm(result string) {
	if m.met != nil {
		m.met.Prewarm.WithLabelValues(result).Inc()
	}
}

// regularPeriod is the interval the arrivals keep to, or 0.
func regularPeriod(arrivals []time.Time) time.Duration {
	if len(arrivals) < prewarmArrivals {
		return 0
	}
	ivs := make([]time.Duration, 0, len(arrivals)-1)
	for i := 1; i < len(arrivals); i++ {
		ivs = append(ivs, arrivals[i].Sub(arrivals[i-1]))
	}
	sorted := slices.Clone(ivs)
	slices.Sort(sorted)
	med := sorted[len(sorted)/2]
	if med < prewarmMinPeriod {
		return 0
	}
	for _, iv := range ivs {
		if absDur(iv-med) > time.Duration(float64(med)*prewarmJitter) {
			return 0
		}
	}
	return med
}

func absDur(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

// schedulePrewarmLocked (re)sets b's pre-warm timer from its prediction.
func (m *Manager) schedulePrewarmLocked(b *branch) {
	pw := &b.pw
	pw.seq++
	if pw.timer != nil {
		pw.timer.Stop()
		pw.timer = nil
	}
	pw.next, pw.planned = time.Time{}, false
	if !m.o.Prewarm || pw.disabled || pw.period == 0 || m.closed {
		return
	}
	pw.next = pw.arrivals[len(pw.arrivals)-1].Add(pw.period)
	// A compute left alone for one period is still running: nothing to do.
	if m.o.IdleAfter > 0 && pw.period < m.o.IdleAfter || m.o.IdleAfter <= 0 && pw.period < m.o.SuspendTimeout {
		return
	}
	lead := max(2*pw.startDur, prewarmMinLead)
	at := time.Until(pw.next.Add(-lead))
	if at <= 0 {
		return
	}
	seq := pw.seq
	pw.planned = true
	pw.timer = time.AfterFunc(at, func() { m.prewarmFire(b, seq) })
}

// prewarmFire warms b ahead of its predicted arrival.
func (m *Manager) prewarmFire(b *branch, seq uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || m.branches[b.name] != b || seq != b.pw.seq {
		return
	}
	now := time.Now()
	b.pw.holdUntil = b.pw.next.Add(time.Duration(float64(b.pw.period) * prewarmJitter))
	switch {
	case b.state == StateRunning && b.frozen:
		if err := m.thawLocked(b); err != nil {
			m.log.Warn("pre-warm thaw", zap.String("branch", b.name), zap.Error(err))
			return
		}
		b.pw.warmedAt = now
		m.armLocked(b) // it may freeze again if nobody comes
	case b.state == StateRunning && b.leases == 0:
		// Still up from the last visit, its suspend (or freeze) timer
		// counting from then: hold it for the predicted client instead.
		b.pw.warmedAt = now
		m.armLocked(b)
	case b.state == StateStopping:
		// On its way down: start it again once the stop (and its store)
		// is done.
		done := b.stopDone
		go func() {
			<-done
			m.prewarmFire(b, seq)
		}()
		return
	case b.state == StateStopped && b.op == "":
		if m.breakerOpenLocked(b) != nil || !m.roomWithoutEvictionLocked() {
			go m.log.Info("pre-warm skipped (breaker open or compute.max_running reached)", zap.String("branch", b.name))
			return
		}
		m.startLocked(b, nil, false)
		b.pw.warmedAt = now
	default:
		return // in use, or starting: nothing to warm
	}
	go m.log.Info("pre-warm", zap.String("branch", b.name), zap.Time("predicted", b.pw.next), zap.Duration("period", b.pw.period))
}

// roomWithoutEvictionLocked says whether one more compute may run without
// evicting one.
func (m *Manager) roomWithoutEvictionLocked() bool {
	if m.o.MaxRunning <= 0 {
		return true
	}
	n := 0
	for _, o := range m.branches {
		if o.state == StateRunning || o.state == StateStarting {
			n++
		}
	}
	return n < m.o.MaxRunning
}
