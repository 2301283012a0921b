package proxy

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"go.uber.org/zap"

	"github.com/neonproxy/neonproxy/internal/pgwire"
	"github.com/neonproxy/neonproxy/router"
)

// Limits are the connection caps a running Server takes new values of
// (SIGHUP); 0: no cap.
type Limits struct {
	// MaxClientConn caps client connections overall (53300 beyond).
	MaxClientConn int
	// MaxBranchClientConn caps one branch's client connections where the
	// branch sets no max_client_conn of its own.
	MaxBranchClientConn int
}

// SetLimits applies l to new connections.
func (s *Server) SetLimits(l Limits) {
	s.maxClient.Store(int64(l.MaxClientConn))
	s.maxBranchClient.Store(int64(l.MaxBranchClientConn))
}

// checkAllowedIP refuses a client whose address the branch's allow list
// does not hold, before any authentication or wake.
func (s *Server) checkAllowedIP(ctx context.Context, ss *session, br router.Branch) error {
	if e := s.ipRefusal(ctx, br, clientIP(ss.raw.RemoteAddr())); e != nil {
		return s.fail(ss, "ip_not_allowed", e)
	}
	return nil
}

// ipRefusal is what a client at ip is told when br's allow list does not
// hold it; nil when it may go on. A client relayed by another node of the
// cluster was checked by that node; a unix-socket client (no ip) is local.
func (s *Server) ipRefusal(ctx context.Context, br router.Branch, ip netip.Addr) *pgwire.Error {
	if len(br.AllowedIPs) == 0 || !ip.IsValid() {
		return nil
	}
	prefixes, err := router.ParseAllowedIPs(br.AllowedIPs)
	if err != nil {
		// The registry validates lists; one it holds anyway refuses all.
		s.log.Error("branch allow list unreadable: refusing its clients", zap.String("branch", br.Name), zap.Error(err))
	} else if router.Allowed(prefixes, ip) {
		return nil
	}
	if s.opt.Cluster != nil && s.opt.Cluster.IsNode(ctx, ip) {
		return nil
	}
	return &pgwire.Error{
		Code:    pgwire.CodeInvalidAuthSpec,
		Message: fmt.Sprintf("connection from IP address %s is not allowed to reach branch %q: the address is not in the branch's allowed IP list", ip, br.Name),
		Hint:    fmt.Sprintf("Connect from an allowed address, or add this one: `neonproxy branch set %s --allowed-ips %s`.", br.Name, strings.Join(append(append([]string{}, br.AllowedIPs...), ip.String()), ",")),
	}
}

// admitBranchClient counts a client of br against its connection cap
// (the branch's max_client_conn, else pool.max_branch_client_conn). done
// gives the place back; it is non-nil only when err is nil.
func (s *Server) admitBranchClient(ss *session, br router.Branch) (done func(), err error) {
	limit := int64(br.MaxClientConn)
	from := "the branch's max_client_conn"
	if limit == 0 {
		limit, from = s.maxBranchClient.Load(), "pool.max_branch_client_conn"
	}
	s.mu.Lock()
	n := s.mu.branchClients[br.Name] + 1
	if limit > 0 && int64(n) > limit {
		s.mu.Unlock()
		return nil, s.fail(ss, "too_many", &pgwire.Error{
			Code:    pgwire.CodeTooManyConnections,
			Message: fmt.Sprintf("too many client connections for branch %q (%s = %d)", br.Name, from, limit),
			Hint:    fmt.Sprintf("Retry later or close idle connections; `neonproxy branch set %s --max-client-conn N` changes the cap.", br.Name),
		})
	}
	s.mu.branchClients[br.Name] = n
	ss.branch = br.Name
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		if s.mu.branchClients[br.Name]--; s.mu.branchClients[br.Name] <= 0 {
			delete(s.mu.branchClients, br.Name)
		}
		s.mu.Unlock()
	}, nil
}
