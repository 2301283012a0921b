// Package proxy is neonproxy's front door: it accepts PostgreSQL clients,
// negotiates TLS (recording SNI), reads the startup packet under hard limits,
// routes the connection to a branch (router), holds the client while the
// branch's compute wakes (wake), authenticates it with SCRAM-SHA-256 against
// the role's verifier in the branch's own pg_authid, and then forwards the
// session to a backend on the compute's unix socket.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"
	"go.uber.org/zap"

	"github.com/neonproxy/neonproxy/internal/metrics"
	"github.com/neonproxy/neonproxy/internal/pgwire"
	"github.com/neonproxy/neonproxy/pool"
	"github.com/neonproxy/neonproxy/router"
	"github.com/neonproxy/neonproxy/wake"
)

// Waker makes sure a branch's compute runs and counts the client on it.
type Waker interface {
	Acquire(ctx context.Context, branch string) (*wake.Lease, error)
}

var _ Waker = (*wake.Manager)(nil)

// Branches is the part of the registry the front door reads.
type Branches interface {
	Get(ctx context.Context, name string) (router.Branch, error)
}

// Lister lists the branches (SHOW BRANCHES).
type Lister interface {
	List(ctx context.Context) ([]router.Branch, error)
}

// Options configures a Server. Zero values take the documented defaults.
type Options struct {
	Resolver router.Resolver
	Branches Branches
	Waker    Waker
	// TLS enables SSLRequest; nil answers 'N'.
	TLS *tls.Config
	// RequireTLS refuses clients that did not negotiate TLS.
	RequireTLS bool
	// Relay passes a client whose branch runs on another node (a Consul
	// lock held elsewhere) to that node's front door instead of refusing
	// it.
	Relay bool
	// AuthThrottle refuses attempts after failed authentications, per
	// (client IP, branch), for a backoff doubling from 1s to 1h.
	AuthThrottle bool
	// Replication, when set, lets WAL keepers stream computes through the
	// front door (see ReplicationAccess); nil refuses replication
	// connections.
	Replication *ReplicationAccess
	// NodeTLS, when set, is the client side of TLS between nodes: relayed
	// clients and forwarded cancels reach another node's front door over
	// TLS (SSLRequest), its certificate verified with this config against
	// the node's host. nil: plain TCP.
	NodeTLS *tls.Config
	// Cluster, when several nodes serve together, numbers this node: its
	// cancel keys carry the number, and a CancelRequest with another
	// node's key is sent to that node.
	Cluster Cluster
	// Limits on the startup packet (default 10000 bytes, 64 parameters).
	Limits pgwire.Limits
	// StartupTimeout bounds TLS handshake, startup packet and SCRAM
	// exchange together, not the wake (default 15s).
	StartupTimeout time.Duration
	// MaxClientConn caps concurrent client connections; 0: no cap.
	MaxClientConn int
	// MaxBranchClientConn caps one branch's client connections unless the
	// branch sets its own max_client_conn; 0: no cap. SetLimits changes
	// both later.
	MaxBranchClientConn int
	// Pool lends server connections; required.
	Pool *pool.Pool
	// TransactionPooling makes transaction pooling the default; a -pooler
	// route selects it either way.
	TransactionPooling bool
	Logger             *zap.Logger
	// LogConnections logs a line per connection as it ends (log.connections).
	LogConnections bool
	Metrics        *metrics.Metrics

	// The admin console (psql -d neonproxy). AdminUsers may log in to it
	// besides the superuser postgres of the default branch; SetAdminUsers
	// changes the list later.
	AdminUsers []string
	// Lister and ComputeState feed SHOW BRANCHES; nil: it lists nothing.
	Lister       Lister
	ComputeState func(branch string) string
	// Reload re-reads the configuration for RELOAD and applies what it can;
	// the notice names changed keys that need a restart. Nil: RELOAD fails.
	Reload func() (notice string, err error)
}

