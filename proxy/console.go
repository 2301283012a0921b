package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/neonproxy/neonproxy/internal/pgwire"
	"github.com/neonproxy/neonproxy/pool"
	"github.com/neonproxy/neonproxy/router"
)

// The admin console: `psql -d neonproxy` reaches it instead of a branch.
// It speaks the simple query protocol only (as PgBouncer's does) and
// answers PgBouncer's SHOW commands with PgBouncer's column names where the
// concept is the same, so dashboards and habits carry over.

const consoleHint = "Commands: SHOW POOLS | CLIENTS | SERVERS | STATS | BRANCHES; PAUSE [branch]; RESUME [branch]; RELOAD."

// consoleCmd is one parsed console statement.
type consoleCmd struct {
	verb string // SHOW, PAUSE, RESUME, RELOAD
	what string // SHOW's subject, upper case
	arg  string // PAUSE/RESUME's branch; "" means every branch
}

// parseConsole splits a simple query into statements and parses each.
// Keywords are case-insensitive; a branch name is folded to lower case
// unless double-quoted, as SQL identifiers are. Empty statements are
// dropped.
func parseConsole(query string) ([]consoleCmd, error) {
	var cmds []consoleCmd
	for _, stmt := range strings.Split(query, ";") {
		f := strings.Fields(stmt)
		if len(f) == 0 {
			continue
		}
		verb := strings.ToUpper(f[0])
		cmd := consoleCmd{verb: verb}
		ok := false
		switch verb {
		case "SHOW":
			if len(f) == 2 {
				cmd.what = strings.ToUpper(f[1])
				switch cmd.what {
				case "POOLS", "CLIENTS", "SERVERS", "STATS", "BRANCHES":
					ok = true
				}
			}
		case "PAUSE", "RESUME":
			switch len(f) {
			case 1:
				ok = true // every branch, as PgBouncer's bare PAUSE
			case 2:
				cmd.arg, ok = identifier(f[1])
			}
		case "RELOAD":
			ok = len(f) == 1
		}
		if !ok {
			return nil, &pgwire.Error{Code: "42601", Message: fmt.Sprintf("unsupported admin console command %q", strings.TrimSpace(stmt)), Hint: consoleHint}
		}
		cmds = append(cmds, cmd)
	}
	return cmds, nil
}

func identifier(s string) (string, bool) {
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		return s[1 : len(s)-1], len(s) > 2
	}
	return strings.ToLower(s), s != ""
}

// console authenticates an admin and runs the console session.
func (s *Server) console(ss *session, params map[string]string, minor uint32) error {
	branch := s.opt.Resolver.DefaultBranch
	if branch == "" {
		branch = "main"
	}
	user := params["user"]
	ss.route = router.Route{Branch: branch, Database: router.ConsoleDatabase, User: user, Kind: "console"}
	ss.between.Store(true) // no transactions here: a shutdown need not wait
	if minor > 0 {
		if err := s.send(ss, &pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0}); err != nil {
			return err
		}
	}
	// The password is checked against the default branch's pg_authid, so
	// its compute must run; it may suspend again once the admin is in.
	_ = ss.raw.SetDeadline(time.Time{})
	ctx := context.Background()
	lease, err := s.opt.Waker.Acquire(ctx, branch)
	if err != nil {
		return s.fail(ss, "wake_failed", wakeError(branch, err))
	}
	_ = ss.raw.SetDeadline(time.Now().Add(s.opt.StartupTimeout))
	authFinal, err := s.authenticate(ctx, ss, lease.Endpoint)
	lease.Release()
	if err != nil {
		return err
	}
	// Every role's password is checked first, so a client that does not
	// know one learns nothing about who is an admin (28P01 either way).
	if user != "postgres" && !slices.Contains(*s.adminUsers.Load(), user) {
		return s.fail(ss, "auth_failed", &pgwire.Error{
			Code:    pgwire.CodeInvalidAuthSpec,
			Message: fmt.Sprintf("role %q is not allowed to use the admin console", user),
			Hint:    "Log in as postgres, or add the role to pool.admin_users.",
		})
	}
	key, err := s.cancel.issue(&cancelTarget{branch: branch}) // cancels nothing
	if err != nil {
		return s.fail(ss, "error", err)
	}
	defer s.cancel.revoke(key.ProcessID)
	out, _ := (&pgproto3.AuthenticationOk{}).Encode(authFinal)
	for _, p := range [][2]string{
		{"server_version", "15.0 (neonproxy console)"}, {"client_encoding", "UTF8"}, {"DateStyle", "ISO"},
		{"standard_conforming_strings", "on"}, {"integer_datetimes", "on"},
	} {
		out, _ = (&pgproto3.ParameterStatus{Name: p[0], Value: p[1]}).Encode(out)
	}
	out, _ = key.Encode(out)
	out, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(out)
	if _, err := ss.conn.Write(out); err != nil {
		ss.result = "closed_early"
		return err
	}
	_ = ss.raw.SetDeadline(time.Time{})
	return quiet(s.consoleLoop(ss))
}

