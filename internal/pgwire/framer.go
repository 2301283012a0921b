package pgwire

import (
	"encoding/binary"
	"fmt"
)

// Framer follows message boundaries in a stream of typed protocol messages
// (1-byte type, 4-byte length, body) fed to it in arbitrary chunks, without
// copying or decoding bodies. The forwarding loops read a chunk, let the
// Framer note what it contains, and write the chunk on unchanged: one read
// and one write per chunk, no allocation, yet the proxy still sees every
// message type and each ReadyForQuery's transaction status.
type Framer struct {
	// MaxLen bounds a message's length word; 0 means no bound beyond the
	// protocol's int32. Clients get a bound, servers are trusted.
	MaxLen int

	hdr    [5]byte
	hdrN   int   // header bytes seen of the current message
	remain int64 // body bytes still to come of the current message
	typ    byte
	// wantStatus: the next body byte is a ReadyForQuery status.
	wantStatus bool

	// Messages counts complete message headers seen.
	Messages uint64
	// LastType is the type of the most recent message whose header was seen.
	LastType byte
	// TxStatus is the status byte of the last complete ReadyForQuery ('I',
	// 'T' or 'E'); 0 before the first one.
	TxStatus byte
	// Terminated is set once a Terminate ('X') header has been seen.
	Terminated bool
	// ReadyCount counts ReadyForQuery messages seen; IdleCount those with
	// status 'I' (transactions ended, for SHOW STATS).
	ReadyCount, IdleCount uint64

	// OnHeader, if set, is called for every message header, in order.
	OnHeader func(typ byte, length int)
	// OnStatus, if set, is called with each ReadyForQuery's status byte.
	OnStatus func(status byte)
}

// FrameError is a length word outside what the protocol allows.
type FrameError struct {
	Type byte
	Len  int64
}

func (e *FrameError) Error() string {
	return fmt.Sprintf("invalid message length %d for message type %q", e.Len, e.Type)
}

// Feed notes the messages in p. It returns an error for a length word below
// 4 or above MaxLen; the stream cannot be followed after that.
func (f *Framer) Feed(p []byte) error {
	for len(p) > 0 {
		if f.remain > 0 {
			n := int64(len(p))
			if n > f.remain {
				n = f.remain
			}
			if f.wantStatus {
				f.TxStatus = p[0]
				f.ReadyCount++
				if p[0] == 'I' {
					f.IdleCount++
				}
				if f.OnStatus != nil {
					f.OnStatus(p[0])
				}
				f.wantStatus = false
			}
			f.remain -= n
			p = p[n:]
			continue
		}
		// Header, possibly split across chunks.
		c := copy(f.hdr[f.hdrN:], p)
		f.hdrN += c
		p = p[c:]
		if f.hdrN < 5 {
			return nil
		}
		f.hdrN = 0
		f.typ = f.hdr[0]
		l := int64(int32(binary.BigEndian.Uint32(f.hdr[1:])))
		if l < 4 || (f.MaxLen > 0 && l > int64(f.MaxLen)) {
			return &FrameError{Type: f.typ, Len: l}
		}
		f.Messages++
		f.LastType = f.typ
		if f.typ == 'X' {
			f.Terminated = true
		}
		f.remain = l - 4
		f.wantStatus = f.typ == 'Z' && l == 5
		if f.OnHeader != nil {
			f.OnHeader(f.typ, int(l))
		}
	}
	return nil
}

// AtBoundary reports whether the stream fed so far ends exactly at a
// message boundary.
func (f *Framer) AtBoundary() bool { return f.hdrN == 0 && f.remain == 0 }
