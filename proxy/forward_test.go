package proxy

import (
	"encoding/binary"
	"io"
	"net"
	"testing"

	"github.com/neonproxy/neonproxy/internal/pgwire"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(tb testing.TB) (net.Conn, net.Conn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	return a, <-accepted
}

func dataRows(n int) []byte {
	var b []byte
	for len(b) < n {
		row := []byte("D\x00\x00\x00\x00\x00\x01\x00\x00\x00\x0bhello world")
		binary.BigEndian.PutUint32(row[1:], uint32(len(row)-1))
		b = append(b, row...)
	}
	return b
}

// TestPumpRelaysAndFollowsFrames checks that pump forwards bytes unchanged
// and that its framer sees every message.
func TestPumpRelaysAndFollowsFrames(t *testing.T) {
	s, err := New(Options{Branches: nopBranches{}, Waker: nopWaker{}, Pool: testPool(t)})
	if err != nil {
		t.Fatal(err)
	}
	in, src := tcpPair(t)
	dst, out := tcpPair(t)
	payload := append(dataRows(100_000), 'Z', 0, 0, 0, 5, 'I')
	go func() {
		_, _ = in.Write(payload)
		in.Close()
	}()
	var f pgwire.Framer
	done := make(chan int64, 1)
	go func() {
		n, _ := s.pump(dst, src, &f, false)
		dst.Close()
		done <- n
	}()
	got, err := io.ReadAll(out)
	if err != nil {
		t.Fatal(err)
	}
	if n := <-done; n != int64(len(payload)) || string(got) != string(payload) {
		t.Fatalf("relayed %d of %d bytes, equal=%v", n, len(payload), string(got) == string(payload))
	}
	if f.TxStatus != 'I' || f.ReadyCount != 1 || !f.AtBoundary() {
		t.Fatalf("framer %+v", f)
	}
}

// BenchmarkPump measures the relay loop over loopback TCP; it must not
// allocate per chunk.
func BenchmarkPump(b *testing.B) {
	s, err := New(Options{Branches: nopBranches{}, Waker: nopWaker{}, Pool: testPool(b)})
	if err != nil {
		b.Fatal(err)
	}
	in, src := tcpPair(b)
	dst, out := tcpPair(b)
	chunk := dataRows(16 << 10)
	go func() { _, _ = io.Copy(io.Discard, out) }()
	var f pgwire.Framer
	go func() { _, _ = s.pump(dst, src, &f, false) }()
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := in.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	in.Close()
}
