package pool

import (
	"context"
	"net"
	"sort"
	"sync"
	"time"
)

// Stats are the pool's counts, in total and per key.
type Stats struct {
	Active  int // lent to sessions
	Idle    int
	Waiting int // sessions waiting for a connection
	Keys    []KeyStats
}

// KeyStats are one key's counts (PgBouncer's SHOW POOLS).
type KeyStats struct {
	Key     Key
	Active  int
	Idle    int
	Dialing int
	Waiting int
	// MaxWait is how long the oldest waiting session has waited.
	MaxWait time.Duration
}

// Pool lends server connections. It is safe for concurrent use.
type Pool struct {
	o    Options
	stop chan struct{}
	wg   sync.WaitGroup
	mu   struct {
		sync.Mutex
		closed   bool
		keys     map[Key]*keyPool
		byBranch map[string]int // open connections per branch
		// lent holds the connections sessions have, so SHOW SERVERS can
		// list them (the key pools only count them); each Conn knows its
		// index (lentAt), so lending is no map update per transaction.
		lent   []*Conn
		paused map[string]bool // branches that lend nothing (PAUSE)
	}
}

type keyPool struct {
	idle    []*Conn // most recently used last
	open    int     // idle + lent + being dialled
	active  int
	dialing int
	waiters []*waiter // FIFO
	// expiry enforces QueryWaitTimeout for all the key's waiters: one
	// timer, armed for the earliest deadline, rather than one per wait.
	// With more clients than connections nearly every transaction waits,
	// and arming, stopping and selecting on a timer per wait was a
	// measurable part of the pooler's CPU.
	expiry      *time.Timer
	expiryArmed bool
	expiryAt    time.Time // the deadline it is armed for
}

// waiter is a session blocked in Acquire. It is handed a connection, the
// right to dial one (slot), or the end of its wait (expired).
type waiter struct {
	since    time.Time
	deadline time.Time // since + QueryWaitTimeout
	ch       chan grant
}

// waiters are reused: a waiter and its channel were most of the pooler's
// allocations per transaction. A waiter goes back only with its channel
// drained and open (Close closes the channels of the waiters it drops).
var waiters = sync.Pool{New: func() any { return &waiter{ch: make(chan grant, 1)} }}

type grant struct {
	conn    *Conn
	slot    bool
	expired bool // QueryWaitTimeout passed
}

// enqueueLocked queues w for k and makes sure the key's expiry timer will
// fire by w's deadline.
func (p *Pool) enqueueLocked(k Key, kp *keyPool, w *waiter) {
	kp.waiters = append(kp.waiters, w)
	// Armed already, the timer is usually due first: deadlines come in
	// queue order, unless a RELOAD shortened the timeout.
	if kp.expiryArmed && !w.deadline.Before(kp.expiryAt) {
		return
	}
	d := w.deadline.Sub(w.since)
	if kp.expiry == nil {
		kp.expiry = time.AfterFunc(d, func() { p.expireWaiters(kp) })
	} else {
		kp.expiry.Reset(d)
	}
	kp.expiryArmed, kp.expiryAt = true, w.deadline
}

// expireWaiters ends the waits past their deadline and re-arms the timer
// for the earliest deadline left. A grant that raced in first wins: the
// waiter is then no longer queued.
func (p *Pool) expireWaiters(kp *keyPool) {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	kept := kp.waiters[:0]
	var next time.Time
	for _, w := range kp.waiters {
		if !now.Before(w.deadline) {
			w.ch <- grant{expired: true} // buffered and empty while queued
			continue
		}
		if next.IsZero() || w.deadline.Before(next) {
			next = w.deadline
		}
		kept = append(kept, w)
	}
	clear(kp.waiters[len(kept):])
	kp.waiters = kept
	kp.expiryArmed, kp.expiryAt = !next.IsZero(), next
	if kp.expiryArmed {
		kp.expiry.Reset(next.Sub(now))
	}
}

// New starts a pool and its idle reaper.
func New(o Options) *Pool {
	o.defaults()
	p := &Pool{o: o, stop: make(chan struct{})}
	p.mu.keys = map[Key]*keyPool{}
	p.mu.byBranch = map[string]int{}
	p.mu.paused = map[string]bool{}
	p.wg.Add(1)
	go p.reaper()
	return p
}

// Options returns the effective options.
func (p *Pool) Options() Options {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.o
}

// SetOptions changes the limits and timeouts of a running pool (RELOAD);
// MaxPrepared keeps its value. Waiters that a larger pool has room for get
// their slots at once; a smaller pool only stops new dials, so connections
// over the new size go as the reaper closes them.
func (p *Pool) SetOptions(o Options) {
	o.defaults()
	p.mu.Lock()
	defer p.mu.Unlock()
	o.MaxPrepared = p.o.MaxPrepared
	p.o = o
	for k, kp := range p.mu.keys {
		p.grantSlotsLocked(k, kp)
	}
}

