package proxy

import (
	"context"
	"fmt"
	"net"
	"syscall"
	"time"
)

// Client TCP keepalive: a client that vanished without a FIN (a laptop that
// slept, a NAT that dropped the flow) is noticed after about
// clientKeepIdle + clientKeepCount*clientKeepIntvl (2.5 minutes), the same
// as Go's default for accepted connections.
const (
	clientKeepIdle  = 15 * time.Second
	clientKeepIntvl = 15 * time.Second
	clientKeepCount = 9
)

// Listen opens the client listener. Keepalive is set once on the listening
// socket, whose accepted sockets inherit it on Linux, rather than by four
// setsockopt calls on every accepted connection as net.Listen does: with a
// connection per request that is most of the system calls of a login.
func Listen(ctx context.Context, addr string) (net.Listener, error) {
	lc := net.ListenConfig{
		KeepAlive: -1, // inherited from the listener (below), not set per connection
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				for _, o := range [...]struct{ level, opt, v int }{
					{syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1},
					{syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, int(clientKeepIdle / time.Second)},
					{syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, int(clientKeepIntvl / time.Second)},
					{syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, clientKeepCount},
				} {
					if serr = syscall.SetsockoptInt(int(fd), o.level, o.opt, o.v); serr != nil {
						return
					}
				}
			})
			if err != nil {
				return err
			}
			if serr != nil {
				return fmt.Errorf("set keepalive on the listener: %w", serr)
			}
			return nil
		},
	}
	return lc.Listen(ctx, "tcp", addr)
}
