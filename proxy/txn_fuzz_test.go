package proxy

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"

	"go.uber.org/zap"

	"github.com/neonproxy/neonproxy/internal/metrics"
	"github.com/neonproxy/neonproxy/pool"
)

// msgOf frames a frontend message.
func msgOf(typ byte, body ...string) []byte {
	var b []byte
	for _, s := range body {
		b = append(b, s...)
	}
	out := append([]byte{typ}, binary.BigEndian.AppendUint32(nil, uint32(4+len(b)))...)
	return append(out, b...)
}

// FuzzClientMessages: whatever frontend messages a transaction-pooled
// client sends, the pooler's rewriting (statement names in Parse, Bind,
// Describe and Close; pinning scans) neither panics nor sends the server a
// badly framed message, and owes the client at most one answer per message
// sent.
func FuzzClientMessages(f *testing.F) {
	seed := bytes.Join([][]byte{
		msgOf('P', "s1\x00", "select $1\x00", "\x00\x00"),
		msgOf('B', "\x00", "s1\x00", "\x00\x00\x00\x01\x00\x00\x00\x011\x00\x00"),
		msgOf('D', "Ss1\x00"),
		msgOf('E', "\x00", "\x00\x00\x00\x00"),
		msgOf('C', "Ss1\x00"),
		msgOf('S'),
		msgOf('Q', "create temp table t(x int)\x00"),
		msgOf('Q', "select pg_advisory_lock(1)\x00"),
		msgOf('B', "\x00", "nosuch\x00", "\x00\x00"),
	}, nil)
	f.Add(seed)
	f.Add(msgOf('P', "\x00"))
	f.Add(msgOf('D', "S"))
	f.Add(msgOf('B', "p"))
	met := metrics.New()
	f.Fuzz(func(t *testing.T, in []byte) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		ts := &txnSession{s: &Server{m: met, log: zap.NewNop()}, ss: &session{raw: a}, stats: &keyStats{}}
		ts.mu.stmts = map[string]*stmtDef{}
		sc := &pool.Conn{Prepared: pool.NewStatementLRU(4)}
		m := newMsgReader(bytes.NewReader(in), make([]byte, 64), 1<<16)
		sent := 0
		for {
			typ, msg, err := m.next()
			if err != nil {
				break
			}
			ts.clientMessageLocked(typ, msg, sc)
			sent++
		}
		for out := ts.out; len(out) > 0; {
			if len(out) < 5 {
				t.Fatalf("%d stray bytes at the end of the output", len(out))
			}
			n := binary.BigEndian.Uint32(out[1:5])
			if n < 4 || int(n)+1 > len(out) {
				t.Fatalf("message %q with length word %d, %d bytes left", out[0], n, len(out))
			}
			out = out[1+n:]
		}
		// Each client message owes at most one answer, plus injected Parses
		// (at most one per Bind or Describe) and one injected Close.
		if len(ts.mu.queue) > 2*sent+1 {
			t.Fatalf("%d answers queued for %d messages", len(ts.mu.queue), sent)
		}
	})
}