// consoleLoop answers Query messages until Terminate. Extended-protocol
// messages get one error, then are skipped up to Sync, as PostgreSQL skips
// after an error.
func (s *Server) consoleLoop(ss *session) error {
	rd := newMsgReader(ss.conn, make([]byte, 1024), 1<<20)
	skipping := false
	for {
		typ, msg, err := rd.next()
		if err != nil {
			return err
		}
		var out []byte
		switch typ {
		case 'X':
			return nil
		case 'Q':
			if skipping {
				continue
			}
			query := strings.TrimRight(string(msg[5:]), "\x00")
			out = s.consoleQuery(query)
			out, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(out)
		case 'S':
			skipping = false
			out, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(out)
		case 'P', 'B', 'D', 'E', 'C', 'H', 'F':
			if skipping {
				continue
			}
			out = consoleError(out, &pgwire.Error{Code: pgwire.CodeFeatureNotSupported, Message: "the admin console supports the simple query protocol only",
				Hint: "Use psql, or your driver's simple protocol (pgx: QueryExecModeSimpleProtocol)."})
			if typ == 'F' { // a FunctionCall is answered on its own
				out, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(out)
			} else {
				skipping = true
			}
		default: // CopyData and the like: nothing to answer
			continue
		}
		if _, err := ss.conn.Write(out); err != nil {
			return err
		}
	}
}

// consoleQuery runs the statements of one Query; the first error ends it,
// as in PostgreSQL.
func (s *Server) consoleQuery(query string) []byte {
	cmds, err := parseConsole(query)
	if err != nil {
		return consoleError(nil, err)
	}
	if len(cmds) == 0 {
		out, _ := (&pgproto3.EmptyQueryResponse{}).Encode(nil)
		return out
	}
	var out []byte
	for _, cmd := range cmds {
		out, err = s.consoleRun(out, cmd)
		if err != nil {
			return consoleError(out, err)
		}
	}
	return out
}

func (s *Server) consoleRun(out []byte, cmd consoleCmd) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	switch cmd.verb {
	case "SHOW":
		var t *table
		switch cmd.what {
		case "POOLS":
			t = s.showPools()
		case "CLIENTS":
			t = s.showClients()
		case "SERVERS":
			t = s.showServers()
		case "STATS":
			t = s.showStats()
		case "BRANCHES":
			var err error
			if t, err = s.showBranches(ctx); err != nil {
				return out, err
			}
		}
		return t.encode(out), nil
	case "PAUSE", "RESUME":
		if err := s.pauseResume(ctx, cmd); err != nil {
			return out, err
		}
		out, _ = (&pgproto3.CommandComplete{CommandTag: []byte(cmd.verb)}).Encode(out)
		return out, nil
	case "RELOAD":
		if s.opt.Reload == nil {
			return out, &pgwire.Error{Code: pgwire.CodeFeatureNotSupported, Message: "RELOAD is not available: neonproxy was started without a configuration file"}
		}
		notice, err := s.opt.Reload()
		if err != nil {
			return out, &pgwire.Error{Code: "F0000", Message: "reload failed: " + err.Error(), Hint: "The running configuration is unchanged."}
		}
		if notice != "" {
			out, _ = (&pgproto3.NoticeResponse{Severity: "NOTICE", SeverityUnlocalized: "NOTICE", Code: "00000", Message: notice}).Encode(out)
		}
		out, _ = (&pgproto3.CommandComplete{CommandTag: []byte("RELOAD")}).Encode(out)
		return out, nil
	}
	return out, fmt.Errorf("console: unhandled command %q", cmd.verb)
}

func consoleError(out []byte, err error) []byte {
	ce := pgwire.AsClientError(err)
	out, _ = (&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: ce.Code, Message: ce.Message, Hint: ce.Hint}).Encode(out)
	return out
}

// table is a SHOW result. Columns named in ints are int8, the rest text.
type table struct {
	cols []string
	ints map[string]bool
	rows [][]string
}

func newTable(ints string, cols ...string) *table {
	t := &table{cols: cols, ints: map[string]bool{}}
	for _, c := range strings.Fields(ints) {
		t.ints[c] = true
	}
	return t
}