// Server is the front door. Serve it on one or more listeners; Close ends
// every client session.
type Server struct {
	opt  Options
	log  *zap.Logger
	m    *metrics.Metrics
	auth *authenticator
	// throttle refuses authentication attempts after failures, per
	// (client IP, branch).
	throttle *authThrottle
	cancel   *cancelKeys
	bufs     sync.Pool
	active   atomic.Int64
	// startupParams caches, per pool key, the ParameterStatus set a server
	// connection reported, so transaction-pooled clients log in without
	// borrowing one (map values are never modified after Store).
	startupParams sync.Map
	// keyStats holds a *keyStats per pool key (SHOW STATS).
	keyStats   sync.Map
	clients    clientRegistry
	adminUsers atomic.Pointer[[]string]
	// sql is the POST /sql handler, once HTTPHandler made it.
	sql atomic.Pointer[sqlOverHTTP]
	// maxClient and maxBranchClient are the Limits (SetLimits).
	maxClient, maxBranchClient atomic.Int64

	mu struct {
		sync.Mutex
		closed    bool
		listeners map[net.Listener]struct{}
		conns     map[net.Conn]struct{}
		sessions  map[*session]struct{}
		// branchClients counts client connections per branch, for
		// the per-branch cap.
		branchClients map[string]int
	}
	wg sync.WaitGroup
}

// New builds a Server.
func New(opt Options) (*Server, error) {
	if opt.Branches == nil || opt.Waker == nil || opt.Pool == nil {
		return nil, errors.New("proxy: Branches, Waker and Pool are required")
	}
	if opt.Limits.MaxPacket == 0 {
		opt.Limits.MaxPacket = 10000
	}
	if opt.Limits.MaxParams == 0 {
		opt.Limits.MaxParams = 64
	}
	if opt.StartupTimeout == 0 {
		opt.StartupTimeout = 15 * time.Second
	}
	if opt.Logger == nil {
		opt.Logger = zap.NewNop()
	}
	if opt.Metrics == nil {
		opt.Metrics = metrics.New()
	}
	a, err := newAuthenticator()
	if err != nil {
		return nil, err
	}
	s := &Server{opt: opt, log: opt.Logger, m: opt.Metrics, auth: a, cancel: newCancelKeys(), throttle: newAuthThrottle(throttleEntries)}
	if opt.Cluster != nil {
		s.cancel.node = opt.Cluster.Self()
	}
	s.bufs.New = func() any { b := make([]byte, 32<<10); return &b }
	s.mu.listeners = map[net.Listener]struct{}{}
	s.mu.conns = map[net.Conn]struct{}{}
	s.mu.sessions = map[*session]struct{}{}
	s.mu.branchClients = map[string]int{}
	s.SetAdminUsers(opt.AdminUsers)
	s.SetLimits(Limits{MaxClientConn: opt.MaxClientConn, MaxBranchClientConn: opt.MaxBranchClientConn})
	return s, nil
}

// Serve accepts connections on ln until Close or a permanent accept error.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		return net.ErrClosed
	}
	s.mu.listeners[ln] = struct{}{}
	s.mu.Unlock()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.mu.closed
			s.mu.Unlock()
			if closed {
				return nil
			}
			// Out of file descriptors and friends: back off and keep serving
			// the clients that are already connected.
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; backing off", zap.Error(err), zap.Duration("delay", delay))
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("accept on %s: %w", ln.Addr(), err)
		}
		delay = 0
		if !s.track(c) {
			c.Close()
			return nil
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.untrack(c)
			s.handle(c)
		}()
	}
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return false
	}
	s.mu.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.mu.conns, c)
	s.mu.Unlock()
}

// Shutdown stops accepting and lets transactions finish: a client is told
// to go (57P01) and disconnected as soon as it is between transactions;
// when ctx ends (shutdown_timeout), the rest are closed as by Close.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	for ln := range s.mu.listeners {
		_ = ln.Close()
	}
	s.mu.Unlock()
	shutting := (&pgwire.Error{Code: pgwire.CodeAdminShutdown, Message: "terminating connection: neonproxy is shutting down",
		Hint: "Reconnect in a moment."}).Fatal()
	msg, _ := shutting.Encode(nil)
	// The HTTP server has let its /sql requests finish: the pooled /sql
	// sessions have no one to tell.
	s.closeEdge()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		s.mu.Lock()
		left := 0
		var done []*session
		for ss := range s.mu.sessions {
			if ss.keeper.Load() {
				continue
			}
			left++
			if !ss.drained && ss.between.Load() {
				ss.drained = true
				done = append(done, ss)
			}
		}
		s.mu.Unlock()
		for _, ss := range done {
			// Between transactions nothing else writes to the client.
			// Concurrently: a client that does not read costs its own
			// second, not everyone's.
			go func() {
				_ = ss.conn.SetWriteDeadline(time.Now().Add(time.Second))
				_, _ = ss.conn.Write(msg)
				_ = ss.conn.Close()
			}()
		}
		if left == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return s.Close(context.Background())
		case <-tick.C:
		}
	}
	return s.Close(ctx)
}

