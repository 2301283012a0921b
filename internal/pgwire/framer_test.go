package pgwire

import (
	"encoding/binary"
	"errors"
	"testing"
)

func msg(typ byte, body string) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(4+len(body)))
	return append(b, body...)
}

func TestFramerChunkings(t *testing.T) {
	var stream []byte
	stream = append(stream, msg('T', "rowdesc-bytes")...)
	stream = append(stream, msg('D', "row")...)
	stream = append(stream, msg('C', "SELECT 1\x00")...)
	stream = append(stream, msg('Z', "T")...)
	stream = append(stream, msg('Z', "I")...)
	for _, size := range []int{1, 2, 3, 5, 7, 64, len(stream)} {
		var f Framer
		for i := 0; i < len(stream); i += size {
			end := min(i+size, len(stream))
			if err := f.Feed(stream[i:end]); err != nil {
				t.Fatalf("chunk %d: %v", size, err)
			}
		}
		if f.Messages != 5 || f.ReadyCount != 2 || f.TxStatus != 'I' || f.LastType != 'Z' || !f.AtBoundary() {
			t.Fatalf("chunk %d: %+v", size, f)
		}
	}
}

func TestFramerErrors(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		max  int
	}{
		{"length below 4", []byte{'Q', 0, 0, 0, 3}, 0},
		{"negative length", []byte{'Q', 0xff, 0xff, 0xff, 0xff}, 0},
		{"over max", msg('Q', string(make([]byte, 100))), 50},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := Framer{MaxLen: tt.max}
			var fe *FrameError
			if err := f.Feed(tt.in); !errors.As(err, &fe) {
				t.Fatalf("want FrameError, got %v", err)
			}
		})
	}
}

func TestFramerTerminate(t *testing.T) {
	var f Framer
	if err := f.Feed(append(msg('Q', "select 1\x00"), msg('X', "")...)); err != nil {
		t.Fatal(err)
	}
	if !f.Terminated || f.Messages != 2 {
		t.Fatalf("%+v", f)
	}
}

func BenchmarkFramerFeed(b *testing.B) {
	var chunk []byte
	for len(chunk) < 8192-64 {
		chunk = append(chunk, msg('D', "0123456789abcdef0123456789")...)
	}
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	var f Framer
	for i := 0; i < b.N; i++ {
		if err := f.Feed(chunk); err != nil {
			b.Fatal(err)
		}
	}
}

func FuzzFramer(f *testing.F) {
	f.Add(msg('Z', "I"), 3)
	f.Add([]byte{'Q', 0, 0, 0, 3}, 1)
	f.Fuzz(func(t *testing.T, in []byte, split int) {
		var a, b Framer
		a.MaxLen, b.MaxLen = 1<<20, 1<<20
		errA := a.Feed(in)
		if split < 0 {
			split = -split
		}
		if len(in) > 0 {
			split %= len(in) + 1
		} else {
			split = 0
		}
		errB := b.Feed(in[:split])
		if errB == nil {
			errB = b.Feed(in[split:])
		}
		if (errA == nil) != (errB == nil) {
			t.Fatalf("split changed the outcome: %v vs %v", errA, errB)
		}
		if errA == nil && (a.Messages != b.Messages || a.TxStatus != b.TxStatus || a.ReadyCount != b.ReadyCount) {
			t.Fatalf("split changed the result: %+v vs %+v", a, b)
		}
	})
}
