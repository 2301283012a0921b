package proxy

import (
	"context"
	"fmt"
	"maps"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/neonproxy/neonproxy/internal/pgwire"
	"github.com/neonproxy/neonproxy/router"
)

// Relaying (distributed mode): a client whose branch runs on another node
// is passed to that node's front door, which authenticates it against the
// branch's verifiers and serves it as its own client; this node only
// copies bytes. The owner's BackendKeyData reaches the client unchanged; it
// names the owner, so a CancelRequest for it works at any node.

// relayDialTimeout bounds the connection to the owner node.
const relayDialTimeout = 5 * time.Second

// relayParams is the startup the owner node gets: the route made explicit
// (endpoint= in options, the resolved database), so the owner routes it the
// same way whatever key the client used here (an SNI does not survive the
// hop).
func relayParams(rt router.Route, params map[string]string) map[string]string {
	out := maps.Clone(params)
	name := rt.Branch
	if rt.Pooler {
		name += router.PoolerSuffix
	}
	out["options"] = "endpoint=" + name
	if rt.Options != "" {
		out["options"] = rt.Options + " endpoint=" + name
	}
	out["database"] = rt.Database
	return out
}

// relay connects the client to owner's front door and copies bytes both
// ways until either side ends.
func (s *Server) relay(ss *session, rt router.Route, params map[string]string, owner string) error {
	ctx, cancel := context.WithTimeout(context.Background(), relayDialTimeout)
	up, err := s.dial(ctx, "tcp", owner)
	cancel()
	if err != nil {
		return s.fail(ss, "wake_failed", &pgwire.Error{
			Code:    pgwire.CodeCannotConnectNow,
			Message: fmt.Sprintf("branch %q runs on neonproxy node %s, which cannot be reached", rt.Branch, owner),
			Hint:    "Retry in a few seconds: if that node is gone, another node starts the branch once Consul has noticed.",
			Err:     err,
		})
	}
	defer up.Close()
	startup, err := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: relayParams(rt, params)}).Encode(nil)
	if err != nil {
		return err
	}
	if _, err := up.Write(startup); err != nil {
		return fmt.Errorf("relay to %s: %w", owner, err)
	}
	ss.result = "relayed"
	_ = ss.raw.SetDeadline(time.Time{})
	s.log.Debug("relaying client to the node that runs its branch", zap.String("branch", rt.Branch), zap.String("node", owner))

	// The owner's cancel key names the owner (see nodeOfPID): a cancel
	// sent here is forwarded there.
	pipe(ss.conn, up)
	return nil // the session ended, on one side or the other
}

// dialFunc connects to a compute's unix socket or a node's front door.
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

var _ dialFunc = (*Server)(nil).dial

// dial connects to addr; another node's front door ("tcp") is reached
// over TLS when Options.NodeTLS is set.
func (s *Server) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil || network != "tcp" || s.opt.NodeTLS == nil {
		return conn, err
	}
	cfg := s.opt.NodeTLS.Clone()
	if cfg.ServerName == "" {
		if cfg.ServerName, _, err = net.SplitHostPort(addr); err != nil {
			conn.Close()
			return nil, err
		}
	}
	tc, err := pgwire.StartTLS(ctx, conn, cfg)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("TLS to node %s: %w", addr, err)
	}
	return tc, nil
}