func (p *Pool) keyLocked(k Key) *keyPool {
	kp := p.mu.keys[k]
	if kp == nil {
		kp = &keyPool{}
		p.mu.keys[k] = kp
	}
	return kp
}

func (p *Pool) roomLocked(k Key, kp *keyPool) bool {
	if kp.open >= p.o.PoolSize {
		return false
	}
	return p.o.MaxBranchConns <= 0 || p.mu.byBranch[k.Branch] < p.o.MaxBranchConns
}

// usableLocked reports whether an idle connection may be lent for epoch.
func (p *Pool) usableLocked(c *Conn, epoch uint64, now time.Time) bool {
	return c.Epoch == epoch && (p.o.ServerLifetime < 0 || now.Sub(c.created) < p.o.ServerLifetime)
}

// Acquire lends a connection for key on a compute of the given epoch:
// an idle one, a new one from dial while the key is under PoolSize, or the
// next one released, in FIFO order, waiting at most QueryWaitTimeout (then
// ErrWaitTimeout) or until ctx ends.
func (p *Pool) Acquire(ctx context.Context, k Key, epoch uint64, dial DialFunc) (*Conn, time.Duration, error) {
	t0 := time.Now()
	var discard []*Conn
	p.mu.Lock()
	if p.mu.closed {
		p.mu.Unlock()
		return nil, 0, ErrClosed
	}
	kp := p.keyLocked(k)
	// A paused branch lends nothing: its clients queue until RESUME.
	paused := p.mu.paused[k.Branch]
	for !paused && len(kp.idle) > 0 {
		c := kp.idle[len(kp.idle)-1]
		kp.idle = kp.idle[:len(kp.idle)-1]
		if p.usableLocked(c, epoch, t0) {
			kp.active++
			p.lendLocked(c)
			p.mu.Unlock()
			closeAll(discard)
			return c, 0, nil
		}
		p.forgetLocked(kp, c)
		discard = append(discard, c)
	}
	if !paused && p.roomLocked(k, kp) {
		p.reserveLocked(k, kp)
		p.mu.Unlock()
		closeAll(discard)
		c, err := p.dial(ctx, k, kp, epoch, dial)
		return c, time.Since(t0), err
	}
	w := waiters.Get().(*waiter)
	w.since, w.deadline = t0, t0.Add(p.o.QueryWaitTimeout)
	p.enqueueLocked(k, kp, w)
	p.mu.Unlock()
	closeAll(discard)

	var g grant
	ok := true
	if done := ctx.Done(); done == nil {
		g, ok = <-w.ch
	} else {
		select {
		case g, ok = <-w.ch:
		case <-done:
			// Cancelled: leave the queue, unless a grant raced in.
			p.mu.Lock()
			if i := indexOf(kp.waiters, w); i >= 0 {
				kp.waiters = append(kp.waiters[:i], kp.waiters[i+1:]...)
				p.mu.Unlock()
				waiters.Put(w)
				return nil, time.Since(t0), ctx.Err()
			}
			p.mu.Unlock()
			g, ok = <-w.ch
		}
	}
	if !ok {
		return nil, time.Since(t0), ErrClosed // closed: not reused
	}
	waiters.Put(w)
	if g.expired {
		return nil, time.Since(t0), ErrWaitTimeout
	}
	if g.slot {
		c, err := p.dial(ctx, k, kp, epoch, dial)
		return c, time.Since(t0), err
	}
	if g.conn.Epoch != epoch {
		// Handed a connection to an older compute: replace it in its slot.
		g.conn.Net.Close()
		p.mu.Lock()
		p.unlendLocked(g.conn)
		kp.active--
		kp.dialing++
		p.mu.Unlock()
		c, err := p.dial(ctx, k, kp, epoch, dial)
		return c, time.Since(t0), err
	}
	return g.conn, time.Since(t0), nil
}

func (p *Pool) reserveLocked(k Key, kp *keyPool) {
	kp.open++
	kp.dialing++
	p.mu.byBranch[k.Branch]++
}

// dial fills a reserved slot.
func (p *Pool) dial(ctx context.Context, k Key, kp *keyPool, epoch uint64, dial DialFunc) (*Conn, error) {
	c, err := dial(ctx)
	p.mu.Lock()
	kp.dialing--
	if err != nil {
		kp.open--
		p.mu.byBranch[k.Branch]--
		// The slot is free again: let the first waiter try.
		p.grantSlotLocked(k, kp)
		p.mu.Unlock()
		return nil, err
	}
	now := time.Now()
	c.key, c.kp, c.created, c.lastUsed, c.Epoch = k, kp, now, now, epoch
	if c.Prepared == nil {
		c.Prepared = NewStatementLRU(p.o.MaxPrepared)
	}
	kp.active++
	p.lendLocked(c)
	p.mu.Unlock()
	return c, nil
}

