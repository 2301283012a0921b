package wake

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Usage is what a branch's compute consumed: seconds with a PostgreSQL
// process up, by tier, and wakes by kind. Suspended and zero computes
// consume no compute time (their cost is storage, which the page store
// reports).
type Usage struct {
	// RunningSeconds: starting, running and stopping (the process serves
	// or could serve queries). IdleSeconds: frozen in the idle tier (the
	// process holds memory, uses no CPU).
	RunningSeconds float64 `json:"running_seconds"`
	IdleSeconds    float64 `json:"idle_seconds"`
	// Wakes by kind: cold (materialized first), warm (started on its
	// local directory), hot (thawed from idle).
	ColdWakes int64 `json:"cold_wakes"`
	WarmWakes int64 `json:"warm_wakes"`
	HotWakes  int64 `json:"hot_wakes"`
}

// ComputeSeconds is the compute time in every tier.
func (u Usage) ComputeSeconds() float64 { return u.RunningSeconds + u.IdleSeconds }

// Wakes is the number of wakes of every kind.
func (u Usage) Wakes() int64 { return u.ColdWakes + u.WarmWakes + u.HotWakes }

func (u *Usage) add(o Usage) {
	u.RunningSeconds += o.RunningSeconds
	u.IdleSeconds += o.IdleSeconds
	u.ColdWakes += o.ColdWakes
	u.WarmWakes += o.WarmWakes
	u.HotWakes += o.HotWakes
}

// usageRetention is how long hourly usage is kept (enough for a monthly
// bill with a margin).
const usageRetention = 100 * 24 * time.Hour

// usageLedger keeps usage per branch in hourly buckets, so that a window
// can be summed after the fact (GET /v1/usage). It outlives a branch's
// deletion: a deleted branch was still used. Its own lock: it is read
// (usage queries, metrics) without the Manager's.
type usageLedger struct {
	path string // "" : in memory only
	log  *zap.Logger
	mu   struct {
		sync.Mutex
		// hours[branch][unix hour] is the usage in that hour.
		hours map[string]map[int64]*Usage
		dirty bool
	}
}

func newUsageLedger(path string, log *zap.Logger) *usageLedger {
	l := &usageLedger{path: path, log: log}
	l.mu.hours = map[string]map[int64]*Usage{}
	if path == "" {
		return l
	}
	b, err := os.ReadFile(path)
	if err == nil {
		err = json.Unmarshal(b, &l.mu.hours)
	}
	if err != nil && !os.IsNotExist(err) {
		log.Warn("usage ledger unreadable: usage before now is lost", zap.String("path", path), zap.Error(err))
		l.mu.hours = map[string]map[int64]*Usage{}
	}
	return l
}

// bucketLocked is branch's bucket for the hour h.
func (l *usageLedger) bucketLocked(branch string, h int64) *Usage {
	hs := l.mu.hours[branch]
	if hs == nil {
		hs = map[int64]*Usage{}
		l.mu.hours[branch] = hs
	}
	u := hs[h]
	if u == nil {
		u = &Usage{}
		hs[h] = u
	}
	return u
}

// addTime books [from, to) as idle or running time of branch, split at
// hour boundaries.
func (l *usageLedger) addTime(branch string, from, to time.Time, idle bool) {
	if !to.After(from) {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for from.Before(to) {
		h := from.Unix() / 3600
		end := time.Unix((h+1)*3600, 0)
		if end.After(to) {
			end = to
		}
		u := l.bucketLocked(branch, h)
		if idle {
			u.IdleSeconds += end.Sub(from).Seconds()
		} else {
			u.RunningSeconds += end.Sub(from).Seconds()
		}
		from = end
	}
	l.mu.dirty = true
}

func (l *usageLedger) addWake(branch string, at time.Time, kind WakeKind) {
	l.mu.Lock()
	defer l.mu.Unlock()
	u := l.bucketLocked(branch, at.Unix()/3600)
	switch kind {
	case WakeCold:
		u.ColdWakes++
	case WakeWarm:
		u.WarmWakes++
	case WakeHot:
		u.HotWakes++
	}
	l.mu.dirty = true
}

// sum adds up each branch's buckets (only branch's, unless "") of the
// hours that overlap [from, to) (zero times: unbounded).
func (l *usageLedger) sum(branch string, from, to time.Time) map[string]Usage {
	lo, hi := int64(-1<<62), int64(1<<62)
	if !from.IsZero() {
		lo = from.Unix() / 3600
	}
	if !to.IsZero() {
		hi = (to.Unix() + 3599) / 3600 // exclusive
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]Usage, len(l.mu.hours))
	for name, hs := range l.mu.hours {
		if branch != "" && name != branch {
			continue
		}
		var tot Usage
		for h, u := range hs {
			if h >= lo && h < hi {
				tot.add(*u)
			}
		}
		out[name] = tot
	}
	return out
}

// save writes the ledger (when changed), dropping buckets older than the
// retention.
func (l *usageLedger) save(now time.Time) error {
	if l.path == "" {
		return nil
	}
	oldest := now.Add(-usageRetention).Unix() / 3600
	l.mu.Lock()
	if !l.mu.dirty {
		l.mu.Unlock()
		return nil
	}
	for branch, hs := range l.mu.hours {
		maps.DeleteFunc(hs, func(h int64, _ *Usage) bool { return h < oldest })
		if len(hs) == 0 {
			delete(l.mu.hours, branch)
		}
	}
	b, err := json.Marshal(l.mu.hours)
	l.mu.dirty = false
	l.mu.Unlock()
	if err != nil {
		return err
	}
	tmp := l.path + ".tmp"
	if err := os.MkdirAll(filepath.Dir(l.path), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("save usage: %w", err)
	}
	if err := os.Rename(tmp, l.path); err != nil {
		return fmt.Errorf("save usage: %w", err)
	}
	return nil
}

// accrueLocked books b's compute time since it was last booked, in the
// tier it has been in, up to now. Called before every change of state or
// tier, and before usage is read.
func (m *Manager) accrueLocked(b *branch, now time.Time) {
	if !b.accruedAt.IsZero() && b.state != StateStopped {
		m.usage.addTime(b.name, b.accruedAt, now, b.frozen && b.state == StateRunning)
	}
	b.accruedAt = now
}

// Usage sums each branch's compute usage (only branch's, unless "") over
// the hours that overlap [from, to) (zero: unbounded), including time not
// booked yet. Deleted branches are included: they were used.
func (m *Manager) Usage(branch string, from, to time.Time) map[string]Usage {
	m.accrueAll()
	return m.usage.sum(branch, from, to)
}

func (m *Manager) accrueAll() {
	now := time.Now()
	m.mu.Lock()
	for _, b := range m.branches {
		m.accrueLocked(b, now)
	}
	m.mu.Unlock()
}

// SaveUsage books the compute time so far and writes the ledger (the
// Manager also does every minute): call it after Close.
func (m *Manager) SaveUsage() { m.saveUsage() }

func (m *Manager) saveUsage() {
	m.accrueAll()
	if err := m.usage.save(time.Now()); err != nil {
		m.log.Warn("save usage ledger", zap.Error(err))
	}
}

// runUsageSaver writes the ledger every interval until done is closed, so
// a crash loses at most that much usage.
func (m *Manager) runUsageSaver(interval time.Duration, done <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			m.saveUsage()
		}
	}
}
