// Package pool keeps server connections (logged-in PostgreSQL backends on a
// compute) and lends them to client sessions, PgBouncer-style: per
// (branch, database, user, options) key, at most PoolSize connections, FIFO
// waiting with a timeout, idle and lifetime limits, and a reset before a
// session-mode connection is reused. It knows nothing of routing, computes
// or the front door: the caller supplies a DialFunc.
package pool

import (
	"context"
	"errors"
	"net"
	"time"
)

// Key identifies the connections that are interchangeable.
type Key struct {
	Branch   string
	Database string
	User     string
	// Options are the startup options the backend was started with (-c
	// settings); clients with different options do not share backends.
	Options string
}

// Conn is one server connection. The session that holds it owns Net until
// it gives the Conn back with Release.
type Conn struct {
	Net net.Conn
	// PID and SecretKey are the backend's own cancel key.
	PID       uint32
	SecretKey []byte
	// Params are the ParameterStatus values the backend has reported; the
	// holder keeps them current (SetParam) so the next holder can tell
	// what differs.
	Params map[string]string
	// Synced is the holder's opaque key of the settings Params last
	// matched, so that the next holder with the same key skips comparing
	// them; SetParam clears it.
	Synced string
	// Epoch is the compute generation the connection belongs to;
	// connections of an older epoch are never lent again.
	Epoch uint64

	key      Key
	kp       *keyPool // key pools are never removed, so this stays valid
	lentAt   int      // index in the pool's lent list while lent
	created  time.Time
	lastUsed time.Time
	// Prepared holds the server-side names of statements prepared on this
	// connection (transaction mode), least recently used first.
	Prepared *StatementLRU
}

// Key returns the pool key the connection belongs to.
func (c *Conn) Key() Key { return c.key }

// DialFunc opens a new server connection for key.
type DialFunc func(ctx context.Context) (*Conn, error)

// ErrWaitTimeout is returned by Acquire when no connection became free
// within QueryWaitTimeout.
var ErrWaitTimeout = errors.New("pool: timed out waiting for a server connection")

// ErrClosed is returned after Close.
var ErrClosed = errors.New("pool: closed")

// Options configure a Pool. Zero values take the defaults in brackets.
type Options struct {
	// PoolSize caps server connections per key [20].
	PoolSize int
	// MaxBranchConns caps server connections per branch over all its keys;
	// 0 means only PoolSize applies.
	MaxBranchConns int
	// QueryWaitTimeout bounds how long Acquire waits for a connection [120s].
	QueryWaitTimeout time.Duration
	// ServerIdleTimeout closes connections idle this long [10m]; <0: never.
	ServerIdleTimeout time.Duration
	// ServerLifetime closes connections this old when they are next idle
	// [1h]; <0: never.
	ServerLifetime time.Duration
	// MaxPrepared caps server-side prepared statements per connection [200].
	MaxPrepared int
}

func (o *Options) defaults() {
	if o.PoolSize <= 0 {
		o.PoolSize = 20
	}
	if o.QueryWaitTimeout <= 0 {
		o.QueryWaitTimeout = 120 * time.Second
	}
	if o.ServerIdleTimeout == 0 {
		o.ServerIdleTimeout = 10 * time.Minute
	}
	if o.ServerLifetime == 0 {
		o.ServerLifetime = time.Hour
	}
	if o.MaxPrepared <= 0 {
		o.MaxPrepared = 200
	}
}
