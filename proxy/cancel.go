package proxy

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5/pgproto3"
)

// cancelTarget is the real backend behind a key the proxy handed out. In
// transaction pooling the backend changes from transaction to transaction,
// so the fields are guarded; a client between transactions has none.
type cancelTarget struct {
	secret [4]byte // the proxy's secret, compared in constant time
	branch string
	mu     struct {
		sync.Mutex
		network string // "unix" (a compute's socket) or "tcp" (another node's front door)
		socket  string // compute's unix socket, or the node's host:port
		pid     uint32 // real backend pid
		realKey []byte // real backend secret
	}
}

// set points the key at a backend.
func (t *cancelTarget) set(socket string, pid uint32, key []byte) {
	t.mu.Lock()
	t.mu.network, t.mu.socket, t.mu.pid, t.mu.realKey = "unix", socket, pid, key
	t.mu.Unlock()
}

// setNode points the key at a session another node serves: the cancel
// goes to that node's front door, which knows the key.
func (t *cancelTarget) setNode(addr string, pid uint32, key []byte) {
	t.mu.Lock()
	t.mu.network, t.mu.socket, t.mu.pid, t.mu.realKey = "tcp", addr, pid, key
	t.mu.Unlock()
}

// clear leaves the key pointing nowhere (no backend attached).
func (t *cancelTarget) clear() { t.set("", 0, nil) }

// cancelKeys maps the BackendKeyData the proxy gives clients to the real
// backends. Clients never learn a compute's pid or secret, and a
// CancelRequest is forwarded only to the backend its key was issued for.
type cancelKeys struct {
	// node is this node's index in a cluster (-1: none), carried in the
	// high bits of every pid handed out (see nodeOfPID).
	node int
	mu   struct {
		sync.Mutex
		byPID map[uint32]*cancelTarget
	}
}

// nodePIDShift: a cluster node's pids are node<<nodePIDShift | 21 random
// bits (pids stay positive: 10 bits of node index, router.MaxNodes).
const nodePIDShift = 21

func nodeOfPID(pid uint32) int { return int(pid >> nodePIDShift) }

func newCancelKeys() *cancelKeys {
	c := &cancelKeys{node: -1}
	c.mu.byPID = map[uint32]*cancelTarget{}
	return c
}

// issue registers t under a fresh random key and returns that key.
func (c *cancelKeys) issue(t *cancelTarget) (*pgproto3.BackendKeyData, error) {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("cancel key: %w", err)
		}
		pid := binary.BigEndian.Uint32(b[:4]) & 0x7fffffff // positive, as a real pid
		if c.node >= 0 {
			pid = uint32(c.node)<<nodePIDShift | pid&(1<<nodePIDShift-1)
		}
		if pid == 0 {
			continue
		}
		copy(t.secret[:], b[4:])
		c.mu.Lock()
		_, taken := c.mu.byPID[pid]
		if !taken {
			c.mu.byPID[pid] = t
		}
		c.mu.Unlock()
		if !taken {
			return &pgproto3.BackendKeyData{ProcessID: pid, SecretKey: append([]byte(nil), t.secret[:]...)}, nil
		}
	}
}

func (c *cancelKeys) revoke(pid uint32) {
	c.mu.Lock()
	delete(c.mu.byPID, pid)
	c.mu.Unlock()
}

func (c *cancelKeys) lookup(pid uint32, secret []byte) *cancelTarget {
	c.mu.Lock()
	t := c.mu.byPID[pid]
	c.mu.Unlock()
	if t == nil || len(secret) != len(t.secret) || subtle.ConstantTimeCompare(secret, t.secret[:]) != 1 {
		return nil
	}
	return t
}

func (c *cancelKeys) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.mu.byPID)
}

// forward sends a CancelRequest for t's real backend to its compute; with
// no backend attached there is nothing to cancel.
func (t *cancelTarget) forward(ctx context.Context, dial dialFunc) error {
	t.mu.Lock()
	network, socket, pid, realKey := t.mu.network, t.mu.socket, t.mu.pid, t.mu.realKey
	t.mu.Unlock()
	if socket == "" {
		return nil
	}
	conn, err := dial(ctx, network, socket)
	if err != nil {
		return fmt.Errorf("cancel on branch %s: %w", t.branch, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	msg, err := (&pgproto3.CancelRequest{ProcessID: pid, SecretKey: realKey}).Encode(nil)
	if err != nil {
		return err
	}
	if _, err := conn.Write(msg); err != nil {
		return fmt.Errorf("cancel on branch %s: %w", t.branch, err)
	}
	// PostgreSQL closes the connection once it has handled the request;
	// waiting for that keeps cancel-then-query orderings intuitive.
	var one [1]byte
	_, _ = conn.Read(one[:])
	return nil
}
