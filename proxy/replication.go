package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"
	"go.uber.org/zap"

	"github.com/neonproxy/neonproxy/internal/pgwire"
	"github.com/neonproxy/neonproxy/wake"
)

// Keepers on other machines cannot reach a compute's unix socket, so they
// stream through the front door of the node that runs it: a replication
// connection (replication=true) of the keepers' role, over TLS, proves
// the keepers' shared secret with SCRAM (channel binding offered), and is
// then joined to the compute's socket as a replication connection of the
// superuser. The compute's own AuthenticationOk and everything after it
// reach the keeper unchanged. Nothing wakes a compute for a keeper.

// ReplicationAccess lets WAL keepers stream computes through the front
// door.
type ReplicationAccess struct {
	// User is the role the keepers log in as.
	User string
	// Credentials are the SCRAM credentials of their shared secret.
	Credentials scram.StoredCredentials
	// Endpoint is the compute of branch this node runs (ok false: none
	// is up). Consulted after authentication; never wakes a compute.
	Endpoint func(branch string) (wake.Endpoint, bool)
}

// replication serves a keeper's replication connection.
func (s *Server) replication(ss *session, params map[string]string) error {
	ra := s.opt.Replication
	if ra == nil || params["user"] != ra.User {
		return s.fail(ss, "protocol_error", &pgwire.Error{
			Code:    pgwire.CodeFeatureNotSupported,
			Message: "replication connections are not supported through neonproxy",
		})
	}
	ss.route.User = ra.User
	if !ss.tls {
		return s.fail(ss, "tls_required", &pgwire.Error{
			Code:    pgwire.CodeInvalidAuthSpec,
			Message: "replication connections need TLS",
			Hint:    "Connect with sslmode=require.",
		})
	}
	route, err := s.opt.Resolver.Resolve(ss.sni, params)
	if err != nil {
		return s.fail(ss, "bad_route", err)
	}
	ss.route = route
	be := pgproto3.NewBackend(ss.conn, ss.conn)
	cb, plus := serverEndpointBinding(s.opt.TLS)
	creds := func() (scram.StoredCredentials, error) { return ra.Credentials, nil }
	final, err := scramExchange(be, ra.User, creds, cb, plus)
	if err != nil {
		return s.fail(ss, "auth_failed", err)
	}
	if _, err := ss.conn.Write(final); err != nil {
		return err
	}
	ep, ok := ra.Endpoint(route.Branch)
	if !ok {
		return s.fail(ss, "wake_failed", &pgwire.Error{
			Code:    pgwire.CodeCannotConnectNow,
			Message: fmt.Sprintf("branch %q has no compute running on this node", route.Branch),
			Hint:    "Keepers stream a compute through the node that starts it; this one does not run it now.",
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), relayDialTimeout)
	up, err := s.dial(ctx, "unix", ep.SocketPath())
	cancel()
	if err != nil {
		return s.fail(ss, "wake_failed", &pgwire.Error{Code: pgwire.CodeCannotConnectNow,
			Message: fmt.Sprintf("branch %q: its compute cannot be reached", route.Branch), Err: err})
	}
	defer up.Close()
	startup, err := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{
		"user": "postgres", "database": "postgres", "replication": params["replication"],
		"application_name": params["application_name"],
	}}).Encode(nil)
	if err != nil {
		return err
	}
	if _, err := up.Write(startup); err != nil {
		return fmt.Errorf("replication to branch %s: %w", route.Branch, err)
	}
	ss.result = "replication"
	ss.keeper.Store(true)
	_ = ss.raw.SetDeadline(time.Time{})
	s.log.Info("keeper streaming through the front door", zap.String("branch", route.Branch),
		zap.String("keeper", params["application_name"]), zap.String("client", ss.raw.RemoteAddr().String()))
	pipe(ss.conn, up)
	return nil
}

// pipe copies bytes both ways until either side ends, then closes both.
func pipe(client, up net.Conn) {
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(up, client)
		if cw, ok := up.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		close(done)
	}()
	_, _ = io.Copy(client, up)
	_ = client.Close()
	<-done
}
