package walkeeper

import (
	"bytes"
	"testing"
)

// pattern returns n deterministic bytes for WAL position lsn (never zero).
func pattern(lsn LSN, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte((lsn+LSN(i))%251) + 1
	}
	return b
}

type chunk struct {
	start LSN
	n     int
}

func TestMergerChunks(t *testing.T) {
	const base = 0x1000000 // a page-aligned start
	tests := []struct {
		name   string
		stored map[LSN][]byte // pages in the store before (for mid-page starts)
		chunks []chunk
		end    LSN
		// batches: after each listed chunk index, take() and check the
		// pages it returns.
		takeAfter map[int][]LSN
	}{
		{
			name:      "single small chunk",
			chunks:    []chunk{{base, 100}},
			end:       base + 100,
			takeAfter: map[int][]LSN{0: {base}},
		},
		{
			name:      "exact page",
			chunks:    []chunk{{base, PageSize}},
			end:       base + PageSize,
			takeAfter: map[int][]LSN{0: {base}},
		},
		{
			name:      "crossing pages",
			chunks:    []chunk{{base, 100}, {base + 100, 3 * PageSize}, {base + 100 + 3*PageSize, 1}},
			end:       base + 101 + 3*PageSize,
			takeAfter: map[int][]LSN{1: {base, base + PageSize, base + 2*PageSize, base + 3*PageSize}, 2: {base + 3*PageSize}},
		},
		{
			name:      "odd sizes, partial page kept across batches",
			chunks:    []chunk{{base, 1}, {base + 1, 7}, {base + 8, 8183}, {base + 8191, 2}, {base + 8193, 12345}},
			end:       base + 8193 + 12345,
			takeAfter: map[int][]LSN{0: {base}, 1: {base}, 2: {base}, 4: {base, base + PageSize, base + 2*PageSize}},
		},
		{
			name:      "overlap rewrites and shortens",
			chunks:    []chunk{{base, 3 * PageSize}, {base + 100, 50}},
			end:       base + 150,
			takeAfter: map[int][]LSN{1: {base, base + PageSize, base + 2*PageSize}},
		},
		{
			name:      "start mid-page loads the stored page",
			stored:    map[LSN][]byte{base: pattern(base, PageSize)},
			chunks:    []chunk{{base + 4000, 5000}},
			end:       base + 9000,
			takeAfter: map[int][]LSN{0: {base, base + PageSize}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var m merger
			m.load = func(lsn LSN) ([]byte, error) { return tt.stored[lsn], nil }
			// The expected image: stored pages, then every chunk.
			img := map[LSN]byte{}
			for lsn, p := range tt.stored {
				for i, c := range p {
					img[lsn+LSN(i)] = c
				}
			}
			pages := map[LSN][]byte{}
			for lsn, p := range tt.stored {
				pages[lsn] = append([]byte(nil), p...)
			}
			for i, c := range tt.chunks {
				if err := m.write(c.start, pattern(c.start, c.n)); err != nil {
					t.Fatal(err)
				}
				for j := range c.n {
					img[c.start+LSN(j)] = pattern(c.start+LSN(j), 1)[0]
				}
				if want, ok := tt.takeAfter[i]; ok {
					got := m.take()
					if len(got) != len(want) {
						t.Fatalf("after chunk %d: took %d pages, want %v", i, len(got), want)
					}
					for k, p := range got {
						if p.lsn != want[k] {
							t.Fatalf("after chunk %d: page %d is %x, want %x", i, k, p.lsn, want[k])
						}
						if len(p.data) != PageSize {
							t.Fatalf("page %x has %d bytes", p.lsn, len(p.data))
						}
						pages[p.lsn] = append([]byte(nil), p.data...)
					}
				}
			}
			if m.end != tt.end {
				t.Fatalf("end %x, want %x", m.end, tt.end)
			}
			// Every stored page byte before end equals the image; bytes at
			// or after end in the end page are zero.
			for lsn, p := range pages {
				for i, c := range p {
					pos := lsn + LSN(i)
					switch {
					case pos < tt.end && c != img[pos]:
						t.Fatalf("byte %x = %d, want %d", pos, c, img[pos])
					case pos >= tt.end && lsn == pageOf(tt.end) && c != 0:
						t.Fatalf("byte %x after end = %d, want 0", pos, c)
					}
				}
			}
		})
	}
}

func TestMergerGap(t *testing.T) {
	var m merger
	if err := m.write(0, make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	if err := m.write(11, make([]byte, 10)); err == nil {
		t.Fatal("gap accepted")
	}
	if err := m.write(10, bytes.Repeat([]byte{1}, 10)); err != nil {
		t.Fatal(err)
	}
}
