package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/neonproxy/neonproxy/internal/pgwire"
)

// Failed authentications are throttled per (client IP, branch), as
// CockroachDB's proxy does: after a failure the next attempt from that
// address to that branch is refused until a backoff has passed, doubling
// from throttleMin up to throttleMax with each further failure; a success
// resets it. Refused attempts get 28000 at once, before any SCRAM work or
// compute wake. The state is an LRU of throttleEntries keys, so an
// attacker cycling addresses cannot grow it.
const (
	throttleMin     = time.Second
	throttleMax     = time.Hour
	throttleEntries = 100_000
)

type throttleKey struct {
	ip     netip.Addr
	branch string
}

type throttleState struct {
	failures int
	until    time.Time // attempts before this are refused
}

type authThrottle struct {
	now func() time.Time
	mu  struct {
		sync.Mutex
		lru *simplelru.LRU[throttleKey, throttleState]
	}
}

func newAuthThrottle(size int) *authThrottle {
	t := &authThrottle{now: time.Now}
	t.mu.lru, _ = simplelru.NewLRU[throttleKey, throttleState](size, nil) // size > 0: no error
	return t
}

func clientIP(addr net.Addr) netip.Addr {
	if ta, ok := addr.(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(ta.IP); ok {
			return ip.Unmap()
		}
	}
	return netip.Addr{} // unix socket, tests: one bucket
}

// check returns how long attempts from ip to branch stay refused (0: go
// ahead).
func (t *authThrottle) check(ip netip.Addr, branch string) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	st, ok := t.mu.lru.Get(throttleKey{ip, branch})
	if !ok {
		return 0
	}
	return max(st.until.Sub(t.now()), 0)
}

// failed records a failed authentication and returns the new backoff.
func (t *authThrottle) failed(ip netip.Addr, branch string) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := throttleKey{ip, branch}
	st, _ := t.mu.lru.Get(k)
	st.failures++
	backoff := throttleMax
	if st.failures <= 13 { // 1s << 12 > 1h
		backoff = min(throttleMin<<(st.failures-1), throttleMax)
	}
	st.until = t.now().Add(backoff)
	t.mu.lru.Add(k, st)
	return backoff
}

// succeeded forgets ip's failures on branch.
func (t *authThrottle) succeeded(ip netip.Addr, branch string) {
	t.mu.Lock()
	t.mu.lru.Remove(throttleKey{ip, branch})
	t.mu.Unlock()
}

// throttledError is what a refused attempt gets.
func throttledError(branch string, ip netip.Addr, wait time.Duration) *pgwire.Error {
	who := "this address"
	if ip.IsValid() {
		who = ip.String()
	}
	return &pgwire.Error{
		Code:    pgwire.CodeInvalidAuthSpec,
		Message: fmt.Sprintf("too many failed authentication attempts for branch %q from %s", branch, who),
		Hint:    fmt.Sprintf("Retry in %s, with the right password.", wait.Round(time.Second)),
	}
}
