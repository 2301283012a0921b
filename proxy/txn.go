package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/neonproxy/neonproxy/internal/pgwire"
	"github.com/neonproxy/neonproxy/pool"
	"github.com/neonproxy/neonproxy/wake"
)

// txnSession is a transaction-pooled client: it holds a server connection
// only from the first message of a transaction to the ReadyForQuery that
// ends it ('I', nothing else outstanding), unless session state it created
// pins it to that connection.
//
// Named prepared statements survive the change of server connection as in
// PgBouncer 1.21: every distinct Parse (query and parameter types) gets one
// server-side name (npx_<hash>), shared by all clients; each client maps its
// own names to those. A Parse the attached connection already has is not
// sent (a ParseComplete is made up in its place); before a Bind or Describe
// on a connection that lacks the statement, the client's Parse is sent
// first and its ParseComplete swallowed; a client's Close of a statement is
// answered here. Each connection keeps an LRU of its statements.
//
// The client reader (the session's goroutine) rewrites and forwards
// messages and queues what each one will be answered with; the server
// reader of the attached connection relays answers in that order, drops
// swallowed ones, inserts made-up ones, and detaches at the end of a
// transaction. Shared state is in mu; neither goroutine holds it across I/O.
type txnSession struct {
	s      *Server
	ss     *session
	key    pool.Key
	branch string
	dial   pool.DialFunc
	// redial makes the dial function of another start of the compute: a
	// client between transactions holds no compute, which may suspend
	// and start again (elsewhere on disk, under a new generation).
	redial  func(wake.Endpoint) pool.DialFunc
	target  *cancelTarget
	ep      wake.Endpoint     // the compute dial reaches (its Generation: the pool epoch)
	socket  string            // ep.SocketPath()
	desired map[string]string // tracked settings the client expects
	// desiredKey is settingsKey(desired), never "".
	desiredKey string
	info       *clientInfo
	stats      *keyStats

	terminated bool
	// suspended is set (to the reason) when the compute was suspended
	// under a quiet session (compute.suspend_with_sessions: disconnect).
	suspended atomic.Pointer[string]
	// onSuspend (set once) and hookConn are the lease's OnSuspend hook
	// and the connection it closes: one func for every transaction's
	// lease, so attaching allocates no closure.
	onSuspend func(*wake.Lease)
	hookConn  atomic.Pointer[pool.Conn]
	out       []byte // client reader's pending output to the server
	sout      []byte // answers on their way to the client (inline mode)

	// The attached connection's reader. The client reader owns it, or,
	// once async is set (a LISTEN pinned the session), the server loop.
	srd *msgReader // srdKeep while attached
	// srdKeep is the session's reader of attached connections, made at
	// its first transaction (not at login: idle clients must stay small).
	srdKeep *msgReader
	sbuf    *[]byte
	sst     serverState
	async   bool // set under mu
	// copyEnds counts CopyDone/CopyFail sent ahead of the server's
	// CopyInResponse (pgx pipelines COPY data behind the query); copyIn is
	// set while the server waits for the client's COPY data.
	copyEnds int
	copyIn   bool

	mu struct {
		sync.Mutex
		// lease holds the compute while a transaction runs (or, once
		// pinned, for the rest of the session); between transactions the
		// client holds nothing, so its compute can go idle, suspend or go
		// to zero under it, and the next transaction wakes it.
		lease      *wake.Lease
		sc         *pool.Conn
		serverDone chan struct{} // closed when the attached conn's reader ends
		pending    int           // Sync/Query/FunctionCall sent, ReadyForQuery not yet seen
		pinned     string        // reason, once pinned
		clientGone bool
		serverErr  error

		queue []expect            // answers due, oldest first
		stmts map[string]*stmtDef // client statement name → definition
	}
}

// stmtDef is a client's named statement.
type stmtDef struct {
	server string // server-side name
	parse  []byte // the Parse message under the server-side name
}

// expect is one answer the server (or the proxy) owes the client.
type expect struct {
	kind   byte
	server string // statement name, for Parse kinds
}