// Close stops the listeners, closes every client connection and waits for
// their goroutines to end (or ctx).
func (s *Server) Close(ctx context.Context) error {
	s.mu.Lock()
	s.mu.closed = true
	var closers []io.Closer
	for ln := range s.mu.listeners {
		closers = append(closers, ln)
	}
	for c := range s.mu.conns {
		closers = append(closers, c)
	}
	s.mu.Unlock()
	for _, c := range closers {
		_ = c.Close()
	}
	s.closeEdge()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	s.auth.close()
	return nil
}

// ForgetBranch drops cached state about a branch's compute (called when a
// branch is deleted).
func (s *Server) ForgetBranch(branch string) { s.auth.forget(branch) }

// session is one client connection's state, for the log line.
type session struct {
	// between is set while the client is between transactions (nothing
	// outstanding on a server connection): a shutdown may end it then.
	between atomic.Bool
	// keeper is set on a WAL keeper's replication connection: a shutdown
	// does not wait for it (commits being drained need it; it ends with
	// its compute).
	keeper  atomic.Bool
	drained bool     // a shutdown told it to go (under Server.mu)
	conn    net.Conn // the client, TLS-wrapped once negotiated
	raw     net.Conn
	tls     bool
	sni     string
	// edge is set on a client that came over http_listen (a WebSocket
	// tunnel, or SQL over HTTP): TLS, SNI and the address are the HTTP
	// connection's; sqlOverHTTP also makes it transaction-pooled.
	edge, sqlOverHTTP bool
	route             router.Route
	// branch is route.Branch once admitted, for EndBranch (under
	// Server.mu).
	branch string
	// ended is set by EndBranch to what the client is told; server is
	// the server connection the session uses (nil: none), which EndBranch
	// cuts.
	ended    atomic.Pointer[pgwire.Error]
	server   atomic.Pointer[pool.Conn]
	wakeKind wake.WakeKind
	waited   time.Duration
	result   string
	bytesIn  int64
	bytesOut int64
}

func (s *Server) handle(raw net.Conn) {
	s.handleSession(&session{conn: raw, raw: raw, result: "ok"})
}

// handleSession serves one client connection, ss.raw, to its end.
func (s *Server) handleSession(ss *session) {
	raw := ss.raw
	start := time.Now()
	s.m.ClientConnections.Inc()
	n := s.active.Add(1)
	defer func() {
		s.active.Add(-1)
		s.m.ClientConnections.Dec()
	}()
	s.mu.Lock()
	s.mu.sessions[ss] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.mu.sessions, ss)
		s.mu.Unlock()
	}()
	err := s.serve(ss, n)
	_ = ss.conn.Close() // the TLS conn when negotiated; closes raw too
	_ = raw.Close()
	if err != nil && ss.result == "ok" {
		ss.result = "error"
	}
	s.m.ConnectionsTotal.WithLabelValues(ss.result).Inc()
	if ss.result == "cancel" || !s.opt.LogConnections {
		return // cancels are logged by handleCancel
	}
	ce := s.log.Check(zap.InfoLevel, "connection")
	if ce == nil {
		return // below the log level: build no fields
	}
	fields := []zap.Field{
		zap.String("client", raw.RemoteAddr().String()),
		zap.String("branch", ss.route.Branch),
		zap.String("database", ss.route.Database),
		zap.String("user", ss.route.User),
		zap.String("route", string(ss.route.Kind)),
		zap.Bool("tls", ss.tls),
		zap.String("sni", ss.sni),
		zap.String("wake", string(ss.wakeKind)),
		zap.Duration("wake_wait", ss.waited),
		zap.Duration("duration", time.Since(start)),
		zap.Int64("bytes_in", ss.bytesIn),
		zap.Int64("bytes_out", ss.bytesOut),
		zap.String("result", ss.result),
	}
	if err != nil {
		fields = append(fields, zap.Error(err))
	}
	ce.Write(fields...)
}