func (t *table) add(vals ...any) {
	row := make([]string, len(vals))
	for i, v := range vals {
		row[i] = fmt.Sprint(v)
	}
	t.rows = append(t.rows, row)
}

func (t *table) encode(out []byte) []byte {
	rd := &pgproto3.RowDescription{}
	for _, c := range t.cols {
		f := pgproto3.FieldDescription{Name: []byte(c), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1}
		if t.ints[c] {
			f.DataTypeOID, f.DataTypeSize = 20, 8
		}
		rd.Fields = append(rd.Fields, f)
	}
	out, _ = rd.Encode(out)
	for _, r := range t.rows {
		dr := &pgproto3.DataRow{Values: make([][]byte, len(r))}
		for i, v := range r {
			dr.Values[i] = []byte(v)
		}
		out, _ = dr.Encode(out)
	}
	out, _ = (&pgproto3.CommandComplete{CommandTag: []byte("SHOW")}).Encode(out)
	return out
}

// dbName is the console's "database" of a pool key: branch.database.
func dbName(k pool.Key) string { return k.Branch + "." + k.Database }

func poolMode(k pool.Key) string {
	if strings.HasSuffix(k.Options, txnKeySuffix) {
		return "transaction"
	}
	return "session"
}

const timeFormat = "2006-01-02 15:04:05 MST"

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(timeFormat)
}

func (s *Server) showPools() *table {
	t := newTable("cl_active cl_waiting sv_active sv_idle sv_used sv_login maxwait maxwait_us",
		"database", "user", "cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used", "sv_login", "maxwait", "maxwait_us", "pool_mode")
	type counts struct{ active, waiting int }
	cl := map[pool.Key]*counts{}
	for _, c := range s.clients.snapshot() {
		n := cl[c.key]
		if n == nil {
			n = &counts{}
			cl[c.key] = n
		}
		// An idle transaction-mode client is an active one to PgBouncer: it
		// is logged in and holds no server.
		if c.state.Load() == clientWaiting {
			n.waiting++
		} else {
			n.active++
		}
	}
	st := s.opt.Pool.Stats()
	seen := map[pool.Key]bool{}
	row := func(k pool.Key, ks pool.KeyStats) {
		var n counts
		if c := cl[k]; c != nil {
			n = *c
		}
		us := ks.MaxWait.Microseconds()
		t.add(dbName(k), k.User, n.active, n.waiting, ks.Active, ks.Idle, 0, ks.Dialing, us/1e6, us%1e6, poolMode(k))
	}
	for _, ks := range st.Keys {
		seen[ks.Key] = true
		row(ks.Key, ks)
	}
	// Keys whose clients have no server connection yet (waiting for a
	// compute, say).
	var rest []pool.Key
	for k := range cl {
		if !seen[k] {
			rest = append(rest, k)
		}
	}
	slices.SortFunc(rest, func(a, b pool.Key) int { return strings.Compare(dbName(a)+"\x00"+a.User, dbName(b)+"\x00"+b.User) })
	for _, k := range rest {
		row(k, pool.KeyStats{Key: k})
	}
	return t
}

func splitAddr(a net.Addr) (string, int) {
	if a == nil {
		return "", 0
	}
	if tcp, ok := a.(*net.TCPAddr); ok {
		return tcp.IP.String(), tcp.Port
	}
	if a.Network() == "unix" {
		// PostgreSQL's socket is <dir>/.s.PGSQL.<port>.
		_, p, _ := strings.Cut(a.String(), ".s.PGSQL.")
		port, _ := strconv.Atoi(p)
		return "unix", port
	}
	host, p, _ := net.SplitHostPort(a.String())
	port, _ := strconv.Atoi(p)
	return host, port
}

func (s *Server) showClients() *table {
	t := newTable("port local_port wait wait_us remote_pid close_needed",
		"type", "user", "database", "state", "addr", "port", "local_addr", "local_port", "connect_time", "request_time",
		"wait", "wait_us", "close_needed", "ptr", "link", "remote_pid", "tls", "application_name")
	now := time.Now()
	for _, c := range s.clients.snapshot() {
		st := c.state.Load()
		since := time.Unix(0, c.since.Load())
		var waitUS int64
		if st == clientWaiting {
			waitUS = now.Sub(since).Microseconds()
		}
		addr, port := splitAddr(c.remote)
		laddr, lport := splitAddr(c.local)
		tlsCol := ""
		if c.tls {
			tlsCol = "TLS"
		}
		t.add("C", c.key.User, dbName(c.key), clientStateNames[st], addr, port, laddr, lport, fmtTime(c.connected), fmtTime(since),
			waitUS/1e6, waitUS%1e6, 0, fmt.Sprintf("%p", c), "", 0, tlsCol, c.appName)
	}
	return t
}

