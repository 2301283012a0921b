// Package pgwire holds the small pieces of the PostgreSQL wire protocol that
// the front door must understand itself: reading the untyped startup-phase
// packets with hard limits, framing a stream of typed messages without
// decoding their bodies, and building ErrorResponses. Message encoding and
// decoding proper is github.com/jackc/pgx/v5/pgproto3's job.
package pgwire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Startup-phase request codes (the first 4 bytes after the length).
const (
	codeSSLRequest    = 80877103
	codeGSSENCRequest = 80877104
	codeCancelRequest = 80877102
	protocolMajor3    = 3
)

// Limits bound what a client may send before it is authenticated.
type Limits struct {
	// MaxPacket is the largest startup packet accepted, length word
	// included (PostgreSQL's MAX_STARTUP_PACKET_LENGTH is 10000).
	MaxPacket int
	// MaxParams is the largest number of startup parameters accepted.
	MaxParams int
}

// StartupError is a startup packet the proxy refuses. Code is the SQLSTATE
// to report (08P01 protocol violation, 0A000 unsupported protocol).
type StartupError struct {
	Code    string
	Message string
	Hint    string
}

func (e *StartupError) Error() string { return e.Message }

func protoErr(format string, args ...any) *StartupError {
	return &StartupError{Code: "08P01", Message: fmt.Sprintf(format, args...)}
}

// Startup is a decoded startup-phase packet: exactly one of the pointer
// fields is set.
type Startup struct {
	SSL     *pgproto3.SSLRequest
	GSSEnc  *pgproto3.GSSEncRequest
	Cancel  *pgproto3.CancelRequest
	Message *pgproto3.StartupMessage
	// MinorVersion is the minor protocol version the client asked for with
	// Message; the proxy speaks 3.0 and negotiates down when it is higher.
	MinorVersion uint32
}

// ReadStartup reads one startup-phase packet from r and decodes it with
// pgproto3, enforcing lim. It reads exactly the packet's bytes and never
// more, so nothing a client sends after an SSLRequest is consumed before
// the TLS handshake (the CVE-2021-23214 class of bugs needs a buffer).
func ReadStartup(r io.Reader, lim Limits) (Startup, error) {
	var hdr [8]byte
	if _, err := io.ReadFull(r, hdr[:4]); err != nil {
		return Startup{}, err
	}
	n := int(int32(binary.BigEndian.Uint32(hdr[:4])))
	if n < 8 || n > lim.MaxPacket {
		return Startup{}, protoErr("invalid startup packet length %d (must be between 8 and %d bytes)", n, lim.MaxPacket)
	}
	pkt := make([]byte, n)
	copy(pkt, hdr[:4])
	if _, err := io.ReadFull(r, pkt[4:]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return Startup{}, err
	}
	return DecodeStartup(pkt, lim)
}

// DecodeStartup decodes a whole startup packet (length word included).
func DecodeStartup(pkt []byte, lim Limits) (Startup, error) {
	if len(pkt) < 8 || int(binary.BigEndian.Uint32(pkt)) != len(pkt) {
		return Startup{}, protoErr("invalid startup packet length")
	}
	code := binary.BigEndian.Uint32(pkt[4:8])
	body := pkt[4:]
	var s Startup
	switch code {
	case codeSSLRequest:
		if len(body) != 4 {
			return s, protoErr("invalid SSLRequest length %d", len(pkt))
		}
		s.SSL = &pgproto3.SSLRequest{}
		return s, nil
	case codeGSSENCRequest:
		if len(body) != 4 {
			return s, protoErr("invalid GSSENCRequest length %d", len(pkt))
		}
		s.GSSEnc = &pgproto3.GSSEncRequest{}
		return s, nil
	case codeCancelRequest:
		// Protocol 3.0 keys are 4 bytes; 3.2 allows up to 256.
		if len(body) < 12 || len(body) > 8+256 {
			return s, protoErr("invalid CancelRequest length %d", len(pkt))
		}
		c := &pgproto3.CancelRequest{}
		if err := c.Decode(body); err != nil {
			return s, protoErr("invalid CancelRequest: %v", err)
		}
		s.Cancel = c
		return s, nil
	}
	major, minor := code>>16, code&0xffff
	if major != protocolMajor3 {
		return s, &StartupError{
			Code:    "0A000",
			Message: fmt.Sprintf("unsupported frontend protocol %d.%d: server supports 3.0", major, minor),
			Hint:    "Use a client that speaks protocol version 3 (PostgreSQL 7.4 or later).",
		}
	}
	// pgproto3 decodes 3.0 and 3.2; present any 3.x as 3.0 and remember the
	// minor version so the caller can send NegotiateProtocolVersion.
	dec := make([]byte, len(body))
	copy(dec, body)
	binary.BigEndian.PutUint32(dec, pgproto3.ProtocolVersion30)
	m := &pgproto3.StartupMessage{}
	if err := m.Decode(dec); err != nil {
		return s, protoErr("invalid startup packet: %v", err)
	}
	if err := checkParams(dec[4:], lim.MaxParams); err != nil {
		return s, err
	}
	for k, v := range m.Parameters {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return s, &StartupError{Code: "22021", Message: "invalid byte sequence for encoding \"UTF8\" in startup parameters"}
		}
	}
	if _, ok := m.Parameters["user"]; !ok || m.Parameters["user"] == "" {
		return s, &StartupError{Code: "28000", Message: "no PostgreSQL user name specified in startup packet"}
	}
	s.Message = m
	s.MinorVersion = minor
	return s, nil
}

// checkParams counts key/value pairs and rejects duplicates, which
// pgproto3's map would otherwise silently collapse.
func checkParams(b []byte, max int) error {
	seen := 0
	keys := map[string]struct{}{}
	for len(b) > 1 {
		i := indexZero(b)
		if i < 0 {
			return protoErr("invalid startup packet layout: missing terminator")
		}
		key := string(b[:i])
		b = b[i+1:]
		j := indexZero(b)
		if j < 0 {
			return protoErr("invalid startup packet layout: missing terminator")
		}
		b = b[j+1:]
		if key == "" {
			return protoErr("invalid startup packet layout: empty parameter name")
		}
		if _, dup := keys[key]; dup {
			return protoErr("duplicate startup parameter %q", key)
		}
		keys[key] = struct{}{}
		seen++
		if seen > max {
			return &StartupError{Code: "08P01", Message: fmt.Sprintf("too many startup parameters (limit %d)", max)}
		}
	}
	return nil
}

func indexZero(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return -1
}
