package proxy

import (
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/neonproxy/neonproxy/pool"
)

// Client states (SHOW CLIENTS, and cl_active/cl_waiting of SHOW POOLS).
const (
	clientWaiting int32 = iota // for its compute or a server connection
	clientActive               // holds a server connection
	clientIdle                 // transaction mode, between transactions
	clientRelayed              // passed to the node that runs its branch
)

var clientStateNames = [...]string{clientWaiting: "waiting", clientActive: "active", clientIdle: "idle", clientRelayed: "relayed"}

// clientInfo is one routed client session, as the admin console lists it.
// Only state and since change after registration; they are atomics so the
// session's hot path never takes a lock for them.
type clientInfo struct {
	key         pool.Key
	transaction bool
	remote      net.Addr
	local       net.Addr
	connected   time.Time
	tls         bool
	appName     string

	state atomic.Int32
	since atomic.Int64 // unix nanoseconds of the last state change
}

func (c *clientInfo) setState(st int32) {
	c.state.Store(st)
	c.since.Store(time.Now().UnixNano())
}

// clientRegistry holds the routed client sessions.
type clientRegistry struct {
	mu sync.Mutex // guards m; never held across I/O
	m  map[*clientInfo]struct{}
}

func (r *clientRegistry) add(c *clientInfo) {
	r.mu.Lock()
	if r.m == nil {
		r.m = map[*clientInfo]struct{}{}
	}
	r.m[c] = struct{}{}
	r.mu.Unlock()
}

func (r *clientRegistry) remove(c *clientInfo) {
	r.mu.Lock()
	delete(r.m, c)
	r.mu.Unlock()
}

// snapshot lists the sessions, oldest first.
func (r *clientRegistry) snapshot() []*clientInfo {
	r.mu.Lock()
	out := make([]*clientInfo, 0, len(r.m))
	for c := range r.m {
		out = append(out, c)
	}
	r.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].connected.Before(out[j].connected) })
	return out
}

// keyStats are a pool key's cumulative counters (SHOW STATS), updated
// with atomic adds on the session paths.
type keyStats struct {
	xacts    atomic.Int64 // transactions ended (ReadyForQuery 'I')
	queries  atomic.Int64 // Query and Execute messages
	received atomic.Int64 // bytes from clients
	sent     atomic.Int64 // bytes to clients
	acquires atomic.Int64 // server connections handed to clients
	waitUS   atomic.Int64 // their total wait, microseconds
}

// stats returns key's counters, creating them at the key's first client.
func (s *Server) stats(key pool.Key) *keyStats {
	if v, ok := s.keyStats.Load(key); ok {
		return v.(*keyStats)
	}
	v, _ := s.keyStats.LoadOrStore(key, &keyStats{})
	return v.(*keyStats)
}

func (ks *keyStats) acquired(waited time.Duration) {
	ks.acquires.Add(1)
	if waited > 0 {
		ks.waitUS.Add(waited.Microseconds())
	}
}
