package proxy

import (
	"encoding/binary"
	"io"

	"github.com/neonproxy/neonproxy/internal/pgwire"
)

// msgReader reads whole typed protocol messages from a stream into one
// reused buffer, for the paths that must look inside messages
// (transaction pooling).
type msgReader struct {
	r          io.Reader
	buf        []byte
	start, end int
	max        int // largest message accepted (length word)
	// shrinkTo, if set, is the size the buffer returns to once it has
	// grown past 64 KiB and has been drained.
	shrinkTo int
}

func newMsgReader(r io.Reader, buf []byte, max int) *msgReader {
	return &msgReader{r: r, buf: buf, max: max}
}

// next returns the next whole message (header included). The slice is
// valid until the following call.
func (m *msgReader) next() (byte, []byte, error) {
	if err := m.fill(5); err != nil {
		return 0, nil, err
	}
	typ := m.buf[m.start]
	l := int(int32(binary.BigEndian.Uint32(m.buf[m.start+1:])))
	if l < 4 || l > m.max {
		return 0, nil, &pgwire.FrameError{Type: typ, Len: int64(l)}
	}
	if err := m.fill(1 + l); err != nil {
		return 0, nil, err
	}
	msg := m.buf[m.start : m.start+1+l]
	m.start += 1 + l
	return typ, msg, nil
}

// empty reports whether nothing is buffered.
func (m *msgReader) empty() bool { return m.start == m.end }

// whole reports whether a complete message is already buffered, so the
// next call to next will not block.
func (m *msgReader) whole() bool {
	n := m.end - m.start
	if n < 5 {
		return false
	}
	l := int(int32(binary.BigEndian.Uint32(m.buf[m.start+1:])))
	return l >= 4 && n >= 1+l
}

// fill makes sure n bytes are buffered from start.
func (m *msgReader) fill(n int) error {
	if m.end-m.start >= n {
		return nil
	}
	if m.shrinkTo > 0 && m.start == m.end && len(m.buf) > 64<<10 && n <= m.shrinkTo {
		m.buf, m.start, m.end = make([]byte, m.shrinkTo), 0, 0
	}
	if m.start+n > len(m.buf) {
		// Compact, and grow when the message is larger than the buffer.
		if n > len(m.buf) {
			nb := make([]byte, max(n, 2*len(m.buf)))
			copy(nb, m.buf[m.start:m.end])
			m.buf = nb
		} else {
			copy(m.buf, m.buf[m.start:m.end])
		}
		m.end -= m.start
		m.start = 0
	}
	for m.end-m.start < n {
		k, err := m.r.Read(m.buf[m.end:])
		m.end += k
		if err != nil {
			if m.end-m.start >= n {
				return nil
			}
			return err
		}
	}
	return nil
}
