package proxy

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/xdg-go/scram"

	"github.com/neonproxy/neonproxy/internal/pgwire"
	"github.com/neonproxy/neonproxy/wake"
)

const (
	mechSCRAM     = "SCRAM-SHA-256"
	mechSCRAMPlus = "SCRAM-SHA-256-PLUS"
)

// errAuthFailed is what every failed exchange becomes for the client,
// whether the password was wrong or the role does not exist, so that role
// names cannot be probed.
func errAuthFailed(user string, cause error) *pgwire.Error {
	return &pgwire.Error{
		Code:    pgwire.CodeInvalidPassword,
		Message: fmt.Sprintf("password authentication failed for user %q", user),
		Err:     cause,
	}
}

// ParseVerifier reads PostgreSQL's SCRAM-SHA-256 verifier format:
// SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> (base64 parts).
func ParseVerifier(v string) (scram.StoredCredentials, error) {
	var sc scram.StoredCredentials
	rest, ok := strings.CutPrefix(v, mechSCRAM+"$")
	if !ok {
		return sc, errors.New("not a SCRAM-SHA-256 verifier")
	}
	parts := strings.Split(rest, "$")
	if len(parts) != 2 {
		return sc, errors.New("malformed SCRAM verifier")
	}
	iterStr, saltB64, ok1 := strings.Cut(parts[0], ":")
	storedB64, serverB64, ok2 := strings.Cut(parts[1], ":")
	if !ok1 || !ok2 {
		return sc, errors.New("malformed SCRAM verifier")
	}
	iters, err := strconv.Atoi(iterStr)
	if err != nil || iters < 1 {
		return sc, errors.New("malformed SCRAM iteration count")
	}
	salt, err1 := base64.StdEncoding.DecodeString(saltB64)
	stored, err2 := base64.StdEncoding.DecodeString(storedB64)
	server, err3 := base64.StdEncoding.DecodeString(serverB64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return sc, fmt.Errorf("malformed SCRAM verifier: %w", err)
	}
	sc.Salt, sc.Iters, sc.StoredKey, sc.ServerKey = string(salt), iters, stored, server
	return sc, nil
}

// mockCredentials are used for roles without a SCRAM verifier: the exchange
// runs to the end and fails exactly as a wrong password would, with a salt
// that is stable per role (a probing client sees no difference between
// attempts) and unpredictable without the proxy's secret.
func (a *authenticator) mockCredentials(branch, user string) scram.StoredCredentials {
	mac := hmac.New(sha256.New, a.mockSecret[:])
	mac.Write([]byte(branch + "\x00" + user))
	sum := mac.Sum(nil)
	random := make([]byte, 64)
	_, _ = rand.Read(random)
	return scram.StoredCredentials{
		KeyFactors: scram.KeyFactors{Salt: string(sum[:16]), Iters: 4096},
		StoredKey:  random[:32],
		ServerKey:  random[32:],
	}
}

// authenticator reads role verifiers from each branch's own pg_authid
// through a small per-compute pool of superuser connections over the
// compute's unix socket. Verifiers are read at every connection rather than
// cached: the query costs about 0.1 ms on a pooled connection, and a cache
// would make ALTER ROLE ... PASSWORD take effect only after a failed login.
type authenticator struct {
	mockSecret [32]byte
	mu         struct {
		sync.Mutex
		pools map[string]*controlPool // by branch
	}
}

type controlPool struct {
	generation uint64
	pool       *pgxpool.Pool
}

func newAuthenticator() (*authenticator, error) {
	a := &authenticator{}
	if _, err := rand.Read(a.mockSecret[:]); err != nil {
		return nil, err
	}
	a.mu.pools = map[string]*controlPool{}
	return a, nil
}

