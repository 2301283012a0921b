package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/neonproxy/neonproxy/internal/pgwire"
)

// sqlPools bounds the /sql connection pools kept: one per (client
// address, connection string), so that a pooled, authenticated connection
// never serves another address (allow lists, throttling) or password.
const sqlPools = 1024

// sqlOverHTTP serves POST /sql: the queries of Neon's serverless driver
// (its neon() function) run on connections to this very front door, made
// over in-process pipes, so routing, allow lists, authentication, wake and
// transaction pooling are the TCP path's.
type sqlOverHTTP struct {
	s     *Server
	o     HTTPOptions
	pools *lru.Cache[[32]byte, *pgxpool.Pool]
}

func newSQLOverHTTP(s *Server, o HTTPOptions) *sqlOverHTTP {
	pools, _ := lru.NewWithEvict(sqlPools, func(_ [32]byte, p *pgxpool.Pool) { go p.Close() })
	sq := &sqlOverHTTP{s: s, o: o, pools: pools}
	s.sql.Store(sq)
	return sq
}

func (sq *sqlOverHTTP) close() { sq.pools.Purge() }

// sqlQuery is one query of a request body.
type sqlQuery struct {
	Query  string            `json:"query"`
	Params []json.RawMessage `json:"params"`
}

// sqlRequest is a request body: one query, or a batch run in one
// transaction.
type sqlRequest struct {
	sqlQuery
	Queries []sqlQuery `json:"queries"`
}

// sqlField is a result column as node-postgres describes it.
type sqlField struct {
	Name             string `json:"name"`
	TableID          uint32 `json:"tableID"`
	ColumnID         uint16 `json:"columnID"`
	DataTypeID       uint32 `json:"dataTypeID"`
	DataTypeSize     int16  `json:"dataTypeSize"`
	DataTypeModifier int32  `json:"dataTypeModifier"`
	Format           string `json:"format"`
}

// sqlResult is one query's result as the driver expects it.
type sqlResult struct {
	Command    string     `json:"command"`
	RowCount   int64      `json:"rowCount"`
	Rows       []any      `json:"rows"`
	Fields     []sqlField `json:"fields"`
	RowAsArray bool       `json:"rowAsArray"`
}