// fail sends err to the client as a FATAL ErrorResponse (best effort) and
// records result.
func (s *Server) fail(ss *session, result string, err error) error {
	ss.result = result
	ce := pgwire.AsClientError(err)
	buf, encErr := ce.Fatal().Encode(nil)
	if encErr == nil {
		_ = ss.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_, _ = ss.conn.Write(buf)
	}
	return err
}

func (s *Server) serve(ss *session, active int64) error {
	deadline := time.Now().Add(s.opt.StartupTimeout)
	_ = ss.raw.SetDeadline(deadline)
	params, minor, err := s.startup(ss)
	if err != nil || params == nil {
		return err
	}
	if s.opt.RequireTLS && !ss.tls {
		return s.fail(ss, "tls_required", &pgwire.Error{
			Code:    pgwire.CodeInvalidAuthSpec,
			Message: "this server accepts only TLS connections",
			Hint:    "Connect with sslmode=require.",
		})
	}
	if _, ok := params["replication"]; ok {
		return s.replication(ss, params)
	}
	if max := s.maxClient.Load(); max > 0 && active > max {
		return s.fail(ss, "too_many", &pgwire.Error{
			Code:    pgwire.CodeTooManyConnections,
			Message: fmt.Sprintf("too many client connections (max_client_conn = %d)", max),
			Hint:    "Retry later, or close idle connections.",
		})
	}
	ss.route.User = params["user"]
	if params["database"] == router.ConsoleDatabase {
		return s.console(ss, params, minor)
	}
	route, err := s.opt.Resolver.Resolve(ss.sni, params)
	ss.route = route
	if err != nil {
		var re *router.RouteError
		if errors.As(err, &re) {
			return s.fail(ss, "bad_route", &pgwire.Error{Code: pgwire.CodeBadRoute, Message: re.Message, Hint: re.Hint})
		}
		return s.fail(ss, "bad_route", err)
	}
	ctx := context.Background()
	br, err := s.opt.Branches.Get(ctx, route.Branch)
	if err != nil {
		if errors.Is(err, router.ErrBranchNotFound) {
			return s.fail(ss, "unknown_branch", &pgwire.Error{
				Code:    pgwire.CodeUnknownBranch,
				Message: fmt.Sprintf("branch %q does not exist", route.Branch),
				Hint:    fmt.Sprintf("Create it with `neonproxy branch create %s`, or list branches with `neonproxy branch list`.", route.Branch),
			})
		}
		return s.fail(ss, "error", fmt.Errorf("look up branch %s: %w", route.Branch, err))
	}
	if br.Expired(time.Now()) {
		return s.fail(ss, "unknown_branch", expiredError(br))
	}
	if err := s.checkAllowedIP(ctx, ss, br); err != nil {
		return err
	}
	leave, err := s.admitBranchClient(ss, br)
	if err != nil {
		return err
	}
	defer leave()
	// Throttled clients are refused before any wake or SCRAM work.
	if wait := s.throttle.check(clientIP(ss.raw.RemoteAddr()), route.Branch); wait > 0 && s.opt.AuthThrottle {
		return s.fail(ss, "throttled", throttledError(route.Branch, clientIP(ss.raw.RemoteAddr()), wait))
	}
	if minor > 0 {
		// We speak 3.0; tell a newer client so instead of failing it.
		if err := s.send(ss, &pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0}); err != nil {
			return err
		}
	}
	key, tracked, dialParams := splitStartup(route, params)
	transaction := route.Pooler || s.opt.TransactionPooling || ss.sqlOverHTTP
	if transaction {
		// Transaction-pooled connections are not reset between clients, so
		// they are kept apart from session-mode ones.
		key.Options += txnKeySuffix
	}
	// Listed by the admin console from here on; it waits for its compute
	// and a server connection first.
	info := &clientInfo{
		key: key, transaction: transaction, remote: ss.raw.RemoteAddr(), local: ss.raw.LocalAddr(),
		connected: time.Now(), tls: ss.tls, appName: params["application_name"],
	}
	info.setState(clientWaiting)
	s.clients.add(info)
	defer s.clients.remove(info)
	ks := s.stats(key)

	// Hold the client while the compute wakes: wake_timeout (inside
	// Acquire) bounds this, not the startup timeout.
	_ = ss.raw.SetDeadline(time.Time{})
	lease, err := s.opt.Waker.Acquire(ctx, route.Branch)
	var elsewhere *wake.OwnedElsewhereError
	if s.opt.Relay && errors.As(err, &elsewhere) && elsewhere.Owner != "" {
		info.setState(clientRelayed)
		return s.relay(ss, route, params, elsewhere.Owner)
	}
	if err != nil {
		return s.fail(ss, "wake_failed", ss.endedError(wakeError(route.Branch, err)))
	}
	defer lease.Release()
	ss.wakeKind, ss.waited = lease.Kind, lease.Waited
	s.m.WakeDuration.WithLabelValues(string(lease.Kind)).Observe(lease.Waited.Seconds())

	_ = ss.raw.SetDeadline(time.Now().Add(s.opt.StartupTimeout))
	ep := lease.Endpoint
	dial := func(ctx context.Context) (*pool.Conn, error) { return s.dialBackend(ctx, ep, route, dialParams) }
	// Get a server connection while the client does its share of SCRAM
	// (its PBKDF2 takes milliseconds), so a backend start hides behind it.
	// PostgreSQL starts a backend before authentication too, so an
	// unauthenticated client costs a compute no more than it would
	// directly. What the backend says (say, the database does not exist) is
	// reported only once the client has authenticated.
	// A transaction-pooled client needs no server connection to log in once
	// the pool has seen the key: the startup parameters come from a cache.
	var cached map[string]string
	if transaction {
		if v, ok := s.startupParams.Load(key); ok {
			cached = v.(map[string]string)
		}
	}
	acqCtx, cancelAcq := context.WithCancel(ctx)
	defer cancelAcq()
	acquired := make(chan acquireResult, 1)
	if cached == nil {
		go func() {
			c, waited, err := s.opt.Pool.Acquire(acqCtx, key, ep.Generation, dial)
			acquired <- acquireResult{c, waited, err}
		}()
	}
	authFinal, err := s.authenticate(ctx, ss, ep)
	if err != nil {
		cancelAcq()
		if cached == nil {
			if r := <-acquired; r.c != nil {
				s.opt.Pool.Release(r.c, true)
			}
		}
		return err
	}
	var c *pool.Conn
	var startup map[string]string
	if cached != nil {
		startup = maps.Clone(cached)
		maps.Copy(startup, tracked)
	} else {
		r := <-acquired
		if r.waited > 0 {
			s.m.PoolWait.Observe(r.waited.Seconds())
		}
		if r.err != nil {
			return s.fail(ss, "pool_error", poolError(key, r.err))
		}
		c = r.c
		ks.acquired(r.waited)
		if stmts := setStatements(tracked, c.Params); stmts != "" {
			// The client's own startup settings (application_name, DateStyle, ...).
			if st, err := c.Exec(ctx, stmts); err != nil || st != 'I' {
				s.opt.Pool.Release(c, st == 'I')
				if err == nil {
					err = fmt.Errorf("transaction status %q after applying startup settings", st)
				}
				return s.fail(ss, "backend_error", err)
			}
		}
		startup = c.Params
		if transaction {
			s.startupParams.Store(key, maps.Clone(c.Params))
		}
	}
	target := &cancelTarget{branch: route.Branch}
	if c != nil {
		target.set(ep.SocketPath(), c.PID, c.SecretKey)
	}
	release := func() {
		if c != nil {
			s.opt.Pool.Release(c, true)
		}
	}
	key2, err := s.cancel.issue(target)
	if err != nil {
		release()
		return s.fail(ss, "error", err)
	}
	defer s.cancel.revoke(key2.ProcessID)

	// Finish the client's startup: the server's parameters, the proxy's
	// cancel key, ReadyForQuery.
	out, _ := (&pgproto3.AuthenticationOk{}).Encode(authFinal)
	for k, v := range startup {
		out, _ = (&pgproto3.ParameterStatus{Name: k, Value: v}).Encode(out)
	}
	out, _ = key2.Encode(out)
	out, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(out)
	if _, err := ss.conn.Write(out); err != nil {
		release()
		ss.result = "closed_early"
		return err
	}
	_ = ss.raw.SetDeadline(time.Time{})
	if !transaction {
		info.setState(clientActive)
		return s.sessionPooled(ss, c, target, ks, lease)
	}
	desired := make(map[string]string, len(trackedParams))
	for _, canon := range trackedParams {
		if v, ok := startup[canon]; ok {
			desired[canon] = v
		}
	}
	target.clear()
	release()
	// Between transactions the client holds no compute (see txnSession).
	lease.Release()
	info.setState(clientIdle)
	return s.sessionTransaction(ss, &txnSession{
		s: s, ss: ss, key: key, branch: route.Branch, dial: dial,
		redial: func(ep wake.Endpoint) pool.DialFunc {
			return func(ctx context.Context) (*pool.Conn, error) { return s.dialBackend(ctx, ep, route, dialParams) }
		},
		target: target, ep: ep, socket: ep.SocketPath(), desired: desired, desiredKey: settingsKey(desired),
		info: info, stats: ks,
	})
}

