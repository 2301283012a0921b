package proxy

import (
	"context"
	"fmt"
	"io"
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
// copies bytes. The owner's BackendKeyData reaches the client unchanged and
// is remembered here too, so a CancelRequest for it works at either node.

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
	up, err := (&net.Dialer{}).DialContext(ctx, "tcp", owner)
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
	fe := pgproto3.NewFrontend(up, up)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: relayParams(rt, params)})
	if err := fe.Flush(); err != nil {
		return fmt.Errorf("relay to %s: %w", owner, err)
	}
	ss.result = "relayed"
	_ = ss.raw.SetDeadline(time.Time{})
	s.log.Debug("relaying client to the node that runs its branch", zap.String("branch", rt.Branch), zap.String("node", owner))

	toOwner := make(chan error, 1)
	go func() {
		_, err := io.Copy(up, ss.conn)
		if tc, ok := up.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		toOwner <- err
	}()
	// The owner's messages up to the first ReadyForQuery are decoded, to
	// learn the key it gave the client; then bytes are copied as they are.
	t := &cancelTarget{branch: rt.Branch}
	var registered uint32
	defer func() {
		if registered != 0 {
			s.cancel.revoke(registered)
		}
	}()
	var buf []byte
	for {
		msg, err := fe.Receive()
		if err != nil {
			_ = ss.conn.Close()
			<-toOwner
			return nil // the owner or the client ended the session
		}
		if k, ok := msg.(*pgproto3.BackendKeyData); ok {
			t.setNode(owner, k.ProcessID, append([]byte(nil), k.SecretKey...))
			copy(t.secret[:], k.SecretKey)
			if len(k.SecretKey) == len(t.secret) && s.cancel.register(k.ProcessID, t) {
				registered = k.ProcessID
			}
		}
		if buf, err = msg.Encode(buf[:0]); err != nil {
			return err
		}
		if _, err := ss.conn.Write(buf); err != nil {
			<-toOwner
			return nil
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	// Nothing of the owner's can be buffered in fe past ReadyForQuery: it
	// sends no more until the client, which has only now seen
	// ReadyForQuery, sends a query.
	_, _ = io.Copy(ss.conn, up)
	_ = ss.conn.Close()
	<-toOwner
	return nil // the session ended, on one side or the other
}