func (sq *sqlOverHTTP) serve(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), sq.o.RequestTimeout)
	defer cancel()
	connStr := r.Header.Get("Neon-Connection-String")
	if connStr == "" {
		sqlError(w, http.StatusBadRequest, &pgwire.Error{Code: pgwire.CodeBadRoute, Message: "missing the Neon-Connection-String header",
			Hint: "Send the connection string (postgresql://user:password@host/db) in Neon-Connection-String, as the serverless driver does."})
		return
	}
	var req sqlRequest
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, sq.o.MaxRequestBytes))
	if err == nil {
		err = json.Unmarshal(body, &req)
	}
	if err != nil {
		sqlError(w, http.StatusBadRequest, &pgwire.Error{Code: pgwire.CodeProtocolViolation,
			Message: fmt.Sprintf(`invalid request body: %v (want {"query": "...", "params": [...]} or {"queries": [...]})`, err)})
		return
	}
	ci, err := parseConnString(connStr)
	if err != nil {
		sqlError(w, http.StatusBadRequest, err)
		return
	}
	// Each request is checked against the branch's allow list, as a new
	// connection would be: a pooled connection may predate a change.
	if e := sq.ipRefusal(ctx, r, ci); e != nil {
		sqlError(w, http.StatusBadRequest, e)
		return
	}
	pool, err := sq.pool(r, connStr, ci)
	if err != nil {
		sqlError(w, http.StatusBadRequest, err)
		return
	}
	c, err := pool.Acquire(ctx)
	if err != nil {
		sq.fail(w, ctx, err)
		return
	}
	defer c.Release()
	pc := c.Conn().PgConn()
	arrays := r.Header.Get("Neon-Array-Mode") == "true"
	budget := sq.o.MaxResponseBytes
	var out any
	if req.Queries != nil {
		var results []*sqlResult
		results, err = sq.batch(ctx, pc, r.Header, req.Queries, arrays, &budget)
		out = map[string]any{"results": results}
	} else {
		out, err = sq.run(ctx, pc, req.sqlQuery, arrays, &budget)
	}
	if err != nil {
		if ctx.Err() != nil || pc.IsBusy() {
			// Cancelled mid-query: the connection's state is unknown.
			c.Conn().PgConn().Close(context.Background())
		}
		sq.fail(w, ctx, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

// run executes one query (extended protocol, text results).
func (sq *sqlOverHTTP) run(ctx context.Context, pc *pgconn.PgConn, q sqlQuery, arrays bool, budget *int64) (*sqlResult, error) {
	params := make([][]byte, len(q.Params))
	for i, p := range q.Params {
		v, err := paramText(p)
		if err != nil {
			return nil, &pgwire.Error{Code: pgwire.CodeProtocolViolation, Message: fmt.Sprintf("parameter $%d: %v", i+1, err)}
		}
		params[i] = v
	}
	rr := pc.ExecParams(ctx, q.Query, params, nil, nil, nil)
	res := &sqlResult{Rows: []any{}, Fields: []sqlField{}, RowAsArray: arrays}
	fds := rr.FieldDescriptions()
	for _, fd := range fds {
		res.Fields = append(res.Fields, sqlField{Name: fd.Name, TableID: fd.TableOID, ColumnID: fd.TableAttributeNumber,
			DataTypeID: fd.DataTypeOID, DataTypeSize: fd.DataTypeSize, DataTypeModifier: fd.TypeModifier, Format: "text"})
	}
	for rr.NextRow() {
		vals := rr.Values()
		for _, v := range vals {
			*budget -= int64(len(v)) + 8
		}
		if *budget < 0 {
			_, _ = rr.Close()
			return nil, &pgwire.Error{Code: "54000", Message: fmt.Sprintf("the response is larger than the limit of %d bytes (http.max_response_bytes)", sq.o.MaxResponseBytes),
				Hint: "Select fewer rows or columns, or page through them with LIMIT/OFFSET."}
		}
		if arrays {
			row := make([]any, len(vals))
			for i, v := range vals {
				if v != nil {
					row[i] = string(v)
				}
			}
			res.Rows = append(res.Rows, row)
		} else {
			row := make(map[string]any, len(vals))
			for i, v := range vals {
				if v != nil {
					row[fds[i].Name] = string(v)
				} else {
					row[fds[i].Name] = nil
				}
			}
			res.Rows = append(res.Rows, row)
		}
	}
	tag, err := rr.Close()
	if err != nil {
		return nil, err
	}
	res.Command, _, _ = strings.Cut(tag.String(), " ")
	res.RowCount = tag.RowsAffected()
	return res, nil
}

// batch runs queries in one transaction with the isolation the headers
// ask for; the first error rolls it back.
func (sq *sqlOverHTTP) batch(ctx context.Context, pc *pgconn.PgConn, h http.Header, qs []sqlQuery, arrays bool, budget *int64) ([]*sqlResult, error) {
	begin, err := beginStatement(h)
	if err != nil {
		return nil, err
	}
	if err := pc.Exec(ctx, begin).Close(); err != nil {
		return nil, err
	}
	results := make([]*sqlResult, 0, len(qs))
	for _, q := range qs {
		res, err := sq.run(ctx, pc, q, arrays, budget)
		if err != nil {
			if ctx.Err() == nil {
				_ = pc.Exec(ctx, "ROLLBACK").Close()
			}
			return nil, err
		}
		results = append(results, res)
	}
	if err := pc.Exec(ctx, "COMMIT").Close(); err != nil {
		return nil, err
	}
	return results, nil
}

// beginStatement is the BEGIN of a batch from the Neon-Batch-* headers.
func beginStatement(h http.Header) (string, error) {
	b := "BEGIN"
	if iso := h.Get("Neon-Batch-Isolation-Level"); iso != "" {
		levels := map[string]string{"serializable": "SERIALIZABLE", "repeatableread": "REPEATABLE READ",
			"readcommitted": "READ COMMITTED", "readuncommitted": "READ UNCOMMITTED"}
		l, ok := levels[strings.ToLower(strings.NewReplacer(" ", "", "_", "").Replace(iso))]
		if !ok {
			return "", &pgwire.Error{Code: pgwire.CodeProtocolViolation, Message: fmt.Sprintf("unknown Neon-Batch-Isolation-Level %q", iso),
				Hint: "Use Serializable, RepeatableRead, ReadCommitted or ReadUncommitted."}
		}
		b += " ISOLATION LEVEL " + l
	}
	if h.Get("Neon-Batch-Read-Only") == "true" {
		b += " READ ONLY"
	}
	if h.Get("Neon-Batch-Deferrable") == "true" {
		b += " DEFERRABLE"
	}
	return b, nil
}

// paramText is a JSON parameter as PostgreSQL text (nil: NULL). The
// driver sends strings; numbers and booleans are taken as written, arrays
// and objects as JSON.
func paramText(p json.RawMessage) ([]byte, error) {
	if len(p) == 0 || string(p) == "null" {
		return nil, nil
	}
	if p[0] == '"' {
		var s string
		if err := json.Unmarshal(p, &s); err != nil {
			return nil, err
		}
		return []byte(s), nil
	}
	return []byte(p), nil
}

// connInfo is what /sql uses of a connection string.
type connInfo struct {
	user, password, database, host string
	params                         map[string]string // options, application_name
}

// parseConnString reads a postgresql:// URL (never a file or the
// environment, unlike libpq's rules: the string comes from the network).
func parseConnString(connStr string) (connInfo, error) {
	u, err := url.Parse(connStr)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || u.User == nil {
		return connInfo{}, &pgwire.Error{Code: pgwire.CodeBadRoute, Message: "Neon-Connection-String is not a postgresql://user:password@host/db URL"}
	}
	password, ok := u.User.Password()
	if !ok || password == "" {
		return connInfo{}, &pgwire.Error{Code: pgwire.CodeInvalidPassword, Message: "the connection string has no password"}
	}
	ci := connInfo{user: u.User.Username(), password: password, database: strings.TrimPrefix(u.Path, "/"), host: u.Hostname(),
		params: map[string]string{"application_name": "neonproxy /sql"}}
	for _, k := range []string{"options", "application_name"} {
		if v := u.Query().Get(k); v != "" {
			ci.params[k] = v
		}
	}
	return ci, nil
}

// ipRefusal checks the branch ci routes to against its allow list. Routing
// or lookup errors are left to the session, which reports them.
func (sq *sqlOverHTTP) ipRefusal(ctx context.Context, r *http.Request, ci connInfo) *pgwire.Error {
	params := maps.Clone(ci.params)
	params["user"], params["database"] = ci.user, ci.database
	route, err := sq.s.opt.Resolver.Resolve(ci.host, params)
	if err != nil {
		return nil
	}
	br, err := sq.s.opt.Branches.Get(ctx, route.Branch)
	if err != nil {
		return nil
	}
	return sq.s.ipRefusal(ctx, br, clientIP(httpRemote(r)))
}

// pool returns the connection pool of (client address, connection
// string), creating it.
func (sq *sqlOverHTTP) pool(r *http.Request, connStr string, ci connInfo) (*pgxpool.Pool, error) {
	remote := httpRemote(r)
	// By address, not address and port: a client that opens a new HTTP
	// connection per request (curl, many edge runtimes) reuses the pool.
	who := remote.String()
	if ip := clientIP(remote); ip.IsValid() {
		who = ip.String()
	}
	key := sha256.Sum256([]byte(who + "\x00" + connStr))
	if p, ok := sq.pools.Get(key); ok {
		return p, nil
	}
	cfg, err := pgxpool.ParseConfig("sslmode=disable")
	if err != nil {
		return nil, err
	}
	cc := cfg.ConnConfig
	cc.User, cc.Password, cc.Database = ci.user, ci.password, ci.database
	cc.Host, cc.Port, cc.TLSConfig, cc.Fallbacks = "neonproxy-http", 5432, nil, nil
	cc.RuntimeParams = maps.Clone(ci.params)
	cc.LookupFunc = func(_ context.Context, host string) ([]string, error) { return []string{host}, nil }
	sni, tlsOn := ci.host, r.TLS != nil
	cc.DialFunc = func(ctx context.Context, _, _ string) (net.Conn, error) {
		a, b := net.Pipe()
		conn := &edgeConn{Conn: b, remote: remote}
		go sq.s.serveEdge(&session{conn: conn, raw: conn, result: "ok", edge: true, sqlOverHTTP: true, tls: tlsOn, sni: sni})
		return a, nil
	}
	// Idle pooled connections hold no server connection (transaction
	// pooling), only a session here.
	cfg.MaxConns, cfg.MinConns = 8, 0
	cfg.MaxConnIdleTime = time.Minute
	p, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, err
	}
	if prev, ok, _ := sq.pools.PeekOrAdd(key, p); ok {
		p.Close()
		return prev, nil
	}
	return p, nil
}

// fail answers a failed request: PostgreSQL's error fields as the driver
// reads them (HTTP 400), or a timeout.
func (sq *sqlOverHTTP) fail(w http.ResponseWriter, ctx context.Context, err error) {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		sqlError(w, http.StatusBadRequest, &pgwire.Error{Code: "57014",
			Message: fmt.Sprintf("the request took longer than %s (http.request_timeout) and was cancelled", sq.o.RequestTimeout)})
		return
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		var we *pgwire.Error
		if !errors.As(err, &we) {
			sq.s.log.Warn("/sql request failed", zap.Error(err))
			sqlError(w, http.StatusBadRequest, &pgwire.Error{Code: pgwire.CodeCannotConnectNow, Message: err.Error()})
			return
		}
	}
	sqlError(w, http.StatusBadRequest, err)
}

