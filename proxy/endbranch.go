package proxy

import (
	"fmt"
	"time"

	"github.com/neonproxy/neonproxy/internal/pgwire"
	"github.com/neonproxy/neonproxy/pool"
	"github.com/neonproxy/neonproxy/router"
)

// EndBranch ends every session of branch on this node, telling each
// client e (a FATAL; 57P01 for an expiry, delete or reset) rather than
// the compute's own shutdown message. A session between transactions is
// told and closed at once. One with a server connection in use has that
// connection cut, and the session then reports e in place of the
// server's error. One still starting (waiting for its compute) reports e
// if its wake fails. It returns how many sessions it ended.
func (s *Server) EndBranch(branch string, e *pgwire.Error) int {
	msg, _ := e.Fatal().Encode(nil)
	var tell []*session
	var cuts []*pool.Conn
	s.mu.Lock()
	for ss := range s.mu.sessions {
		if ss.branch != branch || ss.keeper.Load() || ss.ended.Load() != nil {
			continue
		}
		ss.ended.Store(e)
		if ss.between.Load() && !ss.drained {
			ss.drained = true
			tell = append(tell, ss)
		} else if c := ss.server.Load(); c != nil {
			cuts = append(cuts, c)
		}
	}
	n := len(tell) + len(cuts)
	s.mu.Unlock()
	for _, ss := range tell {
		// Between transactions nothing else writes to the client.
		go func() {
			_ = ss.conn.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = ss.conn.Write(msg)
			_ = ss.conn.Close()
		}()
	}
	for _, c := range cuts {
		// The session may have given c back meanwhile: closing it then
		// costs the pool one connection of a compute that is going away.
		_ = c.Net.Close()
	}
	return n
}

// endedError is what a session ended by EndBranch reports instead of
// err: the reason it was ended, or err when it was not.
func (ss *session) endedError(err error) error {
	if e := ss.ended.Load(); e != nil {
		return e
	}
	return err
}

// expiredError is what a client connecting to an expired branch (not yet
// deleted by the reaper) is told.
func expiredError(br router.Branch) *pgwire.Error {
	return &pgwire.Error{
		Code:    pgwire.CodeUnknownBranch,
		Message: fmt.Sprintf("branch %q expired at %s and is being deleted", br.Name, br.ExpiresAt.UTC().Format(time.RFC3339)),
		Hint:    fmt.Sprintf("Create a new branch (`neonproxy branch create NAME --parent %s --ttl 24h`), or connect to another one.", parentOr(br.Parent)),
	}
}

func parentOr(p string) string {
	if p == "" {
		return "main"
	}
	return p
}

// BranchClients is how many client connections branch has on this node.
func (s *Server) BranchClients(branch string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.branchClients[branch]
}
