package pagestore

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
)

// The network pagestore streams materializations and ingests as frames:
// a type byte, a big-endian uint32 payload length, the payload. Strings
// in a payload are a uint32 length and bytes; relations are their 13-byte
// key form. Ingest (client → store, POST …/ingest):
//
//	'h' header: JSON ingestHeader
//	'd' directory: path
//	'f' file: path, content (rest)
//	'u' unchanged file: path, uint64 size
//	'w' synthesized WAL segment: path, value (rest)
//	's' fork size: rel, uint32 blocks, byte unchanged
//	'p' pages: rel, uint32 first block, pages (rest)
//	'e' end: commit
//
// Materialize (store → client, POST …/materialize):
//
//	'd' directory: path
//	'f' file: path, stored value (rest)
//	'k' fork: uint32 fork number, rel, uint32 blocks
//	'P' pages: uint32 fork number, uint32 first block, pages (rest)
//	'c' fork done: uint32 fork number
//	'e' end: uint64 LSN of the image
//	'x' error: message
//
// A stream that ends without 'e' failed.

// maxFrame bounds a payload: page runs are at most readChunk, and a
// non-relation file larger than this is not a PostgreSQL file.
const maxFrame = 64 << 20

const frameHeader = 5

// frameWriter writes frames from several goroutines, each whole.
type frameWriter struct {
	mu struct {
		sync.Mutex
		w   *bufio.Writer
		err error
	}
}

func newFrameWriter(w io.Writer) *frameWriter {
	fw := &frameWriter{}
	fw.mu.w = bufio.NewWriterSize(w, 256<<10)
	return fw
}

// frame writes typ with the payload head+body (head: the fixed fields,
// body: the bulk, so neither is copied).
func (fw *frameWriter) frame(typ byte, head, body []byte) error {
	n := len(head) + len(body)
	if n > maxFrame {
		return fmt.Errorf("frame %q of %d bytes: larger than %d", typ, n, maxFrame)
	}
	var h [frameHeader]byte
	h[0] = typ
	binary.BigEndian.PutUint32(h[1:], uint32(n))
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.mu.err != nil {
		return fw.mu.err
	}
	w := fw.mu.w
	_, err := w.Write(h[:])
	if err == nil {
		_, err = w.Write(head)
	}
	if err == nil {
		_, err = w.Write(body)
	}
	fw.mu.err = err
	return err
}

func (fw *frameWriter) flush() error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.mu.err == nil {
		fw.mu.err = fw.mu.w.Flush()
	}
	return fw.mu.err
}

// frameReader reads frames into one reused buffer: a payload is valid
// until the next call.
type frameReader struct {
	r   *bufio.Reader
	buf []byte
}

func newFrameReader(r io.Reader) *frameReader {
	return &frameReader{r: bufio.NewReaderSize(r, 256<<10)}
}

// errNoEnd is a stream that stopped before its end frame.
var errNoEnd = errors.New("stream ended before its end frame")

func (fr *frameReader) next() (byte, []byte, error) {
	var h [frameHeader]byte
	if _, err := io.ReadFull(fr.r, h[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, nil, errNoEnd
		}
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(h[1:])
	if n > maxFrame {
		return 0, nil, fmt.Errorf("frame %q of %d bytes: larger than %d", h[0], n, maxFrame)
	}
	// The buffer grows as the bytes arrive, so a length that lies costs
	// the reader nothing.
	p := fr.buf[:0]
	for len(p) < int(n) {
		k := min(int(n)-len(p), 1<<20)
		p = slices.Grow(p, k)
		if _, err := io.ReadFull(fr.r, p[len(p):len(p)+k]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return 0, nil, errNoEnd
			}
			return 0, nil, err
		}
		p = p[:len(p)+k]
	}
	fr.buf = p
	return h[0], p, nil
}

// payload decodes a frame's fields in order; the first error sticks.
type payload struct {
	b   []byte
	err error
}

var errShortFrame = errors.New("frame too short")

func (p *payload) take(n int) []byte {
	if p.err != nil || len(p.b) < n {
		p.err = errShortFrame
		return nil
	}
	v := p.b[:n]
	p.b = p.b[n:]
	return v
}

func (p *payload) u32() uint32 {
	if v := p.take(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (p *payload) u64() uint64 {
	if v := p.take(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (p *payload) byte1() byte {
	if v := p.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (p *payload) str() string {
	n := p.u32()
	if p.err == nil && uint64(n) > uint64(len(p.b)) {
		p.err = errShortFrame
	}
	return string(p.take(int(n)))
}

func (p *payload) rel() RelTag {
	if v := p.take(relLen); v != nil {
		return getRel(v)
	}
	return RelTag{}
}

// path is a string that must be a clean relative path.
func (p *payload) path() string {
	s := p.str()
	if p.err == nil && !validRelPath(s) {
		p.err = fmt.Errorf("invalid path %q", s)
	}
	return s
}

// rest is the remaining bytes (the frame's bulk).
func (p *payload) rest() []byte {
	v := p.b
	p.b = nil
	return v
}

// done reports a decode error or trailing bytes.
func (p *payload) done(typ byte) error {
	if p.err == nil && len(p.b) > 0 {
		p.err = errors.New("trailing bytes")
	}
	if p.err != nil {
		return fmt.Errorf("frame %q: %w", typ, p.err)
	}
	return nil
}

func appendStr(b []byte, s string) []byte {
	return append(binary.BigEndian.AppendUint32(b, uint32(len(s))), s...)
}