func (s *Server) showServers() *table {
	t := newTable("port remote_pid prepared_statements",
		"type", "user", "database", "state", "addr", "port", "connect_time", "request_time", "remote_pid", "prepared_statements")
	for _, c := range s.opt.Pool.Conns() {
		addr, port := splitAddr(c.Addr)
		t.add("S", c.Key.User, dbName(c.Key), c.State, addr, port, fmtTime(c.Created), fmtTime(c.LastUsed), c.PID, c.Prepared)
	}
	return t
}

func (s *Server) showStats() *table {
	t := newTable("total_xact_count total_query_count total_received total_sent total_wait_time avg_wait_time",
		"database", "total_xact_count", "total_query_count", "total_received", "total_sent", "total_wait_time", "avg_wait_time")
	// Per database, as PgBouncer: the keys of its users and modes add up.
	type sums struct{ xacts, queries, received, sent, acquires, waitUS int64 }
	by := map[string]*sums{}
	s.keyStats.Range(func(k, v any) bool {
		ks, name := v.(*keyStats), dbName(k.(pool.Key))
		n := by[name]
		if n == nil {
			n = &sums{}
			by[name] = n
		}
		n.xacts += ks.xacts.Load()
		n.queries += ks.queries.Load()
		n.received += ks.received.Load()
		n.sent += ks.sent.Load()
		n.acquires += ks.acquires.Load()
		n.waitUS += ks.waitUS.Load()
		return true
	})
	names := make([]string, 0, len(by))
	for name := range by {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		n := by[name]
		avg := int64(0)
		if n.acquires > 0 {
			avg = n.waitUS / n.acquires
		}
		t.add(name, n.xacts, n.queries, n.received, n.sent, n.waitUS, avg)
	}
	return t
}

func (s *Server) showBranches(ctx context.Context) (*table, error) {
	t := newTable("clients", "name", "parent", "compute_state", "clients", "paused")
	if s.opt.Lister == nil {
		return t, nil
	}
	branches, err := s.opt.Lister.List(ctx)
	if err != nil {
		return nil, err
	}
	clients := map[string]int{}
	for _, c := range s.clients.snapshot() {
		clients[c.key.Branch]++
	}
	slices.SortFunc(branches, func(a, b router.Branch) int { return strings.Compare(a.Name, b.Name) })
	for _, b := range branches {
		state := ""
		if s.opt.ComputeState != nil {
			state = s.opt.ComputeState(b.Name)
		}
		t.add(b.Name, b.Parent, state, clients[b.Name], s.opt.Pool.Paused(b.Name))
	}
	return t, nil
}

// pauseResume runs PAUSE/RESUME for one branch, or for every branch when
// none is named. As in PgBouncer, pausing a paused branch or resuming one
// that is not paused is an error (55000), so scripts notice a mix-up.
func (s *Server) pauseResume(ctx context.Context, cmd consoleCmd) error {
	notInState := func(msg string) error {
		return &pgwire.Error{Code: "55000", Message: msg}
	}
	if cmd.arg == "" {
		if cmd.verb == "RESUME" {
			paused := s.opt.Pool.PausedBranches()
			if len(paused) == 0 {
				return notInState("no branch is paused")
			}
			for _, b := range paused {
				s.opt.Pool.Resume(b)
			}
			return nil
		}
		if s.opt.Lister == nil {
			return &pgwire.Error{Code: pgwire.CodeFeatureNotSupported, Message: "PAUSE without a branch is not available here"}
		}
		branches, err := s.opt.Lister.List(ctx)
		if err != nil {
			return err
		}
		for _, b := range branches {
			s.opt.Pool.Pause(b.Name)
		}
		return nil
	}
	paused := s.opt.Pool.Paused(cmd.arg)
	if cmd.verb == "RESUME" {
		if !paused {
			return notInState(fmt.Sprintf("branch %q is not paused", cmd.arg))
		}
		// Even a branch deleted while paused can be resumed.
		s.opt.Pool.Resume(cmd.arg)
		return nil
	}
	if _, err := s.opt.Branches.Get(ctx, cmd.arg); err != nil {
		if errors.Is(err, router.ErrBranchNotFound) {
			return &pgwire.Error{Code: pgwire.CodeUnknownBranch, Message: fmt.Sprintf("branch %q does not exist", cmd.arg)}
		}
		return err
	}
	if paused {
		return notInState(fmt.Sprintf("branch %q is already paused", cmd.arg))
	}
	s.opt.Pool.Pause(cmd.arg)
	return nil
}