// txnKeySuffix ends the Options of transaction-pooled pool keys.
const txnKeySuffix = "\x00transaction"

// SetAdminUsers sets the roles allowed into the admin console besides the
// default branch's superuser.
func (s *Server) SetAdminUsers(users []string) {
	users = append([]string(nil), users...)
	s.adminUsers.Store(&users)
}

type acquireResult struct {
	c      *pool.Conn
	waited time.Duration
	err    error
}

func (s *Server) send(ss *session, msg pgproto3.BackendMessage) error {
	b, err := msg.Encode(nil)
	if err != nil {
		return err
	}
	_, err = ss.conn.Write(b)
	return err
}

// startup runs the untyped startup phase: SSLRequest / GSSENCRequest
// negotiation, CancelRequest, and the StartupMessage. It returns nil params
// (and nil error) after handling a CancelRequest.
func (s *Server) startup(ss *session) (map[string]string, uint32, error) {
	for i := 0; i < 3; i++ { // at most SSL, GSS and the startup message
		st, err := pgwire.ReadStartup(ss.conn, s.opt.Limits)
		if err != nil {
			var se *pgwire.StartupError
			if errors.As(err, &se) {
				return nil, 0, s.fail(ss, "protocol_error", err)
			}
			ss.result = "closed_early"
			return nil, 0, err
		}
		switch {
		case st.SSL != nil:
			if ss.tls && !ss.edge {
				return nil, 0, s.fail(ss, "protocol_error", &pgwire.Error{Code: pgwire.CodeProtocolViolation, Message: "SSLRequest after TLS was negotiated"})
			}
			// Over http_listen the WebSocket's own TLS (if any) is the
			// connection's.
			if ss.edge || s.opt.TLS == nil {
				if _, err := ss.conn.Write([]byte{'N'}); err != nil {
					return nil, 0, err
				}
				continue
			}
			if _, err := ss.raw.Write([]byte{'S'}); err != nil {
				return nil, 0, err
			}
			tc := tls.Server(ss.raw, s.opt.TLS)
			if err := tc.Handshake(); err != nil {
				ss.result = "tls_error"
				return nil, 0, fmt.Errorf("TLS handshake: %w", err)
			}
			ss.conn, ss.tls = tc, true
			ss.sni = tc.ConnectionState().ServerName
		case st.GSSEnc != nil:
			if _, err := ss.conn.Write([]byte{'N'}); err != nil {
				return nil, 0, err
			}
		case st.Cancel != nil:
			ss.result = "cancel"
			s.handleCancel(ss, st.Cancel)
			return nil, 0, nil
		case st.Message != nil:
			return st.Message.Parameters, st.MinorVersion, nil
		}
	}
	return nil, 0, s.fail(ss, "protocol_error", &pgwire.Error{Code: pgwire.CodeProtocolViolation, Message: "too many negotiation requests before the startup packet"})
}