// grantSlotLocked gives the right to dial to the first waiter, if the key
// has room and its branch is not paused.
func (p *Pool) grantSlotLocked(k Key, kp *keyPool) {
	if len(kp.waiters) == 0 || p.mu.paused[k.Branch] || !p.roomLocked(k, kp) {
		return
	}
	w := kp.waiters[0]
	kp.waiters[0] = nil
	kp.waiters = kp.waiters[1:]
	p.reserveLocked(k, kp)
	w.ch <- grant{slot: true}
}

// grantSlotsLocked grants dial slots to waiters while the key has room.
func (p *Pool) grantSlotsLocked(k Key, kp *keyPool) {
	for n := len(kp.waiters); n > 0; n-- {
		p.grantSlotLocked(k, kp)
		if len(kp.waiters) == n {
			return
		}
	}
}

// Pause stops lending connections for branch: Acquire queues (FIFO,
// bounded by QueryWaitTimeout) and released connections stay idle.
// Connections already lent are not touched.
func (p *Pool) Pause(branch string) {
	p.mu.Lock()
	p.mu.paused[branch] = true
	p.mu.Unlock()
}

// Resume undoes Pause: the branch's waiters get idle connections, then
// dial slots, in the order they came.
func (p *Pool) Resume(branch string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.mu.paused[branch] {
		return
	}
	delete(p.mu.paused, branch)
	for k, kp := range p.mu.keys {
		if k.Branch != branch {
			continue
		}
		for len(kp.waiters) > 0 && len(kp.idle) > 0 {
			c := kp.idle[len(kp.idle)-1]
			kp.idle = kp.idle[:len(kp.idle)-1]
			w := kp.waiters[0]
			kp.waiters[0] = nil
			kp.waiters = kp.waiters[1:]
			kp.active++
			p.lendLocked(c)
			w.ch <- grant{conn: c} // buffered: never blocks
		}
		p.grantSlotsLocked(k, kp)
	}
}

// PausedBranches lists the paused branches, sorted.
func (p *Pool) PausedBranches() []string {
	p.mu.Lock()
	out := make([]string, 0, len(p.mu.paused))
	for b := range p.mu.paused {
		out = append(out, b)
	}
	p.mu.Unlock()
	sort.Strings(out)
	return out
}

// Paused reports whether branch is paused.
func (p *Pool) Paused(branch string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.paused[branch]
}

// Release gives a connection back. reusable=false closes it (it errored,
// its session ended mid-transaction, or its compute is going away).
func (p *Pool) Release(c *Conn, reusable bool) {
	now := time.Now()
	p.mu.Lock()
	kp := c.kp
	if !reusable || p.mu.closed {
		kp.active--
		p.unlendLocked(c)
		p.forgetLocked(kp, c)
		p.grantSlotLocked(c.key, kp)
		p.mu.Unlock()
		c.Net.Close()
		return
	}
	c.lastUsed = now
	if len(kp.waiters) > 0 && !p.mu.paused[c.key.Branch] {
		// Straight to the first waiter: it stays lent and active.
		w := kp.waiters[0]
		kp.waiters[0] = nil
		kp.waiters = kp.waiters[1:]
		p.mu.Unlock()
		w.ch <- grant{conn: c}
		return
	}
	kp.active--
	p.unlendLocked(c)
	kp.idle = append(kp.idle, c)
	p.mu.Unlock()
}

func (p *Pool) lendLocked(c *Conn) {
	c.lentAt = len(p.mu.lent)
	p.mu.lent = append(p.mu.lent, c)
}

func (p *Pool) unlendLocked(c *Conn) {
	last := len(p.mu.lent) - 1
	moved := p.mu.lent[last]
	p.mu.lent[c.lentAt], moved.lentAt = moved, c.lentAt
	p.mu.lent[last] = nil
	p.mu.lent = p.mu.lent[:last]
	c.lentAt = -1
}

// forgetLocked drops c from the counts (it is being closed).
func (p *Pool) forgetLocked(kp *keyPool, c *Conn) {
	kp.open--
	p.mu.byBranch[c.key.Branch]--
	if p.mu.byBranch[c.key.Branch] <= 0 {
		delete(p.mu.byBranch, c.key.Branch)
	}
}

