package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/neonproxy/neonproxy/internal/pgwire"
	"github.com/neonproxy/neonproxy/pool"
)

// resetTimeout bounds the reset of a server connection before reuse.
const resetTimeout = 10 * time.Second

// terminateMsg is the whole Terminate message.
var terminateMsg = []byte{'X', 0, 0, 0, 4}

// sessionPooled runs a session-mode client on c for the whole session.
// When the client leaves cleanly (Terminate at a message boundary, server
// idle) the connection is reset and goes back to the pool; otherwise it is
// closed.
func (s *Server) sessionPooled(ss *session, c *pool.Conn, target *cancelTarget) error {
	var cf, bf pgwire.Framer
	cf.MaxLen = maxClientMessage
	type result struct {
		n   int64
		err error
	}
	fromClient := make(chan result, 1)
	fromServer := make(chan result, 1)
	go func() {
		n, err := s.pumpClient(c.Net, ss.conn, &cf)
		fromClient <- result{n, err}
	}()
	go func() {
		n, err := s.pump(ss.conn, c.Net, &bf)
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
		_ = ss.conn.Close()
		cr = <-fromClient
	}
	ss.bytesIn, ss.bytesOut = cr.n, sr.n
	s.countBytes(ss)
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

// pumpClient is pump for the client→server direction of a pooled session:
// a Terminate is not forwarded (the server connection outlives the client).
func (s *Server) pumpClient(dst, src net.Conn, f *pgwire.Framer) (int64, error) {
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	buf := *bp
	var total int64
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if err := f.Feed(buf[:n]); err != nil {
				return total, err
			}
			out := buf[:n]
			if f.Terminated {
				// A client sends nothing after Terminate, so it ends the chunk.
				out = bytes.TrimSuffix(out, terminateMsg)
			}
			if len(out) > 0 {
				if _, err := dst.Write(out); err != nil {
					return total, err
				}
			}
			total += int64(n)
			if f.Terminated {
				return total, nil
			}
		}
		if rerr != nil {
			return total, rerr
		}
	}
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

// txnSession is a transaction-pooled client: it holds a server connection
// only from the first message of a transaction to the ReadyForQuery that
// ends it ('I', nothing else outstanding), unless session state it created
// pins it to that connection.
//
// Two goroutines share the state in mu: the client reader (the session's
// own goroutine) attaches a connection when the client sends something and
// none is attached; a server reader per attached connection relays replies
// and detaches at the end of a transaction. Neither holds mu across I/O.
type txnSession struct {
	s       *Server
	ss      *session
	key     pool.Key
	epoch   uint64
	dial    pool.DialFunc
	target  *cancelTarget
	socket  string
	desired map[string]string // tracked settings the client expects

	cf pgwire.Framer // client stream; fed under mu

	mu struct {
		sync.Mutex
		sc         *pool.Conn
		serverDone chan struct{} // closed when the attached conn's reader ends
		pending    int           // Sync/Query/FunctionCall sent, ReadyForQuery not yet seen
		writing    int           // client chunks being written to sc
		pinned     string        // reason, once pinned
		clientGone bool
		serverErr  error
	}
}

func (s *Server) sessionTransaction(ss *session, t *txnSession) error {
	t.cf.MaxLen = maxClientMessage
	t.cf.OnHeader = func(typ byte, _ int) {
		switch typ {
		case 'S', 'Q', 'F': // Sync, Query, FunctionCall: one ReadyForQuery each
			t.mu.pending++
		}
	}
	t.cf.Capture['Q'], t.cf.Capture['P'] = true, true
	t.cf.OnMessage = func(_ byte, body []byte, _ bool) {
		// Session state the server's replies do not reveal.
		switch {
		case reTempTable.Match(body):
			t.pinLocked(pinTempTable)
		case reAdvisory.Match(body):
			t.pinLocked(pinAdvisory)
		}
	}
	err := t.run()
	ss.result = "ok"
	if t.cf.Terminated {
		return nil
	}
	t.mu.Lock()
	serr := t.mu.serverErr
	t.mu.Unlock()
	if serr != nil {
		ss.result = "server_closed"
		return quiet(serr)
	}
	ss.result = "client_closed"
	return quiet(err)
}

