package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/neonproxy/neonproxy/internal/pgwire"
)

// maxClientMessage bounds a client message's length word; PostgreSQL's own
// limit for most messages is 1 GB (PQ_LARGE_MESSAGE_LIMIT).
const maxClientMessage = 1 << 30

// forward relays the session in both directions until either side ends.
// Each direction reads a chunk into one reused buffer, lets a Framer note
// the message boundaries in it (ReadyForQuery status, Terminate), and writes
// the chunk on unchanged: one read and one write per chunk, no allocation
// per message. Returns nil for an orderly end.
func (s *Server) forward(ss *session, backend net.Conn) error {
	type result struct {
		n        int64
		err      error
		toClient bool
	}
	done := make(chan result, 2)
	var cf, bf pgwire.Framer
	cf.MaxLen = maxClientMessage
	go func() {
		n, err := s.pump(backend, ss.conn, &cf)
		done <- result{n, err, false}
	}()
	go func() {
		n, err := s.pump(ss.conn, backend, &bf)
		done <- result{n, err, true}
	}()
	first := <-done
	// One side ended: end the other. Closing both unblocks the pump still
	// reading; the backend sees its client go away as PostgreSQL expects.
	_ = backend.Close()
	_ = ss.conn.Close()
	second := <-done
	for _, r := range []result{first, second} {
		if r.toClient {
			ss.bytesOut = r.n
		} else {
			ss.bytesIn = r.n
		}
	}
	s.m.ProxyBytesForwarded.WithLabelValues("client_to_server").Add(float64(ss.bytesIn))
	s.m.ProxyBytesForwarded.WithLabelValues("server_to_client").Add(float64(ss.bytesOut))
	switch {
	case cf.Terminated:
		ss.result = "ok"
		return nil
	case first.toClient:
		// The compute closed first: shut down, suspended or crashed. Its
		// own ErrorResponse (57P01 ...) has already reached the client.
		ss.result = "server_closed"
		return quiet(first.err)
	default:
		ss.result = "client_closed"
		return quiet(first.err)
	}
}

// pump copies src to dst through f until src ends or a write fails.
func (s *Server) pump(dst, src net.Conn, f *pgwire.Framer) (int64, error) {
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	buf := *bp
	var total int64
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if err := f.Feed(buf[:n]); err != nil {
				return total, err
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return total, err
			}
			total += int64(n)
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

// quiet drops the errors that mean an ordinary end of a connection.
func quiet(err error) error {
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, os.ErrDeadlineExceeded) {
		return nil
	}
	return err
}