// Cluster numbers the nodes of a cluster (router.ClusterNodes).
type Cluster interface {
	Self() int
	Addr(ctx context.Context, idx int) (string, error)
	// IsNode reports whether ip is a node of the cluster (a relayed
	// client comes from it).
	IsNode(ctx context.Context, ip netip.Addr) bool
}

func (s *Server) handleCancel(ss *session, req *pgproto3.CancelRequest) {
	t := s.cancel.lookup(req.ProcessID, req.SecretKey)
	if t == nil && s.opt.Cluster != nil {
		if idx := nodeOfPID(req.ProcessID); idx != s.opt.Cluster.Self() {
			s.cancelOnNode(ss, idx, req)
			return
		}
	}
	if t == nil {
		// Unknown keys are ignored silently, as PostgreSQL does.
		s.m.CancelRequests.WithLabelValues("unknown").Inc()
		s.log.Debug("cancel request with unknown key", zap.String("client", ss.raw.RemoteAddr().String()))
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := t.forward(ctx, s.dial); err != nil {
		s.log.Warn("cancel forward failed", zap.String("branch", t.branch), zap.Error(err))
		return
	}
	s.m.CancelRequests.WithLabelValues("forwarded").Inc()
	s.log.Info("cancel forwarded", zap.String("branch", t.branch), zap.String("client", ss.raw.RemoteAddr().String()))
}

// cancelOnNode passes a CancelRequest whose key another node issued to
// that node's front door (where the key is its own).
func (s *Server) cancelOnNode(ss *session, idx int, req *pgproto3.CancelRequest) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addr, err := s.opt.Cluster.Addr(ctx, idx)
	if err == nil {
		t := &cancelTarget{branch: fmt.Sprintf("(node %d)", idx)}
		t.setNode(addr, req.ProcessID, req.SecretKey)
		err = t.forward(ctx, s.dial)
	}
	if err != nil {
		s.m.CancelRequests.WithLabelValues("unknown").Inc()
		s.log.Warn("cancel for another node not delivered", zap.Int("node", idx), zap.Error(err))
		return
	}
	s.m.CancelRequests.WithLabelValues("forwarded").Inc()
	s.log.Info("cancel passed to the node that issued its key", zap.Int("node", idx), zap.String("node_addr", addr),
		zap.String("client", ss.raw.RemoteAddr().String()))
}