// control returns the pool for branch's current compute generation,
// replacing (and closing outside the lock) one for an older generation.
func (a *authenticator) control(branch string, ep wake.Endpoint) (*pgxpool.Pool, error) {
	a.mu.Lock()
	cp := a.mu.pools[branch]
	if cp != nil && cp.generation == ep.Generation {
		a.mu.Unlock()
		return cp.pool, nil
	}
	cfg, err := pgxpool.ParseConfig("sslmode=disable")
	if err != nil {
		a.mu.Unlock()
		return nil, err
	}
	cc := cfg.ConnConfig
	cc.Host, cc.Port, cc.User, cc.Database = ep.SocketDir, uint16(ep.Port), "postgres", "postgres"
	cc.Fallbacks = nil
	cc.RuntimeParams = map[string]string{"application_name": "neonproxy-auth"}
	cc.DefaultQueryExecMode = pgx.QueryExecModeCacheStatement
	cfg.MaxConns = 2
	cfg.MinConns = 0
	// Short idle time: a control connection must not keep a database busy
	// (DROP DATABASE postgres) longer than needed.
	cfg.MaxConnIdleTime = 10 * time.Second
	// No liveness ping: pgxpool's default pings a connection idle for over
	// a second, a round trip more for every login of a client that
	// connects every few seconds (the serverless pattern). The pool is one
	// compute start's, so a connection dies only when its backend is
	// terminated; lookup retries that once on a fresh one.
	cfg.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg) // lazy: no I/O here
	if err != nil {
		a.mu.Unlock()
		return nil, err
	}
	a.mu.pools[branch] = &controlPool{generation: ep.Generation, pool: pool}
	a.mu.Unlock()
	if cp != nil {
		go cp.pool.Close()
	}
	return pool, nil
}

// lookup returns user's credentials on branch, or mock credentials (and
// found=false) when the role has no usable SCRAM verifier.
func (a *authenticator) lookup(ctx context.Context, branch string, ep wake.Endpoint, user string) (scram.StoredCredentials, bool, error) {
	pool, err := a.control(branch, ep)
	if err != nil {
		return scram.StoredCredentials{}, false, fmt.Errorf("auth lookup on branch %s: %w", branch, err)
	}
	var verifier *string
	query := func() error {
		return pool.QueryRow(ctx,
			`SELECT rolpassword FROM pg_catalog.pg_authid
			 WHERE rolname = $1 AND rolcanlogin AND (rolvaliduntil IS NULL OR rolvaliduntil > now())`,
			user).Scan(&verifier)
	}
	if err = query(); deadConn(ctx, err) {
		err = query() // pgxpool dropped the dead one
	}
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return a.mockCredentials(branch, user), false, nil
	case err != nil:
		return scram.StoredCredentials{}, false, fmt.Errorf("auth lookup on branch %s: %w", branch, err)
	case verifier == nil:
		return a.mockCredentials(branch, user), false, nil
	}
	sc, err := ParseVerifier(*verifier)
	if err != nil {
		// md5 or plaintext passwords: SCRAM is the only method offered.
		return a.mockCredentials(branch, user), false, nil
	}
	return sc, true, nil
}

// deadConn reports whether err is the death of the pooled connection (its
// backend terminated: 57P01 and the like, or the socket gone) rather than
// PostgreSQL's answer to the query.
func deadConn(ctx context.Context, err error) bool {
	if err == nil || errors.Is(err, pgx.ErrNoRows) || ctx.Err() != nil {
		return false
	}
	var pe *pgconn.PgError
	return !errors.As(err, &pe) || strings.HasPrefix(pe.Code, "57P")
}

func (a *authenticator) forget(branch string) {
	a.mu.Lock()
	cp := a.mu.pools[branch]
	delete(a.mu.pools, branch)
	a.mu.Unlock()
	if cp != nil {
		cp.pool.Close()
	}
}

func (a *authenticator) close() {
	a.mu.Lock()
	pools := a.mu.pools
	a.mu.pools = map[string]*controlPool{}
	a.mu.Unlock()
	for _, cp := range pools {
		cp.pool.Close()
	}
}