// sqlError writes err as the JSON error body the driver reads: message
// and PostgreSQL's error fields.
func sqlError(w http.ResponseWriter, status int, err error) {
	body := map[string]any{"message": err.Error()}
	var pe *pgconn.PgError
	var we *pgwire.Error
	switch {
	case errors.As(err, &pe):
		body = map[string]any{"message": pe.Message, "severity": pe.Severity, "code": pe.Code, "detail": pe.Detail,
			"hint": pe.Hint, "where": pe.Where, "schema": pe.SchemaName, "table": pe.TableName, "column": pe.ColumnName,
			"dataType": pe.DataTypeName, "constraint": pe.ConstraintName, "file": pe.File, "routine": pe.Routine,
			"internalQuery": pe.InternalQuery}
		if pe.Position > 0 {
			body["position"] = fmt.Sprint(pe.Position)
		}
		if pe.InternalPosition > 0 {
			body["internalPosition"] = fmt.Sprint(pe.InternalPosition)
		}
		if pe.Line > 0 {
			body["line"] = fmt.Sprint(pe.Line)
		}
	case errors.As(err, &we):
		body = map[string]any{"message": we.Message, "severity": "ERROR", "code": we.Code, "hint": we.Hint}
	}
	for k, v := range body {
		if v == "" {
			delete(body, k)
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}
