package pagestore

import (
	"bytes"
	"encoding/binary"
	"errors"
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

// recSink records what a decoder hands on, and checks each path.
type recSink struct {
	t     *testing.T
	calls int
}

func (r *recSink) path(p string) error {
	if !validRelPath(p) {
		r.t.Fatalf("decoder passed on the invalid path %q", p)
	}
	r.calls++
	return nil
}
func (r *recSink) dir(p string) error                    { return r.path(p) }
func (r *recSink) file(p string, _ []byte) error         { return r.path(p) }
func (r *recSink) unchanged(p string, _ int64) error     { return r.path(p) }
func (r *recSink) wal(p string, _ []byte) error          { return r.path(p) }
func (r *recSink) worker() ingestWorker                  { return recWorker{r} }
func (r *recSink) fork(RelTag, uint32) (forkSink, error) { return recWorker{r}, nil }

type recWorker struct{ r *recSink }

func (w recWorker) forkSize(RelTag, uint32, bool) error { w.r.calls++; return nil }
func (w recWorker) pages(RelTag, uint32, []byte) error  { w.r.calls++; return nil }
func (w recWorker) write(uint32, []byte) error          { w.r.calls++; return nil }
func (w recWorker) close() error                        { return nil }
func (w recWorker) done() error                         { return nil }

// frames encodes a stream the way the senders do.
func frames(fn func(fw *frameWriter)) []byte {
	var b bytes.Buffer
	fw := newFrameWriter(&b)
	fn(fw)
	_ = fw.flush()
	return b.Bytes()
}

// FuzzDecodeIngest: any request body decodes without panicking and hands
// the store only clean relative paths.
func FuzzDecodeIngest(f *testing.F) {
	rel := RelTag{Spc: 1663, DB: 5, Rel: 16384}
	f.Add(frames(func(fw *frameWriter) {
		ri := &remoteIngest{fw: fw}
		w := ri.worker()
		_ = ri.dir("base/5")
		_ = ri.file("PG_VERSION", []byte("15\n"))
		_ = ri.unchanged("global/pg_filenode.map", 512)
		_ = ri.wal("pg_wal/000000010000000000000001", encodeSparse(16<<20, nil))
		_ = w.forkSize(rel, 2, false)
		_ = w.pages(rel, 0, pageOf(1))
		_ = fw.frame('e', nil, nil)
	}))
	f.Add(frames(func(fw *frameWriter) { _ = fw.frame('d', appendStr(nil, "../etc"), nil) }))
	f.Add([]byte{'p', 0xFF, 0xFF, 0xFF, 0xFF})
	fr := newFrameReader(nil)
	f.Fuzz(func(t *testing.T, body []byte) {
		_ = decodeIngest(fr.reset(bytes.NewReader(body)), &recSink{t: t})
	})
}

// FuzzDecodeMaterialize: any response body decodes without panicking,
// hands the compute side only clean relative paths, and pages only to
// forks that are open.
func FuzzDecodeMaterialize(f *testing.F) {
	rel := RelTag{Spc: 1663, DB: 5, Rel: 16384}
	f.Add(frames(func(fw *frameWriter) {
		ms := &frameMatSink{fw: fw}
		_ = ms.dir("base")
		_ = ms.file("PG_VERSION", []byte{fileContent, '1', '5'})
		fs, _ := ms.fork(rel, 3)
		_ = fs.write(1, pageOf(2))
		_ = fs.close()
		_ = fw.frame('e', binary.BigEndian.AppendUint64(nil, 0x1000), nil)
	}))
	f.Add(frames(func(fw *frameWriter) { _ = fw.frame('x', binary.BigEndian.AppendUint32(nil, 404), []byte("gone")) }))
	f.Add([]byte{'P', 0, 0, 0, 8, 0, 0, 0, 9, 0, 0, 0, 0})
	fr := newFrameReader(nil)
	f.Fuzz(func(t *testing.T, body []byte) {
		_, _ = decodeMaterialize(fr.reset(bytes.NewReader(body)), &recSink{t: t},
			func(code int, msg string) error { return errors.New(msg) })
	})
}
