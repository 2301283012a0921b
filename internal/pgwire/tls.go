package pgwire

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// StartTLS asks the server at the other end of conn for TLS, as a
// PostgreSQL client does (SSLRequest, then the handshake), and returns the
// TLS connection. A server that declines is an error: the caller wanted
// the traffic encrypted.
func StartTLS(ctx context.Context, conn net.Conn, cfg *tls.Config) (*tls.Conn, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
		defer conn.SetDeadline(time.Time{})
	}
	req, err := (&pgproto3.SSLRequest{}).Encode(nil)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Write(req); err != nil {
		return nil, fmt.Errorf("SSLRequest: %w", err)
	}
	var answer [1]byte
	if _, err := io.ReadFull(conn, answer[:]); err != nil {
		return nil, fmt.Errorf("SSLRequest: %w", err)
	}
	if answer[0] != 'S' {
		return nil, fmt.Errorf("the server declined TLS (answered %q)", answer[0])
	}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	return tc, nil
}
