package pagestore

import (
	"bytes"
	"testing"
)

// FuzzDecodeSparse: any stored value decodes without panicking, every
// chunk it yields lies inside the file, and what decodes re-encodes to
// the same bytes.
func FuzzDecodeSparse(f *testing.F) {
	f.Add(encodeSparse(16<<20, []sparseChunk{{0, []byte("page0")}, {8192, []byte("page1")}}))
	f.Add(encodeSparse(0, nil))
	f.Add([]byte{fileSparse, 0, 0, 0, 0, 0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 1, 'x'})
	f.Fuzz(func(t *testing.T, v []byte) {
		size, chunks, err := decodeSparse(v)
		if err != nil {
			return
		}
		for _, c := range chunks {
			if c.off > size || uint64(len(c.data)) > size-c.off {
				t.Fatalf("chunk at %d (+%d) outside a %d-byte file", c.off, len(c.data), size)
			}
		}
		if again := encodeSparse(size, chunks); !bytes.Equal(again, v) {
			t.Fatalf("re-encoded %x, was %x", again, v)
		}
	})
}

// FuzzDecodeKey: any key decodes without panicking; keys the package
// builds decode to what they were built from.
func FuzzDecodeKey(f *testing.F) {
	r := RelTag{Spc: 1663, DB: 5, Rel: 16384, Fork: 1}
	f.Add(pageKey(7, r, 3, 0x1527700), "")
	f.Add(sizeKey(7, r, 42), "")
	f.Add(fileKey(7, "global/pg_control", 99), "global/pg_control")
	f.Add(metaKey(7), "")
	f.Add([]byte("f\x00\x00\x00\x00\x00\x00\x00\x01\x00"), "")
	f.Fuzz(func(t *testing.T, k []byte, path string) {
		_, _ = decodeKey(k)
		if bytes.IndexByte([]byte(path), 0) >= 0 {
			return // paths never hold NUL
		}
		d, err := decodeKey(fileKey(3, path, 77))
		if err != nil || d.kind != kindFile || d.tl != 3 || d.path != path || d.lsn != 77 {
			t.Fatalf("file key of %q decodes to %+v, %v", path, d, err)
		}
	})
}

// FuzzParseControlData: pg_controldata output of any shape parses or
// fails without panicking; a parsed checkpoint has a usable segment size.
func FuzzParseControlData(f *testing.F) {
	f.Add("Database cluster state: shut down\nLatest checkpoint location: 0/1527700\nLatest checkpoint's TimeLineID: 1\nBytes per WAL segment: 16777216\n")
	f.Add("Database cluster state: in production\n")
	f.Fuzz(func(t *testing.T, out string) {
		cp, err := ParseControlData(out)
		if err == nil && (cp.WALSegSize <= 0 || cp.TimeLineID == 0) {
			t.Fatalf("parsed %+v", cp)
		}
	})
}