// Kinds of expected answers. Forwarded requests are answered by the server;
// injected ones are answered by the server but swallowed; synthetic ones
// are answered by the proxy.
const (
	exParse         byte = iota + 1 // '1'
	exBind                          // '2'
	exClose                         // '3'
	exDescribe                      // 'T' or 'n' (after 't' for a statement)
	exExecute                       // 'C', 'I' or 's'
	exSync                          // 'Z'
	exQuery                         // 'Z' (simple Query, FunctionCall)
	exInjectedParse                 // '1', swallowed
	exInjectedClose                 // '3', swallowed
	synParse                        // '1' made up
	synClose                        // '3' made up
)

// clientBufSmall is the idle size of a transaction-pooled client's buffer.
const clientBufSmall = 1 << 10

var (
	parseComplete = []byte{'1', 0, 0, 0, 4}
	closeComplete = []byte{'3', 0, 0, 0, 4}
	flushMsg      = []byte{'H', 0, 0, 0, 4}
)

// noopClose closes a statement that never exists: the server answers
// CloseComplete, which lets made-up answers at the end of a batch go out
// in order behind it.
var noopClose = appendClose(nil, 'S', "npx_noop")

func (s *Server) sessionTransaction(ss *session, t *txnSession) error {
	t.mu.stmts = map[string]*stmtDef{}
	ss.between.Store(true)
	err := t.run()
	ss.result = "ok"
	if t.terminated {
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

// run is the client reader. It also reads the answers to what it sent
// (answer), so a request and its answer need no hand-off between
// goroutines; only a session pinned by LISTEN gets a goroutine that relays
// the server's messages as they come.
func (t *txnSession) run() error {
	// A small buffer of its own, grown on demand and shrunk when drained:
	// most transaction-pooled clients sit idle, and 10,000 of them must not
	// each hold a 32 KiB buffer.
	rd := newMsgReader(t.ss.conn, make([]byte, clientBufSmall), maxClientMessage)
	rd.shrinkTo = clientBufSmall
	defer t.finish()
	var asked bool // the batch makes the server answer (Sync, Query, Flush, end of COPY)
	for {
		typ, msg, err := rd.next()
		if err != nil {
			return err
		}
		t.ss.bytesIn += int64(len(msg))
		if typ == 'X' {
			t.terminated = true
			return nil
		}
		t.mu.Lock()
		t.mu.lease.Touch()
		if t.mu.sc == nil {
			if err := t.mu.serverErr; err != nil {
				t.mu.Unlock()
				return err
			}
			t.mu.Unlock()
			if err := t.attach(); err != nil {
				return err
			}
			t.mu.Lock()
		}
		sc := t.mu.sc
		t.clientMessageLocked(typ, msg, sc)
		switch typ {
		case 'c', 'f':
			if t.copyIn {
				t.copyIn = false // the COPY the server asked for is complete
			} else {
				t.copyEnds++ // sent ahead of the server's CopyInResponse
			}
			asked = true
		case 'S', 'Q', 'F', 'H':
			asked = true
		}
		last := !rd.whole()
		if last && t.closeBatchLocked() {
			asked = true
		}
		async := t.async
		t.mu.Unlock()
		if last || len(t.out) >= 64<<10 {
			_, werr := sc.Net.Write(t.out)
			t.out = t.out[:0]
			if werr != nil {
				// Cut by EndBranch or a suspend, or the compute went: the
				// client hears why.
				t.endServer(sc, true, werr)
				return werr
			}
		}
		if last && asked && !async {
			asked = false
			if err := t.answer(sc); err != nil {
				return err
			}
		}
	}
}

// idleLocked reports whether the session has nothing outstanding on its
// connection, after a ReadyForQuery with status st.
func (t *txnSession) idleLocked(st byte) bool {
	return st == 'I' && t.mu.pending <= 0 && t.mu.pinned == "" && len(t.mu.queue) == 0
}

// closeBatchLocked makes sure made-up answers at the end of a batch are
// sent: they go out behind a server answer, so when nothing real follows
// them a no-op request is added (and it reports so).
func (t *txnSession) closeBatchLocked() bool {
	q := t.mu.queue
	if len(q) == 0 {
		return false
	}
	if k := q[len(q)-1].kind; k == synParse || k == synClose {
		t.out = append(t.out, noopClose...)
		t.out = append(t.out, flushMsg...)
		t.mu.queue = append(t.mu.queue, expect{kind: exInjectedClose})
		return true
	}
	return false
}

// clientMessageLocked rewrites one client message into t.out and queues
// its answers.
func (t *txnSession) clientMessageLocked(typ byte, msg []byte, sc *pool.Conn) {
	body := msg[5:]
	push := func(k byte, server string) { t.mu.queue = append(t.mu.queue, expect{kind: k, server: server}) }
	switch typ {
	case 'P':
		name, rest, ok := cstring(body)
		if !ok || name == "" {
			t.out = append(t.out, msg...)
			push(exParse, "")
			t.scanQuery(rest)
			return
		}
		t.scanQuery(rest)
		def := &stmtDef{server: serverStmtName(rest)}
		def.parse = appendParse(nil, def.server, rest)
		t.mu.stmts[name] = def
		if sc.Prepared.Has(def.server) {
			push(synParse, "")
			return
		}
		t.sendParseLocked(def, sc, exParse)
	case 'B':
		portal, rest, ok1 := cstring(body)
		name, rest2, ok2 := cstring(rest)
		def := t.mu.stmts[name]
		if !ok1 || !ok2 || name == "" || def == nil {
			t.out = append(t.out, msg...)
		} else {
			t.ensureLocked(def, sc)
			t.out = appendBind(t.out, portal, def.server, rest2)
		}
		push(exBind, "")
	case 'D':
		if len(body) > 0 && body[0] == 'S' {
			name, _, ok := cstring(body[1:])
			if def := t.mu.stmts[name]; ok && name != "" && def != nil {
				t.ensureLocked(def, sc)
				t.out = appendDescribe(t.out, 'S', def.server)
				push(exDescribe, "")
				return
			}
		}
		t.out = append(t.out, msg...)
		push(exDescribe, "")
	case 'C':
		if len(body) > 0 && body[0] == 'S' {
			if name, _, ok := cstring(body[1:]); ok && name != "" {
				delete(t.mu.stmts, name)
				push(synClose, "")
				return
			}
		}
		t.out = append(t.out, msg...)
		push(exClose, "")
	case 'E':
		t.out = append(t.out, msg...)
		push(exExecute, "")
		t.stats.queries.Add(1)
	case 'S':
		t.out = append(t.out, msg...)
		push(exSync, "")
		t.mu.pending++
	case 'Q':
		t.out = append(t.out, msg...)
		push(exQuery, "")
		t.mu.pending++
		t.stats.queries.Add(1)
		t.scanQuery(body)
	case 'F':
		t.out = append(t.out, msg...)
		push(exQuery, "")
		t.mu.pending++
	default: // Flush, CopyData, CopyDone, CopyFail
		t.out = append(t.out, msg...)
	}
}

// compactQueue drops the first n answers. An emptied queue starts again at
// the front of its array, so steady traffic appends without allocating.
func compactQueue(q []expect, n int) []expect {
	if n >= len(q) {
		return q[:0]
	}
	return q[n:]
}

// scanQuery pins the client for session state the server's answers do not
// reveal.
func (t *txnSession) scanQuery(q []byte) {
	// Cheap filters first: the regular expressions run only on queries
	// that mention a temporary table or an advisory lock at all.
	if containsFold(q, "temp") && reTempTable.Match(q) {
		t.pinLocked(pinTempTable)
	} else if containsFold(q, "advisory") && reAdvisory.Match(q) {
		t.pinLocked(pinAdvisory)
	}
}

// containsFold reports whether b contains the lower-case ASCII word w,
// ignoring ASCII case, without allocating.
func containsFold(b []byte, w string) bool {
	for i := 0; i+len(w) <= len(b); i++ {
		j := 0
		for ; j < len(w); j++ {
			c := b[i+j]
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			if c != w[j] {
				break
			}
		}
		if j == len(w) {
			return true
		}
	}
	return false
}

// ensureLocked sends def's Parse first when the connection lacks it.
func (t *txnSession) ensureLocked(def *stmtDef, sc *pool.Conn) {
	if !sc.Prepared.Has(def.server) {
		t.sendParseLocked(def, sc, exInjectedParse)
	}
}

func (t *txnSession) sendParseLocked(def *stmtDef, sc *pool.Conn, kind byte) {
	t.out = append(t.out, def.parse...)
	t.mu.queue = append(t.mu.queue, expect{kind: kind, server: def.server})
	if evicted := sc.Prepared.Add(def.server); evicted != "" {
		t.out = appendClose(t.out, 'S', evicted)
		t.mu.queue = append(t.mu.queue, expect{kind: exInjectedClose})
	}
}

// serverMessageLocked matches one server message against the queue. It
// appends to out what the client gets (made-up answers due first, the
// message unless swallowed, made-up answers due after it) and reports
// whether the message was a ReadyForQuery.
func (t *txnSession) serverMessageLocked(typ byte, msg []byte, sc *pool.Conn, out []byte) []byte {
	switch typ {
	case 'N', 'A', 'S': // asynchronous: notices, notifications, parameters
		return append(out, msg...)
	}
	out = t.popSyntheticLocked(out)
	q := t.mu.queue
	swallow := false
	if len(q) > 0 {
		head := q[0]
		pop := false
		switch typ {
		case '1':
			pop = head.kind == exParse || head.kind == exInjectedParse
			swallow = head.kind == exInjectedParse
		case '2':
			pop = head.kind == exBind
		case '3':
			pop = head.kind == exClose || head.kind == exInjectedClose
			swallow = head.kind == exInjectedClose
		case 'T', 'n':
			pop = head.kind == exDescribe
		case 'C', 'I', 's':
			pop = head.kind == exExecute
		case 'Z':
			pop = head.kind == exSync || head.kind == exQuery
		case 'E':
			if head.kind != exQuery {
				// The server skips everything up to the next Sync: so do
				// we, forgetting statements that were not created.
				i := 0
				for i < len(q) && q[i].kind != exSync {
					if k := q[i].kind; (k == exParse || k == exInjectedParse) && q[i].server != "" {
						sc.Prepared.Remove(q[i].server)
					}
					i++
				}
				t.mu.queue = compactQueue(q, i)
			}
		}
		if pop {
			t.mu.queue = compactQueue(q, 1)
		}
	}
	if !swallow {
		out = append(out, msg...)
	}
	return t.popSyntheticLocked(out)
}

// popSyntheticLocked answers made-up requests at the head of the queue.
func (t *txnSession) popSyntheticLocked(out []byte) []byte {
	for len(t.mu.queue) > 0 {
		switch t.mu.queue[0].kind {
		case synParse:
			out = append(out, parseComplete...)
		case synClose:
			out = append(out, closeComplete...)
		default:
			return out
		}
		t.mu.queue = compactQueue(t.mu.queue, 1)
	}
	return out
}

// attach borrows a server connection and brings its tracked settings to
// the client's.
func (t *txnSession) attach() error {
	ctx := context.Background()
	t.ss.between.Store(false)
	t.info.setState(clientWaiting)
	if err := t.holdCompute(ctx); err != nil {
		return err
	}
	c, waited, err := t.s.opt.Pool.Acquire(ctx, t.key, t.ep.Generation, t.dial)
	if waited > 0 {
		t.s.m.PoolWait.Observe(waited.Seconds())
	}
	if err != nil {
		return t.s.fail(t.ss, "pool_error", poolError(t.key, err))
	}
	t.stats.acquired(waited)
	t.mu.Lock()
	lease := t.mu.lease
	t.mu.Unlock()
	t.hookConn.Store(c)
	if t.onSuspend == nil {
		// Runs under the compute manager's lock, before this session can
		// give its connection back: it takes no lock of the session.
		t.onSuspend = func(l *wake.Lease) {
			msg := l.SuspendedError()
			t.suspended.Store(&msg)
			if c := t.hookConn.Load(); c != nil {
				_ = c.Net.Close()
			}
		}
	}
	lease.OnSuspend(&t.onSuspend)
	// Comparing the maps on every transaction cost 4% of the pooler's
	// CPU; a connection last seen matching the same settings is skipped.
	if c.Synced == "" || c.Synced != t.desiredKey {
		if stmts := setStatements(t.desired, c.Params); stmts != "" {
			sctx, cancel := context.WithTimeout(ctx, resetTimeout)
			st, err := c.Exec(sctx, stmts)
			cancel()
			if err != nil || st != 'I' {
				t.s.opt.Pool.Release(c, false)
				return t.s.fail(t.ss, "pool_error", fmt.Errorf("apply session settings on a pooled connection: %w (status %q)", err, st))
			}
			for k := range t.desired {
				t.desired[k] = c.Params[k] // the server's spelling, so the next compare matches
			}
			t.desiredKey = settingsKey(t.desired)
		}
		c.Synced = t.desiredKey
	}
	t.target.set(t.socket, c.PID, c.SecretKey)
	t.sbuf = t.s.bufs.Get().(*[]byte)
	if t.srdKeep == nil {
		t.srdKeep = new(msgReader)
	}
	*t.srdKeep = msgReader{r: c.Net, buf: *t.sbuf, max: 1 << 30}
	t.srd = t.srdKeep
	t.sst = serverState{}
	t.mu.Lock()
	t.mu.sc = c
	t.ss.server.Store(c)
	t.info.setState(clientActive) // under mu, like every change of sc
	t.mu.queue = t.mu.queue[:0]
	t.mu.Unlock()
	return nil
}

// serverState is what is remembered across one connection's answers.
type serverState struct {
	// A SET of a tracked setting is followed by its ParameterStatus, which
	// PostgreSQL sends just before ReadyForQuery: pinning is decided there.
	setSeen, paramSeen bool
	lastStatus         byte
}

// answer relays the attached connection's answers until nothing more is
// due, or the server waits for the client's COPY data; at the end of a
// transaction it gives the connection back.
func (t *txnSession) answer(c *pool.Conn) error {
	out := t.sout[:0]
	defer func() { t.sout = out[:0] }()
	for {
		t.mu.Lock()
		due := len(t.mu.queue) > 0
		t.mu.Unlock()
		if !due {
			break
		}
		typ, msg, err := t.srd.next()
		if err != nil {
			if len(out) > 0 {
				_, _ = t.ss.conn.Write(out)
			}
			t.endServer(c, true, err)
			return err
		}
		t.ss.bytesOut += int64(len(msg))
		var detach bool
		out, detach = t.serverMessage(typ, msg, c, out)
		if detach || (typ == 'G' && t.copyEnds == 0) || !t.srd.whole() || len(out) >= 64<<10 {
			if _, err := t.ss.conn.Write(out); err != nil {
				t.endServer(c, false, err)
				return err
			}
			out = out[:0]
		}
		if detach {
			t.giveBack(c, true)
			return nil
		}
		if typ == 'G' {
			// CopyInResponse: unless the client has already sent the whole
			// COPY (pgx pipelines it behind the query), the server now
			// waits for the client's data.
			if t.copyEnds == 0 {
				t.copyIn = true
				break
			}
			t.copyEnds--
		}
	}
	if len(out) > 0 {
		if _, err := t.ss.conn.Write(out); err != nil {
			t.endServer(c, false, err)
			return err
		}
	}
	t.mu.Lock()
	listen := t.mu.pinned == pinListen && t.mu.sc == c
	t.mu.Unlock()
	if listen {
		// Notifications now arrive whenever they like: relay them as they come.
		t.startAsync(c)
	}
	return nil
}

// serverMessage handles one server message: tracking, pinning, the answer
// queue. It reports whether the session can give the connection back.
func (t *txnSession) serverMessage(typ byte, msg []byte, c *pool.Conn, out []byte) ([]byte, bool) {
	st := &t.sst
	t.mu.Lock()
	defer t.mu.Unlock()
	switch typ {
	case 'S':
		if name, value, ok := splitParam(msg[5:]); ok {
			c.SetParam(name, value)
			if old, tracked := t.desired[name]; tracked {
				t.desired[name] = value
				st.paramSeen = true
				if old != value {
					t.desiredKey = settingsKey(t.desired)
				}
			}
		}
	case 'C':
		switch tag := bytes.TrimRight(msg[5:], "\x00"); {
		case bytes.Equal(tag, []byte("SET")):
			st.setSeen = true
		case bytes.Equal(tag, []byte("LISTEN")):
			t.pinLocked(pinListen)
		case bytes.Equal(tag, []byte("PREPARE")):
			t.pinLocked(pinPrepare)
		case bytes.Equal(tag, []byte("DECLARE CURSOR")):
			t.pinLocked(pinCursor)
		case bytes.Equal(tag, []byte("DEALLOCATE ALL")), bytes.Equal(tag, []byte("DISCARD ALL")):
			c.Prepared.Clear()
			clear(t.mu.stmts)
		}
	case 'Z':
		if st.setSeen && !st.paramSeen {
			t.pinLocked(pinSet)
		}
		st.setSeen, st.paramSeen = false, false
		if len(msg) == 6 {
			st.lastStatus = msg[5]
			if st.lastStatus == 'I' {
				t.stats.xacts.Add(1)
			}
		}
		t.mu.pending--
	}
	out = t.serverMessageLocked(typ, msg, c, out)
	// Give back only between messages with nothing read ahead, so the next
	// borrower starts at a clean message boundary.
	detach := typ == 'Z' && !t.async && t.idleLocked(st.lastStatus) && t.srd.empty()
	if detach {
		t.mu.pending = 0
		t.detachLocked()
	}
	return out, detach
}

// giveBack returns the connection to the pool (the session is detached).
func (t *txnSession) giveBack(c *pool.Conn, reusable bool) {
	t.target.clear()
	t.dropReader()
	t.s.opt.Pool.Release(c, reusable)
}

func (t *txnSession) dropReader() {
	if t.sbuf != nil {
		t.s.bufs.Put(t.sbuf)
		t.sbuf, t.srd = nil, nil
		*t.srdKeep = msgReader{} // drop the buffer and the connection
	}
}

// serverEnded handles the end of the server loop by error: the client left
// (finish set a deadline), or the server connection failed.
func (t *txnSession) serverEnded(c *pool.Conn, rerr error, out []byte) {
	t.mu.Lock()
	gone := t.mu.clientGone
	t.mu.Unlock()
	if gone && errors.Is(rerr, os.ErrDeadlineExceeded) {
		_ = c.Net.SetReadDeadline(time.Time{})
		t.leaveAttached(c)
		return
	}
	if len(out) > 0 {
		_, _ = t.ss.conn.Write(out)
	}
	t.endServer(c, true, rerr)
}

// finish runs when the client reader ends: a connection still attached is
// reset and given back (or closed), by the server loop when there is one.
func (t *txnSession) finish() {
	t.mu.Lock()
	t.mu.clientGone = true
	sc, done, async := t.mu.sc, t.mu.serverDone, t.async
	if sc != nil && async {
		// Under mu: the loop cannot have given sc back yet, so this
		// deadline cannot hit the connection's next borrower.
		_ = sc.Net.SetReadDeadline(time.Now())
	}
	t.mu.Unlock()
	switch {
	case async && done != nil:
		<-done
	case sc != nil:
		t.leaveAttached(sc)
	}
	t.s.countBytes(t.ss)
	t.stats.received.Add(t.ss.bytesIn)
	t.stats.sent.Add(t.ss.bytesOut)
	t.mu.Lock()
	if t.mu.lease != nil {
		t.mu.lease.Release()
		t.mu.lease = nil
	}
	t.mu.Unlock()
}

// detachLocked notes that the session holds no server connection, and,
// unless it is pinned, no compute either.
func (t *txnSession) detachLocked() {
	t.mu.sc = nil
	t.ss.server.Store(nil)
	t.info.setState(clientIdle)
	t.ss.between.Store(t.mu.pinned == "")
	if t.mu.pinned == "" && t.mu.lease != nil {
		t.mu.lease.Release()
		t.mu.lease = nil
	}
}

// holdCompute takes a lease on the branch's compute for the next
// transaction, waking it if it went idle, suspended or to zero since the
// last one; the session then dials the compute where it runs now.
func (t *txnSession) holdCompute(ctx context.Context) error {
	t.mu.Lock()
	held := t.mu.lease != nil
	t.mu.Unlock()
	if held {
		return nil
	}
	lease, err := t.s.opt.Waker.Acquire(ctx, t.branch)
	if err != nil {
		return t.s.fail(t.ss, "wake_failed", t.ss.endedError(wakeError(t.branch, err)))
	}
	if lease.Kind != wake.WakeRunning {
		t.s.m.WakeDuration.WithLabelValues(string(lease.Kind)).Observe(lease.Waited.Seconds())
	}
	// Compared as a struct: building the socket path on every
	// transaction showed in the profile (3% of the pooler's CPU).
	if ep := lease.Endpoint; ep != t.ep {
		t.ep, t.socket, t.dial = ep, ep.SocketPath(), t.redial(ep)
	}
	t.mu.Lock()
	t.mu.lease = lease
	t.mu.Unlock()
	return nil
}

// serverStmtName names a statement by what defines it: the query text and
// parameter types (the Parse body after the client's name).
func serverStmtName(def []byte) string {
	sum := sha256.Sum256(def)
	return "npx_" + hex.EncodeToString(sum[:12])
}

// cstring splits a NUL-terminated string off b.
func cstring(b []byte) (string, []byte, bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return "", nil, false
	}
	return string(b[:i]), b[i+1:], true
}

func appendHeader(out []byte, typ byte, bodyLen int) []byte {
	out = append(out, typ)
	return binary.BigEndian.AppendUint32(out, uint32(4+bodyLen))
}

// appendParse builds Parse(name) with the rest of a client Parse body.
func appendParse(out []byte, name string, rest []byte) []byte {
	out = appendHeader(out, 'P', len(name)+1+len(rest))
	out = append(append(out, name...), 0)
	return append(out, rest...)
}

func appendBind(out []byte, portal, stmt string, rest []byte) []byte {
	out = appendHeader(out, 'B', len(portal)+1+len(stmt)+1+len(rest))
	out = append(append(out, portal...), 0)
	out = append(append(out, stmt...), 0)
	return append(out, rest...)
}

func appendDescribe(out []byte, kind byte, name string) []byte {
	out = appendHeader(out, 'D', 1+len(name)+1)
	out = append(out, kind)
	return append(append(out, name...), 0)
}

func appendClose(out []byte, kind byte, name string) []byte {
	out = appendHeader(out, 'C', 1+len(name)+1)
	out = append(out, kind)
	return append(append(out, name...), 0)
}

// startAsync hands the connection's answers to a goroutine for the rest of
// the session (pinned by LISTEN: it is never given back before the end).
func (t *txnSession) startAsync(c *pool.Conn) {
	done := make(chan struct{})
	t.mu.Lock()
	t.async = true
	t.mu.serverDone = done
	t.mu.Unlock()
	go t.serverLoop(c, done)
}

// serverLoop relays a pinned connection's messages as they come, until
// the connection fails or finish stops it.
func (t *txnSession) serverLoop(c *pool.Conn, done chan struct{}) {
	defer close(done)
	var out []byte
	for {
		typ, msg, rerr := t.srd.next()
		if rerr != nil {
			t.serverEnded(c, rerr, out)
			return
		}
		t.ss.bytesOut += int64(len(msg))
		out, _ = t.serverMessage(typ, msg, c, out)
		if !t.srd.whole() || len(out) >= 64<<10 {
			if _, err := t.ss.conn.Write(out); err != nil {
				t.endServer(c, false, err)
				return
			}
			out = out[:0]
		}
	}
}

// leaveAttached gives back the connection of a client that left while
// attached: reset and kept if nothing was in flight, closed otherwise.
func (t *txnSession) leaveAttached(c *pool.Conn) {
	t.mu.Lock()
	quiet := len(t.mu.queue) == 0 && t.mu.pending <= 0
	t.detachLocked()
	t.mu.Unlock()
	clean := quiet && t.srd != nil && t.srd.empty() && t.sst.lastStatus != 0
	st := t.sst.lastStatus
	t.target.clear()
	t.dropReader()
	t.s.releaseAfterSession(c, clean, st)
}

// endServer handles a server connection that failed: it is closed, and so
// is the client (the compute's own FATAL, if any, has been relayed).
func (t *txnSession) endServer(c *pool.Conn, closeClient bool, err error) {
	t.mu.Lock()
	t.detachLocked()
	if t.mu.serverErr == nil {
		t.mu.serverErr = err
	}
	t.mu.Unlock()
	t.giveBack(c, false)
	if closeClient {
		if e := t.ss.ended.Load(); e != nil {
			_ = t.s.fail(t.ss, "branch_ended", e)
		} else if msg := t.suspended.Load(); msg != nil {
			_ = t.s.fail(t.ss, "suspended", &pgwire.Error{Code: pgwire.CodeAdminShutdown, Message: *msg,
				Hint: "Reconnect: the next connection wakes the compute."})
		}
		_ = t.ss.conn.Close()
	}
}
