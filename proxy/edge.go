package proxy

import (
	"bytes"
	"context"
	"crypto/hmac"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"
	"go.uber.org/zap"

	"github.com/neonproxy/neonproxy/internal/pgwire"
)

// HTTPOptions configure http_listen (HTTPHandler).
type HTTPOptions struct {
	// RequestTimeout bounds one POST /sql request, connecting included
	// (default 30s).
	RequestTimeout time.Duration
	// MaxResponseBytes bounds a /sql response body (default 10 MiB).
	MaxResponseBytes int64
	// MaxRequestBytes bounds a /sql request body (default 10 MiB).
	MaxRequestBytes int64
}

// HTTPHandler serves http_listen for serverless drivers (Neon's
// @neondatabase/serverless): a WebSocket upgrade on any path is a pgwire
// tunnel, and POST /sql runs queries sent as JSON. Both go through the same
// front door as TCP clients: routing, allow lists, authentication, wake,
// pooling.
func (s *Server) HTTPHandler(o HTTPOptions) http.Handler {
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 30 * time.Second
	}
	if o.MaxResponseBytes <= 0 {
		o.MaxResponseBytes = 10 << 20
	}
	if o.MaxRequestBytes <= 0 {
		o.MaxRequestBytes = 10 << 20
	}
	sq := newSQLOverHTTP(s, o)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.EqualFold(r.Header.Get("Upgrade"), "websocket"):
			s.serveWebSocket(w, r)
		case r.URL.Path == "/sql" && r.Method == http.MethodPost:
			sq.serve(w, r)
		case r.URL.Path == "/sql":
			w.Header().Set("Allow", "POST")
			sqlError(w, http.StatusMethodNotAllowed, &pgwire.Error{Code: pgwire.CodeProtocolViolation, Message: "use POST for /sql"})
		default:
			sqlError(w, http.StatusNotFound, &pgwire.Error{Code: pgwire.CodeProtocolViolation,
				Message: fmt.Sprintf("no such endpoint %s: POST /sql runs queries; a WebSocket upgrade opens a pgwire tunnel", r.URL.Path)})
		}
	})
}

// closeEdge closes the /sql pools, and with them their front-door
// sessions (Shutdown and Close).
func (s *Server) closeEdge() {
	if sq := s.sql.Load(); sq != nil {
		sq.close()
	}
}

// serveWebSocket accepts the upgrade and serves the pgwire stream inside
// it as a client session.
func (s *Server) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		// Browsers send the page's Origin; the pgwire password inside
		// authenticates, not the origin (as with Neon's proxy).
		InsecureSkipVerify: true,
	})
	if err != nil {
		s.log.Debug("websocket upgrade refused", zap.String("client", r.RemoteAddr), zap.Error(err))
		return
	}
	c.SetReadLimit(int64(s.opt.Limits.MaxPacket) + 1<<30) // pgwire frames its own messages
	// The session outlives the handler's request context.
	nc := websocket.NetConn(context.Background(), c, websocket.MessageBinary)
	s.serveEdge(edgeSession(nc, r))
}

// serveEdge serves an http_listen client session like an accepted one.
func (s *Server) serveEdge(ss *session) {
	if !s.track(ss.raw) {
		_ = ss.raw.Close()
		return
	}
	s.wg.Add(1)
	defer s.wg.Done()
	defer s.untrack(ss.raw)
	s.handleSession(ss)
}

// edgeSession is the session of a client that came over http_listen: the
// HTTP connection's address, TLS and host name stand for the client's.
func edgeSession(nc net.Conn, r *http.Request) *session {
	conn := &edgeConn{Conn: nc, remote: httpRemote(r)}
	ss := &session{conn: conn, raw: conn, result: "ok", edge: true, tls: r.TLS != nil}
	if r.TLS != nil {
		ss.sni = r.TLS.ServerName
	}
	if ss.sni == "" {
		ss.sni = hostOnly(r.Host)
	}
	return ss
}

// hostOnly strips the port from a Host header.
func hostOnly(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		return host
	}
	return h
}

// httpRemote is the client address of r (a *net.TCPAddr when it parses).
func httpRemote(r *http.Request) net.Addr {
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		return net.TCPAddrFromAddrPort(ap)
	}
	return edgeAddr(r.RemoteAddr)
}

// edgeConn is a tunnelled connection that reports the HTTP client's
// address, so throttling and allow lists see the real client.
type edgeConn struct {
	net.Conn
	remote net.Addr
}

func (c *edgeConn) RemoteAddr() net.Addr { return c.remote }

// edgeAddr is an address that did not parse as host:port.
type edgeAddr string

func (a edgeAddr) Network() string { return "http" }
func (a edgeAddr) String() string  { return string(a) }

// cleartextAllowed says whether an http_listen client may send its
// password in a PasswordMessage (what the serverless driver's default
// pipelineConnect: "password" does): only inside TLS, or from loopback.
func cleartextAllowed(ss *session) bool {
	if !ss.edge {
		return false
	}
	if ss.tls {
		return true
	}
	ip := clientIP(ss.raw.RemoteAddr())
	return ip.IsValid() && ip.IsLoopback()
}

// cleartextExchange asks for the password in clear and checks it against
// the role's SCRAM verifier (the salted password's StoredKey), as
// PostgreSQL does for password authentication with SCRAM verifiers. It
// reads exactly the PasswordMessage from conn: the driver pipelines its
// first query right behind it, and that belongs to the session.
func cleartextExchange(be *pgproto3.Backend, conn io.Reader, user string, creds credsFunc) error {
	be.Send(&pgproto3.AuthenticationCleartextPassword{})
	if err := be.Flush(); err != nil {
		return err
	}
	var hdr [5]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		return fmt.Errorf("read PasswordMessage: %w", err)
	}
	n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
	if hdr[0] != 'p' || n < 1 || n > maxPasswordMessage {
		return &pgwire.Error{Code: pgwire.CodeProtocolViolation, Message: fmt.Sprintf("expected a password message of at most %d bytes, got type %q of %d bytes", maxPasswordMessage, hdr[0], n)}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(conn, body); err != nil {
		return fmt.Errorf("read PasswordMessage: %w", err)
	}
	password, _, ok := bytes.Cut(body, []byte{0})
	if !ok {
		return &pgwire.Error{Code: pgwire.CodeProtocolViolation, Message: "password message without its terminating zero byte"}
	}
	stored, err := creds()
	if err != nil {
		return err
	}
	cl, err := scram.SHA256.NewClient(user, string(password), "")
	if err != nil {
		return errAuthFailed(user, err)
	}
	got := cl.GetStoredCredentials(stored.KeyFactors)
	if !hmac.Equal(got.StoredKey, stored.StoredKey) {
		return errAuthFailed(user, errors.New("wrong password"))
	}
	return nil
}

// maxPasswordMessage bounds a cleartext password message's body.
const maxPasswordMessage = 4096
