package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/neonproxy/neonproxy/internal/pgwire"
	"github.com/neonproxy/neonproxy/pool"
	"github.com/neonproxy/neonproxy/wake"
)

// resetTimeout bounds the reset of a server connection before reuse.
const resetTimeout = 10 * time.Second

// terminateMsg is the whole Terminate message.
var terminateMsg = []byte{'X', 0, 0, 0, 4}

// sessionPooled runs a session-mode client on c for the whole session.
// When the client leaves cleanly (Terminate at a message boundary, server
// idle) the connection is reset and goes back to the pool; otherwise it is
// closed.
func (s *Server) sessionPooled(ss *session, c *pool.Conn, target *cancelTarget, ks *keyStats, lease *wake.Lease) error {
	var cf, bf pgwire.Framer
	cf.MaxLen = maxClientMessage
	var queries int64 // read by this goroutine once the pump has ended
	// What a shutdown may read: whether the session is between
	// transactions (the client pump and the server pump both update it).
	var bmu sync.Mutex
	var outstanding int
	cf.OnHeader = func(typ byte, _ int) {
		if typ == 'Q' || typ == 'E' {
			queries++
		}
		bmu.Lock()
		if typ == 'Q' || typ == 'S' || typ == 'F' { // each is answered with one ReadyForQuery
			outstanding++
		}
		ss.between.Store(false)
		bmu.Unlock()
		lease.Touch()
	}
	// The session is between transactions at a ReadyForQuery 'I' that
	// answers the client's last request (a pipelining client may have sent
	// more already).
	bf.OnStatus = func(st byte) {
		bmu.Lock()
		if outstanding--; outstanding <= 0 {
			outstanding = 0
			ss.between.Store(st == 'I')
		}
		bmu.Unlock()
	}
	ss.between.Store(true) // the startup ended with ReadyForQuery 'I'
	// compute.suspend_with_sessions: disconnect: the compute is suspended
	// under a quiet session, which is told why.
	var suspended atomic.Bool
	onSuspend := func(*wake.Lease) {
		suspended.Store(true)
		_ = c.Net.Close()
	}
	lease.OnSuspend(&onSuspend)
	ss.server.Store(c)
	defer ss.server.Store(nil)
	type result struct {
		n   int64
		err error
	}
	fromClient := make(chan result, 1)
	fromServer := make(chan result, 1)
	go func() {
		n, err := s.pump(c.Net, ss.conn, &cf, true)
		fromClient <- result{n, err}
	}()
	go func() {
		n, err := s.pump(ss.conn, c.Net, &bf, false)
		fromServer <- result{n, err}
	}()
	var cr, sr result
	select {
	case cr = <-fromClient:
		// The client left: stop reading the server without closing it.
		_ = c.Net.SetReadDeadline(time.Now())
		sr = <-fromServer
		_ = c.Net.SetReadDeadline(time.Time{})
	case sr = <-fromServer:
		// The server closed (compute stopped or crashed): its FATAL has
		// reached the client; end the client too.
		if e := ss.ended.Load(); e != nil {
			_ = s.fail(ss, "branch_ended", e)
		} else if suspended.Load() {
			_ = s.fail(ss, "suspended", &pgwire.Error{Code: pgwire.CodeAdminShutdown, Message: lease.SuspendedError(),
				Hint: "Reconnect: the next connection wakes the compute."})
		}
		_ = ss.conn.Close()
		cr = <-fromClient
	}
	ss.bytesIn, ss.bytesOut = cr.n, sr.n
	s.countBytes(ss)
	// Session mode counts at the end of the session, so the relay loop
	// stays free of bookkeeping.
	ks.queries.Add(queries)
	ks.xacts.Add(int64(bf.IdleCount))
	ks.received.Add(ss.bytesIn)
	ks.sent.Add(ss.bytesOut)
	target.clear()
	clean := cf.Terminated && cf.AtBoundary() && bf.AtBoundary() && bf.LastType == 'Z' &&
		errors.Is(sr.err, os.ErrDeadlineExceeded)
	s.releaseAfterSession(c, clean, bf.TxStatus)
	switch {
	case cf.Terminated:
		ss.result = "ok"
		return nil
	case sr.err != nil && !errors.Is(sr.err, os.ErrDeadlineExceeded):
		ss.result = "server_closed"
		return quiet(sr.err)
	default:
		ss.result = "client_closed"
		return quiet(cr.err)
	}
}

// releaseAfterSession resets a connection whose client is gone and gives
// it back, or closes it when it cannot be trusted.
func (s *Server) releaseAfterSession(c *pool.Conn, clean bool, txStatus byte) {
	if !clean {
		s.opt.Pool.Release(c, false)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), resetTimeout)
	defer cancel()
	err := c.Reset(ctx, txStatus)
	if err != nil {
		s.log.Debug("server connection reset failed; closing it", zap.String("branch", c.Key().Branch), zap.Error(err))
	}
	s.opt.Pool.Release(c, err == nil)
}

func (s *Server) countBytes(ss *session) {
	s.m.ProxyBytesForwarded.WithLabelValues("client_to_server").Add(float64(ss.bytesIn))
	s.m.ProxyBytesForwarded.WithLabelValues("server_to_client").Add(float64(ss.bytesOut))
}

// Pin reasons (label of neonproxy_pool_pinned_total).
const (
	pinSet       = "set"
	pinListen    = "listen"
	pinPrepare   = "prepare"
	pinCursor    = "cursor"
	pinTempTable = "temp_table"
	pinAdvisory  = "advisory_lock"
)

var (
	reTempTable = regexp.MustCompile(`(?i)\bcreate\s+(?:(?:global|local)\s+)?temp(?:orary)?\s`)
	reAdvisory  = regexp.MustCompile(`(?i)\bpg_(?:try_)?advisory_lock(?:_shared)?\s*\(`)
)

// splitParam decodes a ParameterStatus body: name NUL value NUL.
func splitParam(b []byte) (string, string, bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return "", "", false
	}
	rest := b[i+1:]
	j := bytes.IndexByte(rest, 0)
	if j < 0 {
		return "", "", false
	}
	return string(b[:i]), string(rest[:j]), true
}

// poolError maps a pool failure to what the client sees.
func poolError(k pool.Key, err error) *pgwire.Error {
	var pe *pgconn.PgError
	switch {
	case errors.Is(err, pool.ErrWaitTimeout):
		return &pgwire.Error{
			Code:    pgwire.CodeConnectionFailure,
			Message: fmt.Sprintf("pool for branch %q (database %q, user %q) is exhausted: no server connection became free within pool.query_wait_timeout", k.Branch, k.Database, k.User),
			Hint:    "Retry later; shorten transactions, or raise pool.default_pool_size.",
			Err:     err,
		}
	case errors.Is(err, pool.ErrClosed):
		return &pgwire.Error{Code: pgwire.CodeAdminShutdown, Message: "neonproxy is shutting down", Hint: "Reconnect in a moment.", Err: err}
	case errors.As(err, &pe):
		return &pgwire.Error{Code: pe.Code, Message: pe.Message, Hint: pe.Hint, Err: err}
	}
	return &pgwire.Error{Code: pgwire.CodeCannotConnectNow, Message: fmt.Sprintf("cannot open a server connection on branch %q", k.Branch), Hint: "Retry in a few seconds.", Err: err}
}
