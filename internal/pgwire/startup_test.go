package pgwire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

var testLimits = Limits{MaxPacket: 10000, MaxParams: 64}

func packet(code uint32, body []byte) []byte {
	b := make([]byte, 8, 8+len(body))
	binary.BigEndian.PutUint32(b, uint32(8+len(body)))
	binary.BigEndian.PutUint32(b[4:], code)
	return append(b, body...)
}

func params(kv ...string) []byte {
	var b []byte
	for _, s := range kv {
		b = append(append(b, s...), 0)
	}
	return append(b, 0)
}

func TestReadStartup(t *testing.T) {
	many := make([]string, 0, 200)
	for i := 0; i < 100; i++ {
		many = append(many, "k"+strings.Repeat("x", i), "v")
	}
	tests := []struct {
		name    string
		in      []byte
		want    string // "ssl", "gss", "cancel", "startup"
		code    string // expected StartupError code, "" for success
		io      bool   // expect an I/O error (EOF and friends)
		minor   uint32
		nParams int
	}{
		{name: "ssl", in: packet(codeSSLRequest, nil), want: "ssl"},
		{name: "gss", in: packet(codeGSSENCRequest, nil), want: "gss"},
		{name: "cancel", in: packet(codeCancelRequest, []byte{0, 0, 0, 7, 1, 2, 3, 4}), want: "cancel"},
		{name: "cancel long key 3.2", in: packet(codeCancelRequest, append([]byte{0, 0, 0, 7}, bytes.Repeat([]byte{9}, 32)...)), want: "cancel"},
		{name: "cancel too short", in: packet(codeCancelRequest, []byte{0, 0, 0, 7}), code: "08P01"},
		{name: "startup", in: packet(pgproto3.ProtocolVersion30, params("user", "alice", "database", "main")), want: "startup", nParams: 2},
		{name: "startup 3.2 negotiates", in: packet(3<<16|2, params("user", "alice")), want: "startup", minor: 2, nParams: 1},
		{name: "protocol 2.0", in: packet(2<<16, params("user", "alice")), code: "0A000"},
		{name: "protocol 4.0", in: packet(4<<16, params("user", "alice")), code: "0A000"},
		{name: "no user", in: packet(pgproto3.ProtocolVersion30, params("database", "main")), code: "28000"},
		{name: "empty user", in: packet(pgproto3.ProtocolVersion30, params("user", "")), code: "28000"},
		{name: "no params", in: packet(pgproto3.ProtocolVersion30, []byte{0}), code: "08P01"},
		{name: "missing final terminator", in: packet(pgproto3.ProtocolVersion30, []byte("user\x00alice\x00")), code: "08P01"},
		{name: "missing value", in: packet(pgproto3.ProtocolVersion30, []byte("user\x00")), code: "08P01"},
		{name: "duplicate param", in: packet(pgproto3.ProtocolVersion30, params("user", "a", "user", "b")), code: "08P01"},
		{name: "too many params", in: packet(pgproto3.ProtocolVersion30, params(append([]string{"user", "a"}, many...)...)), code: "08P01"},
		{name: "invalid utf8", in: packet(pgproto3.ProtocolVersion30, params("user", "a\xff")), code: "22021"},
		{name: "ssl with body", in: packet(codeSSLRequest, []byte{1, 2, 3, 4}), code: "08P01"},
		{name: "length too small", in: []byte{0, 0, 0, 4, 0, 0, 0, 0}, code: "08P01"},
		{name: "negative length", in: []byte{0xff, 0xff, 0xff, 0xf0, 0, 0, 0, 0}, code: "08P01"},
		{name: "length too large", in: []byte{0, 1, 0, 0, 0, 3, 0, 0}, code: "08P01"},
		{name: "truncated body", in: packet(pgproto3.ProtocolVersion30, params("user", "alice"))[:12], io: true},
		{name: "truncated length", in: []byte{0, 0}, io: true},
		{name: "empty", in: nil, io: true},
		{name: "http request", in: []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), code: "08P01"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := ReadStartup(bytes.NewReader(tt.in), testLimits)
			if tt.io {
				if err == nil || !(errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
					t.Fatalf("want EOF error, got %v", err)
				}
				return
			}
			if tt.code != "" {
				var se *StartupError
				if !errors.As(err, &se) || se.Code != tt.code {
					t.Fatalf("want StartupError %s, got %v", tt.code, err)
				}
				if se.Message == "" {
					t.Fatal("empty message")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := ""
			switch {
			case s.SSL != nil:
				got = "ssl"
			case s.GSSEnc != nil:
				got = "gss"
			case s.Cancel != nil:
				got = "cancel"
			case s.Message != nil:
				got = "startup"
				if len(s.Message.Parameters) != tt.nParams {
					t.Fatalf("params %v", s.Message.Parameters)
				}
			}
			if got != tt.want || s.MinorVersion != tt.minor {
				t.Fatalf("got %s minor %d, want %s minor %d", got, s.MinorVersion, tt.want, tt.minor)
			}
		})
	}
}

// ReadStartup must not consume bytes past the packet: what follows an
// SSLRequest belongs to the TLS handshake.
func TestReadStartupReadsExactlyOnePacket(t *testing.T) {
	in := append(packet(codeSSLRequest, nil), "trailing"...)
	r := bytes.NewReader(in)
	if _, err := ReadStartup(r, testLimits); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(r)
	if string(rest) != "trailing" {
		t.Fatalf("consumed too much: rest %q", rest)
	}
}

func FuzzReadStartup(f *testing.F) {
	f.Add(packet(codeSSLRequest, nil))
	f.Add(packet(codeGSSENCRequest, nil))
	f.Add(packet(codeCancelRequest, []byte{0, 0, 0, 7, 1, 2, 3, 4}))
	f.Add(packet(pgproto3.ProtocolVersion30, params("user", "alice", "database", "main.db", "options", "endpoint=main -c x=y")))
	f.Add(packet(2<<16, params("user", "alice")))
	f.Add([]byte{0, 0, 0, 4})
	f.Fuzz(func(t *testing.T, in []byte) {
		s, err := ReadStartup(bytes.NewReader(in), testLimits)
		if err != nil {
			return
		}
		n := 0
		for _, set := range []bool{s.SSL != nil, s.GSSEnc != nil, s.Cancel != nil, s.Message != nil} {
			if set {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("decoded %d kinds", n)
		}
		if s.Message != nil && s.Message.Parameters["user"] == "" {
			t.Fatal("startup without user accepted")
		}
	})
}