// authenticate checks the client's password against the branch's
// pg_authid. On success it returns what must still reach the client ahead
// of AuthenticationOk (SCRAM's final message), for the caller to send in
// the same write.
func (s *Server) authenticate(ctx context.Context, ss *session, ep wake.Endpoint) ([]byte, error) {
	user := ss.route.User
	// The verifier lookup runs while the mechanism list goes to the client
	// and its first message comes back.
	type lookupResult struct {
		creds scram.StoredCredentials
		err   error
	}
	looked := make(chan lookupResult, 1)
	go func() {
		c, _, err := s.auth.lookup(ctx, ss.route.Branch, ep, user)
		looked <- lookupResult{c, err}
	}()
	var lookupErr error
	creds := func() (scram.StoredCredentials, error) {
		r := <-looked
		lookupErr = r.err
		return r.creds, r.err
	}
	var cb scram.ChannelBinding
	plus := false
	if ss.tls {
		cb, plus = serverEndpointBinding(s.opt.TLS)
	}
	be := pgproto3.NewBackend(ss.conn, ss.conn)
	exchange := func() ([]byte, error) { return scramExchange(be, user, creds, cb, plus) }
	if cleartextAllowed(ss) {
		// The serverless driver pipelines its password behind the startup.
		exchange = func() ([]byte, error) { return nil, cleartextExchange(be, ss.conn, user, creds) }
	}
	final, err := exchange()
	if err != nil {
		if lookupErr != nil {
			return nil, s.fail(ss, "error", lookupErr)
		}
		var ce *pgwire.Error
		if errors.As(err, &ce) && ce.Code == pgwire.CodeInvalidPassword {
			s.m.AuthFailures.Inc()
			if s.opt.AuthThrottle {
				ip := clientIP(ss.raw.RemoteAddr())
				backoff := s.throttle.failed(ip, ss.route.Branch)
				s.log.Info("authentication failed; throttling the address for the branch", zap.String("branch", ss.route.Branch),
					zap.String("user", user), zap.Stringer("client", ip), zap.Duration("backoff", backoff))
			}
			return nil, s.fail(ss, "auth_failed", err)
		}
		if errors.As(err, &ce) {
			return nil, s.fail(ss, "protocol_error", err)
		}
		ss.result = "closed_early"
		return nil, err
	}
	s.throttle.succeeded(clientIP(ss.raw.RemoteAddr()), ss.route.Branch)
	return final, nil
}

