package proxy

import (
	"bytes"
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

// pump copies src to dst through f until src ends or a write fails: one
// read and one write per chunk, no allocation. With stripTerminate (the
// client→server direction of a pooled session) a Terminate is not
// forwarded, since the server connection outlives the client, and the pump
// ends after it.
func (s *Server) pump(dst, src net.Conn, f *pgwire.Framer, stripTerminate bool) (int64, error) {
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
			out := buf[:n]
			if stripTerminate && f.Terminated {
				// A client sends nothing after Terminate, so it ends the chunk.
				out = bytes.TrimSuffix(out, terminateMsg)
			}
			if len(out) > 0 {
				if _, err := dst.Write(out); err != nil {
					return total, err
				}
			}
			total += int64(n)
			if stripTerminate && f.Terminated {
				return total, nil
			}
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