// pinLocked pins the client to its current server connection.
func (t *txnSession) pinLocked(reason string) {
	if t.mu.pinned != "" {
		return
	}
	t.mu.pinned = reason
	t.s.m.PoolPinned.WithLabelValues(reason).Inc()
	go t.s.log.Info("client pinned to its server connection", zap.String("branch", t.key.Branch),
		zap.String("user", t.key.User), zap.String("reason", reason),
		zap.String("client", t.ss.raw.RemoteAddr().String()))
}

// run is the client reader.
func (t *txnSession) run() error {
	bp := t.s.bufs.Get().(*[]byte)
	defer t.s.bufs.Put(bp)
	buf := *bp
	defer t.finish()
	for {
		n, rerr := t.ss.conn.Read(buf)
		if n > 0 {
			if err := t.relay(buf[:n]); err != nil {
				return err
			}
			t.ss.bytesIn += int64(n)
			if t.cf.Terminated {
				return nil
			}
		}
		if rerr != nil {
			return rerr
		}
	}
}

// relay sends one chunk from the client to the attached server
// connection, attaching one first when needed.
func (t *txnSession) relay(chunk []byte) error {
	t.mu.Lock()
	if err := t.cf.Feed(chunk); err != nil {
		t.mu.Unlock()
		return err
	}
	out := chunk
	if t.cf.Terminated {
		out = bytes.TrimSuffix(out, terminateMsg)
	}
	if len(out) == 0 {
		t.mu.Unlock()
		return nil
	}
	sc := t.mu.sc
	if sc == nil {
		if t.mu.serverErr != nil {
			err := t.mu.serverErr
			t.mu.Unlock()
			return err
		}
		t.mu.Unlock()
		var err error
		if sc, err = t.attach(); err != nil {
			return err
		}
		t.mu.Lock()
	}
	t.mu.writing++
	t.mu.Unlock()
	_, werr := sc.Net.Write(out)
	t.mu.Lock()
	t.mu.writing--
	t.mu.Unlock()
	return werr
}

// attach borrows a server connection, brings its tracked settings to the
// client's, and starts its reader.
func (t *txnSession) attach() (*pool.Conn, error) {
	ctx := context.Background()
	c, waited, err := t.s.opt.Pool.Acquire(ctx, t.key, t.epoch, t.dial)
	if waited > 0 {
		t.s.m.PoolWait.Observe(waited.Seconds())
	}
	if err != nil {
		return nil, t.s.fail(t.ss, "pool_error", poolError(t.key, err))
	}
	if stmts := setStatements(t.desired, c.Params); stmts != "" {
		sctx, cancel := context.WithTimeout(ctx, resetTimeout)
		st, err := c.Exec(sctx, stmts)
		cancel()
		if err != nil || st != 'I' {
			t.s.opt.Pool.Release(c, false)
			return nil, t.s.fail(t.ss, "pool_error", fmt.Errorf("apply session settings on a pooled connection: %w (status %q)", err, st))
		}
		for k := range t.desired {
			t.desired[k] = c.Params[k] // the server's spelling, so the next compare matches
		}
	}
	t.target.set(t.socket, c.PID, c.SecretKey)
	done := make(chan struct{})
	t.mu.Lock()
	t.mu.sc = c
	t.mu.serverDone = done
	t.mu.Unlock()
	go t.serverReader(c, done)
	return c, nil
}