// CloseBranch closes the idle connections of branch, before its compute
// stops. Lent connections fail on their own and are released unusable.
func (p *Pool) CloseBranch(branch string) {
	var closing []*Conn
	p.mu.Lock()
	for k, kp := range p.mu.keys {
		if k.Branch != branch {
			continue
		}
		for _, c := range kp.idle {
			p.forgetLocked(kp, c)
			closing = append(closing, c)
		}
		kp.idle = nil
	}
	p.mu.Unlock()
	closeAll(closing)
}

// Close closes every idle connection and refuses new Acquires; lent
// connections are closed as they are released.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.mu.closed {
		p.mu.Unlock()
		return
	}
	p.mu.closed = true
	var closing []*Conn
	for _, kp := range p.mu.keys {
		for _, c := range kp.idle {
			p.forgetLocked(kp, c)
			closing = append(closing, c)
		}
		kp.idle = nil
		for _, w := range kp.waiters {
			close(w.ch) // the waiter sees ErrClosed
		}
		kp.waiters = nil
		if kp.expiry != nil {
			kp.expiry.Stop()
			kp.expiryArmed = false
		}
	}
	p.mu.Unlock()
	close(p.stop)
	p.wg.Wait()
	closeAll(closing)
}

// reaper closes connections past ServerIdleTimeout or ServerLifetime.
func (p *Pool) reaper() {
	defer p.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case now := <-t.C:
			p.reap(now)
		}
	}
}

func (p *Pool) reap(now time.Time) {
	var closing []*Conn
	p.mu.Lock()
	for _, kp := range p.mu.keys {
		kept := kp.idle[:0]
		for _, c := range kp.idle {
			idleTooLong := p.o.ServerIdleTimeout > 0 && now.Sub(c.lastUsed) >= p.o.ServerIdleTimeout
			tooOld := p.o.ServerLifetime > 0 && now.Sub(c.created) >= p.o.ServerLifetime
			if idleTooLong || tooOld {
				p.forgetLocked(kp, c)
				closing = append(closing, c)
				continue
			}
			kept = append(kept, c)
		}
		kp.idle = kept
	}
	p.mu.Unlock()
	closeAll(closing)
}

// Stats returns the current counts.
func (p *Pool) Stats() Stats {
	now := time.Now()
	var s Stats
	p.mu.Lock()
	for k, kp := range p.mu.keys {
		ks := KeyStats{Key: k, Active: kp.active, Idle: len(kp.idle), Dialing: kp.dialing, Waiting: len(kp.waiters)}
		if len(kp.waiters) > 0 {
			ks.MaxWait = now.Sub(kp.waiters[0].since)
		}
		if ks.Active+ks.Idle+ks.Dialing+ks.Waiting == 0 {
			continue
		}
		s.Active += ks.Active
		s.Idle += ks.Idle
		s.Waiting += ks.Waiting
		s.Keys = append(s.Keys, ks)
	}
	p.mu.Unlock()
	sort.Slice(s.Keys, func(i, j int) bool { return keyLess(s.Keys[i].Key, s.Keys[j].Key) })
	return s
}

// ConnInfo describes one open server connection (SHOW SERVERS).
type ConnInfo struct {
	Key      Key
	State    string // "active" (lent) or "idle"
	Addr     net.Addr
	Created  time.Time
	LastUsed time.Time // when it was last given back
	PID      uint32
	Epoch    uint64
	Prepared int // server-side prepared statements
}

// Conns lists the open server connections, lent and idle, ordered by key
// then age (connections being dialled are not listed).
func (p *Pool) Conns() []ConnInfo {
	info := func(c *Conn, state string) ConnInfo {
		ci := ConnInfo{Key: c.key, State: state, Addr: c.Net.RemoteAddr(), Created: c.created, LastUsed: c.lastUsed, PID: c.PID, Epoch: c.Epoch}
		if c.Prepared != nil {
			ci.Prepared = c.Prepared.Count()
		}
		return ci
	}
	p.mu.Lock()
	out := make([]ConnInfo, 0, len(p.mu.lent))
	for _, c := range p.mu.lent {
		out = append(out, info(c, "active"))
	}
	for _, kp := range p.mu.keys {
		for _, c := range kp.idle {
			out = append(out, info(c, "idle"))
		}
	}
	p.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if a, b := out[i].Key, out[j].Key; a != b {
			return keyLess(a, b)
		}
		return out[i].Created.Before(out[j].Created)
	})
	return out
}

func keyLess(a, b Key) bool {
	if a.Branch != b.Branch {
		return a.Branch < b.Branch
	}
	if a.Database != b.Database {
		return a.Database < b.Database
	}
	if a.User != b.User {
		return a.User < b.User
	}
	return a.Options < b.Options
}

func closeAll(cs []*Conn) {
	for _, c := range cs {
		_ = c.Net.Close()
	}
}

func indexOf(ws []*waiter, w *waiter) int {
	for i, x := range ws {
		if x == w {
			return i
		}
	}
	return -1
}