// serverEndpointBinding is the tls-server-end-point channel binding (RFC
// 5929 section 4.1) of the proxy's own certificate, for SCRAM-SHA-256-PLUS:
// the certificate hashed with its signature's hash, SHA-256 for MD5/SHA-1.
func serverEndpointBinding(cfg *tls.Config) (scram.ChannelBinding, bool) {
	cert := currentCert(cfg)
	if cert == nil || cert.Leaf == nil {
		return scram.ChannelBinding{}, false
	}
	leaf := cert.Leaf
	var sum []byte
	switch leaf.SignatureAlgorithm {
	case x509.SHA384WithRSA, x509.SHA384WithRSAPSS, x509.ECDSAWithSHA384:
		s := sha512.Sum384(leaf.Raw)
		sum = s[:]
	case x509.SHA512WithRSA, x509.SHA512WithRSAPSS, x509.ECDSAWithSHA512:
		s := sha512.Sum512(leaf.Raw)
		sum = s[:]
	case x509.PureEd25519:
		return scram.ChannelBinding{}, false // no hash defined: offer plain SCRAM only
	default:
		s := sha256.Sum256(leaf.Raw)
		sum = s[:]
	}
	return scram.ChannelBinding{Type: scram.ChannelBindingTLSServerEndpoint, Data: sum}, true
}

// credsFunc supplies the role's credentials once the client's first SCRAM
// message has arrived, so the lookup can overlap that round trip.
type credsFunc func() (scram.StoredCredentials, error)

// scramExchange runs SASL SCRAM-SHA-256 with the client over be, checking
// the proof against the credentials creds returns. When the client proved
// the password it returns the encoded AuthenticationSASLFinal, which the
// caller sends in one write with AuthenticationOk and what follows (one
// write per login less); an error from creds is returned as it is.
func scramExchange(be *pgproto3.Backend, user string, creds credsFunc, cb scram.ChannelBinding, plus bool) ([]byte, error) {
	mechs := []string{mechSCRAM}
	if plus {
		mechs = []string{mechSCRAMPlus, mechSCRAM}
	}
	be.Send(&pgproto3.AuthenticationSASL{AuthMechanisms: mechs})
	if err := be.Flush(); err != nil {
		return nil, err
	}
	if err := be.SetAuthType(pgproto3.AuthTypeSASL); err != nil {
		return nil, err
	}
	msg, err := be.Receive()
	if err != nil {
		return nil, fmt.Errorf("read SASLInitialResponse: %w", err)
	}
	init, ok := msg.(*pgproto3.SASLInitialResponse)
	if !ok {
		return nil, &pgwire.Error{Code: pgwire.CodeProtocolViolation, Message: fmt.Sprintf("expected SASL response, got %T", msg)}
	}
	var lookupErr error
	srv, err := scram.SHA256.NewServer(func(string) (scram.StoredCredentials, error) {
		c, err := creds()
		lookupErr = err
		return c, err
	})
	if err != nil {
		return nil, err
	}
	var conv *scram.ServerConversation
	switch {
	case init.AuthMechanism == mechSCRAMPlus && plus:
		conv = srv.NewConversationWithChannelBindingRequired(cb)
	case init.AuthMechanism == mechSCRAM && plus:
		conv = srv.NewConversationWithChannelBinding(cb)
	case init.AuthMechanism == mechSCRAM:
		conv = srv.NewConversation()
	default:
		return nil, &pgwire.Error{Code: pgwire.CodeProtocolViolation, Message: fmt.Sprintf("unsupported SASL mechanism %q", init.AuthMechanism)}
	}
	serverFirst, err := conv.Step(string(init.Data))
	if lookupErr != nil {
		return nil, lookupErr
	}
	if err != nil {
		return nil, errAuthFailed(user, fmt.Errorf("scram client-first: %w", err))
	}
	be.Send(&pgproto3.AuthenticationSASLContinue{Data: []byte(serverFirst)})
	if err := be.Flush(); err != nil {
		return nil, err
	}
	if err := be.SetAuthType(pgproto3.AuthTypeSASLContinue); err != nil {
		return nil, err
	}
	msg, err = be.Receive()
	if err != nil {
		return nil, fmt.Errorf("read SASLResponse: %w", err)
	}
	resp, ok := msg.(*pgproto3.SASLResponse)
	if !ok {
		return nil, &pgwire.Error{Code: pgwire.CodeProtocolViolation, Message: fmt.Sprintf("expected SASL response, got %T", msg)}
	}
	serverFinal, err := conv.Step(string(resp.Data))
	if err != nil || !conv.Valid() {
		return nil, errAuthFailed(user, fmt.Errorf("scram client-final: %w", err))
	}
	return (&pgproto3.AuthenticationSASLFinal{Data: []byte(serverFinal)}).Encode(nil)
}