// dialBackend logs in to the compute as the client's role over its unix
// socket (trust: only neonproxy can reach the socket), passing the client's
// startup parameters on, and takes over the raw connection.
func (s *Server) dialBackend(ctx context.Context, ep wake.Endpoint, rt router.Route, params map[string]string) (*pool.Conn, error) {
	cfg, err := pgconn.ParseConfig("sslmode=disable")
	if err != nil {
		return nil, err
	}
	cfg.Host, cfg.Port = ep.SocketDir, uint16(ep.Port)
	cfg.User, cfg.Database = rt.User, rt.Database
	cfg.Fallbacks = nil
	cfg.RuntimeParams = make(map[string]string, len(params)+1)
	for k, v := range params {
		cfg.RuntimeParams[k] = v
	}
	if rt.Options != "" {
		cfg.RuntimeParams["options"] = rt.Options
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			return nil, pe // the compute's own words (3D000 database, 28000 role, 53300 ...)
		}
		return nil, fmt.Errorf("connect to compute of branch %s: %w", rt.Branch, err)
	}
	if err := pc.SyncConn(ctx); err != nil {
		pc.Close(ctx)
		return nil, err
	}
	hc, err := pc.Hijack()
	if err != nil {
		return nil, err
	}
	return &pool.Conn{Net: hc.Conn, PID: hc.PID, SecretKey: hc.SecretKey, Params: hc.ParameterStatuses}, nil
}

// wakeError maps a wake failure to what the client sees.
func wakeError(branch string, err error) *pgwire.Error {
	var se *wake.StartError
	if errors.As(err, &se) {
		hint := "Retry in a few seconds; if it keeps failing, see the neonproxy log for the compute's own error."
		if se.RetryAfter > 0 {
			hint = fmt.Sprintf("Retry in %s; the neonproxy log has the compute's own error.", se.RetryAfter.Round(time.Second))
		}
		msg := fmt.Sprintf("compute for branch %q could not be started", branch)
		if errors.Is(err, wake.ErrNoLock) {
			msg = fmt.Sprintf("compute for branch %q cannot be started: this node cannot take the branch's lock in Consul: %v", branch, se.Err)
			hint = "Check that the Consul agent (consul.address) is up; branches already running keep working meanwhile."
		} else if errors.Is(err, wake.ErrOwnedElsewhere) {
			// The lock holder's address is in the error.
			msg = fmt.Sprintf("branch %q runs on another neonproxy node: %v", branch, se.Err)
			hint = "Connect through the node that runs it (this node does not forward between nodes yet), or retry once it has stopped."
		} else if errors.Is(err, wake.ErrWakeTimeout) {
			msg = fmt.Sprintf("compute for branch %q did not start within the wake timeout", branch)
			hint = "Retry in a few seconds; the start goes on meanwhile. If it keeps happening, the neonproxy log has the compute's own error."
		} else if errors.Is(err, wake.ErrMaxRunning) {
			msg = fmt.Sprintf("compute for branch %q could not be started: %v", branch, se.Err)
			hint = "Retry in a few seconds, once other branches' clients have left; an operator can raise compute.max_running."
		} else if se.BreakerOpen {
			msg = fmt.Sprintf("compute for branch %q is failing to start; not retrying for %s", branch, se.RetryAfter.Round(time.Second))
		}
		return &pgwire.Error{Code: pgwire.CodeCannotConnectNow, Message: msg, Hint: hint, Err: err}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &pgwire.Error{Code: pgwire.CodeCannotConnectNow, Message: fmt.Sprintf("compute for branch %q did not start within the wake timeout", branch), Hint: "Retry in a few seconds.", Err: err}
	}
	if errors.Is(err, wake.ErrClosed) {
		return &pgwire.Error{Code: pgwire.CodeAdminShutdown, Message: "neonproxy is shutting down", Hint: "Reconnect in a moment.", Err: err}
	}
	return &pgwire.Error{Code: pgwire.CodeCannotConnectNow, Message: fmt.Sprintf("compute for branch %q is not available", branch), Hint: "Retry in a few seconds.", Err: err}
}
