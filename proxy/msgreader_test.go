package proxy

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"

	"github.com/neonproxy/neonproxy/internal/pgwire"
)

func TestMsgReader(t *testing.T) {
	big := appendParse(nil, "s", append(bytes.Repeat([]byte("x"), 100_000), 0, 0, 0))
	var stream []byte
	stream = append(stream, 'S', 0, 0, 0, 4)
	stream = append(stream, big...)
	stream = append(stream, 'Q', 0, 0, 0, 7, 'a', 'b', 0)
	for _, r := range []io.Reader{bytes.NewReader(stream), iotest.OneByteReader(bytes.NewReader(stream)), iotest.HalfReader(bytes.NewReader(stream))} {
		m := newMsgReader(r, make([]byte, 16), 1<<20)
		m.shrinkTo = 16
		var types []byte
		var sizes []int
		for {
			typ, msg, err := m.next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			types = append(types, typ)
			sizes = append(sizes, len(msg))
		}
		if string(types) != "SPQ" || sizes[0] != 5 || sizes[1] != len(big) || sizes[2] != 8 {
			t.Fatalf("types %q sizes %v", types, sizes)
		}
		if len(m.buf) != 16 {
			t.Fatalf("buffer not shrunk after the large message: %d", len(m.buf))
		}
	}
}

func TestMsgReaderRejectsBadLengths(t *testing.T) {
	for _, in := range [][]byte{{'Q', 0, 0, 0, 3}, {'Q', 0xff, 0xff, 0xff, 0xff}, {'Q', 0, 0x20, 0, 0}} {
		m := newMsgReader(bytes.NewReader(in), make([]byte, 16), 1<<20)
		var fe *pgwire.FrameError
		if _, _, err := m.next(); !errors.As(err, &fe) {
			t.Fatalf("%v: want FrameError, got %v", in, err)
		}
	}
}

// FuzzMsgReader: any byte stream yields whole messages whose length words
// match their size, or an error; never a panic or an over-long message.
func FuzzMsgReader(f *testing.F) {
	f.Add([]byte{'Q', 0, 0, 0, 9, 's', 'e', 'l', 0, 'S', 0, 0, 0, 4}, 3)
	f.Add([]byte{'P', 0, 0, 0, 3}, 1)
	f.Fuzz(func(t *testing.T, in []byte, chunk int) {
		if chunk <= 0 {
			chunk = 1
		}
		m := newMsgReader(iotest.HalfReader(bytes.NewReader(in)), make([]byte, 1+chunk%64), 1<<16)
		m.shrinkTo = 8
		total := 0
		for {
			_, msg, err := m.next()
			if err != nil {
				break
			}
			if len(msg) < 5 || len(msg) > 1+(1<<16) {
				t.Fatalf("message of %d bytes", len(msg))
			}
			total += len(msg)
		}
		if total > len(in) {
			t.Fatalf("read %d bytes from %d", total, len(in))
		}
	})
}