// serverReader relays the attached connection's replies to the client and
// detaches at the end of a transaction.
func (t *txnSession) serverReader(c *pool.Conn, done chan struct{}) {
	defer close(done)
	bp := t.s.bufs.Get().(*[]byte)
	defer t.s.bufs.Put(bp)
	buf := *bp
	var f pgwire.Framer
	// A SET of a tracked setting is followed by its ParameterStatus, which
	// PostgreSQL sends just before ReadyForQuery: decide about pinning there.
	var setSeen, paramSeen bool
	f.Capture['S'], f.Capture['C'], f.Capture['Z'] = true, true, true
	f.OnMessage = func(typ byte, body []byte, _ bool) {
		switch typ {
		case 'S':
			name, value, ok := splitParam(body)
			if !ok {
				return
			}
			if c.Params == nil {
				c.Params = map[string]string{}
			}
			c.Params[name] = value
			if _, tracked := t.desired[name]; tracked {
				t.desired[name] = value
				paramSeen = true
			}
		case 'Z':
			if setSeen && !paramSeen {
				t.mu.Lock()
				t.pinLocked(pinSet)
				t.mu.Unlock()
			}
			setSeen, paramSeen = false, false
		case 'C':
			tag := bytes.TrimRight(body, "\x00")
			var reason string
			switch {
			case bytes.Equal(tag, []byte("SET")):
				setSeen = true
			case bytes.Equal(tag, []byte("LISTEN")):
				reason = pinListen
			case bytes.Equal(tag, []byte("PREPARE")):
				reason = pinPrepare
			case bytes.Equal(tag, []byte("DECLARE CURSOR")):
				reason = pinCursor
			}
			if reason != "" {
				t.mu.Lock()
				t.pinLocked(reason)
				t.mu.Unlock()
			}
		}
	}
	for {
		n, rerr := c.Net.Read(buf)
		if n > 0 {
			ready := f.ReadyCount
			if err := f.Feed(buf[:n]); err != nil {
				rerr = err
			} else if _, err := t.ss.conn.Write(buf[:n]); err != nil {
				t.endServer(c, false, err)
				return
			}
			t.ss.bytesOut += int64(n)
			if rerr == nil && f.ReadyCount > ready {
				t.mu.Lock()
				t.mu.pending -= int(f.ReadyCount - ready)
				detach := t.mu.pending <= 0 && t.mu.writing == 0 && t.mu.pinned == "" &&
					f.TxStatus == 'I' && f.AtBoundary() && t.cf.AtBoundary()
				if detach {
					t.mu.pending = 0
					t.mu.sc = nil
				}
				t.mu.Unlock()
				if detach {
					t.target.clear()
					// finish may have set a deadline to stop this reader.
					_ = c.Net.SetReadDeadline(time.Time{})
					t.s.opt.Pool.Release(c, true)
					return
				}
			}
		}
		if rerr != nil {
			t.mu.Lock()
			gone := t.mu.clientGone
			t.mu.Unlock()
			if gone && errors.Is(rerr, os.ErrDeadlineExceeded) {
				// The client left while attached: reset and keep the
				// connection if it is between messages.
				_ = c.Net.SetReadDeadline(time.Time{})
				t.s.releaseAfterSession(c, f.AtBoundary() && f.LastType == 'Z', f.TxStatus)
				t.mu.Lock()
				t.mu.sc = nil
				t.mu.Unlock()
				return
			}
			t.endServer(c, true, rerr)
			return
		}
	}
}

// endServer handles a server connection that failed: it is closed, and so
// is the client (the compute's own FATAL, if any, has been relayed).
func (t *txnSession) endServer(c *pool.Conn, closeClient bool, err error) {
	t.mu.Lock()
	t.mu.sc = nil
	if t.mu.serverErr == nil {
		t.mu.serverErr = err
	}
	t.mu.Unlock()
	t.target.clear()
	t.s.opt.Pool.Release(c, false)
	if closeClient {
		_ = t.ss.conn.Close()
	}
}

// finish runs when the client reader ends: an attached connection's reader
// is stopped and decides whether the connection can be reused.
func (t *txnSession) finish() {
	t.mu.Lock()
	t.mu.clientGone = true
	sc, done := t.mu.sc, t.mu.serverDone
	if sc != nil {
		// Under mu: the reader cannot have handed sc back to the pool yet,
		// so this deadline cannot hit the connection's next borrower.
		_ = sc.Net.SetReadDeadline(time.Now())
	}
	t.mu.Unlock()
	if done != nil {
		<-done
	}
	t.s.countBytes(t.ss)
}

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
